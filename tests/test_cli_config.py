"""Settings files: ``--config FILE`` (TOML or JSON) sets a command's flags, flags on the command line win, a run
records what it ran with in OUT/config.json, and a bad file stops the command before anything runs."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from abmil.cli import build_parser, main
from abmil.cli_config import add_config_flag, config_path, settings_defaults
from wsi_helpers import load_weights, make_dataset


def _bench_parser():
    parser = build_parser()
    add_config_flag(parser)
    return parser._subparsers._group_actions[0].choices["reproduce"]._subparsers._group_actions[0].choices[
        "benchmarks"]


def test_keys_are_flag_names_and_values_parse_as_the_flags_do(tmp_path: Path):
    path = tmp_path / "run.toml"
    path.write_text('models = ["attention", "gated"]\nfolds = 3\nbatch_size = 1\npreset = "supplement"\n'
                    'no-progress = true\n')
    got = settings_defaults(_bench_parser(), path)
    assert got == {"models": ["attention", "gated"], "folds": 3, "batch_size": 1, "preset": "supplement",
                   "no_progress": True}
    (tmp_path / "run.json").write_text(json.dumps({"models": "attention,gated", "seed": 4}))
    assert settings_defaults(_bench_parser(), tmp_path / "run.json") == {"models": ["attention", "gated"], "seed": 4}
    assert config_path(["train", "--config=x.toml"]) == "x.toml" and config_path(["train"]) is None


@pytest.mark.parametrize("text, words", [
    ("fold = 3\n", "unknown setting 'fold'"),
    ('folds = "three"\n', "setting 'folds'"),
    ('preset = "paper"\n', "expected one of wang, supplement"),
    ("no-progress = 1\n", "expected true or false"),
    ("[train]\nepochs = 2\n", "setting 'train'"),
    ("folds = \n", "not a valid TOML file"),
])
def test_a_bad_settings_file_exits_2_naming_the_file_and_key(tmp_path: Path, capsys, text, words):
    path = tmp_path / "bad.toml"
    path.write_text(text)
    out = tmp_path / "out"
    assert main(["reproduce", "benchmarks", "--config", str(path), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("abmil: error: ") and err.count("\n") == 1 and words in err and "bad.toml" in err, err
    assert not out.exists()


def test_missing_settings_file(tmp_path: Path, capsys):
    assert main(["reproduce", "benchmarks", "--config", str(tmp_path / "none.toml")]) == 2
    assert "settings file not found" in capsys.readouterr().err


def test_train_from_a_settings_file_flags_win_and_the_run_records_its_settings(tmp_path: Path):
    manifest, features = make_dataset(tmp_path, 6)
    run_a, run_b = tmp_path / "a", tmp_path / "b"
    config = tmp_path / "run.toml"
    # manifest and features are required flags: the file may give them
    config.write_text(f'manifest = "{manifest}"\nfeatures = "{features}"\nepochs = 5\nhidden = 16\n'
                      f'att-dim = 8\nseed = 3\n')
    assert main(["train", "--config", str(config), "--epochs", "2", "--out", str(run_a)]) == 0
    recorded = json.loads((run_a / "config.json").read_text())
    assert recorded["epochs"] == 2 and recorded["hidden"] == 16 and recorded["att-dim"] == 8  # the flag won
    assert recorded["manifest"] == str(manifest) and "config" not in recorded and "resume" not in recorded
    # The recorded settings repeat the run: the same weights.
    assert main(["train", "--config", str(run_a / "config.json"), "--out", str(run_b)]) == 0
    a, b = load_weights(run_a), load_weights(run_b)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
