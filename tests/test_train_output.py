"""What ``abmil train`` prints: a study's line per fold (not folds x epochs lines), its bar per fold with the current
validation metric, ``--quiet`` / ``--verbose``, and a warning when a run trains with no validation at all."""
from __future__ import annotations

import json

import pytest

from abmil.cli import main
from abmil.cli_progress import TrainProgress
from wsi_helpers import make_case_dataset, make_dataset

SMALL = ["--epochs", "2", "--hidden", "8", "--att-dim", "4", "--lr", "1e-3"]


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    root = tmp_path_factory.mktemp("out")
    manifest, features, _ = make_case_dataset(root, 9)
    return root, ["train", "--manifest", str(manifest), "--features", str(features), "--folds", "3", *SMALL]


@pytest.mark.parametrize("flag, epoch_lines, fold_lines", [(None, 0, 3), ("--verbose", 6, 3), ("--quiet", 0, 0)])
def test_a_study_prints_a_line_per_fold(cohort, tmp_path, capsys, flag, epoch_lines, fold_lines):
    root, argv = cohort
    capsys.readouterr()
    assert main([*argv, "--out", str(tmp_path / "cv"), *([flag] if flag else [])]) == 0
    captured = capsys.readouterr()
    lines = captured.out.splitlines()
    assert sum(line.startswith("fold r0_f") and ", epoch " in line for line in lines) == epoch_lines
    assert sum(line.startswith("fold r0_f") and "(best epoch" in line for line in lines) == fold_lines
    assert len(lines) == epoch_lines + fold_lines + 3  # + the mean over folds, the positive class, the files
    assert lines[-3].startswith("mean over folds: auc ") and lines[-1].startswith("wrote ")
    assert lines[-2].startswith("positive class 'tumor'")
    assert captured.err == ""  # no bar off a terminal; the study validates every fold: no warning


def test_the_fold_bar_shows_the_current_validation_metric(capsys):
    progress = TrainProgress(epochs=3, monitor="val_loss", bar=True)
    for epoch, loss in ((1, 0.75), (2, 0.5)):
        progress.epoch({"epoch": epoch, "train_loss": 0.9, "val_loss": loss, "val_auc": 0.625}, key="r0_f1")
    progress.fold({"key": "r0_f1", "test": {"auc": 0.5, "accuracy": None}, "best_epoch": 2})
    captured = capsys.readouterr()
    assert captured.out == "fold r0_f1: auc 0.5000 (best epoch 2)\n"
    assert "fold r0_f1" in captured.err and "2/3" in captured.err and "val_loss=0.5000" in captured.err
    assert "val_auc=0.6250" in captured.err
    with pytest.raises(ValueError, match="verbosity"):
        TrainProgress("loud", epochs=1)


def test_a_run_without_validation_is_warned_about(tmp_path, capsys):
    manifest, features = make_dataset(tmp_path, 8)
    argv = ["train", "--manifest", str(manifest), "--features", str(features), *SMALL]
    capsys.readouterr()
    assert main([*argv, "--out", str(tmp_path / "none")]) == 0
    captured = capsys.readouterr()
    assert captured.err.startswith("abmil: WARNING: no validation slides") and captured.err.count("\n") == 1
    assert "--val-split" in captured.err and "last of 2 epochs" in captured.err
    assert not any("val_" in line for line in captured.out.splitlines())  # indeed nothing was validated
    assert main([*argv, "--out", str(tmp_path / "val"), "--val-split", "0.25"]) == 0
    captured = capsys.readouterr()
    assert captured.err == "" and "val_loss" in captured.out
    assert main([*argv, "--out", str(tmp_path / "quiet"), "--val-split", "0.25", "--quiet"]) == 0
    assert [line.split()[0] for line in capsys.readouterr().out.splitlines()] == ["positive", "wrote"]
    config = json.loads((tmp_path / "quiet" / "config.json").read_text())
    assert "quiet" not in config and "verbose" not in config and config["val-fraction"] == 0.25  # printing: no setting


def test_the_library_warns_too(tmp_path):
    from abmil.slides.features import FeatureBagDataset
    from abmil.slides.train import NoValidationWarning, WSIConfig, train_feature_model

    manifest, features = make_dataset(tmp_path, 4)
    config = WSIConfig(epochs=1, hidden=8, att_dim=4)
    with pytest.warns(NoValidationWarning, match="no validation slides"):
        train_feature_model(FeatureBagDataset(manifest, features), tmp_path / "run", config)
