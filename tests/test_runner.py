"""The experiment runner: unit cache, atomic unit files and publishing, the worker pool, command lines, checks and
saved models; and that the committed benchmark cells are still recognised as finished."""
from __future__ import annotations

import json
import os
import shlex
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch

from abmil.errors import DataError
from abmil.experiments import runner
from abmil.experiments.runner import (
    UnitCache,
    check_float,
    check_int,
    check_ints,
    check_out_dir,
    command_line,
    fingerprint,
    load_model,
    run_pending,
    save_model,
)
from abmil.io import write_json_atomic

RESULTS = Path(__file__).resolve().parents[1] / "results"


@dataclass(frozen=True)
class _Unit:
    name: str
    size: int

    @property
    def key(self) -> str:
        return f"{self.name}__n{self.size}"


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.rglob("*") if p.name.endswith(".tmp"))


# ------------------------------------------------------------------------------------------------------------- cache

def test_cache_hits_only_under_the_stored_settings(tmp_path):
    cache = UnitCache(tmp_path / "units", ignore=("repeats",))
    settings = {"format": 1, "seed": 0, "config": {"lr": 1e-4, "betas": [0.9, 0.999]}, "repeats": 1}
    record = {"settings": settings, "metrics": {"accuracy": 0.75}}
    assert cache.read("a", settings) is None  # no file yet
    cache.write("a", record)
    assert cache.path("a") == tmp_path / "units" / "a.json"
    assert cache.read("a", settings) == record
    assert cache.read("a", {**settings, "seed": 1}) is None
    assert cache.read("a", {**settings, "config": {"lr": 1e-3, "betas": [0.9, 0.999]}}) is None
    assert cache.read("a", {**settings, "extra": True}) is None  # a new setting is a change too
    assert cache.read("a", {**settings, "repeats": 5}) == record  # ignored: does not determine the numbers
    assert cache.read("a", settings, valid=lambda r: "probs" in r) is None
    assert UnitCache(tmp_path / "units").read("a", {**settings, "repeats": 5}) is None  # not ignored by default


@pytest.mark.parametrize("text", ["", "{not json", "[1, 2]", '{"settings": [1]}', '{"metrics": {}}'])
def test_cache_treats_broken_or_foreign_files_as_missing(tmp_path, text):
    cache = UnitCache(tmp_path)
    cache.path("u").write_text(text)
    assert cache.read("u", {"seed": 0}) is None


def test_cache_reads_settings_under_another_key(tmp_path):
    cache = UnitCache(tmp_path, settings_key="point")
    cache.write("p", {"format": 1, "point": {"model": "attention", "repeat": 0}, "auc": 0.9})
    assert cache.read("p", {"model": "attention", "repeat": 0})["auc"] == 0.9
    assert cache.read("p", {"model": "attention", "repeat": 1}) is None


def test_a_failed_unit_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    cache = UnitCache(tmp_path / "units")
    cache.write("u", {"settings": {}, "value": 1})
    before = cache.path("u").read_bytes()
    with pytest.raises(TypeError):
        cache.write("u", {"settings": {}, "value": object()})  # not JSON: fails while writing
    assert cache.path("u").read_bytes() == before
    assert _leftovers(tmp_path) == []


# ------------------------------------------------------------------------------------------------------------- pool

_DATA = np.arange(12.0)  # closed over by the work function: forked workers inherit it, nothing is pickled


def _record(unit: _Unit) -> dict:
    torch.manual_seed(unit.size)
    return {"value": float(torch.randn(unit.size).sum()) + float(_DATA[:unit.size].sum()),
            "threads": torch.get_num_threads()}


def _run(units, out: Path, jobs: int, fail_on: str | None = None) -> tuple[dict, list]:
    records: dict = {}
    published: list = []
    cache = UnitCache(out / "units")

    def work(unit: _Unit) -> dict:
        if unit.key == fail_on:
            raise RuntimeError(f"{unit.key} failed")
        record = {**_record(unit), "pid": os.getpid()}
        cache.write(unit.key, record)
        return record

    def publish() -> None:
        published.append(sorted(records))
        write_json_atomic(out / "results.json", {k: records[k]["value"] for k in sorted(records)})

    run_pending(units, lambda u: work(u), records=records, publish=publish, jobs=jobs, cost=lambda u: u.size)
    return records, published


def test_a_pool_of_two_gives_the_records_of_one_process(tmp_path):
    units = [_Unit("u", n) for n in (3, 5, 8, 2, 7)]
    one, published_one = _run(units, tmp_path / "one", jobs=1)
    two, published_two = _run(units, tmp_path / "two", jobs=2)
    strip = {k: {"value": r["value"]} for k, r in one.items()}
    assert {k: {"value": r["value"]} for k, r in two.items()} == strip and len(strip) == 5
    assert {r["pid"] for r in one.values()} == {os.getpid()}  # in-process
    assert os.getpid() not in {r["pid"] for r in two.values()}  # worker processes
    assert {r["threads"] for r in two.values()} == {1}  # one torch thread per worker
    # published after every unit, each time with one more finished
    assert [len(p) for p in published_one] == [1, 2, 3, 4, 5] == [len(p) for p in published_two]
    assert published_one[:2] == [["u__n3"], ["u__n3", "u__n5"]]  # in-process: in the given order
    for d in ("one", "two"):
        assert json.loads((tmp_path / d / "results.json").read_text()) == {k: r["value"] for k, r in one.items()}
        assert json.loads((tmp_path / d / "units" / "u__n8.json").read_text())["value"] == one["u__n8"]["value"]


@pytest.mark.parametrize("jobs", [1, 2])
def test_a_failing_unit_leaves_what_finished_published(tmp_path, jobs):
    units = [_Unit("u", n) for n in (2, 3, 4)]
    with pytest.raises(RuntimeError, match="u__n4 failed"):
        _run(units, tmp_path, jobs=jobs, fail_on="u__n4")
    results = tmp_path / "results.json"
    published = json.loads(results.read_text()) if results.exists() else {}
    assert set(published) <= {"u__n2", "u__n3"}
    assert all((tmp_path / "units" / f"{k}.json").is_file() for k in published)  # published only once on disk
    if jobs == 1:  # in order: the two before the failure are finished and published
        assert sorted(published) == ["u__n2", "u__n3"]
    if jobs == 1:  # a pool stops its other workers with SIGTERM, which may leave a hidden temporary (never a unit file)
        assert _leftovers(tmp_path) == []
    assert runner._JOB is None  # nothing of the run lingers


def test_nothing_pending_runs_nothing(tmp_path):
    records, published = _run([], tmp_path, jobs=2)
    assert records == {} and published == []


# ---------------------------------------------------------------------------------------------------- command line

def test_command_line_formats_options_and_quotes():
    line = command_line(["abmil", "reproduce", "x"], [
        ("--models", ["attention", "gated"]), ("--bag-means", (10, 50)), ("--epochs", None), ("--seed", 0),
        ("--no-augment", True), ("--stain-normalize", False), ("--lr", repr(5e-05)), ("--out", Path("my runs/a"))])
    assert line == "abmil reproduce x --models attention,gated --bag-means 10,50 --seed 0 --no-augment --lr 5e-05 " \
                   "--out 'my runs/a'"
    assert shlex.split(line)[-1] == "my runs/a"


# ---------------------------------------------------------------------------------------------------------- checks

def test_checks_name_the_argument():
    assert check_int(np.int64(3), "folds", 2) == 3 and type(check_int(np.int64(3), "folds", 2)) is int
    for bad in (1, 2.0, True, "3", None):
        with pytest.raises(ValueError, match=r"^folds must be an integer >= 2, got "):
            check_int(bad, "folds", 2)
    assert check_float(1, "lr") == 1.0 and check_float(np.float32(0.5), "lr") == 0.5
    for bad in (float("nan"), float("inf"), "0.1", True):
        with pytest.raises(ValueError, match=r"^lr must be a finite number"):
            check_float(bad, "lr")
    assert check_ints([50, 10, 50, np.int64(20)], "train_bags", 2) == [10, 20, 50]
    for bad in ([], [1], [10, 2.5], ["ten"], [True]):
        with pytest.raises(ValueError, match=r"^train_bags: expected integers >= 2, got "):
            check_ints(bad, "train_bags", 2)


def test_check_out_dir_refuses_a_file(tmp_path):
    assert check_out_dir(tmp_path / "new") == tmp_path / "new" and not (tmp_path / "new").exists()
    (tmp_path / "f").write_text("x")
    with pytest.raises(ValueError, match="exists and is not a directory"):
        check_out_dir(tmp_path / "f")


def test_fingerprint_sees_every_part():
    a = np.arange(6, dtype=np.float32).reshape(2, 3)
    base = fingerprint(["bag1", a, b"\x01"])
    assert base == fingerprint(["bag1", a.copy(), b"\x01"]) == fingerprint(["bag1", np.asfortranarray(a), b"\x01"])
    changed = a.copy()
    changed[1, 2] += 1
    assert len({base, fingerprint(["bag1", changed, b"\x01"]), fingerprint(["bag2", a, b"\x01"]),
                fingerprint(["bag1", a])}) == 4


# ---------------------------------------------------------------------------------------------------- saved models

def test_saved_model_round_trip_with_its_settings(tmp_path):
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.ReLU(), torch.nn.Linear(3, 1))
    meta = {"settings": {"patch_size": 27, "config": {"lr": 1e-4}}, "test": ["img1", "img7"]}
    save_model(tmp_path / "models" / "m.safetensors", net, meta)
    built = []

    def build(m):
        built.append(m)
        return torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.ReLU(), torch.nn.Linear(3, 1))

    loaded, got = load_model(tmp_path / "models" / "m.safetensors", build)
    assert got == meta and built == [meta] and not loaded.training
    x = torch.randn(5, 4)
    assert torch.equal(loaded(x), net(x))
    with pytest.raises(DataError, match="m.safetensors.*do not fit"):  # another architecture: refused, not half-loaded
        load_model(tmp_path / "models" / "m.safetensors", lambda m: torch.nn.Linear(4, 1))
    assert _leftovers(tmp_path) == []


# ------------------------------------------------------------------------------------------- committed result files

def test_committed_benchmark_cell_is_recognised_as_finished():
    from abmil.experiments import benchmarks as bench

    path = RESULTS / "benchmarks" / "cells" / "musk1__gated.json"
    if not path.is_file():
        pytest.skip("no committed musk1__gated cell")
    (cell,) = bench._prepare(["musk1"], ["gated"], 10, 5, 0, None, 1, "auto", None)
    settings = bench._cell_settings(cell, 10, 5, 0, bench._fingerprint(cell.data))
    record = bench._read_cell(UnitCache(path.parent), cell, settings)
    assert record is not None and len(record["runs"]) == 50
    assert bench._read_cell(UnitCache(path.parent), cell, {**settings, "seed": 1}) is None
