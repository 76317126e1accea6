"""``abmil evaluate`` for multilabel predictions (``slide_id, <target>..., prob_<target>...``,
:class:`abmil.tasks.multilabel.MultilabelTask`, which calls :func:`evaluate_multilabel`).

Per target (class ``<target>``), scikit-learn's: ``auc`` (``roc_auc_score``), ``average_precision``, ``brier``
(``brier_score_loss``) and ``accuracy`` at probability 0.5; ``mean_auc``: the mean of the targets' AUCs (over the
targets where defined). Intervals: the case bootstrap of :mod:`abmil.report.bootstrap` (a resample where a target
holds one value skips its AUC and AP, counted). Figure: ``roc.png``, one ROC curve per target. The truth, case level
(a case's probabilities averaged) and writer: :mod:`abmil.report.outcome_evaluate`.
"""
from __future__ import annotations

import math
import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from .outcome_evaluate import _nan, outcome_groups, outcome_levels, read_outcomes, write_outcome_evaluation

__all__ = ["evaluate_multilabel", "multilabel_metrics", "plot_multilabel_roc"]

PER_TARGET = ("auc", "average_precision", "brier", "accuracy")


def multilabel_metrics(truth: np.ndarray, probs: np.ndarray, targets: Sequence[str]) -> dict[tuple[str, str], float]:
    """``{(metric, target): value}`` and ``("mean_auc", "")`` of ``truth`` (n, K) 0/1 and ``probs`` (n, K); NaN
    where undefined (a target of one value: AUC and AP)."""
    from sklearn.metrics import accuracy_score, average_precision_score, brier_score_loss, roc_auc_score

    out: dict[tuple[str, str], float] = {}
    aucs = []
    for k, t in enumerate(targets):
        y, p = truth[:, k].astype(int), probs[:, k]
        both = np.unique(y).size == 2
        auc = float(roc_auc_score(y, p)) if both else math.nan
        ap = _nan(average_precision_score, y, p) if both else None
        out["auc", t] = auc
        out["average_precision", t] = math.nan if ap is None else float(ap)
        out["brier", t] = float(brier_score_loss(y, p, pos_label=1)) if both else float(np.mean((p - y) ** 2))
        out["accuracy", t] = float(accuracy_score(y, (p >= 0.5).astype(int)))
        if both:
            aucs.append(auc)
    out["mean_auc", ""] = float(np.mean(aucs)) if aucs else math.nan
    return out


def evaluate_multilabel(predictions_csv: str | os.PathLike, task, *, out_dir: str | os.PathLike,
                        manifest: str | os.PathLike | None = None, labels_from: str = "auto",
                        n_bootstrap: int = 1000, seed: int = 0, by: str | None = None) -> dict[str, Any]:
    """Evaluate multilabel predictions (``task``: their task, of the predictions' targets) and write ``out_dir``
    (metrics.json/.csv/.md and ``roc.png``), all or nothing; returns the JSON's content."""
    path = os.fspath(predictions_csv)
    targets = tuple(task.columns)
    slide_ids, truth, outputs, case_ids, has_cases, source, _ = read_outcomes(
        path, task, None if manifest is None else os.fspath(manifest), labels_from)
    levels = outcome_levels(truth, outputs, case_ids, has_cases)
    positives = {t: int(levels[0].labels[:, k].sum()) for k, t in enumerate(targets)}
    note = ("per target: auc (roc_auc_score), average_precision, brier (brier_score_loss), accuracy at probability "
            "0.5; mean_auc: the mean of the targets' AUCs")
    return write_outcome_evaluation(
        path, task.name, out_dir=out_dir, manifest=manifest, source=source, n_slides=len(slide_ids), levels=levels,
        has_cases=has_cases, n_bootstrap=n_bootstrap, seed=seed,
        groups=outcome_groups(by, slide_ids, case_ids, path, manifest),
        metrics=lambda y, p: multilabel_metrics(y, p, targets), figure="roc.png",
        plot=lambda level, title: plot_multilabel_roc(level.labels, level.probs, targets, title=title),
        meta={"targets": list(targets), "positives": positives}, notes={"multilabel": note},
        lines=[f"- targets (slides positive): {', '.join(f'{t} ({n})' for t, n in positives.items())}",
               f"- {note}"])


def plot_multilabel_roc(truth: np.ndarray, probs: np.ndarray, targets: Sequence[str], *, title: str) -> bytes:
    """One ROC curve per target (a target of one value: none), AUC in the legend, as PNG bytes."""
    from sklearn.metrics import roc_auc_score, roc_curve

    from .evaluation_plots import _png
    from .plots import _pyplot

    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5.2, 5.0))
    for k, t in enumerate(targets):
        y = truth[:, k].astype(int)
        if np.unique(y).size < 2:
            continue
        fpr, tpr, _ = roc_curve(y, probs[:, k])
        ax.plot(fpr, tpr, lw=1.8, label=f"{t} (AUC {roc_auc_score(y, probs[:, k]):.3f})")
    ax.plot([0, 1], [0, 1], ls="--", color="0.6", lw=1, label="chance")
    ax.set(xlim=(-0.01, 1.01), ylim=(-0.01, 1.01), xlabel="false positive rate (1 - specificity)",
           ylabel="true positive rate (sensitivity)", aspect="equal")
    ax.set_title(f"ROC per target\n{title}", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    return _png(fig)
