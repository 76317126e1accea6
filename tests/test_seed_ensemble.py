"""Seed ensembles per fold: ``abmil train --folds K --seeds N`` trains N models on each fold's split with their own
seeds, predicts with their mean, reports the spread of their test metrics, and ``abmil predict`` uses every member."""
from __future__ import annotations

import json

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from abmil.cli import main
from abmil.slides.features import FeatureBagDataset
from abmil.slides.predict import load_models, load_run, predict_dataset
from abmil.train.checkpoint import read_checkpoint
from abmil.train.splits import member_seed
from wsi_helpers import fail, make_case_dataset

SMALL = ["--epochs", "2", "--hidden", "16", "--att-dim", "8", "--lr", "1e-3"]


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    root = tmp_path_factory.mktemp("seeds")
    manifest, features, _ = make_case_dataset(root, 12, sizes=(6, 12))
    out = root / "run"
    assert main(["train", "--manifest", str(manifest), "--features", str(features), "--out", str(out),
                 "--folds", "2", "--seeds", "3", "--seed", "5", *SMALL]) == 0
    return manifest, features, out


def test_each_fold_predicts_with_the_mean_of_its_members(study):
    manifest, features, out = study
    dataset = FeatureBagDataset(manifest, features)
    splits = {f["key"]: f for f in json.loads((out / "splits.json").read_text())["folds"]}
    for key, split in splits.items():
        record = json.loads((out / "folds" / key / "fold.json").read_text())
        members = [out / "folds" / key] + [out / "folds" / key / "seeds" / f"s{j}" for j in (1, 2)]
        assert [m["seed"] for m in record["seeds"]] == [member_seed(split["seed"], j) for j in range(3)]
        assert len({member_seed(split["seed"], j) for j in range(3)}) == 3
        test = [dataset.slide_ids.index(s) for s in split["test"]["slides"]]
        alone = [predict_dataset(load_run(m), dataset, test) for m in members]
        ids = [p[0] for p in record["predictions"]]
        assert ids == [p.slide_id for p in alone[0]]
        mean = np.mean([[p.probabilities for p in a] for a in alone], 0)
        # (each model's probabilities are float32: the mean of float32 values, to their rounding)
        np.testing.assert_allclose([p[2] for p in record["predictions"]], mean, rtol=0, atol=2e-7)
        # the members differ (their own seeds), on the same split (same validation slides in their histories)
        assert len({tuple(a[0].probabilities) for a in alone}) == 3
        for m in members:
            assert read_checkpoint(m)["epoch"] == 2
        # each member's test AUC, and the spread the summary reports
        y = np.array([p[1] for p in record["predictions"]])
        aucs = [roc_auc_score(y, [p.probabilities[1] for p in a]) for a in alone]
        assert [m["test"]["auc"] for m in record["seeds"]] == pytest.approx(aucs, abs=1e-12)
    spread = json.loads((out / "summary.json").read_text())["seed_spread"]
    assert spread["n_seeds"] == 3
    sds = []
    for row in spread["per_fold"]:
        assert row["auc"]["sd"] == pytest.approx(np.std(row["auc"]["values"], ddof=1))
        sds.append(row["auc"]["sd"])
    assert spread["mean"]["auc"]["mean_sd"] == pytest.approx(np.mean(sds))
    assert "## Seed spread (3 seeds per fold)" in (out / "summary.md").read_text()


def test_predict_uses_every_member(study):
    _, _, out = study
    assert len(load_models(out)) == 2 * 3
    assert len(load_models(out, fold=(0, 1))) == 3


def test_bad_seeds_are_refused(study, tmp_path, capsys):
    manifest, features, _ = study
    base = ["train", "--manifest", str(manifest), "--features", str(features), "--out", str(tmp_path / "o"), *SMALL]
    fail(capsys, [*base, "--folds", "2", "--seeds", "0"], "--seeds must be an integer >= 1, got 0")
    fail(capsys, [*base, "--seeds", "2"], "--seeds 2", "give --folds K")
    assert not (tmp_path / "o").exists()
