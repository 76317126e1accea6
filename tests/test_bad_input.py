"""Bad-input corpus (issue 30) for the reproduce / explain / demo commands: every case runs the real entry point,
``python -m abmil``, on real files written here, and must exit with status 2 and one line on stderr,
``abmil: error: ...``, naming the file, flag or bag at fault, with no traceback and nothing new on disk.

Cases are grouped by what is broken: a saved model (truncated, without metadata, another size), a run folder
(a checkpoint.json missing an entry), a data file (one class, labels mixing numbers and words), a flag (NaN / Inf /
zero where a positive number is needed), an output path (a file where a folder is asked for and the reverse, a
folder that cannot be written, a file size limit standing in for a full disk). Every fixture is tiny: no case trains.
"""
from __future__ import annotations

import errno
import json
import os
from pathlib import Path

import numpy as np
import pytest
import scipy.io
import torch
from PIL import Image

from abmil.cli import main
from abmil.errors import OutputError
from abmil.experiments.histology import _has_metrics
from abmil.experiments.mnist_bags import POINT_FORMAT, _point_ok
from abmil.experiments.runner import save_model
from abmil.io import atomic_open, write_safetensors_atomic
from abmil.nn.zoo import histology_model, mnist_bags_model
from abmil.train.checkpoint import FORMAT
from cli_helpers import abmil_process, assert_refused, tree

MODEL = Path("models") / "attention.safetensors"


def _written(out: Path) -> list[str]:
    """Every file under ``out`` (as tests/test_cli.py), relative to it."""
    return sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file()) if out.exists() else []


# ---------------------------------------------------------------------------------------------------------- fixtures


def _csv(path: Path, rows: list[list]) -> Path:
    path.write_text("\n".join(",".join(str(v) for v in r) for r in rows) + "\n")
    return path


@pytest.fixture(scope="module")
def ws(tmp_path_factory) -> Path:
    """The corpus's files, all written once: histology run folders (a good one and broken copies), an image, an
    MNIST-bags run with a truncated model, benchmark files, a tiny UCSB-named breast folder with a broken
    checkpoint, and a plain file to stand where a folder is asked for."""
    root = tmp_path_factory.mktemp("corpus")
    rng = np.random.default_rng(0)
    Image.fromarray((rng.random((96, 96, 3)) * 120).astype(np.uint8)).save(root / "img.png")  # 9 tissue tiles

    torch.manual_seed(0)
    net = histology_model("attention", 32)
    meta = {"settings": {"patch_size": 32}, "test": [], "test_labels": [], "test_paths": []}
    save_model(root / "run" / MODEL, net, meta)
    good = (root / "run" / MODEL).read_bytes()
    (root / "truncated" / "models").mkdir(parents=True)
    (root / "truncated" / MODEL).write_bytes(good[: len(good) // 2])
    write_safetensors_atomic(root / "nometa" / MODEL, net.state_dict())  # weights, no metadata
    save_model(root / "othersize" / MODEL, histology_model("attention", 27), meta)  # 27 px weights, says 32

    save_model(root / "mnist" / "models" / "attention__mean10__train50.safetensors", mnist_bags_model("attention"),
               {"point": {}})
    path = root / "mnist" / "models" / "attention__mean10__train50.safetensors"
    path.write_bytes(path.read_bytes()[:100])

    one = [[1, f"b{i}", 0.1 * i, 0.2] for i in range(6)]
    _csv(root / "one_class.csv", one)
    scipy.io.savemat(root / "one_class.mat", {"features": rng.random((6, 2)), "labels": -np.ones((1, 6)),
                                              "bag_ids": np.arange(1, 7)[None]})
    _csv(root / "mixed.csv", [[1, "b1", 0.1, 0.2], [0, "b2", 0.5, 0.6], ["neg", "b3", 0.1, 0.2], [1, "b4", 0.3, 0.3]])
    labels = np.empty((1, 4), dtype=object)
    labels[0, :] = [np.array([[1]]), np.array([[1]]), np.array(["neg"]), np.array([[-1]])]
    scipy.io.savemat(root / "mixed.mat", {"features": rng.random((4, 2)), "labels": labels,
                                          "bag_ids": np.array([[1, 1, 2, 2]])})

    bisque = root / "breast" / "Bisque"
    bisque.mkdir(parents=True)
    for kind in ("benign", "malignant"):
        for i in (1, 2):
            Image.fromarray((rng.random((64, 64, 3)) * 120).astype(np.uint8)).save(bisque / f"ytma_{kind}{i}.tif")
    checkpoint = root / "breast_run" / "checkpoints" / "attention__rep0__fold0"
    checkpoint.mkdir(parents=True)
    (checkpoint / "checkpoint.json").write_text(json.dumps({"format": FORMAT, "epoch": 1, "optimizer": "o.st"}))

    (root / "a_file").write_text("not a folder\n")
    return root


# ----------------------------------------------------------------------------------------------------------- corpus
# (id, command line with {ws} for the fixture folder, what the one-line message must name)

_HISTO = ["explain", "histology", "--image", "{ws}/img.png"]
_HISTO_RUN = ["reproduce", "histology", "--dataset", "breast", "--data-dir", "{ws}/breast", "--models", "attention",
              "--folds", "2", "--repeats", "1", "--epochs", "1", "--no-progress"]
_BENCH = ["reproduce", "benchmarks", "--models", "attention", "--folds", "2", "--epochs", "1", "--no-progress"]

CASES = [
    # a saved model or run folder that is corrupt or of another configuration
    ("model-truncated", [*_HISTO, "--run", "{ws}/truncated", "--out", "{ws}/o.png"], "{ws}/truncated/" + str(MODEL)),
    ("model-no-metadata", [*_HISTO, "--run", "{ws}/nometa", "--out", "{ws}/o.png"], "{ws}/nometa/" + str(MODEL)),
    ("model-other-size", [*_HISTO, "--run", "{ws}/othersize", "--out", "{ws}/o.png"], "{ws}/othersize/" + str(MODEL)),
    ("mnist-model-truncated", ["explain", "mnist-bags", "--run", "{ws}/mnist", "--out", "{ws}/o.png"],
     "attention__mean10__train50.safetensors"),
    ("checkpoint-missing-key", [*_HISTO_RUN, "--out", "{ws}/breast_run"],
     "{ws}/breast_run/checkpoints/attention__rep0__fold0/checkpoint.json"),
    # flags
    ("downsample-zero", [*_HISTO, "--run", "{ws}/run", "--out", "{ws}/o.png", "--downsample", "0"], "--downsample"),
    ("weight-decay-nan", [*_HISTO_RUN, "--weight-decay", "nan", "--out", "{ws}/new"], "--weight-decay"),
    ("lr-inf", [*_HISTO_RUN, "--lr", "inf", "--out", "{ws}/new"], "--lr"),
    # data files
    ("one-class-csv", [*_BENCH, "--data", "x={ws}/one_class.csv", "--out", "{ws}/new"], "{ws}/one_class.csv"),
    ("one-class-mat", [*_BENCH, "--data", "x={ws}/one_class.mat", "--out", "{ws}/new"], "{ws}/one_class.mat"),
    ("label-word-csv", [*_BENCH, "--data", "x={ws}/mixed.csv", "--out", "{ws}/new"], "{ws}/mixed.csv, bag b3"),
    ("label-word-mat", [*_BENCH, "--data", "x={ws}/mixed.mat", "--out", "{ws}/new"], "{ws}/mixed.mat, bag 2"),
    # --out: a file where a folder is asked for (before any work), a folder where a file is, a file above it
    ("out-file-benchmarks", [*_BENCH, "--datasets", "musk1", "--out", "{ws}/a_file"], "{ws}/a_file"),
    ("out-file-mnist-bags", ["reproduce", "mnist-bags", "--out", "{ws}/a_file", "--mnist-dir", "{ws}/absent"],
     "{ws}/a_file"),
    ("out-file-histology", [*_HISTO_RUN, "--out", "{ws}/a_file"], "{ws}/a_file"),
    ("out-file-demo", ["demo", "--out", "{ws}/a_file", "--no-progress"], "{ws}/a_file"),
    ("out-file-demo-histology", ["demo", "histology", "--out", "{ws}/a_file"], "{ws}/a_file"),
    ("out-under-file", [*_BENCH, "--datasets", "musk1", "--out", "{ws}/a_file/sub"], "{ws}/a_file"),
    ("png-out-folder", [*_HISTO, "--run", "{ws}/run", "--out", "{ws}/run"], "--out {ws}/run"),
]


@pytest.mark.parametrize("args, culprit", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_exits_2_with_one_line_naming_it(ws: Path, args: list[str], culprit: str):
    assert_refused(ws, args, culprit)  # nothing new anywhere, --out included


# ----------------------------------------------------------------------------------- outputs that cannot be written


def _unwritable(tmp_path: Path) -> Path:
    """A folder this process cannot write into: read-only by its mode, or (as root, whom modes do not stop) one on a
    file system that refuses new files."""
    if os.geteuid() != 0:
        folder = tmp_path / "read_only"
        folder.mkdir()
        folder.chmod(0o555)
        return folder
    for candidate in (Path("/sys"), Path("/proc/sys")):
        if candidate.is_dir():
            return candidate
    pytest.skip("no unwritable folder for root")


def test_unwritable_output_folder_is_named(ws: Path, tmp_path: Path):
    folder = _unwritable(tmp_path)
    before = tree(ws)
    png = folder / "heat.png"
    proc = abmil_process(*(a.format(ws=ws) for a in _HISTO), "--run", str(ws / "run"), "--out", str(png))
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.startswith(f"abmil: error: cannot write {png}: ") and proc.stderr.count("\n") == 1, proc.stderr
    assert not png.exists() and tree(ws) == before


def test_full_disk_is_named_and_leaves_nothing(ws: Path, tmp_path: Path):
    """A file size limit makes the PNG's write fail midway (EFBIG), as a full disk would (ENOSPC): the message names
    the PNG, not its temporary file, and no temporary file is left."""
    out = tmp_path / "out"
    out.mkdir()
    png = out / "heat.png"
    proc = abmil_process(*(a.format(ws=ws) for a in _HISTO), "--run", str(ws / "run"), "--out", str(png),
                  limit_file_size=2000)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.startswith(f"abmil: error: cannot write {png}: File too large"), proc.stderr
    assert proc.stderr.count("\n") == 1
    assert _written(out) == []


@pytest.mark.parametrize("code, text", [(errno.ENOSPC, "No space left on device"), (errno.EACCES, "Permission denied")])
def test_write_errors_are_wrapped_with_the_path(tmp_path: Path, code: int, text: str):
    target = tmp_path / "results.json"
    with pytest.raises(OutputError) as caught, atomic_open(target) as f:
        f.write("{}")
        raise OSError(code, text)  # what a full disk / a revoked permission raises from f.write
    assert str(caught.value) == f"cannot write {target}: {text}" and caught.value.filename == str(target)
    assert _written(tmp_path) == []
    if Path("/dev/full").exists():  # the real ENOSPC of a device that is always full
        with pytest.raises(OSError) as full, open("/dev/full", "w") as f:
            f.write("x")
            f.flush()
        assert full.value.errno == errno.ENOSPC


# ------------------------------------------------------------------------------- cached units that are incomplete


def test_incomplete_cached_cell_is_recomputed(tmp_path: Path):
    """A cell file that parses and holds the right settings but lacks a field is treated as missing: the rerun
    recomputes it (exit 0, a complete file), not a KeyError."""
    data = _csv(tmp_path / "d.csv", [[i % 2, f"b{i}", 0.1 * i, 0.3] for i in range(8)])
    out = tmp_path / "out"
    args = [*_BENCH, "--data", f"x={data}", "--out", str(out)]
    assert main(args) == 0
    cell = out / "cells" / "x__attention.json"
    record = json.loads(cell.read_text())
    del record["seconds"]
    for run in record["runs"]:
        del run["probs"]
    cell.write_text(json.dumps(record))
    proc = abmil_process(*args)
    assert proc.returncode == 0, proc.stderr
    again = json.loads(cell.read_text())
    assert "seconds" in again and all("probs" in r for r in again["runs"])


def test_incomplete_histology_unit_and_mnist_point_are_not_finished():
    unit = {"settings": {}, "metrics": {"accuracy": 1.0, "precision": 1.0, "recall": 1.0, "f1": 1.0, "auc": None},
            "train": ["a"], "val": ["b"], "test": ["c"], "test_labels": [1], "test_probs": [0.9],
            "history": {"epochs_run": 3}, "train_seconds": 1.0, "seconds_per_epoch": 0.3}
    assert _has_metrics(unit)
    for key in ("test_probs", "train_seconds", "history"):
        assert not _has_metrics({k: v for k, v in unit.items() if k != key}), key
    assert not _has_metrics({**unit, "test_probs": [0.9, 0.1]})  # one probability per test label
    point = {"format": POINT_FORMAT, "point": {}, "auc": 0.9, "instance_auc": None, "test_probs": [0.5]}
    assert _point_ok(point)
    for key in ("auc", "instance_auc", "test_probs"):
        assert not _point_ok({k: v for k, v in point.items() if k != key}), key
