"""The one case-level splitter (abmil.train.splits): whole cases on each side of every split, stratified, seeded;
and the histology protocol's validation split unchanged, draw for draw."""
from __future__ import annotations

import numpy as np
import pytest

from abmil.train.fit import validation_split
from abmil.train.splits import case_cv_splits, case_labels, stratified_group_holdout


def _validation_split_before(labels: np.ndarray, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """train/fit.validation_split as it was before it delegated to the splitter (frozen copy)."""
    labels = np.asarray(labels).ravel()
    n = labels.size
    rng = np.random.default_rng([seed, 7])
    val = []
    for c in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == c))
        val.append(members[:int(round(val_fraction * members.size))])
    chosen = np.concatenate(val).astype(np.int64)
    if chosen.size == 0:
        chosen = rng.permutation(n)[:1].astype(np.int64)
    elif chosen.size == n:
        chosen = chosen[:-1]
    is_val = np.zeros(n, bool)
    is_val[chosen] = True
    return np.flatnonzero(~is_val).astype(np.int64), np.flatnonzero(is_val).astype(np.int64)


def test_validation_split_is_the_same_draws_as_before():
    """The committed histology reproductions split through validation_split: its numbers must not move."""
    rng = np.random.default_rng(0)
    for trial in range(300):
        n = int(rng.integers(2, 80))
        labels = rng.integers(0, 2, n)
        fraction = float(rng.choice([0.1, 0.2, 0.25, 0.5, 0.9]))
        before = _validation_split_before(labels, fraction, trial)
        for got, want in zip(validation_split(labels, fraction, trial), before):
            np.testing.assert_array_equal(got, want)
            assert got.dtype == np.int64


def random_manifest(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, int]:
    """Labels and case ids of a random slide manifest: 2-4 classes, 1-4 slides per case; K folds that it allows."""
    n_classes = int(rng.integers(2, 5))
    folds = int(rng.integers(2, 6))
    cases_per_class = rng.integers(folds, folds + 12, n_classes)
    labels, groups = [], []
    for c, n_cases in enumerate(cases_per_class):
        for k in range(n_cases):
            for _ in range(int(rng.integers(1, 5))):
                labels.append(c)
                groups.append(f"P{c}-{k}")
    order = rng.permutation(len(labels))  # manifest rows in any order
    return np.array(labels)[order], np.array(groups)[order], folds


def test_case_cv_splits_property_over_random_manifests():
    rng = np.random.default_rng(1)
    for trial in range(60):
        labels, groups, folds = random_manifest(rng)
        repeats = int(rng.integers(1, 3))
        splits = case_cv_splits(labels, groups, folds=folds, repeats=repeats, seed=trial, val_fraction=0.25)
        assert len(splits) == folds * repeats
        n = labels.size
        for r in range(repeats):
            mine = [s for s in splits if s.repeat == r]
            tested = np.concatenate([s.test for s in mine])
            assert np.array_equal(np.sort(tested), np.arange(n))  # every slide in exactly one test fold per repeat
            test_cases = [set(groups[s.test]) for s in mine]
            assert sum(len(t) for t in test_cases) == len(set(groups))  # no case in two test folds
            for s in mine:
                parts = [set(groups[s.train]), set(groups[s.val]), set(groups[s.test])]
                assert not (parts[0] & parts[1] or parts[0] & parts[2] or parts[1] & parts[2])  # no case on two sides
                assert np.array_equal(np.sort(np.concatenate([s.train, s.val, s.test])), np.arange(n))
                for part in (s.train, s.val, s.test):  # all slides of a case together
                    members = set(part.tolist())
                    for case in set(groups[part]):
                        assert set(np.flatnonzero(groups == case).tolist()) <= members
                # stratification roughly kept: each class's share of a test fold's cases near its overall share
                _, case_label, names = case_labels(labels, groups)
                fold_labels = case_label[np.isin(names, list(set(groups[s.test])))]
                for c in np.unique(labels):
                    assert np.any(fold_labels == c) and np.any(labels[s.train] == c)
                    fit_part = np.concatenate([s.train, s.val])
                    if len(set(groups[fit_part][labels[fit_part] == c])) >= 2:
                        assert np.any(labels[s.val] == c)  # a class of two or more training cases validates too
                    share, overall = np.mean(fold_labels == c), np.mean(case_label == c)
                    assert abs(share - overall) <= 1.0 / folds + 1.5 / fold_labels.size, (trial, c, share, overall)
        # seeded: the same splits again; another repeat reshuffles
        again = case_cv_splits(labels, groups, folds=folds, repeats=repeats, seed=trial, val_fraction=0.25)
        assert all(np.array_equal(a.test, b.test) and np.array_equal(a.val, b.val) for a, b in zip(splits, again))


def test_repeats_reshuffle_and_holdout_keeps_cases_whole():
    labels = np.repeat([0, 1], 20)
    groups = np.repeat(np.arange(20), 2)
    splits = case_cv_splits(labels, groups, folds=4, repeats=2, seed=0)
    assert not all(np.array_equal(a.test, b.test) for a, b in zip(splits[:4], splits[4:]))
    tr, val = stratified_group_holdout(labels, 0.2, 3, groups, min_per_class=True)
    assert not set(groups[tr]) & set(groups[val]) and len(set(groups[val])) == 4  # round(0.2 * 10) cases a class


def test_splitter_refusals_name_the_case_class_and_fold():
    with pytest.raises(ValueError, match="case 'P1' has bags of labels \\[0, 1\\]"):
        case_labels([0, 1, 1], ["P1", "P1", "P2"])
    with pytest.raises(ValueError, match="class 'tumor' has 2 case\\(s\\), fewer than the 3 folds"):
        case_cv_splits([0, 0, 0, 1, 1], None, folds=3, class_names=["normal", "tumor"])
    with pytest.raises(ValueError, match="at least two classes"):
        case_cv_splits([0, 0, 0], None, folds=2)
    with pytest.raises(ValueError, match="folds must be an integer >= 2"):
        case_cv_splits([0, 1], None, folds=1)
