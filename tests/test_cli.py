"""The ``abmil`` command: a small real reproduce run, resume, partial output, and clean errors on bad input."""
from __future__ import annotations

import inspect
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import scipy.io

import abmil.experiments.benchmarks as bench
from abmil.cli import build_parser, default_of, main
from abmil.data.benchmarks import load_benchmark
from abmil.experiments.benchmarks import demo, reproduce_benchmarks
from abmil.experiments.histology import explain_histology, reproduce_histology
from abmil.experiments.mnist_bags import explain_mnist_bags, reproduce_mnist_bags
from abmil.report.results import ADDED_KEYS, CORE_KEYS
from abmil.slides.heatmap import slide_heatmap
from abmil.train.cv import CVResult, cv_splits

SMALL = ["--datasets", "musk1", "--models", "attention", "--folds", "3", "--repeats", "1", "--epochs", "3"]
EXTRAS = {"std_folds", "std_over", "n_repeats", "epochs", "batch_size", "folds", "run"}


def _abmil(*args: str) -> subprocess.CompletedProcess:
    """The real entry point, ``python -m abmil``, in a fresh interpreter."""
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    return subprocess.run([sys.executable, "-m", "abmil", *args], capture_output=True, text=True, env=env,
                          timeout=300)


def _written(out: Path) -> list[str]:
    """Every file under ``out`` (results.*, cells/*, and any temporary file), relative to it."""
    return sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file()) if out.exists() else []


@pytest.fixture(scope="module")
def small_run(tmp_path_factory) -> Path:
    """One real 3-fold x 1 run of attention on Musk1 (3 epochs) through ``python -m abmil``."""
    out = tmp_path_factory.mktemp("bench") / "out"
    proc = _abmil("reproduce", "benchmarks", *SMALL, "--out", str(out), "--no-progress")
    assert proc.returncode == 0, proc.stderr
    assert "musk1/attention" in proc.stdout
    return out


def test_reproduce_writes_results(small_run: Path):
    rows = json.loads((small_run / "results.json").read_text())
    assert len(rows) == 1
    row = rows[0]
    assert set(row) == set(CORE_KEYS) | set(ADDED_KEYS) | EXTRAS
    assert (row["dataset"], row["model"], row["metric"]) == ("musk1", "attention", "accuracy")
    assert row["n_runs"] == 3 and row["n_repeats"] == 1 and row["folds"] == 3 and row["epochs"] == 3
    assert row["std_over"] == "folds"  # one repeat: the spread is over its folds
    assert 0.0 <= row["mean"] <= 1.0 and row["std"] == pytest.approx(row["std_folds"])
    assert row["paper_mean"] == pytest.approx(0.892)  # Table 1, confirmed [A, B]
    assert row["paper_mean_confirmed"] is True and row["paper_std_confirmed"] is True  # attention ± [B]
    assert row["run"]["engine"] == "direct" and row["run"]["seconds"] > 0  # auto: direct for attention, batch 1
    assert row["run"]["resumed"] is False
    md = (small_run / "results.md").read_text()
    assert "Attention (`attention`)" in md and "--epochs 3" in md
    assert (small_run / "results.csv").read_text().startswith(",".join(CORE_KEYS))
    cell = json.loads((small_run / "cells" / "musk1__attention.json").read_text())
    accs = [r["accuracy"] for r in cell["runs"]]
    assert len(accs) == 3 and np.mean(accs) == pytest.approx(row["mean"])
    assert sorted(i for r in cell["runs"] for i in r["test"]) == list(range(92))  # each bag tested once
    assert not [f for f in _written(small_run) if f.endswith(".tmp")]


def test_supplement_preset_selects_each_runs_epoch_on_validation(small_run: Path, tmp_path: Path):
    """--preset supplement: its own SGD settings and Xavier init, 20 % of each run's training folds held out and the
    epoch of lowest validation error (then loss) kept; today's cells are not reused for it."""
    out = tmp_path / "supplement"
    (out / "cells").mkdir(parents=True)
    cell_file = small_run / "cells" / "musk1__attention.json"
    (out / "cells" / cell_file.name).write_bytes(cell_file.read_bytes())  # the wang cell: must be recomputed
    proc = _abmil("reproduce", "benchmarks", *SMALL, "--preset", "supplement", "--out", str(out), "--no-progress")
    assert proc.returncode == 0, proc.stderr
    cell = json.loads((out / "cells" / "musk1__attention.json").read_text())
    settings = cell["settings"]
    assert settings["preset"] == "supplement" and settings["init"] == "xavier_uniform"
    assert settings["stopping"] == {"patience": None, "val_fraction": 0.2, "monitor": ["val_error", "val_loss"]}
    config = settings["config"]
    assert (config["lr"], config["weight_decay"], config["nesterov"], config["decay_biases"], config["lr_decay"],
            config["epochs"]) == (5e-4, 5e-3, False, True, 0.0, 3)
    assert cell["engine"] == "direct" and len(cell["runs"]) == 3
    assert all(0 <= r["best_epoch"] < 3 for r in cell["runs"])
    assert cell["runs"] != json.loads(cell_file.read_text())["runs"]
    row = json.loads((out / "results.json").read_text())[0]
    assert row["preset"] == "supplement" and row["selection"] == "validation"
    md = (out / "results.md").read_text()
    assert "supplement preset" in md and "--preset supplement" in md


def _no_training(*args, **kwargs):
    raise AssertionError("run_cv called for a finished cell")


def test_resume_skips_finished_cells(small_run: Path, monkeypatch, capsys):
    before = json.loads((small_run / "results.json").read_text())[0]
    monkeypatch.setattr(bench, "run_cv", _no_training)
    assert main(["reproduce", "benchmarks", *SMALL, "--out", str(small_run), "--no-progress"]) == 0
    after = json.loads((small_run / "results.json").read_text())[0]
    assert after["mean"] == before["mean"] and after["std"] == before["std"]
    assert after["run"]["resumed"] is True and after["run"]["seconds"] == before["run"]["seconds"]


def test_more_metrics_from_the_stored_probabilities(small_run: Path, monkeypatch, capsys, tmp_path):
    from sklearn.metrics import f1_score, roc_auc_score

    out = tmp_path / "metrics"
    (out / "cells").mkdir(parents=True)
    cell_file = small_run / "cells" / "musk1__attention.json"
    (out / "cells" / cell_file.name).write_bytes(cell_file.read_bytes())
    monkeypatch.setattr(bench, "run_cv", _no_training)  # every metric comes from the finished cell
    assert main(["reproduce", "benchmarks", *SMALL, "--metrics", "accuracy,f1,auc", "--out", str(out),
                 "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "      auc: musk1/attention" in printed
    rows = {r["metric"]: r for r in json.loads((out / "results.json").read_text())}
    assert list(rows) == ["accuracy", "f1", "auc"]
    labels = load_benchmark("musk1").labels
    runs = json.loads(cell_file.read_text())["runs"]
    auc = [roc_auc_score(labels[r["test"]], r["probs"]) for r in runs]
    f1 = [f1_score(labels[r["test"]], np.asarray(r["probs"]) >= 0.5, zero_division=0) for r in runs]
    assert rows["auc"]["mean"] == pytest.approx(np.mean(auc)) and rows["auc"]["n_runs"] == 3
    assert rows["f1"]["mean"] == pytest.approx(np.mean(f1))
    assert rows["accuracy"]["mean"] == pytest.approx(np.mean([r["accuracy"] for r in runs]))
    md = (out / "results.md").read_text()
    assert "| Method | Accuracy | F-score | AUC |" in md and "--metrics accuracy,f1,auc" in md
    with pytest.raises(ValueError, match="unknown metric"):
        bench.reproduce_benchmarks(["musk1"], ["attention"], out_dir=tmp_path / "x", metrics=["kappa"])


def _fake_run_cv(calls: list, interrupt_at: int | None = None):
    """A run_cv stand-in that predicts every bag positive at once; the call number ``interrupt_at`` is 'killed'."""
    def run_cv(bags, labels, model_factory, config, *, folds, repeats, seed, engine, progress, n_jobs=1,
               stopping=None):
        calls.append((config.epochs, seed))
        if len(calls) == interrupt_at:
            raise KeyboardInterrupt
        splits = cv_splits(labels, folds=folds, repeats=repeats, seed=seed)
        progress(config.epochs, config.epochs)
        return CVResult(splits, [np.ones(len(s.test)) for s in splits])
    return run_cv


def test_changed_settings_recompute_and_partial_results(tmp_path: Path, monkeypatch):
    out = tmp_path / "out"
    calls: list = []
    monkeypatch.setattr(bench, "run_cv", _fake_run_cv(calls))
    args = ["reproduce", "benchmarks", "--datasets", "musk1", "--models", "attention", "--folds", "2",
            "--repeats", "2", "--epochs", "1", "--out", str(out), "--no-progress"]
    assert main(args) == 0 and len(calls) == 1
    assert main(args) == 0 and len(calls) == 1  # resumed
    assert main([*args, "--seed", "1"]) == 0 and len(calls) == 2  # other seed: the cached cell does not apply
    row = json.loads((out / "results.json").read_text())[0]
    assert row["mean"] == pytest.approx(47 / 92) and row["std"] == pytest.approx(0.0)  # all-positive predictor

    # Killed during the second cell: the first cell's results and cell file are on disk, nothing temporary.
    out2 = tmp_path / "out2"
    calls2: list = []
    monkeypatch.setattr(bench, "run_cv", _fake_run_cv(calls2, interrupt_at=2))
    code = main(["reproduce", "benchmarks", "--datasets", "musk1", "--models", "attention,gated", "--folds", "2",
                 "--repeats", "1", "--epochs", "1", "--out", str(out2), "--no-progress"])
    assert code == 130
    assert [r["model"] for r in json.loads((out2 / "results.json").read_text())] == ["attention"]
    assert _written(out2) == ["cells/musk1__attention.json", "results.csv", "results.json", "results.md"]


# ---------------------------------------------------------------------------------------------------------------------
# Bad input: exit status 2, one line on stderr naming the file (and bag), nothing written.


def _csv(path: Path, rows: list[list]) -> Path:
    path.write_text("\n".join(",".join(str(v) for v in r) for r in rows) + "\n")
    return path


def _bad_files(tmp: Path) -> list[tuple[Path, str | None]]:
    """(file, the bag the message must name or None)."""
    ok = [[1, "b1", 0.1, 0.2], [1, "b1", 0.3, 0.4], [0, "b2", 0.5, 0.6]]
    nan = _csv(tmp / "nan.csv", [*ok, [0, "b3", "nan", 0.1]])
    dims = _csv(tmp / "dims.csv", [*ok, [0, "b3", 0.1, 0.2, 0.3]])
    label2 = _csv(tmp / "label2.csv", [*ok, [2, "b3", 0.1, 0.2]])
    no_ids = tmp / "no_ids.mat"
    scipy.io.savemat(no_ids, {"features": np.zeros((4, 2)), "labels": np.array([[1, 1, -1, -1]])})
    return [(nan, "b3"), (dims, "b3"), (label2, "b3"), (no_ids, None)]


def test_bad_data_files_exit_2_and_write_nothing(tmp_path: Path, capsys):
    for path, bag in _bad_files(tmp_path):
        out = tmp_path / f"out_{path.stem}"
        code = main(["reproduce", "benchmarks", "--data", f"mine={path}", "--models", "attention", "--folds", "2",
                     "--out", str(out), "--no-progress"])
        err = capsys.readouterr().err
        assert code == 2, (path, err)
        assert err.startswith("abmil: error: ") and err.count("\n") == 1, err
        assert str(path) in err, err
        if bag is not None:
            assert f"bag {bag}" in err, err
        assert _written(out) == [], (path, _written(out))
    # The same file standing in for a shipped benchmark, and a missing file.
    nan = tmp_path / "nan.csv"
    assert main(["reproduce", "benchmarks", "--datasets", "musk1", "--data", f"musk1={nan}",
                 "--out", str(tmp_path / "o"), "--no-progress"]) == 2
    assert main(["reproduce", "benchmarks", "--data", f"x={tmp_path / 'absent.mat'}",
                 "--out", str(tmp_path / "o"), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "absent.mat" in err and "not found" in err
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("args, words", [
    (["--models", "attention,transformer"], "transformer"),
    (["--datasets", "musk3"], "musk3"),
    (["--folds", "1"], "folds"),
    (["--repeats", "0"], "repeats"),
    (["--data", "musk1"], "NAME=PATH"),
    (["--datasets", "musk1", "--data", "fox=fox.mat"], "fox"),
    (["--preset", "supplement", "--engine", "stacked"], "stacked engine"),
])
def test_bad_arguments_exit_2(tmp_path: Path, capsys, args, words):
    out = tmp_path / "out"
    assert main(["reproduce", "benchmarks", *args, "--out", str(out), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("abmil: error: ") and words in err and err.count("\n") == 1, err
    assert not out.exists()


def test_entry_point_error_has_no_traceback(tmp_path: Path):
    bad = _bad_files(tmp_path)[2][0]  # label 2
    out = tmp_path / "out"
    proc = _abmil("reproduce", "benchmarks", "--data", f"mine={bad}", "--out", str(out))
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr and proc.stderr.strip().count("\n") == 0, proc.stderr
    assert str(bad) in proc.stderr and "bag b3" in proc.stderr and "not 0 or 1" in proc.stderr
    assert not out.exists()


# ---------------------------------------------------------------------------------------------------------------------
# Defaults come from the library: a flag and the keyword it feeds agree when neither is given.


def _as_list(value):
    return list(value) if isinstance(value, (list, tuple)) else value


@pytest.mark.parametrize("argv, function", [
    (["reproduce", "benchmarks"], reproduce_benchmarks),
    (["reproduce", "mnist-bags"], reproduce_mnist_bags),
    (["reproduce", "histology", "--dataset", "breast", "--data-dir", "d"], reproduce_histology),
    (["explain", "mnist-bags", "--run", "r"], explain_mnist_bags),
    (["explain", "histology", "--run", "r"], explain_histology),
    (["heatmap", "--run", "r", "--slide", "s.h5", "--out", "h.png"], slide_heatmap),
    (["demo"], demo),
])
def test_flag_defaults_are_the_library_defaults(argv, function):
    args = vars(build_parser().parse_args(argv))
    params = inspect.signature(function).parameters
    # --metrics stays None so that the output can tell whether it was given; the handler passes the library's.
    shared = [n for n, p in params.items() if p.default is not p.empty and n in args and n != "metrics"]
    assert len(shared) >= 2, shared
    for name in shared:
        assert _as_list(args[name]) == _as_list(params[name].default), name
    if function is slide_heatmap:
        assert args["scale"] == default_of(slide_heatmap, "normalise")
