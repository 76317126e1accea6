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

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..errors import DataError
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
                         risk_groups: int = 2, by: str | None = None) -> dict[str, Any]:
    """Evaluate ``abmil predict``'s CSV by its task and write ``out_dir`` (``metrics.json``, ``metrics.csv``,
    ``metrics.md`` and the task's figures); returns the JSON's content (``{"meta": ..., "metrics": [rows]}``, rows
    ``level, metric, class, value, ci_low, ci_high, n_bootstrap, n_skipped``). Nothing is written on any error.

    ``labels_from``: the truth from the predictions' own columns, a ``manifest``'s or ``auto``. Classification:
    ``threshold`` or ``run`` (a folder with a stored ``"threshold"``, :func:`read_run_threshold`), the binary decision
    threshold (default 0.5). Survival: ``times``, the times of the time-dependent metrics; ``risk_groups``, 2 or 3
    Kaplan-Meier groups. ``run``: checked against the predictions (classes, task). ``by``: a column (e.g. ``site``,
    of the predictions file, a site-preserved study's oof.csv, or of the manifest): the rows again within each of its
    values (rows with a ``group``, ``all`` for every slide; each group its own case bootstrap).
    """
    if n_bootstrap < 0:
        raise ValueError(f"n_bootstrap must be >= 0, got {n_bootstrap}")
    if Path(out_dir).exists() and not Path(out_dir).is_dir():
        raise DataError("output exists and is not a folder", path=os.fspath(out_dir))
    task = predictions_task(predictions_csv)
    return task.evaluate(predictions_csv, out_dir=out_dir, manifest=manifest, labels_from=labels_from,
                         threshold=threshold, run=run, n_bootstrap=n_bootstrap, seed=seed, times=times,
                         risk_groups=risk_groups, **({} if by is None else {"by": by}))
