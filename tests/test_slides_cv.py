"""Slide studies: patients (case_id), case-level bags, ``abmil train --folds`` (out-of-fold predictions, summary,
splits, Youden thresholds, resuming a killed study), the fold ensemble of ``abmil predict``, class weights and the
balanced sampler, and every bad input stopped with one line before anything is written."""
from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

from abmil.cli import main
from abmil.data.samplers import balanced_weights
from abmil.nn.models import MILOutput
from abmil.slides.features import CaseBagDataset, FeatureBagDataset
from abmil.slides.manifest import train_val_split
from abmil.slides.predict import load_models, load_run, predict_dataset
from abmil.slides.train import WSIConfig, build_model, score_slides, train_feature_model
from abmil.train.checkpoint import load_extra, read_checkpoint
from abmil.train.loss import bag_losses, balanced_class_weights
from abmil.train.schedule import epoch_steps
from abmil.train.splits import case_cv_splits
from wsi_helpers import fail, make_case_dataset

SMALL = ["--epochs", "2", "--hidden", "16", "--att-dim", "8", "--chunk-size", "32", "--lr", "1e-3"]


def read_csv(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))



@pytest.fixture(scope="module")
def study(tmp_path_factory):
    """A 3-fold x 2-repeat study through the CLI on 12 patients (1-3 slides each; some without a case_id)."""
    root = tmp_path_factory.mktemp("cv")
    manifest, features, rows = make_case_dataset(root, 12)
    out = root / "run"
    assert main(["train", "--manifest", str(manifest), "--features", str(features), "--out", str(out),
                 "--folds", "3", "--repeats", "2", "--patience", "1", *SMALL]) == 0
    return root, manifest, features, rows, out


# ----------------------------------------------------------------------------- manifest cases
def test_case_id_column_groups_slides_and_empty_cells_are_their_own_case(study):
    _, manifest, features, rows, _ = study
    ds = FeatureBagDataset(manifest, features)
    assert ds.case_ids == [case for _, _, case in rows]
    cases = CaseBagDataset(ds)
    assert len(cases) == len({case for _, _, case in rows}) < len(ds)
    i = next(k for k, m in enumerate(cases.members) if len(m) > 1)
    bag = cases.load(i)
    assert bag.features.shape[0] == sum(ds.load(j).features.shape[0] for j in cases.members[i])
    torch.testing.assert_close(bag.features, torch.cat([ds.load(j).features for j in cases.members[i]]))
    assert bag.coords.shape == (bag.features.shape[0], 2) and bag.label == ds.labels[cases.members[i][0]]


def test_single_run_validation_split_keeps_cases_whole(study):
    _, manifest, features, _, _ = study
    ds = FeatureBagDataset(manifest, features)
    train, val = train_val_split(ds.labels, ds.splits, 0.3, 0, ds.case_ids)
    assert not {ds.case_ids[i] for i in train} & {ds.case_ids[i] for i in val}
    assert {ds.labels[i] for i in val} == {0, 1}


# ----------------------------------------------------------------------------- the study
def test_oof_covers_every_slide_once_per_repeat_in_its_splits_fold(study):
    _, _, _, rows, out = study
    oof = read_csv(out / "oof.csv")
    assert list(oof[0]) == ["slide_id", "case_id", "label", "prob_normal", "prob_tumor", "predicted", "repeat",
                            "fold"]
    case_of = {sid: case for sid, _, case in rows}
    splits = json.loads((out / "splits.json").read_text())
    test_fold = {(f["repeat"], sid): f["fold"] for f in splits["folds"] for sid in f["test"]["slides"]}
    for r in (0, 1):
        mine = [o for o in oof if o["repeat"] == str(r)]
        assert sorted(o["slide_id"] for o in mine) == sorted(case_of)  # every slide exactly once per repeat
        for o in mine:
            assert o["case_id"] == case_of[o["slide_id"]] and int(o["fold"]) == test_fold[(r, o["slide_id"])]
            assert abs(float(o["prob_normal"]) + float(o["prob_tumor"]) - 1) < 2e-6
        folds_of_case = {}
        for o in mine:  # all slides of a case in one test fold
            folds_of_case.setdefault(o["case_id"], set()).add(o["fold"])
        assert all(len(f) == 1 for f in folds_of_case.values())
    for f in splits["folds"]:  # auditable: no case on two sides
        parts = [set(f[p]["cases"]) for p in ("train", "val", "test")]
        assert not (parts[0] & parts[1] or parts[0] & parts[2] or parts[1] & parts[2])
    assert sorted(p.name for p in (out / "folds").iterdir()) == [f"r{r}_f{k}" for r in (0, 1) for k in range(3)]


def test_summary_thresholds_and_fold_runs(study):
    _, _, _, _, out = study
    summary = json.loads((out / "summary.json").read_text())
    assert summary["folds_done"] == summary["folds_total"] == 6 and len(summary["per_fold"]) == 6
    aucs = [f["auc"] for f in summary["per_fold"]]
    assert summary["mean"]["auc"]["mean"] == pytest.approx(np.mean(aucs))
    assert summary["mean"]["auc"]["sd"] == pytest.approx(np.std(aucs, ddof=1))
    assert {"accuracy", "balanced_accuracy"} <= set(summary["mean"])
    assert (out / "summary.md").read_text().startswith("# Cross-validation") and (out / "summary.csv").is_file()
    run = json.loads((out / "run.json").read_text())
    assert run["status"] == "finished"
    thresholds = [json.loads((out / "folds" / k / "fold.json").read_text())["threshold"] for k in run["fold_keys"]]
    assert run["threshold"] == pytest.approx(np.mean([t for t in thresholds if t is not None]))
    for key in run["fold_keys"]:
        fold = out / "folds" / key
        info = read_checkpoint(fold)
        record = json.loads((fold / "fold.json").read_text())
        assert info["history"]["records"] and "best" in info["extra"]  # history, and the best epoch's weights kept
        assert record["best_epoch"] == info["history"]["best_epoch"] + 1
        assert set(record["settings"]["val"]).isdisjoint(record["settings"]["train"])


def test_youden_threshold_on_a_known_curve():
    from abmil.report.metrics import youden_threshold

    assert youden_threshold([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8]) == pytest.approx(0.8)
    assert youden_threshold([0, 0, 1, 1], [0.1, 0.2, 0.6, 0.7]) == pytest.approx(0.6)
    assert np.isnan(youden_threshold([1, 1], [0.2, 0.3]))


def test_ensemble_prediction_is_the_mean_of_the_fold_models(study, tmp_path, capsys):
    _, manifest, features, _, out = study
    ds = FeatureBagDataset(manifest, features, classes=["normal", "tumor"])
    runs = load_models(out)
    assert len(runs) == 6
    ensemble = predict_dataset(runs, ds)
    each = [predict_dataset(r, ds) for r in runs]
    for k, pred in enumerate(ensemble):
        np.testing.assert_allclose(pred.probabilities, np.mean([e[k].probabilities for e in each], 0), atol=1e-6)
        np.testing.assert_allclose(pred.attention, np.mean([e[k].attention for e in each], 0), atol=1e-6)
    # through the CLI: the default is the ensemble, --fold R,F one fold's model
    argv = ["predict", "--run", str(out), "--manifest", str(manifest), "--features", str(features)]
    assert main([*argv, "--out", str(tmp_path / "all.csv")]) == 0
    folds = [read_csv(_predict_fold(argv, tmp_path, r, f)) for r in (0, 1) for f in range(3)]
    for k, row in enumerate(read_csv(tmp_path / "all.csv")):
        mean = np.mean([float(fold[k]["prob_tumor"]) for fold in folds])
        assert abs(float(row["prob_tumor"]) - mean) <= 1.5e-6  # 6 decimals each side
    fail(capsys, [*argv, "--out", str(tmp_path / "x.csv"), "--fold", "2,0"], "--fold 2,0", "r0..1")
    assert not (tmp_path / "x.csv").exists()


def test_predicted_class_uses_the_thresholds_chosen_on_validation(study, tmp_path):
    """oof.csv: each fold's own Youden threshold; predict on the study: the mean threshold (run.json), with --fold
    that fold's. The class is 'tumor' exactly when P(tumor) >= the threshold."""
    _, manifest, features, _, out = study
    run = json.loads((out / "run.json").read_text())
    fold_threshold = run["fold_thresholds"]
    assert run["threshold"] is not None
    for row in read_csv(out / "oof.csv"):
        t = fold_threshold[f"r{row['repeat']}_f{row['fold']}"]
        expected = ("tumor" if float(row["prob_tumor"]) >= t else "normal") if t is not None else None
        assert expected is None or row["predicted"] == expected
    argv = ["predict", "--run", str(out), "--manifest", str(manifest), "--features", str(features)]
    assert main([*argv, "--out", str(tmp_path / "all.csv")]) == 0
    for row in read_csv(tmp_path / "all.csv"):
        assert row["predicted"] == ("tumor" if float(row["prob_tumor"]) >= run["threshold"] else "normal")
    t = fold_threshold["r1_f2"]
    for row in read_csv(_predict_fold(argv, tmp_path, 1, 2)):
        assert t is None or row["predicted"] == ("tumor" if float(row["prob_tumor"]) >= t else "normal")


def _predict_fold(argv: list[str], tmp_path: Path, r: int, f: int) -> Path:
    path = tmp_path / f"r{r}_f{f}.csv"
    assert main([*argv, "--out", str(path), "--fold", f"{r},{f}"]) == 0
    return path


def test_rerun_skips_finished_folds_and_other_settings_are_refused(study, capsys):
    _, manifest, features, _, out = study
    before = (out / "oof.csv").read_text()
    argv = ["train", "--manifest", str(manifest), "--features", str(features), "--out", str(out), "--folds", "3",
            "--repeats", "2", "--patience", "1", *SMALL]
    assert main(argv) == 0
    assert "epoch" not in capsys.readouterr().out.replace("best epoch", "")  # nothing trained again
    assert (out / "oof.csv").read_text() == before
    fail(capsys, [*argv[:-1], "2e-3"], "'lr'", "choose another --out")


# ----------------------------------------------------------------------------- resume
def _cli(args: list[str], kill_calls: int | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    launcher = (["-m", "abmil"] if kill_calls is None
                else [str(Path(__file__).with_name("kill_after.py")), "--calls", str(kill_calls)])
    return subprocess.run([sys.executable, *launcher, *args], env=env, capture_output=True, text=True, timeout=300)


def test_killed_study_restarted_gives_the_same_oof(tmp_path):
    manifest, features, _ = make_case_dataset(tmp_path, 9, max_slides=2, seed=3)
    args = ["train", "--manifest", str(manifest), "--features", str(features), "--folds", "3", "--epochs", "3",
            "--val-fraction", "0.25",
            "--hidden", "16", "--att-dim", "8", "--lr", "1e-3", "--seed", "4", "--sampler", "balanced",
            "--class-weights", "balanced"]
    ds = FeatureBagDataset(manifest, features)
    splits = case_cv_splits(ds.labels, ds.case_ids, folds=3, seed=4, val_fraction=0.25)
    # killed in the second epoch of the second fold: fold 0 finished, fold 1 has its first epoch's checkpoint
    calls = 3 * len(splits[0].train) + len(splits[1].train) + 2
    run = tmp_path / "run"
    killed = _cli([*args, "--out", str(run)], kill_calls=calls)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert (run / "folds" / "r0_f0" / "fold.json").is_file()
    assert not (run / "folds" / "r0_f1" / "fold.json").exists()
    assert read_checkpoint(run / "folds" / "r0_f1")["epoch"] == 1
    assert len(read_csv(run / "oof.csv")) == len(splits[0].test)  # published after each fold
    assert main([*args, "--out", str(run)]) == 0  # the same command continues
    assert main([*args, "--out", str(tmp_path / "reference")]) == 0
    assert (run / "oof.csv").read_text() == (tmp_path / "reference" / "oof.csv").read_text()
    assert read_checkpoint(run / "folds" / "r0_f1")["history"]["resumed_at"] == [1]


# ----------------------------------------------------------------------------- case bags, three classes
def test_three_classes_case_level_through_train_folds_and_predict(tmp_path):
    manifest, features, rows = make_case_dataset(tmp_path, 12, classes=("a", "b", "c"), seed=1)
    out = tmp_path / "run"
    assert main(["train", "--manifest", str(manifest), "--features", str(features), "--out", str(out), "--folds", "3",
                 "--bag-level", "case", "--monitor", "val_error", *SMALL]) == 0
    oof = read_csv(out / "oof.csv")
    cases = sorted({case for _, _, case in rows})
    assert list(oof[0]) == ["case_id", "label", "prob_a", "prob_b", "prob_c", "predicted", "repeat", "fold"]
    assert sorted(o["case_id"] for o in oof) == cases
    summary = json.loads((out / "summary.json").read_text())
    assert all(f["auc"] is not None for f in summary["per_fold"])  # every class in every test fold: OvR AUC
    run = json.loads((out / "run.json").read_text())
    assert run["threshold"] is None  # Youden: two classes only
    assert main(["predict", "--run", str(out), "--manifest", str(manifest), "--features", str(features),
                 "--out", str(tmp_path / "p.csv")]) == 0
    preds = read_csv(tmp_path / "p.csv")
    assert [p["case_id"] for p in preds] == list(dict.fromkeys(case for _, _, case in rows))
    for p in preds:
        assert abs(sum(float(p[f"prob_{c}"]) for c in "abc") - 1) < 3e-6
    import h5py

    with h5py.File(tmp_path / "p.attention.h5") as h5:
        multi = next(c for c in h5 if "slides" in h5[c].attrs)
        g = h5[multi]
        assert g["attention"].shape == (sum(g.attrs["slide_sizes"]),) and abs(g["attention"][:].sum() - 1) < 1e-5


# ----------------------------------------------------------------------------- imbalance
def test_class_weighted_loss_is_the_weighted_mean_by_hand():
    weights = balanced_class_weights([0, 0, 0, 1], 2)
    assert weights == pytest.approx([4 / 6, 4 / 2])  # n / (classes * n_c), as sklearn's "balanced"
    logits = torch.tensor([[0.3], [-1.0], [2.0], [0.5]], dtype=torch.float64)
    y = torch.tensor([0, 0, 0, 1])
    plain = bag_losses(MILOutput(logits), y)
    p = torch.sigmoid(logits[:, 0])
    by_hand = -torch.where(y == 1, torch.log(p), torch.log(1 - p))
    torch.testing.assert_close(plain, by_hand)
    w = torch.tensor(weights, dtype=torch.float64)
    weighted = bag_losses(MILOutput(logits), y, w)
    torch.testing.assert_close(weighted, by_hand * w[y])
    # the weights sum to n over the training bags: the mean weighted loss is the weighted mean
    torch.testing.assert_close(weighted.mean(), (by_hand * w[y]).sum() / w[y].sum())
    three = torch.tensor([[0.1, 2.0, -1.0], [1.0, 0.0, 0.5]])
    w3 = torch.tensor([0.5, 1.0, 3.0])
    torch.testing.assert_close(bag_losses(MILOutput(three), torch.tensor([2, 0]), w3),
                               torch.nn.functional.cross_entropy(three, torch.tensor([2, 0]), reduction="none")
                               * torch.tensor([3.0, 0.5]))


def test_class_weights_reach_the_training_loss(tmp_path):
    """One step of all training slides: the epoch's train_loss is the class-weighted mean of the initial model's
    losses (dropout off), computed by hand."""
    manifest, features, _ = make_case_dataset(tmp_path, 7, max_slides=1, seed=2)
    ds = FeatureBagDataset(manifest, features)
    cfg = WSIConfig(epochs=1, batch_size=len(ds), hidden=16, att_dim=8, dropout=0.0, lr=1e-3,
                    class_weights="balanced")
    info = train_feature_model(ds, tmp_path / "run", cfg)
    w = balanced_class_weights(ds.labels, 2)
    assert info["class_weights"] == pytest.approx(w) and w[0] != w[1]
    model = build_model(ds.validate(), 2, cfg)
    losses = [(loss, label) for _, loss, _, label in score_slides(model, ds, list(range(len(ds))), torch.device("cpu"))]
    expected = sum(w[y] * loss for loss, y in losses) / len(losses)
    assert info["history"]["records"][0]["train_loss"] == pytest.approx(expected, rel=1e-5)


def test_balanced_sampler_draws_classes_equally_and_deterministically():
    labels = [0] * 90 + [1] * 10
    weights = balanced_weights(labels)
    drawn = [labels[b] for e in range(20) for s in epoch_steps(100, 7, e, sample_weights=weights) for b in s.bags]
    share = Counter(drawn)[1] / len(drawn)
    assert len(drawn) == 2000 and 0.45 < share < 0.55  # 0.1 when shuffled
    order = lambda seed, epoch: [b for s in epoch_steps(100, seed, epoch, sample_weights=weights) for b in s.bags]  # noqa: E731
    assert order(7, 3) == order(7, 3) and order(7, 3) != order(8, 3) and order(7, 3) != order(7, 4)


def test_patience_keeps_the_best_epoch_and_predict_uses_it(tmp_path):
    manifest, features, _ = make_case_dataset(tmp_path, 8, max_slides=1, seed=5)
    ds = FeatureBagDataset(manifest, features)
    info = train_feature_model(ds, tmp_path / "run", WSIConfig(epochs=4, val_split=0.4, patience=1, hidden=16,
                                                               att_dim=8, lr=1e-2))
    assert "best" in info["extra"] and info["history"]["best_epoch"] >= 0
    run = load_run(tmp_path / "run")
    best = load_extra(tmp_path / "run", info, "best")
    assert all(torch.equal(run.model.state_dict()[k], best[k]) for k in best)
    with pytest.raises(ValueError, match="needs validation"):
        train_feature_model(ds, tmp_path / "run2", WSIConfig(epochs=1, patience=1))


# ----------------------------------------------------------------------------- bad input: one line, nothing written
def test_bad_study_inputs_stop_before_writing(tmp_path, capsys):
    manifest, features, _ = make_case_dataset(tmp_path, 6, max_slides=1, extra={"X-s0": "tumor,P02"})
    out = tmp_path / "out"
    base = ["train", "--features", str(features), "--out", str(out), *SMALL]
    # a case whose slides carry two labels: named with its slides
    fail(capsys, [*base, "--manifest", str(manifest), "--folds", "2"], "case 'P02'", "P02-s0 (normal)",
         "X-s0 (tumor)", str(manifest))
    ok, features2, _ = make_case_dataset(tmp_path / "ok", 6, max_slides=1)
    def given(manifest: Path) -> list[str]:
        return ["train", "--manifest", str(manifest), "--features", str(features2), "--out", str(out), *SMALL]

    base = given(ok)
    fail(capsys, [*base, "--folds", "4"], "class 'normal' has 3 case(s), fewer than the 4 folds")
    fail(capsys, [*base, "--folds", "2", "--monitor", "auc"], "monitor must be one of val_loss, val_error, val_auc",
         "'auc'")
    fail(capsys, [*base, "--folds", "2", "--bag-level", "patient"], "bag_level must be one of slide, case")
    one_class = tmp_path / "one.csv"
    one_class.write_text("slide_id,label,case_id\n" + "".join(f"P{k:02d}-s0,normal,\n" for k in range(0, 6, 2)))
    fail(capsys, [*given(one_class), "--folds", "2"], "at least two classes")
    split_col = tmp_path / "split.csv"
    split_col.write_text("slide_id,label,split\nP00-s0,normal,train\nP01-s0,tumor,train\n")
    fail(capsys, [*given(split_col), "--folds", "2"], "'split' column")
    assert not out.exists()
    # an existing single run is not taken for a study
    out.mkdir()
    (out / "checkpoint.json").write_text("{}")
    fail(capsys, [*base, "--folds", "2"], "already holds other files")
    assert sorted(p.name for p in out.iterdir()) == ["checkpoint.json"]
