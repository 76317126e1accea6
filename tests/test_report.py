"""The reporting layer: paper numbers as data, summarise's two spreads, results.{json,csv,md} and their atomicity."""
from __future__ import annotations

import csv
import json
import math
import os

import numpy as np
import pytest

from abmil.report import paper, results
from abmil.report.results import (
    ADDED_KEYS,
    CORE_KEYS,
    ResultRow,
    read_results,
    summarise,
    within_one_std,
    write_results,
)


def _rows() -> list[ResultRow]:
    rng = np.random.default_rng(0)
    out = []
    for ds in ("musk1", "tiger"):
        for model in ("attention", "gated", "instance-mean"):
            v = rng.uniform(0.75, 0.95, 50)
            out.append(summarise(v, dataset=ds, model=model, metric="accuracy", repeat_ids=np.repeat(np.arange(5), 10)))
    return out


def _write(tmp_path, rows=None, **kw):
    kw = {"title": "MIL benchmarks", "command": "abmil benchmarks --repeats 5", "seed": 7, **kw}
    write_results(tmp_path, _rows() if rows is None else rows, **kw)


# --- paper.py -----------------------------------------------------------------------------------------------------


def test_paper_table1_shape_and_lookups():
    assert len(paper.PAPER_TABLE1) == len(paper.TABLE1_ROWS) * len(paper.TABLE1_DATASETS)
    assert paper.paper_value("benchmarks", "musk1", "attention", "accuracy") == (0.892, 0.040)
    assert paper.paper_value("benchmarks", "elephant", "gated", "accuracy") == (0.857, 0.027)
    assert paper.paper_value("benchmarks", "tiger", "embedding-max", "accuracy") == (0.830, 0.032)  # "MI-Net"
    assert paper.paper_value("benchmarks", "fox", "mi-svm", "accuracy") == (0.582, None)  # printed "N/A"
    assert paper.paper_value("benchmarks", "musk1", "instance-mean", "accuracy") == (None, None)
    assert paper.paper_value("benchmarks", "musk1", "attention", "auc") == (None, None)
    assert paper.paper_value("histology", "colon", "attention", "auc") == (0.968, 0.009)
    assert paper.paper_value("breast", "breast", "instance-max", "precision") == (0.585, 0.03)
    assert paper.MODEL_LABELS["instance-max"] == "mi-Net" and paper.MODEL_LABELS["embedding-mean"] == "Embedding+mean"
    assert paper.DATASET_LABELS["elephant"] == "Elephant"
    assert not paper.PAPER_NUMBERS_CONFIRMED and "unconfirmed" in paper.__doc__.lower()


def test_paper_confirmation_follows_the_2026_12_update():
    # shared/paper/results.md, "Update, 2026-12": Table 1 means [A], attention ± [B], gated means [A, B] but not its
    # ±; Tables 2-3 accuracy and AUC means [B], nothing else; MNIST-bags only attention 10/50.
    conf = paper.paper_confirmation
    assert conf("benchmarks", "musk1", "gated", "accuracy") == (True, False)
    assert paper.paper_sources("benchmarks", "musk1", "gated", "accuracy") == {"mean": ("A", "B"), "std": ()}
    assert conf("benchmarks", "tiger", "attention", "accuracy") == (True, True)
    assert paper.paper_sources("benchmarks", "tiger", "attention", "accuracy")["std"] == ("B",)
    assert conf("table1", "fox", "mi-kernel", "accuracy") == (True, False)  # its ± may not exist in the paper
    assert conf("benchmarks", "fox", "mi-svm", "accuracy") == (True, False)  # ± printed "N/A": nothing to confirm
    assert all(conf("benchmarks", d, m, "accuracy")[0] for d in paper.TABLE1_DATASETS for m in paper.TABLE1_ROWS)
    assert conf("breast", "breast", "attention", "precision") == (False, False)
    assert conf("histology", "breast", "attention", "accuracy") == (True, False)
    assert conf("histology", "colon_crc", "gated-attention", "auc") == (True, False)  # aliases resolve
    assert conf("histology", "colon", "instance-max", "f1") == (False, False)
    assert conf("benchmarks", "musk1", "instance-mean", "accuracy") == (False, False)  # no paper cell
    assert conf("benchmarks", "musk1", "attention", "auc") == (False, False)
    assert paper.paper_mnist_bags_confirmation(10, 50, "attention") == (True, False)
    assert paper.paper_mnist_bags_confirmation(10, 50, "instance-max") == (False, False)
    used = {s for *_, sources in paper.PAPER_CONFIRMATIONS for s in sources}
    assert used <= set(paper.PAPER_SOURCES)


# --- summarise / within_one_std -----------------------------------------------------------------------------------


def test_summarise_std_over_repeats_vs_folds():
    # Repeat 0: folds 0.8, 1.0 -> mean 0.9; repeat 1: folds 0.6, 0.8 -> mean 0.7; overall mean 0.8.
    # Over repeats: std(0.9, 0.7) = 0.1. Over folds: deviations 0, .2, -.2, 0 -> sqrt(0.08 / 4) = sqrt(0.02).
    values, ids = [0.8, 1.0, 0.6, 0.8], [0, 0, 1, 1]
    r = summarise(values, dataset="musk1", model="attention", metric="accuracy", repeat_ids=ids)
    assert r.mean == pytest.approx(0.8) and r.n_runs == 4
    assert r.std == pytest.approx(0.1)
    assert r.extra["std_folds"] == pytest.approx(math.sqrt(0.02))
    assert r.extra["std_over"] == "repeats" and r.extra["n_repeats"] == 2
    assert (r.paper_mean, r.paper_std) == (0.892, 0.040)

    folds = summarise(values, dataset="musk1", model="attention", metric="accuracy", repeat_ids=ids, std_over="folds")
    no_ids = summarise(values, dataset="musk1", model="attention", metric="accuracy")
    for x in (folds, no_ids):
        assert x.std == pytest.approx(math.sqrt(0.02)) and x.extra["std_over"] == "folds"

    with pytest.raises(ValueError):
        summarise(values, dataset="musk1", model="attention", metric="accuracy", repeat_ids=[0, 1])
    with pytest.raises(ValueError):
        summarise([], dataset="musk1", model="attention", metric="accuracy")


def test_within_one_std():
    row = ResultRow("musk1", "attention", "accuracy", 0.86, 0.03, 50, 0.892, 0.040)
    assert within_one_std(row) is True
    row.mean = 0.85
    assert within_one_std(row) is False
    row.paper_std = None  # mi-SVM style "N/A"
    assert within_one_std(row) is None
    assert within_one_std(ResultRow("musk1", "instance-mean", "accuracy", 0.8, 0.1, 50)) is None


# --- write_results / read_results ---------------------------------------------------------------------------------


def test_json_has_exactly_the_required_keys(tmp_path):
    rows = _rows()
    rows[0].extra["train_bags"] = np.int64(50)  # numpy scalars must serialise
    rows[1].mean = float("nan")  # NaN is not JSON: written as null
    _write(tmp_path, rows)
    def no_nan(name):
        raise AssertionError(f"{name} is not valid JSON")

    data = json.loads((tmp_path / "results.json").read_text(), parse_constant=no_nan)
    assert isinstance(data, list) and len(data) == len(rows)
    extras = {"std_folds", "std_over", "n_repeats"}
    fixed = set(CORE_KEYS) | set(ADDED_KEYS)
    assert set(data[0]) == fixed | extras | {"train_bags"}
    assert all(set(d) == fixed | extras for d in data[1:])
    assert list(data[2])[: len(CORE_KEYS) + len(ADDED_KEYS)] == list(CORE_KEYS + ADDED_KEYS)
    assert data[1]["mean"] is None and data[0]["train_bags"] == 50
    by_key = {(d["dataset"], d["model"]): d for d in data}
    assert by_key[("tiger", "attention")]["paper_std"] == 0.022
    assert by_key[("musk1", "gated")]["paper_mean"] == 0.900
    assert by_key[("tiger", "instance-mean")]["paper_mean"] is None
    assert by_key[("musk1", "gated")]["se"] == pytest.approx(by_key[("musk1", "gated")]["std"] / math.sqrt(5))
    assert (by_key[("musk1", "gated")]["paper_mean_confirmed"], by_key[("musk1", "gated")]["paper_std_confirmed"]) \
        == (True, False)
    assert by_key[("tiger", "attention")]["paper_std_confirmed"] is True


def test_old_results_without_the_added_fields_still_read(tmp_path):
    # A results.json/.csv written before se and the confirmation flags existed.
    old = {"dataset": "musk1", "model": "gated", "metric": "accuracy", "mean": 0.88, "std": 0.02, "n_runs": 50,
           "paper_mean": 0.9, "paper_std": 0.05, "std_folds": 0.05, "std_over": "repeats", "n_repeats": 5}
    (tmp_path / "results.json").write_text(json.dumps([old]))
    with open(tmp_path / "results.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(old))
        w.writeheader()
        w.writerow(old)
    for path in (tmp_path / "results.json", tmp_path / "results.csv"):
        (row,) = read_results(path)
        assert row.extra == {"std_folds": 0.05, "std_over": "repeats", "n_repeats": 5}
        assert row.paper_mean_confirmed is None and row.paper_std_confirmed is None  # not recorded
        assert row.se == pytest.approx(0.02 / math.sqrt(5))  # derived, so old files get it too
        md = results.render_markdown([row], title="old", command="-", seed=0)
        assert "paper 0.900† ± 0.050†" in md  # not recorded renders as unconfirmed


def test_csv_round_trips(tmp_path):
    rows = _rows()
    rows[0].extra.update(train_bags=50, bag_mean=10.0, note="a, quoted \"one\"", flags=[1, 2])
    _write(tmp_path, rows)
    with open(tmp_path / "results.csv", newline="") as f:
        reader = csv.DictReader(f)
        assert reader.fieldnames[: len(CORE_KEYS)] == list(CORE_KEYS)
        assert len(list(reader)) == len(rows)
    from_csv = read_results(tmp_path / "results.csv")
    from_json = read_results(tmp_path / "results.json")
    assert from_csv == rows  # floats are written with repr, so equality is exact
    assert from_json == rows
    assert read_results(tmp_path) == rows  # a directory means its results.json


def test_markdown_has_paper_and_ours(tmp_path):
    rows = _rows()
    _write(tmp_path, rows)
    md = (tmp_path / "results.md").read_text()
    assert md.startswith("# MIL benchmarks")
    assert "abmil benchmarks --repeats 5" in md and "Seed: 7" in md
    assert "| Method | Musk1 | Musk2 | Fox | Tiger | Elephant |" in md
    by_key = {(r.dataset, r.model): r for r in rows}
    for ds, model, paper_cell in [("musk1", "attention", "0.892 ± 0.040"), ("tiger", "gated", "0.845 ± 0.018†")]:
        r = by_key[(ds, model)]
        mark = "✓" if within_one_std(r) else "✗"
        se = r.std / math.sqrt(5)  # SE = SD / sqrt(n_repeats)
        assert f"ours {r.mean:.3f} (SD {r.std:.3f}, SE {se:.3f}) {mark} · paper {paper_cell}" in md
    ours_im = by_key[("musk1", "instance-mean")]
    assert f"ours {ours_im.mean:.3f} (SD {ours_im.std:.3f}, SE {ours_im.se:.3f}) · paper n/a" in md
    # Non-reproduced baselines appear paper-only, in the paper's order; means confirmed, ± (except N/A) not.
    assert "| mi-SVM (paper only) | paper 0.874 ± N/A |" in md
    assert "| MI-Kernel (paper only) | paper 0.880 ± 0.031† |" in md
    lines = md.splitlines()
    names = ("mi-SVM", "miFV", "Attention")
    order = [next(i for i, line in enumerate(lines) if line.startswith(f"| {name}")) for name in names]
    assert order == sorted(order)
    assert paper.PAPER_URL in md and "per-repetition means" in md and "Paper numbers are unconfirmed" not in md
    assert "†: not confirmed" in md and "[A] Shi et al." in md and "standard error over its 5 repetitions" in md


def test_markdown_metrics_layout(tmp_path):
    rng = np.random.default_rng(1)
    rows = [summarise(rng.uniform(0.8, 1.0, 50), dataset="colon", model=m, metric=x, experiment="histology")
            for m in ("attention", "embedding-mean") for x in ("accuracy", "auc")]
    assert rows[1].paper_mean == 0.968
    _write(tmp_path, rows, table_layout="metrics")
    md = (tmp_path / "results.md").read_text()
    assert "### Colon Cancer" in md and "| Method | Accuracy | AUC |" in md
    # No repeat ids: SD and SE over all 50 values.
    assert f"ours {rows[1].mean:.3f} (SD {rows[1].std:.3f}, SE {rows[1].std / math.sqrt(50):.3f})" in md
    assert "paper 0.968 ± 0.009†" in md  # AUC mean confirmed [B], its ± not
    assert "| Gated-Attention (paper only) | paper 0.898 ± 0.020† | paper 0.968 ± 0.010† |" in md
    assert "[B] a reading note" in md and "[A] Shi et al." in md and "[C]" not in md
    with pytest.raises(ValueError):
        _write(tmp_path, rows, table_layout="nope")


def test_duplicate_cells_rejected(tmp_path):
    rows = _rows()
    with pytest.raises(ValueError, match="same cell"):
        _write(tmp_path, rows + [rows[0]])
    assert os.listdir(tmp_path) == []


# --- atomicity ----------------------------------------------------------------------------------------------------


def test_failure_mid_write_leaves_nothing(tmp_path, monkeypatch):
    # Fail the second fsync: results.json's temp file is then complete on disk and results.csv's written, none
    # renamed. Neither a results.* nor a temporary file may remain.
    calls = []
    real_fsync = os.fsync

    def failing_fsync(fd):
        calls.append(fd)
        if len(calls) == 2:
            raise OSError(28, "No space left on device")
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", failing_fsync)
    with pytest.raises(OSError):
        _write(tmp_path)
    assert len(calls) == 2
    assert os.listdir(tmp_path) == []


def test_failure_keeps_earlier_results(tmp_path, monkeypatch):
    _write(tmp_path)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    assert set(before) == {"results.json", "results.csv", "results.md"}

    def boom(*a, **k):
        raise RuntimeError("render failed")

    monkeypatch.setattr(results, "render_markdown", boom)
    with pytest.raises(RuntimeError):
        _write(tmp_path, _rows()[:2])
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before


def test_atomic_files_get_the_umask_permissions(tmp_path):
    # mkstemp creates 0600; a result must be as readable as any file the user writes (umask 022 -> 0644).
    import torch
    from safetensors.torch import load_file

    from abmil.io import write_safetensors_atomic

    old = os.umask(0o027)
    try:
        _write(tmp_path)
        write_safetensors_atomic(tmp_path / "w.safetensors", {"w": torch.arange(6.0).view(2, 3).t()})
    finally:
        os.umask(old)
    modes = {p.name: p.stat().st_mode & 0o777 for p in tmp_path.iterdir()}
    assert modes == {"results.json": 0o640, "results.csv": 0o640, "results.md": 0o640, "w.safetensors": 0o640}
    assert torch.equal(load_file(str(tmp_path / "w.safetensors"))["w"], torch.arange(6.0).view(2, 3).t())
