"""``abmil evaluate`` for regression predictions (``slide_id, target, predicted``,
:class:`abmil.tasks.regression.RegressionTask`, which calls :func:`evaluate_regression`): MAE, RMSE, R²
(scikit-learn), Pearson's r and Spearman's rho (SciPy), :func:`abmil.report.metrics.regression_metrics`;
``scatter.png``. The truth, case level and bootstrap: :mod:`abmil.report.outcome_evaluate`.
"""
from __future__ import annotations

import os
from typing import Any

import numpy as np

from .outcome_evaluate import outcome_groups, outcome_levels, read_outcomes, write_outcome_evaluation

__all__ = ["evaluate_regression", "plot_scatter", "regression_metrics"]


def regression_metrics(truth: np.ndarray, outputs: np.ndarray) -> dict[tuple[str, str], float]:
    """``{(metric, ""): value}`` of targets ``truth`` (n,) and predictions ``outputs`` (n, 1)."""
    from .metrics import regression_metrics as metrics

    return {(k, ""): v for k, v in metrics(truth, outputs[:, 0]).items()}


def evaluate_regression(predictions_csv: str | os.PathLike, task, *, out_dir: str | os.PathLike,
                        manifest: str | os.PathLike | None = None, labels_from: str = "auto",
                        n_bootstrap: int = 1000, seed: int = 0, by: str | None = None) -> dict[str, Any]:
    """Evaluate regression predictions (``task``: their task) and write ``out_dir`` (metrics.json/.csv/.md and
    ``scatter.png``), all or nothing; returns the JSON's content."""
    path = os.fspath(predictions_csv)
    slide_ids, truth, outputs, case_ids, has_cases, source, _ = read_outcomes(
        path, task, None if manifest is None else os.fspath(manifest), labels_from)
    levels = outcome_levels(truth, outputs, case_ids, has_cases)
    return write_outcome_evaluation(
        path, task.name, out_dir=out_dir, manifest=manifest, source=source, n_slides=len(slide_ids), levels=levels,
        has_cases=has_cases, n_bootstrap=n_bootstrap, seed=seed,
        groups=outcome_groups(by, slide_ids, case_ids, path, manifest), metrics=regression_metrics,
        figure="scatter.png",
        plot=lambda level, title: plot_scatter(level.labels, level.probs[:, 0], title=title))


def plot_scatter(target: np.ndarray, pred: np.ndarray, *, title: str) -> bytes:
    """Predicted against true values with the identity line, as PNG bytes."""
    from .evaluation_plots import _png
    from .plots import _pyplot

    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    ax.scatter(target, pred, s=12, alpha=0.7)
    lo, hi = float(min(target.min(), pred.min())), float(max(target.max(), pred.max()))
    ax.plot([lo, hi], [lo, hi], "k--", lw=1)
    ax.set_xlabel("target")
    ax.set_ylabel("predicted")
    ax.set_title(title, fontsize=9)
    return _png(fig)
