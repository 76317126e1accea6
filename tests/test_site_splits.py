"""Site-preserved cross-validation (abmil.train.splits.case_cv_splits with sites): every site whole in one test fold,
no case split, leave-one-site-out when the folds equal the sites; property-checked over random manifests."""
from __future__ import annotations

import numpy as np
import pytest

from abmil.train.splits import case_cv_splits


def random_manifest(rng: np.random.Generator):
    """Sites of several cases, cases of 1-3 slides, each case one label; every site holds both labels mostly."""
    n_sites = int(rng.integers(2, 7))
    labels, cases, sites = [], [], []
    for s in range(n_sites):
        for c in range(int(rng.integers(3, 9))):
            label = int(rng.integers(0, 2)) if c > 1 else c  # each site's first two cases: one of each class
            for _ in range(int(rng.integers(1, 4))):
                labels.append(label)
                cases.append(f"site{s}_case{c}")
                sites.append(f"site{s}")
    return np.array(labels), np.array(cases), np.array(sites), n_sites


@pytest.mark.parametrize("seed", range(40))
def test_no_site_in_two_test_folds_and_no_case_split(seed):
    rng = np.random.default_rng(seed)
    labels, cases, sites, n_sites = random_manifest(rng)
    folds = int(rng.integers(2, n_sites + 1))
    splits = case_cv_splits(labels, cases, folds=folds, repeats=2, seed=seed, sites=sites)
    assert len(splits) == 2 * folds
    for r in range(2):
        tests = [s.test for s in splits if s.repeat == r]
        assert np.array_equal(np.sort(np.concatenate(tests)), np.arange(labels.size))  # each bag tested once
        fold_of_site: dict[str, int] = {}
        for f, te in enumerate(tests):
            for site in set(sites[te]):
                assert fold_of_site.setdefault(site, f) == f, f"site {site} in two test folds"
    for s in splits:
        parts = [s.train, s.val, s.test]
        assert sum(p.size for p in parts) == labels.size
        for a in range(3):
            for b in range(a + 1, 3):
                assert not set(cases[parts[a]]) & set(cases[parts[b]]), "a case on two sides"
        assert not set(sites[s.test]) & set(sites[np.concatenate([s.train, s.val])]), "a test site also trained on"
        assert set(labels[s.train]) == {0, 1}


def test_leave_one_site_out_when_folds_equal_sites():
    rng = np.random.default_rng(3)
    labels, cases, sites, n_sites = random_manifest(rng)
    splits = case_cv_splits(labels, cases, folds=n_sites, seed=0, sites=sites)
    assert sorted(len(set(sites[s.test])) for s in splits) == [1] * n_sites
    assert {sites[s.test][0] for s in splits} == set(sites)


def test_refusals_name_what_is_wrong():
    labels = np.array([0, 1, 0, 1, 0, 1])
    cases = np.array(["a", "b", "c", "d", "e", "f"])
    with pytest.raises(ValueError, match="at least two sites"):
        case_cv_splits(labels, cases, folds=2, sites=["h1"] * 6)
    with pytest.raises(ValueError, match="--folds 3 is more than the 2 sites"):
        case_cv_splits(labels, cases, folds=3, sites=["h1", "h1", "h1", "h2", "h2", "h2"])
    with pytest.raises(ValueError, match="case 'a' has slides in sites"):
        case_cv_splits(np.array([0, 0, 0, 1, 0, 1]), np.array(["a", "a", "c", "d", "e", "f"]), folds=2,
                       sites=["h1", "h2", "h1", "h2", "h1", "h2"])


def test_without_sites_the_splits_are_unchanged():
    """The site option leaves the case-level splits (and so every committed study) as they were."""
    rng = np.random.default_rng(1)
    labels, cases, _, _ = random_manifest(rng)
    a = case_cv_splits(labels, cases, folds=3, repeats=2, seed=5)
    b = case_cv_splits(labels, cases, folds=3, repeats=2, seed=5, sites=None)
    for x, y in zip(a, b):
        assert all(np.array_equal(getattr(x, k), getattr(y, k)) for k in ("train", "val", "test"))
