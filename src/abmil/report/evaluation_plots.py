"""Figures of ``abmil evaluate``: ROC and precision-recall curves, reliability diagram, each returned as PNG bytes.

Curves come from scikit-learn (``roc_curve``, ``precision_recall_curve``, ``calibration_curve``); matplotlib with
the Agg backend draws them. The bytes are returned, not written, so that the caller can write all of its files
together (or none).
"""
from __future__ import annotations

import io
from collections.abc import Sequence

import numpy as np

from .plots import _pyplot

__all__ = ["plot_calibration", "plot_pr", "plot_roc"]


def _png(fig, dpi: int = 150) -> bytes:
    plt = _pyplot()
    try:
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
        return buf.getvalue()
    finally:
        plt.close(fig)


def _one_vs_rest(labels: np.ndarray, probs: np.ndarray, classes: Sequence[str]):
    """``(name, y (n,) 0/1, score (n,))`` per curve: binary the positive (second) class only, multi-class every
    class against the rest, skipping a class absent from ``labels`` (its curve is undefined)."""
    ks = [1] if probs.shape[1] == 2 else range(probs.shape[1])
    for k in ks:
        y = (labels == k).astype(int)
        if 0 < y.sum() < y.size:
            yield classes[k], y, probs[:, k]


def plot_roc(labels: np.ndarray, probs: np.ndarray, classes: Sequence[str], *, title: str,
             threshold: float | None = None) -> bytes:
    """ROC curve(s): ``labels`` (n,) class indices, ``probs`` (n, n_classes). Binary: the positive class, with the
    operating point of ``threshold`` marked; multi-class: one curve per class, one-vs-rest. AUC in the legend."""
    from sklearn.metrics import roc_auc_score, roc_curve

    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5.2, 5.0))
    for name, y, score in _one_vs_rest(labels, probs, classes):
        fpr, tpr, _ = roc_curve(y, score)
        ax.plot(fpr, tpr, lw=1.8, label=f"{name} (AUC {roc_auc_score(y, score):.3f})")
        if threshold is not None:
            pred = score >= threshold
            ax.plot([pred[y == 0].mean()], [pred[y == 1].mean()], "o", color="black", ms=6,
                    label=f"threshold {threshold:g}")
    ax.plot([0, 1], [0, 1], ls="--", color="0.6", lw=1, label="chance")
    ax.set(xlim=(-0.01, 1.01), ylim=(-0.01, 1.01), xlabel="false positive rate (1 - specificity)",
           ylabel="true positive rate (sensitivity)", aspect="equal")
    ax.set_title((f"ROC, positive class {classes[1]!r}" if probs.shape[1] == 2 else "ROC, one-vs-rest per class")
                 + f"\n{title}", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    return _png(fig)


def plot_pr(labels: np.ndarray, probs: np.ndarray, classes: Sequence[str], *, title: str) -> bytes:
    """Precision-recall curve(s), as :func:`plot_roc`; average precision in the legend, each class's prevalence
    (a random classifier's precision) dotted."""
    from sklearn.metrics import average_precision_score, precision_recall_curve

    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5.2, 5.0))
    for name, y, score in _one_vs_rest(labels, probs, classes):
        precision, recall, _ = precision_recall_curve(y, score)
        (line,) = ax.step(recall, precision, where="post", lw=1.8,
                          label=f"{name} (AP {average_precision_score(y, score):.3f})")
        ax.axhline(y.mean(), ls=":", lw=1, color=line.get_color())
    ax.set(xlim=(-0.01, 1.01), ylim=(-0.01, 1.01), xlabel="recall (sensitivity)", ylabel="precision (PPV)",
           aspect="equal")
    ax.set_title(("Precision-recall, positive class " + repr(classes[1]) if probs.shape[1] == 2
                  else "Precision-recall, one-vs-rest per class") + f"\n{title}; dotted: prevalence", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower left", fontsize=8)
    return _png(fig)


def plot_calibration(correct: np.ndarray, confidence: np.ndarray, *, binary: bool, positive: str, n_bins: int,
                     title: str) -> bytes:
    """Reliability diagram: observed frequency against mean predicted probability in ``n_bins`` equal-width bins
    (``calibration_curve``), the diagonal, and the number of samples per bin below. ``correct`` (n,) 0/1 and
    ``confidence`` (n,): binary ``(label is positive, p_pos)``, multi-class ``(argmax right, max p)``."""
    from sklearn.calibration import calibration_curve

    plt = _pyplot()
    fig, (ax, hist) = plt.subplots(2, 1, figsize=(5.2, 6.4), sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    frac, mean_pred = calibration_curve(correct, confidence, n_bins=n_bins, strategy="uniform")
    ax.plot([0, 1], [0, 1], ls="--", color="0.6", lw=1, label="perfectly calibrated")
    ax.plot(mean_pred, frac, "o-", lw=1.8, label="observed")
    what = f"P({positive!r})" if binary else "predicted class's probability"
    ax.set(xlim=(-0.01, 1.01), ylim=(-0.01, 1.01),
           ylabel=f"fraction {positive!r}" if binary else "fraction correct")
    ax.set_title(f"Reliability: {n_bins} equal-width bins of {what}\n{title}", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left", fontsize=8)
    # bin sizes as calibration_curve bins (a value on an inner edge falls in the lower bin; np.histogram differs)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    counts = np.bincount(np.searchsorted(edges[1:-1], confidence), minlength=n_bins)
    hist.bar(edges[:-1], counts, width=1.0 / n_bins, align="edge", color="0.5", edgecolor="white")
    hist.set(xlabel=f"mean predicted probability ({what})", ylabel="count")
    hist.grid(alpha=0.3)
    return _png(fig)
