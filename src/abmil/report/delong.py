"""DeLong's test for the difference of two correlated AUCs (DeLong, DeLong & Clarke-Pearson 1988).

Two models scored on the same cases give two AUCs whose estimates are correlated; DeLong's nonparametric
covariance of the two Mann-Whitney statistics gives the variance of their difference, and
``z = (AUC_a - AUC_b) / sqrt(var)`` is compared with the standard normal. The structural components are computed
from midranks (Sun & Xu 2014, *Fast implementation of DeLong's algorithm*, IEEE Signal Processing Letters 21(11)),
O(n log n) per model rather than the O(m n) of every positive-negative pair.

No well-kept library offers it (scikit-learn, scipy, statsmodels and lifelines do not; pROC is R); the tests check
it against an independent implementation (MLstatkit) and against the pairwise definition.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy.stats import norm, rankdata

__all__ = ["DeLongResult", "delong_components", "delong_test"]


@dataclass(frozen=True)
class DeLongResult:
    """The AUCs of two models on the same cases, the difference ``auc_a - auc_b``, its DeLong variance, z and the
    two-sided p-value, and the 95 % normal interval of the difference."""

    auc_a: float
    auc_b: float
    difference: float
    variance: float
    z: float
    p_value: float
    ci_low: float
    ci_high: float


def delong_components(labels: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(aucs (k,), V10 (k, m), V01 (k, n))`` for ``scores`` (k, n_cases) of k models against binary ``labels``
    (n_cases,): V10[r, i] is the share of negatives that positive i outranks under model r (ties count one half),
    V01[r, j] the share of positives that outrank negative j; each model's AUC is the mean of either."""
    labels = np.asarray(labels).ravel().astype(bool)
    scores = np.atleast_2d(np.asarray(scores, dtype=np.float64))
    if scores.shape[1] != labels.size:
        raise ValueError(f"{labels.size} labels but scores for {scores.shape[1]} cases")
    pos, neg = scores[:, labels], scores[:, ~labels]
    m, n = pos.shape[1], neg.shape[1]
    if m == 0 or n == 0:
        raise ValueError("DeLong's test needs positive and negative cases")
    all_ranks = np.apply_along_axis(rankdata, 1, np.concatenate([pos, neg], 1))  # midranks
    pos_ranks = np.apply_along_axis(rankdata, 1, pos)
    neg_ranks = np.apply_along_axis(rankdata, 1, neg)
    v10 = (all_ranks[:, :m] - pos_ranks) / n  # negatives below each positive (ties: one half)
    v01 = 1.0 - (all_ranks[:, m:] - neg_ranks) / m  # positives above each negative
    return v10.mean(1), v10, v01


def delong_test(labels: np.ndarray, scores_a: np.ndarray, scores_b: np.ndarray) -> DeLongResult:
    """DeLong's test of ``AUC(scores_a) = AUC(scores_b)``, both (n_cases,) scores of the same cases."""
    aucs, v10, v01 = delong_components(labels, np.stack([np.ravel(scores_a), np.ravel(scores_b)]))
    m, n = v10.shape[1], v01.shape[1]
    if m < 2 or n < 2:
        raise ValueError("DeLong's variance needs at least two positive and two negative cases")
    cov = np.cov(v10) / m + np.cov(v01) / n
    variance = float(cov[0, 0] + cov[1, 1] - 2.0 * cov[0, 1])
    diff = float(aucs[0] - aucs[1])
    if variance <= 0.0:  # identical rankings: no difference to test
        z, p = 0.0 if diff == 0.0 else math.copysign(math.inf, diff), 1.0 if diff == 0.0 else 0.0
    else:
        z = diff / math.sqrt(variance)
        p = float(2.0 * norm.sf(abs(z)))
    half = float(norm.ppf(0.975)) * math.sqrt(max(variance, 0.0))
    return DeLongResult(float(aucs[0]), float(aucs[1]), diff, variance, float(z), p, diff - half, diff + half)
