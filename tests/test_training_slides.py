"""Leakage by default, closed: ``abmil predict`` says when it scores slides the run's models trained or validated on
(how many, which, by which model; a study: oof.csv is the honest estimate) and records it beside its CSV, and
``abmil evaluate`` refuses such predictions without ``--allow-training-slides``. The parts are read back from the
run's own files (checkpoint.json, splits.json) in the tests, not from the code under test."""
from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import h5py
import pytest

from abmil.cli import main
from abmil.slides.leakage import OVERLAP_ATTR, RUN_ATTR, training_overlap
from wsi_helpers import fail, make_case_dataset, make_dataset

SMALL = ["--epochs", "1", "--hidden", "8", "--att-dim", "4", "--lr", "1e-3"]
SPLITS = ["train", "train", "val", "train", "train", "val", "test", "test"]


def _subset(manifest: Path, out: Path, keep) -> Path:
    rows = list(csv.DictReader(manifest.open()))
    with out.open("w", newline="") as f:
        w = csv.DictWriter(f, [c for c in rows[0] if c != "split"], extrasaction="ignore")
        w.writeheader()
        w.writerows(r for r in rows if keep(r["slide_id"]))
    return out


@pytest.fixture(scope="module")
def single(tmp_path_factory):
    root = tmp_path_factory.mktemp("single")
    manifest, features = make_dataset(root, 8, split=SPLITS)
    assert main(["train", "--manifest", str(manifest), "--features", str(features), "--out", str(root / "run"),
                 *SMALL]) == 0
    info = json.loads((root / "run" / "checkpoint.json").read_text())
    return root, manifest, features, set(info["train_slides"]), set(info["val_slides"])


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    root = tmp_path_factory.mktemp("study")
    manifest, features, _ = make_case_dataset(root, 9)
    assert main(["train", "--manifest", str(manifest), "--features", str(features), "--out", str(root / "run"),
                 "--folds", "3", *SMALL]) == 0
    splits = json.loads((root / "run" / "splits.json").read_text())["folds"]
    return root, manifest, features, {f["key"]: f for f in splits}


def test_predict_warns_about_a_single_runs_training_slides_and_evaluate_refuses_them(single, tmp_path, capsys):
    root, manifest, features, train, val = single
    assert train and val and len(train | val) == 6
    preds = tmp_path / "preds.csv"
    capsys.readouterr()
    assert main(["predict", "--run", str(root / "run"), "--manifest", str(manifest), "--features", str(features),
                 "--out", str(preds)]) == 0
    err = capsys.readouterr().err
    assert err.startswith("abmil: WARNING: 6 of the 8 slides scored") and err.count("\n") == 1, err
    assert f"trained on {len(train)}, validated on {len(val)}" in err and "--allow-training-slides" in err
    assert "s06" not in err and "s07" not in err  # the test slides are not named
    with h5py.File(tmp_path / "preds.attention.h5") as h5:  # recorded beside the CSV, for evaluate
        assert h5.attrs[RUN_ATTR] == str((root / "run").resolve())
        record = json.loads(h5.attrs[OVERLAP_ATTR])
    assert set(record["models"]["run"]["train"]) == train and set(record["models"]["run"]["val"]) == val

    argv = ["evaluate", "--predictions", str(preds), "--bootstrap", "0"]
    fail(capsys, [*argv, "--out", str(tmp_path / "e")], str(preds), "6 of the 8 slides", "--allow-training-slides")
    assert not (tmp_path / "e").exists()
    assert main([*argv, "--out", str(tmp_path / "e"), "--allow-training-slides"]) == 0
    assert capsys.readouterr().err.startswith("abmil: WARNING: 6 of the 8 slides")
    meta = json.loads((tmp_path / "e" / "metrics.json").read_text())["meta"]
    assert meta["training_overlap"]["n_scored"] == 8 and "optimistic" in meta["training_overlap"]["warning"]
    assert (tmp_path / "e" / "metrics.md").read_text().startswith("> **WARNING: 6 of the 8 slides")

    # the CSV cut to the held-out slides (the record is re-checked against the rows it holds now): evaluated
    rows = [r for r in csv.DictReader(preds.open()) if r["slide_id"] not in train | val]
    with preds.open("w", newline="") as f:
        w = csv.DictWriter(f, list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    assert main([*argv, "--out", str(tmp_path / "held_out")]) == 0
    assert "WARNING" not in capsys.readouterr().err


def test_held_out_slides_give_no_warning(single, tmp_path, capsys):
    root, manifest, features, train, val = single
    test = _subset(manifest, tmp_path / "test.csv", lambda s: s not in train | val)
    preds = tmp_path / "p.csv"
    capsys.readouterr()
    assert main(["predict", "--run", str(root / "run"), "--manifest", str(test), "--features", str(features),
                 "--out", str(preds)]) == 0
    assert capsys.readouterr().err == ""
    assert main(["evaluate", "--predictions", str(preds), "--bootstrap", "0", "--out", str(tmp_path / "e")]) == 0


def test_a_moved_run_is_judged_by_the_record(single, tmp_path, capsys):
    root, manifest, features, train, val = single
    run = tmp_path / "run"
    shutil.copytree(root / "run", run)
    preds = tmp_path / "p.csv"
    assert main(["predict", "--run", str(run), "--manifest", str(manifest), "--features", str(features),
                 "--out", str(preds)]) == 0
    shutil.rmtree(run)
    fail(capsys, ["evaluate", "--predictions", str(preds), "--bootstrap", "0", "--out", str(tmp_path / "e")],
         "6 of the 8 slides")


def test_a_studys_own_cohort_points_to_oof_and_evaluate_checks_each_models_parts(study, tmp_path, capsys):
    root, manifest, features, folds = study
    run = root / "run"
    argv = ["predict", "--run", str(run), "--manifest", str(manifest), "--features", str(features)]
    capsys.readouterr()
    assert main([*argv, "--out", str(tmp_path / "all.csv")]) == 0
    err = capsys.readouterr().err
    n = len(list(csv.DictReader(manifest.open())))
    assert f"{n} of the {n} slides scored" in err and "3 of the 3 fold model(s) that scored them (their mean)" in err
    assert str(run / "oof.csv") in err and "honest estimate" in err
    with open(tmp_path / "all.csv", newline="") as fh:  # the manifest's patients kept, as in oof.csv
        scored = list(csv.DictReader(fh))
    assert list(scored[0])[:2] == ["slide_id", "case_id"]
    assert [(r["slide_id"], r["case_id"]) for r in scored] == [
        (r["slide_id"], r["case_id"] or r["slide_id"]) for r in csv.DictReader(manifest.open())]
    for key, f in folds.items():
        assert f"{key} trained on {len(f['train']['slides'])}, validated on {len(f['val']['slides'])}" in err

    # one fold's model: exactly its train and val slides, as splits.json lists them
    assert main([*argv, "--fold", "0,1", "--out", str(tmp_path / "f1.csv")]) == 0
    fold = folds["r0_f1"]
    with h5py.File(tmp_path / "f1.attention.h5") as h5:
        record = json.loads(h5.attrs[OVERLAP_ATTR])
    assert record["fold"] == "0,1" and list(record["models"]) == ["r0_f1"]
    assert record["models"]["r0_f1"] == {p: sorted(fold[p]["slides"]) for p in ("train", "val")}
    capsys.readouterr()
    # its test fold alone: nothing to warn about
    test = _subset(manifest, tmp_path / "test.csv", lambda s: s in fold["test"]["slides"])
    assert main([*argv[:4], str(test), *argv[5:], "--fold", "0,1", "--out", str(tmp_path / "t.csv")]) == 0
    assert capsys.readouterr().err == ""
    assert main(["evaluate", "--predictions", str(tmp_path / "t.csv"), "--bootstrap", "0", "--out",
                 str(tmp_path / "et")]) == 0

    # oof.csv with --run: each row against its own fold's model -> honest, evaluated without a word
    assert main(["evaluate", "--predictions", str(run / "oof.csv"), "--run", str(run), "--bootstrap", "0",
                 "--out", str(tmp_path / "oof")]) == 0
    assert "WARNING" not in capsys.readouterr().err
    # a CSV with no record (its HDF5 gone): --run still finds the ensemble's training slides
    (tmp_path / "all.attention.h5").unlink()
    fail(capsys, ["evaluate", "--predictions", str(tmp_path / "all.csv"), "--run", str(run), "--bootstrap", "0",
                  "--out", str(tmp_path / "e")], f"{n} of the {n} slides", "oof.csv")


def test_overlap_of_oof_rows_is_empty_and_of_a_wrong_fold_is_not(study):
    root, _, _, folds = study
    ids = [s for f in folds.values() for s in f["test"]["slides"]]
    owners = [k for k, f in folds.items() for _ in f["test"]["slides"]]
    assert not training_overlap(root / "run", ids, row_models=owners)
    shifted = owners[len(folds["r0_f0"]["test"]["slides"]):] + owners[:len(folds["r0_f0"]["test"]["slides"])]
    assert training_overlap(root / "run", ids, row_models=shifted)
