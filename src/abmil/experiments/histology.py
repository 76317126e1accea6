"""Reproduce Tables 2-3 of Ilse et al. (ICML 2018): Breast Cancer (UCSB) and Colon Cancer (Warwick) under CV.

One *unit* = one (model, repeat, fold): a fresh patch-CNN model (:func:`abmil.nn.zoo.histology_model`) trained on the
training folds with on-the-fly augmentation, a validation split and early stopping
(:func:`abmil.train.fit.fit`; :func:`abmil.train.presets.histology_config` /
:func:`~abmil.train.presets.histology_stopping`), then scored on the test fold: accuracy, precision, recall, F-score
and AUC (:func:`abmil.report.metrics.bag_metrics`). Colon also gets the localisation measure ``instance_auc``: the AUC
over all test instances of the attention weight x bag size (attention models) or the instance probability
(Instance+ models) against the epithelial-nucleus labels.

Protocol (the paper's histopathology experiments; most details unconfirmed there, filled in from gmum's histology
code): stratified 10-fold CV repeated 5 times (:func:`abmil.train.cv.cv_splits`); bags and patches from
:mod:`abmil.data.histology`; metric ± over the per-repeat means (over folds with one repeat), the paper's number beside
each cell. A second table scores each
repetition's test predictions pooled (see :func:`_rows`): the paper does not say how it averaged.

Output directory (every file written atomically; a killed run resumes from the finished units and the
checkpoint of each unfinished one)::

    out_dir/results.json, results.csv, results.md   models whose every unit is finished, rewritten after each unit
    out_dir/units/{model}__rep{r}__fold{f}.json     one unit: settings, test bags, probabilities, metrics, history
    out_dir/models/{model}.safetensors              the repeat-0 fold-0 weights (for heatmaps of its test images)
    out_dir/checkpoints/{unit}/                     a unit in training: its state after the last epoch (removed when
                                                    the unit is done), so a killed run resumes mid-unit

A unit file is reused only when everything that determines its numbers (settings, a fingerprint of the patches)
matches; otherwise it is recomputed and replaced. The number of repeats does not count: ``--repeats 5`` on the folder
of a ``--repeats 1`` run trains repeats 1-4 only.
"""
from __future__ import annotations

import contextlib
import inspect
import json
import math
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from abmil.data.histology import PatchBag, load_colon_crc, load_ucsb_breast, read_rgb
from abmil.data.histology_training import BagAugmenter, FloatBags
from abmil.data.patches import BREAST_PATCH_SIZE, COLON_PATCH_SIZE, MAX_WHITE_FRACTION
from abmil.errors import DataError
from abmil.experiments.mnist_bags import instance_auc
from abmil.experiments.runner import (
    UnitCache,
    check_float,
    check_int,
    check_out_dir,
    check_out_file,
    command_line,
    fingerprint,
    is_number,
    load_model,
    numbers,
    progress_bar,
    run_pending,
    save_model,
)
from abmil.nn.zoo import ATTENTION_KEYS, create_model
from abmil.report import paper
from abmil.report.metrics import BAG_METRICS, bag_metrics
from abmil.report.results import ResultRow, summarise, write_results
from abmil.train.checkpoint import read_checkpoint
from abmil.train.config import TrainConfig
from abmil.train.cv import Split, cv_splits
from abmil.train.fit import fit, predict, validation_split
from abmil.train.loop import EarlyStopping
from abmil.train.presets import histology_config, histology_stopping

__all__ = [
    "DATASETS",
    "DEFAULT_EPOCHS",
    "HISTOLOGY_MODELS",
    "HistologyData",
    "explain_histology",
    "histology_progress",
    "load_histology",
    "load_unit_model",
    "reproduce_histology",
]

DATASETS: tuple[str, ...] = ("breast", "colon")
#: Tables 2-3's rows, in the paper's order.
HISTOLOGY_MODELS: tuple[str, ...] = paper.HISTOLOGY_ROWS
DEFAULT_EPOCHS = 200  # gmum's cap; early stopping usually ends a run well before
UNIT_FORMAT = 1  # bump when a unit file's content changes meaning
_PATCH_SIZE = {"breast": BREAST_PATCH_SIZE, "colon": COLON_PATCH_SIZE}
_FOLDER = {"breast": "Bisque", "colon": "Classification"}
_TITLE = {"breast": "Breast Cancer (UCSB), Ilse et al. 2018 Table 2",
          "colon": "Colon Cancer (Warwick CRCHistoPhenotypes), Ilse et al. 2018 Table 3"}


# --------------------------------------------------------------------------------------------------------------------
# Data


@dataclass
class HistologyData:
    """One dataset as patch bags, plus what the colon augmentation needs.

    Attributes:
        dataset: "breast" or "colon".
        bags: one :class:`PatchBag` per image (patches (n, 3, s, s) uint8).
        labels: (n_bags,) int64 bag labels.
        images: colon only, each bag's (500, 500, 3) uint8 image (nucleus centres are jittered and re-cut).
        patch_size: 32 (breast) or 27 (colon).
        root: the folder read.
    """

    dataset: str
    bags: list[PatchBag]
    labels: np.ndarray
    images: list[np.ndarray] | None
    patch_size: int
    root: str

    def fingerprint(self) -> str:
        """SHA-256 over every bag's id, label, patches, coordinates and instance labels."""
        def parts():
            for b in self.bags:
                yield f"{b.bag_id}:{b.label}:{b.patches.shape}"
                yield from (b.patches, b.coords)
                if b.instance_labels is not None:
                    yield b.instance_labels

        return fingerprint(parts())


def _resolve_root(dataset: str, data_dir: str | Path) -> Path:
    """``data_dir`` itself, or its ``Bisque`` / ``Classification`` sub-folder when it is the folder above."""
    root = Path(data_dir)
    sub = root / _FOLDER[dataset]
    return sub if sub.is_dir() else root


def load_histology(dataset: str, data_dir: str | Path, *,
                   max_white_fraction: float = MAX_WHITE_FRACTION) -> HistologyData:
    """Read the whole dataset (every file decoded and checked) into patch bags.

    ``data_dir``: the UCSB ``Bisque`` folder (breast) or the Warwick ``Classification`` folder (colon), or the folder
    holding it. ``max_white_fraction``: breast only, a grid tile is dropped as background when at least this share
    of its pixels is white (:func:`abmil.data.patches.grid_patches`). Raises :class:`DataError` naming the file on
    any bad input (see :mod:`abmil.data.histology`).
    """
    if dataset not in DATASETS:
        raise ValueError(f"dataset must be one of {', '.join(DATASETS)}, got {dataset!r}")
    root = _resolve_root(dataset, data_dir)
    if dataset == "breast":
        bags = load_ucsb_breast(root, max_white_fraction=max_white_fraction)
        images = None
    else:
        bags = load_colon_crc(root)
        images = [read_rgb(b.path) for b in bags]
    labels = np.array([b.label for b in bags], dtype=np.int64)
    return HistologyData(dataset, bags, labels, images, _PATCH_SIZE[dataset], str(root))


def _check_splittable(data: HistologyData, folds: int) -> None:
    """Every test fold must hold both classes, or precision, recall and AUC are undefined on it."""
    counts = {c: int((data.labels == c).sum()) for c in (0, 1)}
    if min(counts.values()) < folds:
        raise DataError(f"{len(data.bags)} bags ({counts[1]} positive, {counts[0]} negative) cannot be split into "
                        f"{folds} stratified folds that each hold both classes", path=data.root)


# --------------------------------------------------------------------------------------------------------------------
# Units


@dataclass(frozen=True)
class Unit:
    """One trained model of the protocol."""

    model: str
    repeat: int
    fold: int
    run_seed: int

    @property
    def key(self) -> str:
        return f"{self.model}__rep{self.repeat}__fold{self.fold}"


def _settings(dataset: str, unit: Unit, *, folds: int, repeats: int, seed: int, config: TrainConfig,
              stopping: EarlyStopping, augment: bool, stain_normalize: bool, max_white_fraction: float,
              patch_size: int, fingerprint: str, n_bags: int) -> dict[str, Any]:
    """Everything that determines a unit's numbers; a cached unit is reused only when all of it matches."""
    settings = {
        "format": UNIT_FORMAT, "dataset": dataset, "model": unit.model, "repeat": unit.repeat, "fold": unit.fold,
        "run_seed": unit.run_seed, "folds": folds, "repeats": repeats, "seed": seed, "config": config.to_dict(),
        "stopping": stopping.to_dict(), "augment": augment, "patch_size": patch_size, "data_sha256": fingerprint,
        "n_bags": n_bags,
    }
    # Only when not the default: the units written before these options existed stay valid.
    if stain_normalize:
        settings["stain_normalize"] = True
    if max_white_fraction != MAX_WHITE_FRACTION:
        settings["max_white_fraction"] = max_white_fraction
    return json.loads(json.dumps(settings))


def _units_cache(out_dir: Path) -> UnitCache:
    """Unit files, compared without "repeats": it is recorded but does not determine a unit's numbers (repeat r's
    splits and seeds do not depend on how many repeats follow, :func:`cv_splits`), so a run extended from 1 to 5
    repeats keeps the first repeat's finished folds."""
    return UnitCache(out_dir / "units", ignore=("repeats",))


_STATE: dict[str, Any] = {}  # the run's data and settings for _train_unit, inherited by forked workers


def _has_metrics(record: dict[str, Any]) -> bool:
    """Does a unit file hold every field the results and --status read? (Else it is recomputed.)"""
    metrics, history = record.get("metrics"), record.get("history")
    return (isinstance(metrics, dict) and all(is_number(metrics.get(k)) or metrics.get(k) is None for k in BAG_METRICS)
            and numbers(record.get("test_labels")) and numbers(record.get("test_probs"), len(record["test_labels"]))
            and all(isinstance(record.get(k), list) for k in ("train", "val", "test"))
            and isinstance(history, dict) and is_number(history.get("epochs_run"))
            and is_number(record.get("train_seconds")) and is_number(record.get("seconds_per_epoch")))


def _train_unit(unit: Unit) -> dict[str, Any]:
    """Train and test one unit; write its unit file (and, for repeat 0 fold 0, its weights)."""
    data: HistologyData = _STATE["data"]
    split: Split = _STATE["splits"][(unit.repeat, unit.fold)]
    config, stopping, out = _STATE["config"], _STATE["stopping"], _STATE["out"]
    tr_pos, val_pos = validation_split(data.labels[split.train], stopping.val_fraction, unit.run_seed)
    train_idx, val_idx, test_idx = split.train[tr_pos], split.train[val_pos], split.test
    train_bags = [data.bags[i] for i in train_idx]
    augment = None
    if _STATE["augment"]:
        images = None if data.images is None else [data.images[i] for i in train_idx]
        augment = BagAugmenter(train_bags, images=images)
    torch.manual_seed(unit.run_seed)
    model = create_model(unit.model, family="histology", patch_size=data.patch_size,
                         stain_normalize=_STATE["settings"][unit.key].get("stain_normalize", False))
    checkpoints = out / "checkpoints" / unit.key
    history = fit(model, FloatBags(train_bags), data.labels[train_idx], config, seed=unit.run_seed,
                                 val_bags=FloatBags([data.bags[i] for i in val_idx]),
                                 val_labels=data.labels[val_idx], stopping=stopping, augment=augment,
                                 checkpoint_dir=checkpoints, checkpoint_key=_STATE["settings"][unit.key])
    probs, scores = predict(model, FloatBags([data.bags[i] for i in test_idx]), batch_size=1)
    probs_np = probs.double().numpy()
    metrics = bag_metrics(data.labels[test_idx], probs_np)
    if data.dataset == "colon":
        inst = instance_auc(scores, [data.bags[i].instance_labels for i in test_idx],
                            attention=unit.model in ATTENTION_KEYS)
        metrics["instance_auc"] = math.nan if inst is None else inst
    record = {
        "settings": _STATE["settings"][unit.key],
        "metrics": {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in metrics.items()},
        "train": [data.bags[i].bag_id for i in train_idx],
        "val": [data.bags[i].bag_id for i in val_idx],
        "test": [data.bags[i].bag_id for i in test_idx],
        "test_labels": data.labels[test_idx].tolist(),
        "test_probs": probs_np.round(6).tolist(),
        "history": history.to_dict(),
        "train_seconds": history.seconds,
        "seconds_per_epoch": history.seconds / max(history.epochs_run, 1),
    }
    paths = [out / "models" / f"{unit.key}.safetensors"] if _STATE["keep_models"] else []
    if unit.repeat == 0 and unit.fold == 0:
        paths.append(out / "models" / f"{unit.model}.safetensors")
    for path in paths:
        save_model(path, model, {"settings": record["settings"], "test": record["test"],
                                 "test_labels": record["test_labels"],
                                 "test_paths": [data.bags[i].path for i in test_idx]})
    _units_cache(out).write(unit.key, record)
    shutil.rmtree(checkpoints, ignore_errors=True)
    return record


# --------------------------------------------------------------------------------------------------------------------
# Saved models


def load_unit_model(run_dir: str | Path, model: str, *, repeat: int = 0,
                    fold: int = 0) -> tuple[torch.nn.Module, dict[str, Any]]:
    """A run's saved model of one unit (default repeat 0, fold 0, which every run keeps; the others need
    ``keep_models``), in eval mode, and its metadata ``{"settings": the unit's settings, "test": test bag ids,
    "test_labels": their labels, "test_paths": their image files}`` (weights read with safetensors only)."""
    key = Unit(model, repeat, fold, 0).key
    path = Path(run_dir) / "models" / (f"{model}.safetensors" if (repeat, fold) == (0, 0) else f"{key}.safetensors")
    if not path.is_file():
        hint = ("fold 0 of repeat 0 saves one" if (repeat, fold) == (0, 0) else
                "with --keep-models, which saves every fold's model")
        raise FileNotFoundError(f"no saved model {path}: run `abmil reproduce histology --models {model} "
                                f"--out {run_dir}` first ({hint})")
    return load_model(path, lambda meta: create_model(model, family="histology",
                                                      patch_size=int(meta["settings"]["patch_size"]),
                                                      stain_normalize=meta["settings"].get("stain_normalize", False)))


# --------------------------------------------------------------------------------------------------------------------
# Summary


def _pooled_scores(units: Sequence[Unit], records: dict[str, dict[str, Any]]) -> dict[int, dict[str, float]]:
    """{repeat: bag metrics of its test predictions pooled} for each repetition of ``units`` with every fold done."""
    out = {}
    for rep in sorted({u.repeat for u in units}):
        mine = [u for u in units if u.repeat == rep]
        if all(u.key in records for u in mine):
            out[rep] = bag_metrics(np.concatenate([records[u.key]["test_labels"] for u in mine]),
                                   np.concatenate([records[u.key]["test_probs"] for u in mine]))
    return out


def _rows(dataset: str, models: Sequence[str], units: Sequence[Unit], records: dict[str, dict[str, Any]], *,
          repeats: int, folds: int, epochs: int, patience: int) -> list[ResultRow]:
    """One row per (model, metric, averaging) for every model whose units are all finished.

    ``averaging="folds"``: a metric per test fold, averaged (the core's rows; on breast a fold is 5-6 images, and one
    that calls no image positive scores precision and recall 0). ``averaging="pooled"``: each repetition's test
    predictions pooled (every image once) and scored once, mean ± over the repetitions. The paper does not say
    which it used; the per-fold rows come first.
    """
    per_fold, pooled = [], []
    metrics = BAG_METRICS + (("instance_auc",) if dataset == "colon" else ())
    for model in models:
        mine = [u for u in units if u.model == model]
        if not all(u.key in records for u in mine):
            continue
        recs = [records[u.key] for u in mine]
        run = {"seconds": round(sum(r["train_seconds"] for r in recs), 1),
               "mean_epochs_run": float(np.mean([r["history"]["epochs_run"] for r in recs])),
               "mean_seconds_per_epoch": float(np.mean([r["seconds_per_epoch"] for r in recs]))}
        # Flat extras must be equal across the rows of a call (results.md tables rows per flat setting).
        extra = {"folds": folds, "max_epochs": epochs, "patience": patience, "run": run}
        for metric in metrics:
            pairs = [(u.repeat, r["metrics"].get(metric)) for u, r in zip(mine, recs)]
            pairs = [(rep, v) for rep, v in pairs if v is not None]  # undefined (e.g. one-class fold) -> skipped
            if not pairs:
                continue
            per_fold.append(summarise(
                [v for _, v in pairs], dataset=dataset, model=model, metric=metric, experiment="histology",
                std_over="repeats" if repeats > 1 else "folds", repeat_ids=[rep for rep, _ in pairs],
                extra={"averaging": "folds", **extra}))
        scores = _pooled_scores(mine, records)
        for metric in BAG_METRICS:
            pairs = [(rep, s[metric]) for rep, s in scores.items() if not math.isnan(s[metric])]
            if not pairs:  # AUC of a one-class dataset
                continue
            row = summarise([v for _, v in pairs], dataset=dataset, model=model, metric=metric,
                            experiment="histology", std_over="repeats", repeat_ids=[rep for rep, _ in pairs],
                            extra={"averaging": "pooled", **extra})
            if len(pairs) == 1:
                row.std = None  # one pooled score: no spread to give
            pooled.append(row)
    return per_fold + pooled


# --------------------------------------------------------------------------------------------------------------------
# The experiment


def _command(dataset, data_dir, models, repeats, folds, seed, epochs, patience, augment, stain_normalize,
             max_white_fraction, out, config) -> str:
    preset = histology_config(epochs=epochs)
    return command_line(["abmil", "reproduce", "histology"], [
        ("--dataset", dataset), ("--data-dir", data_dir), ("--models", models), ("--repeats", repeats),
        ("--folds", folds), ("--seed", seed), ("--epochs", epochs), ("--patience", patience),
        ("--lr", repr(config.lr) if config.lr != preset.lr else None),
        ("--weight-decay", repr(config.weight_decay) if config.weight_decay != preset.weight_decay else None),
        ("--no-augment", not augment), ("--stain-normalize", bool(stain_normalize)),
        ("--max-white-fraction", repr(max_white_fraction) if max_white_fraction != MAX_WHITE_FRACTION else None),
        ("--out", out)])


@dataclass
class _Plan:
    """A run's validated arguments, its data, every unit with its settings, and the finished units on disk."""

    data: HistologyData
    models: list[str]
    repeats: int
    folds: int
    seed: int
    epochs: int
    patience: int
    config: TrainConfig
    stopping: EarlyStopping
    max_white_fraction: float
    splits: dict[tuple[int, int], Split]
    units: list[Unit]
    settings: dict[str, dict[str, Any]]
    records: dict[str, dict[str, Any]]
    out: Path


def _plan(dataset, data_dir, *, models, repeats, folds, seed, epochs, patience, lr, weight_decay, augment,
          stain_normalize, max_white_fraction, out_dir) -> _Plan:
    if dataset not in DATASETS:
        raise ValueError(f"dataset must be one of {', '.join(DATASETS)}, got {dataset!r}")
    models = [models] if isinstance(models, str) else list(dict.fromkeys(models))
    bad = [m for m in models if m not in HISTOLOGY_MODELS]
    if not models or bad:
        raise ValueError(f"unknown histology model(s) {bad}: expected some of {', '.join(HISTOLOGY_MODELS)}")
    repeats = check_int(repeats, "repeats", 1)
    folds = check_int(folds, "folds", 2)
    seed = check_int(seed, "seed", 0)
    epochs = check_int(epochs, "epochs", 1)
    patience = check_int(patience, "patience", 1)
    # None: the preset's value (the paper's setting as far as it is known); TrainConfig checks the signs.
    overrides = {k: check_float(v, k) for k, v in (("lr", lr), ("weight_decay", weight_decay)) if v is not None}
    config, stopping = histology_config(epochs=epochs, **overrides), histology_stopping(patience=patience)
    if max_white_fraction is None:
        max_white_fraction = MAX_WHITE_FRACTION
    else:
        max_white_fraction = check_float(max_white_fraction, "max_white_fraction")
        if dataset != "breast":
            raise ValueError("max_white_fraction is for the breast grid; colon patches sit on annotated nuclei")
        if not 0.0 < max_white_fraction <= 1.0:
            raise ValueError(f"max_white_fraction must be in (0, 1], got {max_white_fraction!r}")
    out = check_out_dir(out_dir)

    # every file decoded and checked before anything is written
    data = load_histology(dataset, data_dir, max_white_fraction=max_white_fraction)
    _check_splittable(data, folds)
    splits = {(s.repeat, s.fold): s for s in cv_splits(data.labels, folds=folds, repeats=repeats, seed=seed)}
    units = [Unit(m, r, f, splits[(r, f)].seed) for m in models for r in range(repeats) for f in range(folds)]
    data_sha256 = data.fingerprint()
    settings = {u.key: _settings(dataset, u, folds=folds, repeats=repeats, seed=seed, config=config,
                                 stopping=stopping, augment=bool(augment), stain_normalize=bool(stain_normalize),
                                 max_white_fraction=max_white_fraction, patch_size=data.patch_size,
                                 fingerprint=data_sha256, n_bags=len(data.bags)) for u in units}
    cache = _units_cache(out)
    records = {u.key: rec for u in units
               if (rec := cache.read(u.key, settings[u.key], valid=_has_metrics)) is not None}
    for u in units:  # an unfinished unit's checkpoint is resumed: a broken one is named now, not mid-run
        if u.key not in records:
            read_checkpoint(out / "checkpoints" / u.key)
    return _Plan(data, models, repeats, folds, seed, epochs, patience, config, stopping, max_white_fraction, splits,
                 units, settings, records, out)


def _checkpointed_epoch(out: Path, key: str, settings: dict[str, Any]) -> int:
    """Epochs done in the checkpoint of unfinished unit ``key`` (0: none, or one of other settings)."""
    try:
        info = read_checkpoint(out / "checkpoints" / key)
    except DataError:
        return 0
    return int(info["epoch"]) if info is not None and info.get("key") == settings else 0


def histology_progress(dataset: str, data_dir: str | Path, **run: Any) -> str:
    """Where a run of :func:`reproduce_histology` stands, without training anything: per model the folds finished,
    the mean of each metric over them, the training time per fold so far, and the unfinished folds that have a
    checkpoint to resume from.

    ``run``: the keyword arguments of :func:`reproduce_histology` that decide its units (models, repeats, folds, seed,
    epochs, patience, lr, weight_decay, augment, stain_normalize, max_white_fraction, out_dir), with the same
    defaults; only units whose settings match count, as when the run resumes.
    """
    params = inspect.signature(reproduce_histology).parameters  # its defaults, so the two cannot drift apart
    args = {k: params[k].default for k in ("models", "repeats", "folds", "seed", "epochs", "patience", "lr",
                                           "weight_decay", "augment", "stain_normalize", "max_white_fraction",
                                           "out_dir")}
    unknown = sorted(set(run) - set(args))
    if unknown:
        raise TypeError(f"histology_progress() got unexpected keyword argument(s) {', '.join(unknown)}")
    args.update(run)
    plan = _plan(dataset, data_dir, **args)
    lines = []
    for model in plan.models:
        done = [plan.records[u.key] for u in plan.units if u.model == model and u.key in plan.records]
        total = sum(u.model == model for u in plan.units)
        line = f"{dataset} {model}: {len(done)}/{total} folds"
        if done:
            minutes = float(np.mean([r["train_seconds"] for r in done])) / 60
            means = []
            for metric in BAG_METRICS + (("instance_auc",) if dataset == "colon" else ()):
                values = [r["metrics"].get(metric) for r in done]
                values = [v for v in values if v is not None]
                if values:
                    means.append(f"{metric} {np.mean(values):.3f}")
            to_go = (f"about {minutes * (total - len(done)) / 60:.1f} core-hours to go" if len(done) < total
                     else "done")
            line += (f", {minutes:.1f} min of training per fold ({to_go}); over the finished folds: "
                     + ", ".join(means))
            pooled = _pooled_scores([u for u in plan.units if u.model == model], plan.records)
            if pooled:
                line += f"; pooled per repetition, mean over the {len(pooled)} finished: " + ", ".join(
                    f"{metric} {np.nanmean([s[metric] for s in pooled.values()]):.3f}" for metric in BAG_METRICS)
        started = [f"rep{u.repeat} fold{u.fold} after epoch {epoch}" for u in plan.units
                   if u.model == model and u.key not in plan.records
                   and (epoch := _checkpointed_epoch(plan.out, u.key, plan.settings[u.key]))]
        if started:
            line += "; resumes " + ", ".join(started)
        lines.append(line)
    return "\n".join(lines)


def reproduce_histology(
    dataset: str,
    data_dir: str | Path,
    *,
    models: Sequence[str] = HISTOLOGY_MODELS,
    repeats: int = 5,
    folds: int = 10,
    seed: int = 0,
    epochs: int = DEFAULT_EPOCHS,
    patience: int = 25,
    lr: float | None = None,
    weight_decay: float | None = None,
    augment: bool = True,
    stain_normalize: bool = False,
    max_white_fraction: float | None = None,
    out_dir: str | Path = "runs/histology",
    progress: bool = True,
    jobs: int = 1,
    keep_models: bool = False,
) -> list[ResultRow]:
    """Run the paper's CV protocol on one histology dataset; write results.{json,csv,md} beside Table 2 or 3.

    Args:
        dataset: "breast" (UCSB, 32x32 grid patches) or "colon" (Warwick, 27x27 nucleus-centred patches).
        data_dir: the ``Bisque`` / ``Classification`` folder, or the folder holding it.
        models: keys of :data:`HISTOLOGY_MODELS`.
        repeats, folds, seed: stratified ``folds``-fold CV repeated ``repeats`` times (:func:`cv_splits`).
        epochs: the cap on epochs (early stopping with ``patience`` usually ends sooner).
        lr, weight_decay: Adam's learning rate and L2 coefficient; None: :func:`histology_config`'s 1e-4 and 5e-4.
        augment: H&E jitter + square symmetries (+ colon centre jitter) at each visit of a training bag.
        stain_normalize: Reinhard colour normalisation of every patch inside the model (gmum's; off in the paper's
            known protocol; :class:`abmil.nn.stain_norm.ReinhardNormalize`).
        max_white_fraction: breast only: drop a grid tile as background when at least this share of its pixels is
            white; None: the paper's 0.75 (:data:`abmil.data.patches.MAX_WHITE_FRACTION`). Heatmaps of the run cut
            their images the same way.
        out_dir: where results.*, units/ and models/ go (created; an existing one is resumed from).
        progress: a tqdm bar over units on stderr.
        jobs: worker processes (one CPU core and torch thread each); the numbers do not change.
        keep_models: save every unit's weights as ``OUT/models/<model>__rep<r>__fold<f>.safetensors`` (about 5 MB
            each), not only repeat 0 fold 0's ``OUT/models/<model>.safetensors``; for heatmaps of any fold.

    Returns:
        rows (model x metric) of the models whose units are all finished; ``std`` over per-repeat means (over
        folds when ``repeats == 1``), ``extra["std_folds"]`` over all units, ``extra["run"]`` timings.

    Raises:
        ValueError: a bad argument; DataError (a ValueError) naming the file: a missing, truncated or malformed image
        or annotation, an image smaller than a patch, too few bags of a class for ``folds``. All before anything is
        written to ``out_dir``.
    """
    jobs = check_int(jobs, "jobs", 1)
    plan = _plan(dataset, data_dir, models=models, repeats=repeats, folds=folds, seed=seed, epochs=epochs,
                 patience=patience, lr=lr, weight_decay=weight_decay, augment=augment,
                 stain_normalize=stain_normalize, max_white_fraction=max_white_fraction, out_dir=out_dir)
    data, models, units, records, out = plan.data, plan.models, plan.units, plan.records, plan.out
    repeats, folds, seed, epochs, patience = plan.repeats, plan.folds, plan.seed, plan.epochs, plan.patience
    config, stopping, splits, settings = plan.config, plan.stopping, plan.splits, plan.settings
    todo = [u for u in units if u.key not in records]
    command = _command(dataset, data.root, models, repeats, folds, seed, epochs, patience, augment, stain_normalize,
                       plan.max_white_fraction, out, config)

    def publish() -> list[ResultRow]:
        rows = _rows(dataset, models, units, records, repeats=repeats, folds=folds, epochs=epochs,
                     patience=patience)
        if rows:
            write_results(out, rows, title=f"Histopathology: {_TITLE[dataset]}", command=command, seed=seed,
                          table_layout="metrics", experiment="histology")
        return rows

    def show(unit: Unit, record: dict[str, Any]) -> None:
        m = record["metrics"]
        bar.set_postfix_str(f"{unit.key}: acc {m['accuracy']:.2f}, "
                            f"{record['history']['epochs_run']} ep, {record['train_seconds']:.0f} s")
        bar.update(1)

    _units_cache(out).create()
    _STATE.update(data=data, splits=splits, config=config, stopping=stopping, out=out, augment=bool(augment),
                  settings=settings, keep_models=bool(keep_models))
    bar = progress_bar(len(todo), enabled=progress and bool(todo), desc=f"{dataset} units", unit="fold",
                       dynamic_ncols=True)
    try:
        # _train_unit is looked up at each call, so that a patched one (tests) is the one that runs
        run_pending(todo, lambda u: _train_unit(u), records=records, publish=publish, jobs=jobs,
                    threads=1 if jobs > 1 else None, on_done=None if bar is None else show)
    finally:
        _STATE.clear()
        if bar is not None:
            bar.close()
        with contextlib.suppress(OSError):  # only when empty: an interrupted unit's checkpoint stays for the resume
            (out / "checkpoints").rmdir()
    return publish()


# --------------------------------------------------------------------------------------------------------------------
# Heatmaps of a run


def explain_histology(run_dir: str | Path, *, model: str = "attention", image: str | Path | None = None,
                      out: str | Path | None = None, markers: bool = True, downsample: float = 1.0,
                      repeat: int = 0, fold: int = 0) -> str:
    """Paint the per-patch scores of a run's saved model over one image; return a short report.

    ``repeat``, ``fold``: the unit whose model is used (default 0, 0, the one every run saves; others need
    ``reproduce_histology(keep_models=True)``). ``image`` defaults to the first positive test image of that fold (an
    image the model did not train on). ``markers``: circle the epithelial nuclei (annotated colon images). The PNG
    goes to ``out`` (default ``RUN/heatmap_<model>__<image>.png``, ``heatmap_<model>__rep<r>__fold<f>__<image>.png``
    for another unit).
    """
    from abmil.explain.histology import heatmap_for_image

    # every argument checked before the model is read (and long before anything is written)
    if model not in HISTOLOGY_MODELS:
        raise ValueError(f"unknown histology model {model!r}: expected one of {', '.join(HISTOLOGY_MODELS)}")
    repeat, fold = check_int(repeat, "repeat", 0), check_int(fold, "fold", 0)
    downsample = check_float(downsample, "downsample", above=0.0)
    if out is not None:
        out = check_out_file(out)
    if image is not None and not Path(image).is_file():
        raise DataError("image not found", path=str(image))
    net, meta = load_unit_model(run_dir, model, repeat=repeat, fold=fold)
    unit = Unit(model, repeat, fold, 0)
    if image is None:
        paths, labels = meta.get("test_paths"), meta.get("test_labels")
        if not isinstance(paths, list) or not paths or not all(isinstance(p, str) for p in paths):
            raise ValueError(f"the saved {model!r} model does not list its test images: pass --image PATH")
        if not isinstance(labels, list) or len(labels) != len(paths):
            labels = [None] * len(paths)
        image = next((p for p, y in zip(paths, labels) if y == 1), paths[0])
    image = Path(image)
    name = model if (repeat, fold) == (0, 0) else unit.key
    out = out if out is not None else check_out_file(Path(run_dir) / f"heatmap_{name}__{image.stem}.png")
    heat = heatmap_for_image(net, image, out, patch_size=int(meta["settings"]["patch_size"]), markers=markers,
                             downsample=downsample, model_name=model,
                             max_white_fraction=meta["settings"].get("max_white_fraction", MAX_WHITE_FRACTION))
    which = f"fold {fold}" if repeat == 0 else f"repeat {repeat} fold {fold}"
    trained_on = _training_ids(run_dir, unit.key)
    tested = meta.get("test")
    seen = f"a test image of {which}" if isinstance(tested, list) and image.stem in tested else (
        f"a TRAINING image of {which}" if image.stem in trained_on else "an image outside the run")
    lines = [f"{image} ({seen}): {len(heat.scores)} patches of {heat.patch_size}x{heat.patch_size}, "
             f"P(positive) = {heat.prob:.3f}" + (f", label {heat.bag.label}" if heat.bag.label in (0, 1) else "")]
    if heat.bag.instance_labels is not None and 0 < heat.bag.instance_labels.sum() < len(heat.bag):
        from sklearn.metrics import roc_auc_score

        auc = roc_auc_score(heat.bag.instance_labels, heat.scores)
        lines.append(f"{heat.score_kind} vs the epithelial-nucleus labels of this image: AUC {auc:.3f}")
    lines.append(f"wrote {out}")
    return "\n".join(lines)


def _training_ids(run_dir: str | Path, key: str) -> list[str]:
    try:
        unit = json.loads((Path(run_dir) / "units" / f"{key}.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return []
    return list(unit.get("train", [])) + list(unit.get("val", []))
