"""Evaluate slide predictions against their truth: ``abmil evaluate``.

    abmil evaluate --predictions preds.csv [--manifest CSV] [--threshold T | --run RUN] --out DIR

The predictions are ``abmil predict``'s CSV (:mod:`abmil.slides.predictions`); its header says which task wrote it
(:func:`abmil.slides.predictions.predictions_task`), and the task evaluates it
(:meth:`abmil.tasks.base.Task.evaluate`): class predictions by :mod:`abmil.report.class_evaluate` (AUC, accuracy,
calibration ...), survival and regression predictions by :mod:`abmil.report.outcome_evaluate`; every task's
intervals come from one case bootstrap (:mod:`abmil.report.bootstrap`). Everything is read, checked and computed
before anything is written; the output files are written into a temporary folder beside ``out_dir`` and then moved
into it.
"""
from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..errors import DataError
from ..io import write_json_atomic, write_text_atomic
from ..slides.leakage import TrainingOverlap, csv_overlap
from ..slides.predictions import predictions_task
from .bootstrap import CI_LEVEL, CSV_COLUMNS, LABEL_SOURCES, bootstrap, metric_rows
from .class_evaluate import (
    ECE_BINS,
    OUTPUT_FILES,
    THRESHOLD_FILES,
    Predictions,
    compute_metrics,
    expected_calibration_error,
    read_predictions,
    read_run_threshold,
    youden_threshold,
)

__all__ = ["CI_LEVEL", "CSV_COLUMNS", "ECE_BINS", "LABEL_SOURCES", "OUTPUT_FILES", "THRESHOLD_FILES", "Predictions",
           "bootstrap", "compute_metrics", "evaluate_predictions", "expected_calibration_error", "metric_rows",
           "read_predictions", "read_run_threshold", "youden_threshold"]


def evaluate_predictions(predictions_csv: str | os.PathLike, *, out_dir: str | os.PathLike,
                         manifest: str | os.PathLike | None = None, labels_from: str = "auto",
                         threshold: float | None = None, run: str | os.PathLike | None = None,
                         n_bootstrap: int = 1000, seed: int = 0, times: Sequence[float] | None = None,
                         risk_groups: int = 2, allow_training_slides: bool = False,
                         time_unit: str | None = None, by: str | None = None, card: bool = True) -> dict[str, Any]:
    """Evaluate ``abmil predict``'s CSV by its task and write ``out_dir`` (``metrics.json``, ``metrics.csv``,
    ``metrics.md`` and the task's figures); returns the JSON's content (``{"meta": ..., "metrics": [rows]}``, rows
    ``level, metric, class, value, ci_low, ci_high, n_bootstrap, n_skipped``). Nothing is written on any error.

    ``labels_from``: the truth from the predictions' own columns, a ``manifest``'s or ``auto``. Classification:
    ``threshold`` or ``run`` (a folder with a stored ``"threshold"``, :func:`read_run_threshold`), the binary decision
    threshold (default 0.5). Survival: ``times``, the times of the time-dependent metrics; ``risk_groups``, 2 or 3
    Kaplan-Meier groups; ``time_unit``, the unit of the times (named on km.png's axis). ``run``: checked against
    the predictions (classes, task). ``by``: a column (e.g. ``site``, of the predictions file, a site-preserved
    study's oof.csv, or of the manifest): the rows again within each of its values (rows with a ``group``, ``all``
    for every slide; each group its own case bootstrap).

    Slides the scoring models trained or validated on (:func:`abmil.slides.leakage.csv_overlap`: recorded by
    ``abmil predict``, or found in ``run``'s splits) are refused with a ValueError saying how many and which,
    unless ``allow_training_slides``: then evaluated, with ``meta["training_overlap"]`` (the overlap and its
    ``"warning"``) in metrics.json and the warning atop metrics.md.

    With a ``run`` (and ``card``), the run's model card (``model_card.md``/``.json``, :mod:`abmil.export.card`: data,
    splits, settings, out-of-fold metrics, this evaluation's metrics with their intervals, threshold, intended use,
    limitations, versions) is written into ``out_dir`` too.
    """
    if n_bootstrap < 0:
        raise ValueError(f"n_bootstrap must be >= 0, got {n_bootstrap}")
    if Path(out_dir).exists() and not Path(out_dir).is_dir():
        raise DataError("output exists and is not a folder", path=os.fspath(out_dir))
    task = predictions_task(predictions_csv)
    extra = {} if by is None else {"by": by}  # only when given: a task's evaluate may not take it
    if time_unit is not None:  # survival's alone: the other tasks' evaluations take no such argument
        if not task.takes_times:
            raise ValueError(f"--time-unit names the unit of survival times; these are {task.name} predictions")
        extra["time_unit"] = time_unit
    overlap = csv_overlap(predictions_csv, run)
    if overlap and not allow_training_slides:
        raise ValueError(f"{os.fspath(predictions_csv)}: {overlap.message()}. Pass --allow-training-slides to "
                         "evaluate them anyway")
    result = task.evaluate(predictions_csv, out_dir=out_dir, manifest=manifest, labels_from=labels_from,
                           threshold=threshold, run=run, n_bootstrap=n_bootstrap, seed=seed, times=times,
                           risk_groups=risk_groups, **extra)
    if overlap:
        _mark_leaky(Path(out_dir), result, overlap)
    if run is not None and card:
        _write_model_card(run, out_dir, result)
    return result


def _write_model_card(run, out_dir, result: dict[str, Any]) -> None:
    """The run's model card beside its evaluation (:func:`abmil.export.card.run_card`); a run whose models cannot be
    described so (no tensor form of its head) is said in the meta, the evaluation stands."""
    from ..export import feature_settings
    from ..export.card import CARD_MD, run_card

    try:
        run_card(run, out_dir, feature_settings=feature_settings(run, None, None))
        result["meta"]["model_card"] = CARD_MD
    except (ValueError, OSError, KeyError) as e:  # DataError is a ValueError
        result["meta"]["model_card"] = f"not written: {e}"


def _mark_leaky(out_dir: Path, result: dict[str, Any], overlap: TrainingOverlap) -> None:
    """An evaluation of training slides says so where its numbers are: metrics.json's meta, atop metrics.md."""
    warning = f"{overlap.message()}."
    result["meta"]["training_overlap"] = {**json.loads(overlap.to_json()), "warning": warning}
    write_json_atomic(out_dir / "metrics.json", result)
    md = out_dir / "metrics.md"
    if md.is_file():
        write_text_atomic(md, f"> **WARNING: {warning}**\n\n" + md.read_text(encoding="utf-8"))
