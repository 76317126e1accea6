"""Bag-level metrics, computed with scikit-learn: the five of Tables 2-3, and accuracy/AUC for any number of classes."""
from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from sklearn.metrics import accuracy_score, f1_score, precision_score, recall_score, roc_auc_score

__all__ = ["BAG_METRICS", "bag_metrics", "class_metrics", "harrell_c_index", "regression_metrics",
           "youden_threshold"]

BAG_METRICS: tuple[str, ...] = ("accuracy", "precision", "recall", "f1", "auc")


def bag_metrics(labels: np.ndarray, probs: np.ndarray, threshold: float = 0.5) -> dict[str, float]:
    """The five metrics of one test fold: labels (n,) 0/1, probs (n,) P(positive) -> {metric: value}.

    Predictions are ``probs >= threshold`` (the reference code's rule). Precision, recall and F-score of the positive
    class; 0 where undefined (no predicted or no true positive; sklearn ``zero_division=0``). AUC is NaN when the
    fold holds one class only (it is undefined, and a summary should skip it rather than count it as 0 or 1).
    """
    y = np.asarray(labels).astype(int).ravel()
    p = np.asarray(probs, dtype=np.float64).ravel()
    if y.shape != p.shape or y.size == 0:
        raise ValueError(f"labels {y.shape} and probs {p.shape} must be the same non-empty shape")
    pred = (p >= threshold).astype(int)
    kw = {"zero_division": 0, "labels": [0, 1], "pos_label": 1, "average": "binary"}
    return {
        "accuracy": float(accuracy_score(y, pred)),
        "precision": float(precision_score(y, pred, **kw)),
        "recall": float(recall_score(y, pred, **kw)),
        "f1": float(f1_score(y, pred, **kw)),
        "auc": float(roc_auc_score(y, p)) if 0 < y.sum() < y.size else math.nan,
    }


def class_metrics(probabilities: np.ndarray, labels: np.ndarray) -> dict[str, float | None]:
    """Accuracy (argmax) and AUC of class probabilities (n, n_classes) against labels (n,) class indices: binary AUC
    of the last column, one-vs-rest macro AUC for more classes; None where undefined (a class absent)."""
    p, y = np.asarray(probabilities), np.asarray(labels)
    auc = None
    if p.shape[1] == 2 and len(set(y.tolist())) == 2:
        auc = float(roc_auc_score(y, p[:, 1]))
    elif p.shape[1] > 2 and len(set(y.tolist())) == p.shape[1]:
        auc = float(roc_auc_score(y, p, multi_class="ovr"))
    return {"accuracy": float((p.argmax(1) == y).mean()), "auc": auc}


def youden_threshold(labels: Sequence[int] | np.ndarray, probs: Sequence[float] | np.ndarray) -> float:
    """The threshold on P(positive) that maximises Youden's J = sensitivity + specificity - 1 over the points of
    scikit-learn's ``roc_curve`` (predict positive when ``prob >= threshold``), e.g. on a run's validation predictions.

    ``labels`` (n,) 0/1, ``probs`` (n,). The highest threshold among ties; NaN when ``labels`` hold one class only
    (J is undefined)."""
    from sklearn.metrics import roc_curve

    y = np.asarray(labels).astype(int).ravel()
    p = np.asarray(probs, dtype=np.float64).ravel()
    if y.shape != p.shape or y.size == 0:
        raise ValueError(f"labels {y.shape} and probs {p.shape} must be the same non-empty shape")
    if not set(np.unique(y).tolist()) <= {0, 1}:
        raise ValueError("youden_threshold needs 0/1 labels")
    if not 0 < y.sum() < y.size:
        return math.nan
    fpr, tpr, thresholds = roc_curve(y, p, drop_intermediate=False)
    # The first point is roc_curve's "nothing positive" (threshold +inf): not a usable threshold.
    return float(min(thresholds[1:][int(np.argmax((tpr - fpr)[1:]))], 1.0))


def harrell_c_index(time: Sequence[float] | np.ndarray, event: Sequence[int] | np.ndarray,
                    risk: Sequence[float] | np.ndarray, tied_tol: float = 1e-8) -> float:
    """Harrell's concordance index of ``risk`` (higher: earlier event) as scikit-survival's
    ``concordance_index_censored`` counts it (tested equal): a pair (i, j) is comparable when i has an event and
    ``t_j > t_i``, or ``t_j == t_i`` and j is censored; concordant when ``risk_i > risk_j``, a tie (within
    ``tied_tol``) counts one half. NaN without comparable pairs. Numpy only (training needs no scikit-survival);
    memory O(n^2)."""
    t = np.asarray(time, dtype=np.float64).ravel()
    e = np.asarray(event).astype(bool).ravel()
    r = np.asarray(risk, dtype=np.float64).ravel()
    comparable = e[:, None] & ((t[None, :] > t[:, None]) | ((t[None, :] == t[:, None]) & ~e[None, :]))
    n = comparable.sum()
    if n == 0:
        return math.nan
    diff = r[:, None] - r[None, :]
    ties = np.abs(diff) <= tied_tol
    concordant = (comparable & ~ties & (diff > 0)).sum()
    return float((concordant + 0.5 * (comparable & ties).sum()) / n)


def regression_metrics(target: Sequence[float] | np.ndarray, pred: Sequence[float] | np.ndarray
                       ) -> dict[str, float]:
    """MAE, RMSE, R² (scikit-learn's), Pearson's r and Spearman's rho (SciPy's; NaN for a constant input)."""
    import warnings

    from scipy.stats import pearsonr, spearmanr
    from sklearn.metrics import mean_absolute_error, mean_squared_error, r2_score

    y = np.asarray(target, dtype=np.float64).ravel()
    p = np.asarray(pred, dtype=np.float64).ravel()
    out = {"mae": float(mean_absolute_error(y, p)), "rmse": float(math.sqrt(mean_squared_error(y, p))),
           "r2": float(r2_score(y, p)) if y.size > 1 else math.nan}
    with warnings.catch_warnings():  # constant input: scipy warns and returns NaN
        warnings.simplefilter("ignore")
        constant = y.size < 2 or np.ptp(y) == 0 or np.ptp(p) == 0
        out["pearson"] = math.nan if constant else float(pearsonr(y, p)[0])
        out["spearman"] = math.nan if constant else float(spearmanr(y, p)[0])
    return out
