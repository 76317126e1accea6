"""The multilabel task (``--task multilabel --targets A,B,...``): the loss against scikit-learn's log loss, a planted
cohort learned per target through ``abmil train --folds`` and ``evaluate``, predict and heatmaps per target, and bad
target columns refused."""
from __future__ import annotations

import csv
import json
import sys

import numpy as np
import pytest
import torch
from sklearn.metrics import log_loss, roc_auc_score

from abmil.cli import main
from abmil.data.synthetic import write_multilabel_cohort
from abmil.nn.models import MILOutput
from abmil.slides.features import FeatureBagDataset
from abmil.slides.train import WSIConfig, train_feature_model
from abmil.tasks import get_task, head_from_info
from abmil.train.loss import Objective, bag_losses
from cli_helpers import assert_refused

TARGETS = ("A", "B", "C")
SMALL = ["--hidden", "16", "--att-dim", "8", "--dropout", "0"]


def read_csv(path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_loss_is_the_mean_over_targets_of_sklearns_log_loss():
    rng = np.random.default_rng(0)
    logits = torch.tensor(rng.normal(size=(7, 3)) * 2)
    y = torch.tensor(rng.integers(0, 2, (7, 3)), dtype=torch.float64)
    losses = bag_losses(MILOutput(logits), y, objective=Objective("bce")).numpy()
    p = torch.sigmoid(logits).numpy()
    for i in range(7):  # one bag: the mean over its targets of each target's Bernoulli log loss
        expected = np.mean([log_loss([y[i, k].item()], [p[i, k]], labels=[0, 1]) for k in range(3)])
        assert losses[i] == pytest.approx(expected, rel=1e-10)


def test_the_head_is_stored_with_its_targets():
    task = get_task("multilabel", "A,B")
    head = task.fit(None, [(0, 1), (1, 0)], 0)
    assert head.n_out() == 2 and head.header([]) == ["slide_id", "A", "B", "prob_A", "prob_B"]
    back = head_from_info({"head": head.to_dict()})
    assert back == head and type(back) is get_task("multilabel", ["A", "B"])
    with pytest.raises(ValueError, match="needs --targets"):
        WSIConfig(task="multilabel")
    with pytest.raises(ValueError, match="--targets"):
        WSIConfig(task="classification", targets="A")
    with pytest.raises(ValueError, match="twice"):
        get_task("multilabel", "A,A")


def test_planted_cohort_learned_per_target_through_train_folds_evaluate_predict(tmp_path, capsys):
    """Each target carried by its own key patches: 3-fold CV through the CLI gives every target an out-of-fold AUC
    well above chance, evaluate reports each with a case-bootstrap interval, predict writes a column per target."""
    manifest, features, keys = write_multilabel_cohort(tmp_path, TARGETS, 60, sizes=(8, 16), shift=4.0)
    run = tmp_path / "cv"
    assert main(["train", "--task", "multilabel", "--targets", ",".join(TARGETS), "--manifest", str(manifest),
                 "--features", str(features), "--out", str(run), "--folds", "3", "--epochs", "10", "--lr", "1e-2",
                 "--batch-size", "4", "--seed", "0", *SMALL]) == 0
    oof = read_csv(run / "oof.csv")
    assert list(oof[0]) == ["slide_id", "case_id", *TARGETS, *[f"prob_{t}" for t in TARGETS], "repeat", "fold"]
    truth = {r["slide_id"]: r for r in read_csv(manifest)}
    aucs = {}
    for t in TARGETS:
        assert all(r[t] == truth[r["slide_id"]][t] for r in oof)
        aucs[t] = roc_auc_score([int(r[t]) for r in oof], [float(r[f"prob_{t}"]) for r in oof])
    with capsys.disabled():
        print("multilabel oof AUC " + ", ".join(f"{t} {a:.3f}" for t, a in aucs.items()), file=sys.stderr)
    assert min(aucs.values()) > 0.75, aucs
    summary = json.loads((run / "summary.json").read_text())
    assert set(summary["mean"]) == {"mean_auc", *[f"auc_{t}" for t in TARGETS]}

    assert main(["evaluate", "--predictions", str(run / "oof.csv"), "--bootstrap", "50", "--out",
                 str(tmp_path / "eval"), "--run", str(run)]) == 0
    result = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    rows = {(r["level"], r["metric"], r["class"]): r for r in result["metrics"]}
    for t in TARGETS:
        r = rows["slide", "auc", t]
        assert r["value"] == pytest.approx(aucs[t], abs=1e-6)
        assert r["ci_low"] <= r["value"] <= r["ci_high"] and r["n_bootstrap"] + r["n_skipped"] == 50
        assert {("slide", m, t) for m in ("average_precision", "brier", "accuracy")} <= rows.keys()
    assert rows["slide", "mean_auc", ""]["value"] == pytest.approx(np.mean(list(aucs.values())), abs=1e-6)
    assert result["meta"]["targets"] == list(TARGETS) and (tmp_path / "eval" / "roc.png").stat().st_size > 1000

    assert main(["predict", "--run", str(run), "--manifest", str(manifest), "--features", str(features),
                 "--out", str(tmp_path / "preds.csv")]) == 0
    preds = read_csv(tmp_path / "preds.csv")
    assert list(preds[0]) == ["slide_id", *TARGETS, *[f"prob_{t}" for t in TARGETS]] and len(preds) == 60
    capsys.readouterr()


def test_heatmap_paints_each_target_and_its_shares_sum_to_the_logit(tmp_path):
    from abmil.slides.feature_files import FeatureFile
    from abmil.slides.heatmap import _maps, slide_heatmap
    from abmil.slides.predict import load_run, predict_file

    task = get_task("multilabel", TARGETS)
    manifest, features, _ = write_multilabel_cohort(tmp_path, TARGETS, 12, sizes=(8, 16))
    train_feature_model(FeatureBagDataset(manifest, features, task=task), tmp_path / "run",
                        WSIConfig(epochs=1, batch_size=4, hidden=16, att_dim=8, task="multilabel",
                                  targets=",".join(TARGETS)))
    run = load_run(tmp_path / "run")
    file = FeatureFile(features / "m000.h5", "m000")
    pred = predict_file(run, file)
    maps = _maps(run, file, pred)
    assert [name for name, _ in maps] == ["attention", *[f"{t}: share of logit" for t in TARGETS]]
    bias = run.model.classifier.bias.detach().double().numpy()
    for k, (_, shares) in enumerate(maps[1:]):  # sigmoid(sum of the patches' shares + bias) is the probability
        assert pred.probabilities[k] == pytest.approx(1 / (1 + np.exp(-(shares.sum() + bias[k]))), rel=1e-5)
    summary = slide_heatmap(tmp_path / "run", features / "m000.h5", tmp_path / "heat.png")
    assert (tmp_path / "heat.png").stat().st_size > 1000 and all(f"{t} " in summary for t in TARGETS)


@pytest.mark.parametrize("cell,targets,fragments", [
    ("2", "A,B,C", ["manifest.csv", "line 3: field 'B': '2' is not 0 or 1", "bag m001"]),
    ("yes", "A,B,C", ["field 'B': 'yes' is not 0 or 1", "bag m001"]),
    ("1", "A,B,Z", ["manifest.csv", "missing column(s) Z"]),
    ("1", "A,,C", ["--targets"]),
])
def test_bad_targets_one_line_exit_2_nothing_written(tmp_path, capsys, cell, targets, fragments):
    manifest, features, _ = write_multilabel_cohort(tmp_path, TARGETS, 6, sizes=(8, 10))
    lines = manifest.read_text().splitlines()
    parts = lines[2].split(",")
    parts[2] = cell
    lines[2] = ",".join(parts)
    manifest.write_text("\n".join(lines) + "\n")
    args = ["train", "--task", "multilabel", "--targets", targets, "--manifest", str(manifest), "--features",
            str(features), "--out", str(tmp_path / "out"), "--epochs", "1"]
    for extra in ([], ["--folds", "2"]):
        capsys.readouterr()
        assert main([*args, *extra]) == 2
        err = capsys.readouterr().err
        assert err.startswith("abmil: error: ") and err.count("\n") == 1, err
        for fragment in fragments:
            assert fragment in err, (fragment, err)
        assert not (tmp_path / "out").exists()


def test_a_bad_target_refused_by_the_real_process(tmp_path):
    manifest, features, _ = write_multilabel_cohort(tmp_path, ("A", "B"), 4, sizes=(8, 10))
    lines = manifest.read_text().splitlines()
    lines[3] = "m002,0.5," + lines[3].split(",")[2]
    manifest.write_text("\n".join(lines) + "\n")
    assert_refused(tmp_path, ["train", "--task", "multilabel", "--targets", "A,B", "--manifest", str(manifest),
                              "--out", "{ws}/out"], "field 'A': '0.5' is not 0 or 1")
