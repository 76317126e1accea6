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

__all__ = ["ROC_BAND_RESAMPLES", "bin_intervals", "numbers_at_risk", "plot_calibration", "plot_pr", "plot_roc",
           "roc_band"]


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


def roc_band(y: np.ndarray, score: np.ndarray, *, n_bootstrap: int, seed: int, grid: np.ndarray
             ) -> tuple[np.ndarray, np.ndarray] | None:
    """Pointwise 95 % percentile band of a ROC curve's sensitivity at the false positive rates ``grid``, from
    ``n_bootstrap`` resamples of the rows (each resample's curve interpolated at ``grid``: vertical averaging);
    None with fewer than 2 usable resamples (a resample holding one class has no curve)."""
    from sklearn.metrics import roc_curve

    rng = np.random.default_rng(seed)
    curves = []
    for _ in range(n_bootstrap):
        idx = rng.integers(0, y.size, y.size)
        yb = y[idx]
        if 0 < yb.sum() < yb.size:
            fpr, tpr, _ = roc_curve(yb, score[idx])
            curves.append(np.interp(grid, fpr, tpr))
    if len(curves) < 2:
        return None
    lo, hi = np.percentile(np.stack(curves), [2.5, 97.5], axis=0)
    return lo, hi


def bin_intervals(correct: np.ndarray, confidence: np.ndarray, n_bins: int) -> tuple[np.ndarray, ...]:
    """Per equal-width bin of ``confidence`` (as ``calibration_curve`` bins: a value on an inner edge falls in the
    lower bin): ``(counts, observed fraction, Wilson 95 % low, high)`` (scipy's ``binomtest(...).proportion_ci``);
    NaN for an empty bin."""
    from scipy.stats import binomtest

    edges = np.linspace(0.0, 1.0, n_bins + 1)
    which = np.searchsorted(edges[1:-1], confidence)
    counts = np.bincount(which, minlength=n_bins)
    hits = np.bincount(which, weights=np.asarray(correct, dtype=np.float64), minlength=n_bins)
    frac, lo, hi = (np.full(n_bins, np.nan) for _ in range(3))
    for b in np.flatnonzero(counts):
        ci = binomtest(int(round(hits[b])), int(counts[b])).proportion_ci(0.95, method="wilson")
        frac[b], lo[b], hi[b] = hits[b] / counts[b], ci.low, ci.high
    return counts, frac, lo, hi


def numbers_at_risk(time: np.ndarray, at: np.ndarray) -> np.ndarray:
    """The number still at risk (time >= t) at each ``at``, as a Kaplan-Meier table prints under its axis."""
    t = np.sort(np.asarray(time, dtype=np.float64))
    return t.size - np.searchsorted(t, np.asarray(at, dtype=np.float64), side="left")


#: Resamples of the rows behind the ROC curve's band (:func:`roc_band`).
ROC_BAND_RESAMPLES = 200


def plot_roc(labels: np.ndarray, probs: np.ndarray, classes: Sequence[str], *, title: str,
             threshold: float | None = None, n_bootstrap: int = ROC_BAND_RESAMPLES, seed: int = 0) -> bytes:
    """ROC curve(s): ``labels`` (n,) class indices, ``probs`` (n, n_classes). Binary: the positive class, with the
    operating point of ``threshold`` marked; multi-class: one curve per class, one-vs-rest. AUC in the legend; a
    shaded 95 % pointwise band of each curve from ``n_bootstrap`` resamples of the rows (:func:`roc_band`; 0:
    none)."""
    from sklearn.metrics import roc_auc_score, roc_curve

    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5.2, 5.0))
    grid = np.linspace(0.0, 1.0, 101)
    for name, y, score in _one_vs_rest(labels, probs, classes):
        fpr, tpr, _ = roc_curve(y, score)
        (line,) = ax.plot(fpr, tpr, lw=1.8, label=f"{name} (AUC {roc_auc_score(y, score):.3f})")
        band = roc_band(y, score, n_bootstrap=n_bootstrap, seed=seed, grid=grid) if n_bootstrap else None
        if band is not None:
            ax.fill_between(grid, *band, color=line.get_color(), alpha=0.15, lw=0,
                            label=f"95 % band ({n_bootstrap} resamples)")
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
    (``calibration_curve``) with each bin's 95 % Wilson interval (:func:`bin_intervals`), the diagonal, and the
    number of samples per bin below. ``correct`` (n,) 0/1 and
    ``confidence`` (n,): binary ``(label is positive, p_pos)``, multi-class ``(argmax right, max p)``."""
    from sklearn.calibration import calibration_curve

    plt = _pyplot()
    fig, (ax, hist) = plt.subplots(2, 1, figsize=(5.2, 6.4), sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    frac, mean_pred = calibration_curve(correct, confidence, n_bins=n_bins, strategy="uniform")
    ax.plot([0, 1], [0, 1], ls="--", color="0.6", lw=1, label="perfectly calibrated")
    _, observed, lo, hi = bin_intervals(correct, confidence, n_bins)
    full = ~np.isnan(observed)  # the bins calibration_curve keeps, in order
    if full.sum() == frac.size:
        ax.errorbar(mean_pred, frac, yerr=np.abs(np.vstack([frac - lo[full], hi[full] - frac])), fmt="o-",
                    lw=1.8, capsize=3, label="observed, 95 % Wilson interval")
    else:  # a value on a bin edge that calibration_curve bins otherwise: no intervals rather than wrong ones
        ax.plot(mean_pred, frac, "o-", lw=1.8, label="observed")
    what = f"P({positive!r})" if binary else "predicted class's probability"
    ax.set(xlim=(-0.01, 1.01), ylim=(-0.01, 1.01),
           ylabel=f"fraction {positive!r}" if binary else "fraction correct")
    ax.set_title(f"Reliability: {n_bins} equal-width bins of {what}\n{title}", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left", fontsize=8)
    # bin sizes as calibration_curve bins (a value on an inner edge falls in the lower bin; np.histogram differs)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    counts = bin_intervals(correct, confidence, n_bins)[0]
    hist.bar(edges[:-1], counts, width=1.0 / n_bins, align="edge", color="0.5", edgecolor="white")
    hist.set(xlabel=f"mean predicted probability ({what})", ylabel="count")
    hist.grid(alpha=0.3)
    return _png(fig)
