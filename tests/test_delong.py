"""DeLong's test (abmil.report.delong) against an independent implementation (MLstatkit) and the pairwise definition."""
from __future__ import annotations

import itertools

import numpy as np
import pytest

from abmil.report.delong import delong_components, delong_test


def pairwise_components(labels, scores):
    """DeLong et al. (1988) as written: psi over every positive-negative pair, O(m n)."""
    pos, neg = scores[labels == 1], scores[labels == 0]
    psi = (pos[:, None] > neg[None, :]) + 0.5 * (pos[:, None] == neg[None, :])
    return psi.mean(), psi.mean(1), psi.mean(0)


def pairwise_test(labels, a, b):
    (auc_a, v10a, v01a), (auc_b, v10b, v01b) = pairwise_components(labels, a), pairwise_components(labels, b)
    m, n = v10a.size, v01a.size
    s10, s01 = np.cov(np.stack([v10a, v10b])), np.cov(np.stack([v01a, v01b]))
    cov = s10 / m + s01 / n
    return auc_a - auc_b, cov[0, 0] + cov[1, 1] - 2 * cov[0, 1]


@pytest.mark.parametrize("seed", range(4))
def test_components_equal_the_pairwise_definition_with_ties(seed):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, 60)
    labels[:2] = [0, 1]
    scores = np.round(rng.normal(size=60) + labels, 1)  # rounded: many ties
    auc, v10, v01 = delong_components(labels, scores)
    ref_auc, ref_v10, ref_v01 = pairwise_components(labels, scores)
    np.testing.assert_allclose(auc[0], ref_auc, atol=1e-12)
    np.testing.assert_allclose(v10[0], ref_v10, atol=1e-12)
    np.testing.assert_allclose(v01[0], ref_v01, atol=1e-12)


@pytest.mark.parametrize("seed", range(4))
def test_difference_and_variance_equal_the_pairwise_definition(seed):
    rng = np.random.default_rng(seed)
    labels = np.r_[np.zeros(25, int), np.ones(20, int)]
    a = labels + rng.normal(size=45)
    b = 0.5 * labels + rng.normal(size=45) + 0.3 * a
    result = delong_test(labels, a, b)
    diff, var = pairwise_test(labels, a, b)
    assert result.difference == pytest.approx(diff, abs=1e-12)
    assert result.variance == pytest.approx(var, rel=1e-10)


@pytest.mark.parametrize("seed", range(5))
def test_equals_mlstatkit(seed):
    mlstatkit = pytest.importorskip("MLstatkit")
    rng = np.random.default_rng(seed)
    n = 80
    labels = rng.integers(0, 2, n)
    a = labels * rng.uniform(0.2, 1.5) + rng.normal(size=n)
    b = labels * rng.uniform(0.2, 1.5) + rng.normal(size=n)
    z, p, *_ = mlstatkit.Delong_test(labels, a, b, return_ci=False, return_auc=False)
    result = delong_test(labels, a, b)
    assert result.z == pytest.approx(-z, rel=1e-9)  # MLstatkit signs z as AUC_B - AUC_A
    assert result.p_value == pytest.approx(p, rel=1e-9)


def test_identical_models_have_p_one_and_a_clear_model_a_small_p():
    rng = np.random.default_rng(0)
    labels = np.r_[np.zeros(50, int), np.ones(50, int)]
    a = 2.0 * labels + rng.normal(size=100)
    assert delong_test(labels, a, a).p_value == 1.0
    result = delong_test(labels, a, rng.normal(size=100))
    assert result.difference > 0.3 and result.p_value < 1e-4 and result.ci_low > 0


def test_refuses_one_class():
    with pytest.raises(ValueError, match="positive and negative"):
        delong_test(np.ones(5), np.arange(5.0), np.arange(5.0))
    for labels in itertools.product([0, 1], repeat=3):
        if len(set(labels)) == 2:
            with pytest.raises(ValueError, match="two positive and two negative"):
                delong_test(np.array(labels), np.arange(3.0), np.arange(3.0)[::-1])
