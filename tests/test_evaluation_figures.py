"""The figures a reviewer expects: a bootstrap band around the ROC curve, Wilson intervals on the reliability bins,
numbers at risk under the Kaplan-Meier curves (the parts checked against scikit-learn and scikit-survival)."""
from __future__ import annotations

import numpy as np
from sklearn.calibration import calibration_curve
from sklearn.metrics import roc_curve

from abmil.report.evaluation_plots import bin_intervals, numbers_at_risk, plot_calibration, plot_roc, roc_band
from abmil.report.survival_evaluate import plot_km


def _binary(n, seed=0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    return y, np.clip(0.35 * y + rng.uniform(0, 0.65, n), 0, 1)


def test_roc_band_holds_the_curve_and_narrows_with_more_cases():
    grid = np.linspace(0, 1, 101)
    widths = []
    for n in (80, 1280):
        y, p = _binary(n)
        lo, hi = roc_band(y, p, n_bootstrap=300, seed=0, grid=grid)
        fpr, tpr, _ = roc_curve(y, p)
        curve = np.interp(grid, fpr, tpr)
        assert (lo <= hi).all() and (0 <= lo).all() and (hi <= 1).all()
        assert ((lo <= curve + 1e-12) & (curve <= hi + 1e-12)).mean() > 0.9
        widths.append(float((hi - lo).mean()))
    assert widths[1] < widths[0] / 2  # 16x the cases: about a quarter of the width
    y, p = _binary(80)
    assert np.array_equal(roc_band(y, p, n_bootstrap=50, seed=1, grid=grid)[0],
                          roc_band(y, p, n_bootstrap=50, seed=1, grid=grid)[0])
    assert roc_band(np.r_[1, 0], np.r_[0.2, 0.9], n_bootstrap=1, seed=0, grid=grid) is None


def test_reliability_bins_are_calibration_curves_with_wilson_intervals():
    y, p = _binary(300, seed=2)
    counts, frac, lo, hi = bin_intervals(y, p, 10)
    prob_true, _ = calibration_curve(y, p, n_bins=10, strategy="uniform")
    full = counts > 0
    np.testing.assert_allclose(frac[full], prob_true)
    assert counts.sum() == 300 and ((lo[full] <= frac[full]) & (frac[full] <= hi[full])).all()
    assert np.isnan(frac[~full]).all()
    assert plot_calibration(y, p, binary=True, positive="1", n_bins=10, title="t")[:4] == b"\x89PNG"
    assert plot_roc(y, np.c_[1 - p, p], ["0", "1"], title="t", n_bootstrap=20)[:4] == b"\x89PNG"


def test_numbers_at_risk_are_scikit_survivals():
    from sksurv.nonparametric import _compute_counts

    rng = np.random.default_rng(3)
    time = rng.integers(1, 30, 60).astype(float)
    event = rng.uniform(size=60) < 0.6
    times, _, at_risk, _ = _compute_counts(event, time)
    assert np.array_equal(numbers_at_risk(time, times), at_risk)
    assert numbers_at_risk(time, [0.0, 1e9]).tolist() == [60, 0]
    risk = -time + rng.normal(0, 5, 60)
    assert plot_km(np.c_[time, event], risk, 2, title="t", time_unit="months")[:4] == b"\x89PNG"
