"""``abmil train --positive-class NAME``: the class the AUC, thresholds, sensitivity and figures are about, stored in
the run as its second class, so that predict and evaluate follow it; the default (the sorted labels' last) is said
in the output. The AUC is checked against scikit-learn's with the positive class given explicitly."""
from __future__ import annotations

import csv
import json

import numpy as np
from sklearn.metrics import roc_auc_score

from abmil.cli import main
from wsi_helpers import fail, make_dataset

SMALL = ["--epochs", "2", "--hidden", "8", "--att-dim", "4", "--lr", "1e-3", "--val-split", "0.25"]


def test_the_positive_class_flows_from_train_to_predict_and_evaluate(tmp_path, capsys):
    manifest, features = make_dataset(tmp_path, 8)  # labels normal, tumor
    argv = ["train", "--manifest", str(manifest), "--features", str(features), *SMALL]
    capsys.readouterr()
    assert main([*argv, "--out", str(tmp_path / "default")]) == 0
    assert "positive class 'tumor'" in capsys.readouterr().out  # the default, said
    assert main([*argv, "--out", str(tmp_path / "run"), "--positive-class", "normal"]) == 0
    out = capsys.readouterr().out
    assert "positive class 'normal'" in out and "(--positive-class)" in out
    assert json.loads((tmp_path / "run" / "checkpoint.json").read_text())["classes"] == ["tumor", "normal"]

    preds = tmp_path / "p.csv"
    assert main(["predict", "--run", str(tmp_path / "run"), "--manifest", str(manifest), "--features",
                 str(features), "--out", str(preds)]) == 0
    rows = list(csv.DictReader(preds.open()))
    assert list(rows[0]) == ["slide_id", "label", "prob_tumor", "prob_normal", "predicted"]
    assert main(["evaluate", "--predictions", str(preds), "--bootstrap", "0", "--allow-training-slides",
                 "--out", str(tmp_path / "e")]) == 0
    result = json.loads((tmp_path / "e" / "metrics.json").read_text())
    assert result["meta"]["positive_class"] == "normal" and "prob_normal >= 0.5" in result["meta"]["decision"]
    auc = next(r["value"] for r in result["metrics"] if r["metric"] == "auc" and r["level"] == "slide")
    y = np.array([r["label"] == "normal" for r in rows])
    assert auc == roc_auc_score(y, np.array([float(r["prob_normal"]) for r in rows]))


def test_a_wrong_positive_class_is_refused_before_anything_is_written(tmp_path, capsys):
    manifest, features = make_dataset(tmp_path, 6, classes=("a", "b", "c"))
    two, feats2 = make_dataset(tmp_path / "two", 6)
    out = tmp_path / "run"
    fail(capsys, ["train", "--manifest", str(two), "--features", str(feats2), "--out", str(out),
                  "--positive-class", "stroma", *SMALL], "--positive-class 'stroma'", "normal, tumor")
    fail(capsys, ["train", "--manifest", str(manifest), "--features", str(features), "--out", str(out),
                  "--positive-class", "a", *SMALL], "--positive-class", "two classes", "a, b, c")
    assert not out.exists()
