"""Reproduce Table 1 of Ilse et al. (ICML 2018): the classic MIL benchmarks under repeated k-fold CV.

One *cell* = one (dataset, model): ``folds x repeats`` runs of :func:`abmil.train.cv.run_cv`, summarised into one
:class:`abmil.report.results.ResultRow` beside the paper's number. The protocol (the paper's Table 1 setup, which
follows Wang et al. 2018's mi-Net code): 10-fold CV repeated 5 times, bag accuracy at threshold 0.5, training settings
of :func:`abmil.train.presets.benchmark_config` and models of :func:`abmil.nn.zoo.benchmark_model`; features are
standardised with training-fold statistics only.

Output directory layout (every file written atomically)::

    out_dir/results.json, results.csv, results.md   all finished cells of this call, rewritten after each cell
    out_dir/cells/{dataset}__{model}.json           one finished cell's raw per-run accuracies (and test probs)

A cell file is a cache keyed by everything that determines its numbers (folds, repeats, seed, training config,
a fingerprint of the data): a killed run restarted with the same ``out_dir`` and the same settings skips the cells
already finished; a cell file written under other settings is recomputed and replaced.
"""
from __future__ import annotations

import contextlib
import json
import math
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from abmil.data.benchmarks import BENCHMARKS, EXPECTED_FEATURES, MILDataset, load_benchmark, load_mil_csv, load_mil_mat
from abmil.errors import DataError
from abmil.experiments.runner import (
    UnitCache,
    check_int,
    check_out_dir,
    command_line,
    fingerprint,
    is_number,
    numbers,
    progress_bar,
    run_pending,
)
from abmil.nn.init import keras_init_
from abmil.nn.zoo import check_model_key, create_model
from abmil.report import paper
from abmil.report.metrics import BAG_METRICS, bag_metrics
from abmil.report.results import ResultRow, summarise, write_results
from abmil.train.config import TrainConfig
from abmil.train.cv import cv_splits, fold_standardiser, run_cv
from abmil.train.engines import ENGINES, fit_auto, resolve_engine
from abmil.train.fit import predict
from abmil.train.loop import EarlyStopping
from abmil.train.presets import BENCHMARK_PRESETS, benchmark_config, benchmark_stopping

__all__ = [
    "DEFAULT_DATASETS",
    "DEFAULT_EPOCHS",
    "DEFAULT_MODELS",
    "ENGINES",
    "demo",
    "format_row",
    "reproduce_benchmarks",
]

#: Table 1's datasets and the rows of Table 1 this package trains, in the paper's order.
DEFAULT_DATASETS: tuple[str, ...] = ("musk1", "musk2", "fox", "tiger", "elephant")
DEFAULT_MODELS: tuple[str, ...] = ("attention", "gated", "instance-max", "embedding-max", "mi-net-ds", "mi-net-rc")
DEFAULT_EPOCHS = 50  # Wang et al.'s released code; benchmark_config's default
CELL_FORMAT = 1  # bump when the cell file's content changes meaning
_METRIC = "accuracy"
_CSV_SUFFIXES = (".csv", ".csv.gz")
_MAT_SUFFIXES = (".mat", ".mat.gz")


@dataclass
class _Cell:
    dataset: str
    model: str
    data: MILDataset
    config: TrainConfig
    preset: str = "wang"
    stopping: EarlyStopping | None = None

    @property
    def key(self) -> str:
        return f"{self.dataset}__{self.model}"

    def new_model(self):
        """A freshly initialised model of this cell (Xavier-uniform throughout under the supplement preset)."""
        model = create_model(self.model, family="benchmark", in_dim=self.data.n_features)
        return keras_init_(model) if self.preset == "supplement" else model


# --------------------------------------------------------------------------------------------------------------------
# Validation and loading (all before anything is written)


def _names(values: Sequence[str] | str, what: str) -> list[str]:
    if isinstance(values, str):
        values = [values]
    out = [str(v).strip() for v in values]
    if not out or any(not v for v in out):
        raise ValueError(f"{what}: expected a non-empty list of names, got {list(values)!r}")
    return list(dict.fromkeys(out))  # duplicates would be two rows for one cell


def _load(name: str, path: str | None) -> MILDataset:
    """A shipped benchmark by name, or the user's file ``path`` (read under ``name``).

    A file given for one of the shipped benchmarks must have that benchmark's feature count (166 / 230): the
    known leak of an instance-label column shows up as one extra feature.
    """
    if path is None:
        if name not in BENCHMARKS:
            raise ValueError(f"unknown dataset {name!r}: choose from {', '.join(BENCHMARKS)}, "
                             f"or give a file for it (data_paths / --data {name}=PATH)")
        return load_benchmark(name)
    lower = str(path).lower()
    expected = EXPECTED_FEATURES.get(name)
    if lower.endswith(_CSV_SUFFIXES):
        return load_mil_csv(path, name=name, expected_features=expected)
    if lower.endswith(_MAT_SUFFIXES):
        return load_mil_mat(path, name=name, expected_features=expected)
    raise DataError("not a .csv, .csv.gz, .mat or .mat.gz file", path=str(path))


def _check_splittable(data: MILDataset, folds: int) -> None:
    """Both classes present (one class would score 1.000 by always answering it), and at least ``folds`` bags in
    some class (stratified k-fold's own condition)."""
    classes, counts = np.unique(data.labels, return_counts=True)
    if len(classes) < 2:
        raise DataError(f"all {len(data)} bags have label {int(classes[0])}: training and a test accuracy need bags "
                        "of both classes (0 and 1)", path=data.source)
    if np.all(counts < folds):
        raise DataError(f"{len(data)} bags ({', '.join(map(str, counts))} per class) cannot be split into "
                        f"{folds} stratified folds", path=data.source)


def _prepare(datasets, models, folds, repeats, seed, epochs, batch_size, engine, data_paths,
             preset="wang") -> list[_Cell]:
    datasets = _names(datasets, "datasets")
    models = _names(models, "models")
    for m in models:
        check_model_key(m)
    folds = check_int(folds, "folds", 2)
    check_int(repeats, "repeats", 1)
    check_int(seed, "seed", 0)
    if epochs is not None:
        check_int(epochs, "epochs", 1)
    check_int(batch_size, "batch_size", 1)
    if engine not in ENGINES:
        raise ValueError(f"engine must be one of {', '.join(ENGINES)}, got {engine!r}")
    if preset not in BENCHMARK_PRESETS:
        raise ValueError(f"preset must be one of {', '.join(BENCHMARK_PRESETS)}, got {preset!r}")
    stopping = benchmark_stopping(preset)
    if stopping is not None and engine == "stacked":
        raise ValueError(f"preset {preset!r} selects each run's epoch on a validation split, which the stacked "
                         "engine does not do: use --engine auto, direct or sequential")
    paths = {str(k): str(v) for k, v in (data_paths or {}).items()}
    stray = [k for k in paths if k not in datasets]
    if stray:
        raise ValueError(f"data file given for {', '.join(stray)}, which is not among the datasets to run "
                         f"({', '.join(datasets)})")
    for name in datasets:
        if "/" in name or "\\" in name or name.startswith(".") or "__" in name:
            raise ValueError(f"dataset name {name!r} cannot name a result file (no '/', '\\', '__', leading '.')")
    loaded = {}
    for name in datasets:
        loaded[name] = _load(name, paths.get(name))
        _check_splittable(loaded[name], folds)
    cells = []
    for name in datasets:
        for m in models:
            config = benchmark_config(name, m, epochs=epochs, batch_size=batch_size, preset=preset)
            cells.append(_Cell(name, m, loaded[name], config, preset, stopping))
    return cells


# --------------------------------------------------------------------------------------------------------------------
# Cell files (resume)


def _fingerprint(data: MILDataset) -> str:
    """Each bag's shape and float32 features, then the labels."""
    def parts():
        for bag in data.bags:
            yield np.asarray(bag.shape, dtype=np.int64)
            yield np.asarray(bag, dtype=np.float32)
        yield np.asarray(data.labels, dtype=np.int64)

    return fingerprint(parts())


def _cell_settings(cell: _Cell, folds: int, repeats: int, seed: int, fingerprint: str) -> dict[str, Any]:
    """Everything that determines a cell's numbers; a cached cell is reused only when all of it matches."""
    # The default preset adds no keys, so that the cells written before presets existed are still recognised.
    preset = {} if cell.preset == "wang" else {
        "preset": cell.preset, "init": "xavier_uniform", "stopping": {**cell.stopping.to_dict(),
                                                                      "monitor": list(cell.stopping.monitor)}}
    return {
        "format": CELL_FORMAT,
        "dataset": cell.dataset,
        "model": cell.model,
        "folds": folds,
        "repeats": repeats,
        "seed": seed,
        "config": json.loads(json.dumps(cell.config.to_dict())),  # tuples -> lists, as they read back
        "data_sha256": fingerprint,
        "n_bags": len(cell.data),
        "n_features": cell.data.n_features,
        **preset,
    }


def _read_cell(cache: UnitCache, cell: _Cell, settings: Mapping[str, Any],
               metrics: Sequence[str] = (_METRIC,)) -> dict[str, Any] | None:
    """The cached cell if it was computed under ``settings`` and holds all its runs, each with every field the
    results of ``metrics`` are made from; else ``None`` (a truncated or hand-edited cell file is recomputed, never
    half-read). A run's test bags and probabilities are needed for metrics other than accuracy only: cells imported
    from earlier runs hold accuracies alone."""
    n_runs, n_bags = settings["folds"] * settings["repeats"], len(cell.data)
    need_probs = any(m != _METRIC for m in metrics)

    def run_ok(run: Any) -> bool:
        if not (isinstance(run, dict) and all(is_number(run.get(k)) for k in ("repeat", "fold", "accuracy"))):
            return False
        if not need_probs and "test" not in run and "probs" not in run:
            return True
        return (numbers(run.get("test")) and all(isinstance(i, int) and 0 <= i < n_bags for i in run["test"])
                and numbers(run.get("probs"), len(run["test"])))

    def valid(record: dict[str, Any]) -> bool:
        return (isinstance(record.get("runs"), list) and len(record["runs"]) == n_runs
                and all(run_ok(r) for r in record["runs"]) and is_number(record.get("seconds"))
                and isinstance(record.get("engine"), str) and isinstance(record.get("source"), str))

    return cache.read(cell.key, settings, valid=valid)


def _per_run(cell: _Cell, runs: Sequence[Mapping[str, Any]], metric: str) -> list[tuple[int, float]]:
    """(repeat, value) of ``metric`` for every run whose value is defined (AUC: the test fold holds both classes)."""
    if metric == "accuracy":
        return [(r["repeat"], r["accuracy"]) for r in runs]
    labels = np.asarray(cell.data.labels)
    pairs = [(r["repeat"], bag_metrics(labels[r["test"]], np.asarray(r["probs"]))[metric]) for r in runs]
    return [(rep, v) for rep, v in pairs if math.isfinite(v)]


def _rows(cell: _Cell, record: Mapping[str, Any], *, metrics: Sequence[str], repeats: int, folds: int,
          resumed: bool) -> list[ResultRow]:
    """One row per metric: accuracy as trained; the others from the cell's stored test probabilities."""
    rows = []
    for metric in metrics:
        pairs = _per_run(cell, record["runs"], metric)
        if not pairs:
            continue
        rows.append(summarise(
            [v for _, v in pairs],
            dataset=cell.dataset,
            model=cell.model,
            metric=metric,
            experiment="benchmarks",
            # One repeat has no spread over repeats: report the spread over its folds then.
            std_over="repeats" if repeats > 1 else "folds",
            repeat_ids=[rep for rep, _ in pairs],
            # Flat extras must be the same for every cell of a call: results.md tables rows per distinct flat
            # setting. Per-cell facts (time taken, data source) go into the nested "run" mapping.
            extra={
                "epochs": cell.config.epochs,
                "batch_size": cell.config.batch_size,
                "folds": folds,
                **({} if cell.stopping is None else {"preset": cell.preset, "selection": "validation"}),
                "run": {
                    "seconds": record["seconds"],
                    "engine": record["engine"],
                    "seed": record["settings"]["seed"],
                    "source": record["source"],
                    "n_bags": len(cell.data),
                    "resumed": resumed,
                },
            },
        ))
    return rows


def _command(datasets, models, folds, repeats, seed, epochs, batch_size, engine, paths, metrics, preset) -> str:
    return command_line(["abmil", "reproduce", "benchmarks"], [
        ("--datasets", datasets), ("--models", models), ("--preset", None if preset == "wang" else preset),
        ("--folds", folds), ("--repeats", repeats), ("--seed", seed),
        ("--epochs", epochs), ("--batch-size", batch_size), ("--engine", engine),
        ("--data", [f"{k}={v}" for k, v in paths.items()] or None),
        ("--metrics", None if tuple(metrics) == (_METRIC,) else metrics)])


# --------------------------------------------------------------------------------------------------------------------
# The experiment


def reproduce_benchmarks(
    datasets: Sequence[str] | None = None,
    models: Sequence[str] = DEFAULT_MODELS,
    *,
    folds: int = 10,
    repeats: int = 5,
    seed: int = 0,
    epochs: int | None = None,
    batch_size: int = 1,
    out_dir: str | Path,
    engine: str = "auto",
    progress: bool = True,
    data_paths: Mapping[str, str | Path] | None = None,
    jobs: int = 1,
    metrics: Sequence[str] = (_METRIC,),
    preset: str = "wang",
) -> list[ResultRow]:
    """Run every (dataset, model) cell under ``folds``-fold CV repeated ``repeats`` times; write the results.

    Args:
        datasets: shipped benchmark names (:data:`abmil.data.benchmarks.BENCHMARKS`) or names given a file in
            ``data_paths``; None: the names in ``data_paths`` if any, else :data:`DEFAULT_DATASETS`.
        models: keys of :data:`abmil.nn.zoo.MODEL_KEYS`.
        epochs: ``None`` = the preset's (50; 40 under ``"supplement"``).
        batch_size: bags per optimizer step (1 = the paper's).
        out_dir: where results.{json,csv,md} and cells/ go (created; an existing one is resumed from).
        engine: :data:`abmil.train.engines.ENGINES`: ``"auto"`` (direct where it applies, else stacked),
            ``"direct"``, ``"stacked"`` or ``"sequential"``; same numbers (to float rounding).
        progress: a tqdm bar on stderr (epochs for the stacked engine, runs for the others).
        data_paths: dataset name -> .csv/.mat(.gz) file, used instead of the shipped copy (or for a new name).
        metrics: some of :data:`abmil.report.metrics.BAG_METRICS` (accuracy, precision, recall, f1, auc), from
            each test fold's probabilities at threshold 0.5 (AUC over folds holding both classes). Only accuracy
            (the default) gives Table 1's layout; more give one methods x metrics table per dataset (Tables 2-3).
        preset: the training recipe, :data:`abmil.train.presets.BENCHMARK_PRESETS`: ``"wang"`` (Wang et al.'s code,
            50 epochs, the last kept) or ``"supplement"`` (the settings cited from the paper's supplement: Xavier
            init, per-dataset SGD settings, 40 epochs, the epoch of lowest validation error then loss kept, on 20 %
            of each run's training folds; :func:`abmil.train.presets.benchmark_stopping`).

    Returns:
        one row per cell and metric, datasets outer, models inner. ``std`` is over the per-repeat means (over folds when
        ``repeats == 1``), ``extra["std_folds"]`` over all runs; ``extra["run"]["seconds"]`` the cell's wall time.

    Raises:
        ValueError: unknown dataset/model/engine, folds < 2, repeats < 1, ... (before anything is created in
            ``out_dir``).
        DataError: (a ValueError) a data file that is missing or malformed, the message naming the file and bag
            (before anything is created in ``out_dir``).
    """
    check_int(jobs, "jobs", 1)
    if datasets is None:
        datasets = list(data_paths) if data_paths else DEFAULT_DATASETS
    metrics = _names(metrics, "metrics")
    bad = [m for m in metrics if m not in BAG_METRICS]
    if bad:
        raise ValueError(f"unknown metric(s) {', '.join(bad)}: expected some of {', '.join(BAG_METRICS)}")
    layout = "benchmarks" if metrics == [_METRIC] else "metrics"
    cells = _prepare(datasets, models, folds, repeats, seed, epochs, batch_size, engine, data_paths, preset)
    out = check_out_dir(out_dir)
    paths = {str(k): str(v) for k, v in (data_paths or {}).items()}
    names = list(dict.fromkeys(c.dataset for c in cells))
    model_names = list(dict.fromkeys(c.model for c in cells))
    command = _command(names, model_names, folds, repeats, seed, epochs, batch_size, engine, paths, metrics, preset)
    title = ("Classic MIL benchmarks (Ilse et al. 2018, Table 1)" if set(names) & set(DEFAULT_DATASETS)
             else "MIL feature bags under the classic benchmarks' protocol")
    if preset != "wang":
        title += f", {preset} preset"

    fingerprints = {name: _fingerprint(next(c.data for c in cells if c.dataset == name)) for name in names}
    settings = {c.key: _cell_settings(c, folds, repeats, seed, fingerprints[c.dataset]) for c in cells}
    cache = UnitCache(out / "cells")
    records = {c.key: rec for c in cells if (rec := _read_cell(cache, c, settings[c.key], metrics)) is not None}
    resumed = set(records)
    engines = {c.key: resolve_engine(engine, c.new_model(), c.config, folds * repeats,
                                     validates=c.stopping is not None)
               for c in cells}
    units = {c.key: (c.config.epochs if engines[c.key] == "stacked" else folds * repeats) for c in cells}
    todo = [c for c in cells if c.key not in records]

    def cell_rows(cell: _Cell) -> list[ResultRow]:
        return _rows(cell, records[cell.key], metrics=metrics, repeats=repeats, folds=folds,
                     resumed=cell.key in resumed)

    def publish() -> list[ResultRow]:
        rows = [row for c in cells if c.key in records for row in cell_rows(c)]
        write_results(out, rows, title=title, command=command, seed=seed, table_layout=layout,
                      experiment="benchmarks")
        return rows

    def work(cell: _Cell) -> dict[str, Any]:
        record = _run_cell(cell, settings[cell.key], folds=folds, repeats=repeats, seed=seed,
                           engine=engines[cell.key], bar=bar, jobs=jobs)
        cache.write(cell.key, record)
        return record

    def report(cell: _Cell, _record: Any = None) -> None:
        if bar is not None:
            for row in cell_rows(cell):
                bar.write(_cell_line(row, cell.key in resumed), file=sys.stderr)

    cache.create()  # inputs are valid: fail now, not after a cell, if unwritable
    bar = _progress_bar(sum(units[c.key] for c in todo), {engines[c.key] for c in todo}, enabled=progress)
    try:
        for cell in cells:
            if cell.key in resumed:
                report(cell)
        # Cells run one at a time: ``jobs`` parallelises the runs inside a cell (run_cv's n_jobs).
        run_pending(todo, work, records=records, publish=publish, on_done=report)
        return publish()
    finally:
        if bar is not None:
            bar.close()


def _progress_bar(total: int, engines: set[str], *, enabled: bool):
    unit = "epoch" if engines == {"stacked"} else "run" if "stacked" not in engines else "it"  # mixed units
    return progress_bar(total, enabled=enabled, unit=unit, dynamic_ncols=True, smoothing=0.1)


def format_row(row: ResultRow) -> str:
    """One line: ``dataset/model: ours mean ± std (paper mean ± std)``."""
    paper_txt = "n/a" if row.paper_mean is None else f"{row.paper_mean:.3f} ± " + (
        "N/A" if row.paper_std is None else f"{row.paper_std:.3f}")
    std = "?" if row.std is None else f"{row.std:.3f}"
    return f"{row.dataset}/{row.model}: {row.mean:.3f} ± {std} (paper {paper_txt})"


def _cell_line(row: ResultRow, resumed: bool) -> str:
    how = "resumed from cells/" if resumed else f"{row.extra['run']['seconds']:.0f} s"
    metric = "" if row.metric == _METRIC else f" {row.metric}"
    return f"{format_row(row)}{metric} [{how}]"


def _run_cell(cell: _Cell, settings: Mapping[str, Any], *, folds: int, repeats: int, seed: int, engine: str,
              bar, jobs: int = 1) -> dict[str, Any]:
    data = cell.data
    if bar is not None:
        bar.set_description(f"{cell.dataset}/{cell.model}")
    last = [0]

    def on_progress(done: int, total: int) -> None:
        if bar is not None and done > last[0]:
            bar.update(done - last[0])
            last[0] = done

    start = time.perf_counter()
    result = run_cv(data.bags, data.labels, cell.new_model, cell.config, folds=folds, repeats=repeats, seed=seed,
                    engine=engine, progress=on_progress, n_jobs=jobs, stopping=cell.stopping)
    seconds = time.perf_counter() - start
    accs = result.accuracies(data.labels)
    runs = [
        {
            "repeat": s.repeat,
            "fold": s.fold,
            "seed": s.seed,
            "accuracy": float(a),
            "test": [int(i) for i in s.test],
            "probs": [float(p) for p in np.asarray(probs, dtype=np.float64)],
            **({"best_epoch": result.best_epochs[k]} if result.best_epochs else {}),
        }
        for k, (s, a, probs) in enumerate(zip(result.splits, accs, result.probs))
    ]
    if any(not math.isfinite(r["accuracy"]) for r in runs):
        raise RuntimeError(f"{cell.dataset}/{cell.model}: non-finite accuracy from run_cv")
    return {
        "settings": dict(settings),
        "engine": engine,
        "seconds": seconds,
        "source": data.source,
        "torch_threads": torch.get_num_threads(),
        "runs": runs,
    }


# --------------------------------------------------------------------------------------------------------------------
# Demo


def demo(out: str | Path | None = None, *, folds: int = 10, seed: int = 0, progress: bool = False,
         jobs: int = 2) -> str:
    """A one-minute taste of the paper: Musk1, attention and gated attention, one ``folds``-fold CV repeat.

    Returns the text to print: our mean ± std over the folds beside the paper's number (paper: 5 x 10-fold; its ±
    most likely an SE over the 5 repetitions), then the five highest-attention instances of one positive test bag of
    a gated model trained on the training folds of the first split. ``out``: also keep results.{json,csv,md} and
    cells/ there.
    """
    dataset, models = "musk1", ("attention", "gated")
    with contextlib.ExitStack() as stack:
        out_dir = out if out is not None else stack.enter_context(tempfile.TemporaryDirectory(prefix="abmil-demo-"))
        start = time.perf_counter()
        rows = reproduce_benchmarks([dataset], models, folds=folds, repeats=1, seed=seed, out_dir=out_dir,
                                    progress=progress, jobs=jobs)
        cv_seconds = time.perf_counter() - start
    lines = [f"Musk1, {folds}-fold CV (1 repeat; the paper: 10-fold x 5), bag accuracy, "
             f"{cv_seconds:.0f} s:", ""]
    lines += _table(rows)
    lines += ["", "Paper: Table 1; both means and Attention's ± are confirmed by independent copies, "
              "Gated-Attention's ± is not; the ± is most likely an SE over the paper's 5 repetitions. "
              f"Ours: ± = std over the {folds} folds.", ""]
    lines += _attention_example(dataset, folds=folds, seed=seed)
    if out is not None:
        lines += ["", f"Results written to {Path(out) / 'results.md'} (and .json, .csv)."]
    return "\n".join(lines)


def _table(rows: Sequence[ResultRow]) -> list[str]:
    head = f"{'model':<16} {'ours':>15}   {'paper':>15}"
    out = [head, "-" * len(head)]
    for r in rows:
        theirs = "n/a" if r.paper_mean is None else f"{r.paper_mean:.3f} ± " + (
            "N/A" if r.paper_std is None else f"{r.paper_std:.3f}")
        out.append(f"{paper.MODEL_LABELS.get(r.model, r.model):<16} {f'{r.mean:.3f} ± {r.std:.3f}':>15}   "
                   f"{theirs:>15}")
    return out


def _attention_example(dataset: str, *, folds: int, seed: int, model_key: str = "gated", top: int = 5) -> list[str]:
    """Train one model on the first split's training folds; list the top attention weights of a positive test bag."""
    data = load_benchmark(dataset)
    split = cv_splits(data.labels, folds=folds, repeats=1, seed=seed)[0]
    mu, sd = fold_standardiser(data.bags, split.train)
    bags = [(torch.as_tensor(b) - mu) / sd for b in data.bags]
    config = benchmark_config(dataset, model_key)
    torch.manual_seed(split.seed)  # as run_cv seeds this run
    model = create_model(model_key, family="benchmark", in_dim=data.n_features)
    start = time.perf_counter()
    fit_auto(model, [bags[i] for i in split.train], torch.as_tensor(data.labels[split.train]), config,
             seed=split.seed)
    seconds = time.perf_counter() - start
    probs, weights = predict(model, [bags[i] for i in split.test])
    positives = [k for k, i in enumerate(split.test) if data.labels[i] == 1]
    # The positive test bag with the most instances, so that the top five is a choice among many.
    k = max(positives, key=lambda j: (data.bags[split.test[j]].shape[0], -j))
    i = int(split.test[k])
    w = weights[k].double().numpy()
    order = np.argsort(-w, kind="stable")[:top]
    label = paper.MODEL_LABELS.get(model_key, model_key)
    lines = [f"{label} model trained on the training folds of split 1 ({len(split.train)} bags, "
             f"{config.epochs} epochs, {seconds:.0f} s); positive test bag {data.bag_ids[i]}: "
             f"{w.size} instances, predicted P(positive) = {float(probs[k]):.3f}.",
             f"Top {len(order)} instances by attention weight (weights sum to 1 over the bag):", "",
             f"{'bag id':>7} {'instance':>9} {'weight':>8}"]
    lines += [f"{data.bag_ids[i]:>7} {int(j):>9} {w[j]:>8.4f}" for j in order]
    return lines
