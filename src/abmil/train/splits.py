"""Stratified splits of bags grouped into cases (patients): the one splitter behind every validation split and the
slide studies' cross-validation.

Bags of one *case* (a patient's slides) always land on the same side of a split, so that no patient is seen in
training and scored in validation or test; the split is stratified by the case's label (every bag of a case carries
it: :func:`case_labels` refuses a case of two labels). Without groups every bag is its own case.

- :func:`stratified_group_holdout`: a validation part, ``round(fraction * cases of the class)`` cases of each class,
  drawn with ``numpy.random.default_rng([seed, 7])``. With singleton groups it is, draw for draw, the split the
  paper's histology protocol has always used (:func:`abmil.train.fit.validation_split` delegates here, so the
  committed reproductions keep their numbers).
- :func:`case_cv_splits`: repeated K-fold with scikit-learn's ``StratifiedGroupKFold`` (shuffled, seeded and
  reshuffled per repeat), each training part less a :func:`stratified_group_holdout` validation part.

It sits in ``train/`` rather than ``slides/`` because it knows labels and groups only: ``train/fit.py`` (bags in
memory) and ``slides/`` (slides on disk) both split through it, and ``slides/`` already depends on ``train/``.
(The benchmarks' :func:`abmil.train.cv.cv_splits` stays on ``StratifiedKFold``: its bags are their own cases, and
``StratifiedGroupKFold`` assigns singleton groups to folds differently, which would change the committed Table 1.)
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

__all__ = ["CaseSplit", "case_cv_splits", "case_labels", "fold_seed", "member_seed", "stratified_group_holdout"]


def case_labels(labels: Sequence[int] | np.ndarray, groups: Sequence | np.ndarray | None = None,
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(case of each bag (n,) int, label of each case (n_cases,), case names (n_cases,))``, cases in sorted order.

    Raises:
        ValueError: a case whose bags carry two labels (naming the case).
    """
    labels = np.asarray(labels).ravel()
    if groups is None:
        codes = np.arange(labels.size)
        return codes, labels.copy(), codes.copy()
    groups = np.asarray(groups).ravel()
    if groups.size != labels.size:
        raise ValueError(f"{labels.size} labels but {groups.size} groups")
    names, codes = np.unique(groups, return_inverse=True)
    case_label = np.empty(names.size, dtype=labels.dtype)
    case_label[codes] = labels
    mixed = np.flatnonzero(case_label[codes] != labels)
    if mixed.size:
        case = codes[mixed[0]]
        found = sorted({int(v) for v in labels[codes == case]})
        raise ValueError(f"case {str(names[case])!r} has bags of labels {found}: all bags of a case need one label")
    return codes, case_label, names


def stratified_group_holdout(labels: Sequence[int] | np.ndarray, fraction: float, seed: int,
                             groups: Sequence | np.ndarray | None = None, *,
                             min_per_class: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Split bag positions 0..n-1 into (train, val), whole cases on each side, stratified by the cases' labels.

    Each class gives ``round(fraction * n_cases_of_class)`` of its cases to validation, drawn with
    ``numpy.random.default_rng([seed, 7])``; at least one case goes to validation and at least one stays for
    training. ``min_per_class``: moreover every class of two or more cases gives at least one and keeps at least one
    (so that the validation AUC is defined; a class of one case stays in training). Both arrays are sorted int64.

    Raises:
        ValueError: fewer than 2 cases, a fraction outside (0, 1), a case of two labels.
    """
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"the validation fraction must be in (0, 1), got {fraction!r}")
    codes, case_label, _ = case_labels(labels, groups)
    n_cases = case_label.size
    if n_cases < 2:
        what = "training bags" if groups is None else "training cases"
        raise ValueError(f"need >= 2 {what} to hold some out for validation, got {n_cases}")
    rng = np.random.default_rng([seed, 7])
    val: list[np.ndarray] = []
    for c in np.unique(case_label):
        members = rng.permutation(np.flatnonzero(case_label == c))
        k = int(round(fraction * members.size))
        if min_per_class:
            k = min(max(k, 1), members.size - 1)
        val.append(members[:k])
    chosen = np.concatenate(val).astype(np.int64)
    if chosen.size == 0:
        chosen = rng.permutation(n_cases)[:1].astype(np.int64)
    elif chosen.size == n_cases:
        chosen = chosen[:-1]
    is_val_case = np.zeros(n_cases, bool)
    is_val_case[chosen] = True
    is_val = is_val_case[codes]
    return np.flatnonzero(~is_val).astype(np.int64), np.flatnonzero(is_val).astype(np.int64)


def fold_seed(seed: int, repeat: int, fold: int) -> int:
    """The seed of one (repeat, fold) run: its weights, its epoch orders, its validation split (as
    :func:`abmil.train.cv.cv_splits`)."""
    return seed * 100_000 + repeat * 1000 + fold


def member_seed(seed: int, member: int) -> int:
    """The seed of member ``member`` of a seed ensemble trained on one split (``abmil train --folds K --seeds N``):
    member 0 the split's own seed (a study of one seed is unchanged), member j its seed + j * 1,000,000,007 (clear of
    every other fold's seed). It seeds the model's initialisation, epoch orders and dropout; the split stays."""
    return seed if member == 0 else seed + member * 1_000_000_007


@dataclass(frozen=True)
class CaseSplit:
    """One (repeat, fold) of a case-level cross-validation: bag positions, sorted int64."""

    repeat: int
    fold: int
    seed: int
    train: np.ndarray
    val: np.ndarray
    test: np.ndarray

    @property
    def key(self) -> str:
        return f"r{self.repeat}_f{self.fold}"


def case_cv_splits(labels: Sequence[int] | np.ndarray, groups: Sequence | np.ndarray | None = None, *,
                   folds: int, repeats: int = 1, seed: int = 0, val_fraction: float | None = 0.2,
                   class_names: Sequence[str] | None = None, stratum: str = "class",
                   sites: Sequence | np.ndarray | None = None) -> list[CaseSplit]:
    """Repeated stratified group K-fold: for each repeat, ``StratifiedGroupKFold(folds, shuffle=True,
    random_state=seed * 1000 + repeat)`` over the cases; each training part less a validation part
    (:func:`stratified_group_holdout` with ``min_per_class``, seeded by :func:`fold_seed`); ``val_fraction`` None:
    no validation part. ``labels`` are the strata: classes, or (survival, regression) the event or a target quantile
    group (:meth:`abmil.tasks.base.Task.strata`); ``stratum`` is how messages name them.

    ``sites`` (one per bag, e.g. the hospital): site-preserved folds, every site whole in one test fold — the folds
    are drawn over the sites (``StratifiedGroupKFold`` with the sites as groups), or, when ``folds`` equals the
    number of sites, leave-one-site-out (``LeaveOneGroupOut``; repeats then differ only in their validation parts
    and seeds). A test fold may then lack a class (a site that saw only one); training parts may not. Cases stay
    whole within the training part's validation split.

    Raises:
        ValueError: folds < 2 or repeats < 1; a class with fewer cases than folds (a test fold would miss it); a test
            fold, training part or validation part missing a class; a case of two labels. Messages name the class
            (``class_names[c]`` if given) and the fold. With ``sites``: fewer than two sites, more folds than sites,
            a case whose bags lie in two sites (naming the case).
    """
    from sklearn.model_selection import StratifiedGroupKFold

    if isinstance(folds, bool) or not isinstance(folds, (int, np.integer)) or folds < 2:
        raise ValueError(f"folds must be an integer >= 2, got {folds!r}")
    if isinstance(repeats, bool) or not isinstance(repeats, (int, np.integer)) or repeats < 1:
        raise ValueError(f"repeats must be an integer >= 1, got {repeats!r}")
    labels = np.asarray(labels).ravel()
    codes, case_label, _ = case_labels(labels, groups)

    def name(c: int) -> str:
        return repr(str(class_names[c])) if class_names is not None else str(c)

    classes = np.unique(case_label)
    if classes.size < 2:
        plural = "classes" if stratum == "class" else f"{stratum}s"
        raise ValueError(f"cross-validation needs cases of at least two {plural}, all cases are of {stratum} "
                         f"{name(int(classes[0]))}")
    site_codes = None if sites is None else _site_codes(sites, codes, groups)
    if site_codes is None:
        for c in classes:
            n_c = int((case_label == c).sum())
            if n_c < folds:
                raise ValueError(f"{stratum} {name(int(c))} has {n_c} case(s), fewer than the {folds} folds: every "
                                 f"test fold needs a case of each {stratum} (use --folds {max(n_c, 2)} or fewer, or "
                                 "more cases)")
    else:
        n_sites = int(site_codes.max()) + 1
        if n_sites < 2:
            raise ValueError("site-preserved cross-validation needs at least two sites, the site column holds one")
        if folds > n_sites:
            raise ValueError(f"--folds {folds} is more than the {n_sites} sites: every test fold holds whole sites "
                             f"(use --folds {n_sites} for leave-one-site-out, or fewer)")
    out = []
    for r in range(repeats):
        if site_codes is not None and folds == int(site_codes.max()) + 1:
            from sklearn.model_selection import LeaveOneGroupOut

            parts = LeaveOneGroupOut().split(np.zeros(labels.size), labels, site_codes)
        else:
            splitter = StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=seed * 1000 + r)
            parts = splitter.split(np.zeros(labels.size), labels, codes if site_codes is None else site_codes)
        for f, (tr, te) in enumerate(parts):
            s = fold_seed(seed, r, f)
            where = f"repeat {r} fold {f}"
            checked = (("training part", tr),) if site_codes is not None else (("test fold", te), ("training part", tr))
            for part, idx in checked:
                missing = [name(int(c)) for c in classes if not np.any(labels[idx] == c)]
                if missing:
                    raise ValueError(f"{where}: the {part} holds no case of {stratum} {', '.join(missing)}; "
                                     "use fewer folds")
            tr = np.sort(tr).astype(np.int64)
            if val_fraction is None:
                val = np.zeros(0, np.int64)
            else:
                keep, held = stratified_group_holdout(labels[tr], val_fraction, s, codes[tr], min_per_class=True)
                tr, val = tr[keep], tr[held]
            out.append(CaseSplit(r, f, s, tr, val, np.sort(te).astype(np.int64)))
    return out


def _site_codes(sites: Sequence | np.ndarray, codes: np.ndarray, groups) -> np.ndarray:
    """(n,) site index of each bag; ValueError naming a case whose bags lie in two sites."""
    sites = np.asarray(sites).ravel()
    if sites.size != codes.size:
        raise ValueError(f"{codes.size} bags but {sites.size} sites")
    names, site_codes = np.unique(sites, return_inverse=True)
    first = np.full(int(codes.max()) + 1, -1)
    first[codes[::-1]] = site_codes[::-1]  # the site of each case's first bag
    split = np.flatnonzero(first[codes] != site_codes)
    if split.size:
        bag = int(split[0])
        case = np.asarray(groups).ravel()[bag] if groups is not None else bag
        found = sorted({str(names[k]) for k in site_codes[codes == codes[bag]]})
        raise ValueError(f"case {str(case)!r} has slides in sites {found}: all slides of a case need one site")
    return site_codes.astype(np.int64)
