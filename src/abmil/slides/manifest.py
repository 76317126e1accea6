"""The slide manifest of a feature-bag dataset: its rows, its label encoding, its split into train and validation.

A manifest is a CSV with one row per slide::

    slide_id,label,split,path,case_id
    TCGA-A1-0001,tumor,train,,TCGA-A1
    TCGA-A1-0002,normal,test,other/TCGA-A1-0002.h5,

``slide_id`` and ``label`` are required; ``split``, ``path`` and ``case_id`` are optional columns (an
empty ``path`` cell means "find the file by its slide id"; an empty ``case_id`` cell: the slide is its
own case, named by its slide id). Labels are integers or class names; class names become indices in a
stable order, kept so that a run can store the mapping.

A *case* (a patient) is the unit of every split: the slides of a case carry one label and one ``split``
value (refused otherwise), and validation and cross-validation folds keep them together
(:mod:`abmil.train.splits`).

Survival and regression manifests (``task``) carry the outcome instead of ``label``: ``time`` (>= 0, any unit)
and ``event`` (1 = the event was observed at ``time``, 0 = censored at ``time``), or ``target`` (a finite number).
A case's slides carry one outcome; a survival manifest to train on needs at least one event.

Any other column is kept for grouping (:func:`group_values`): typically ``site`` (the hospital or scanner of the
slide), which ``abmil train --folds K --group-by site`` keeps whole in one test fold and ``abmil evaluate`` /
``abmil compare --by site`` report rows of; a case's slides carry one value of it.
"""
from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..errors import DataError
from .tables import read_csv

if TYPE_CHECKING:
    from ..tasks.base import Task

REQUIRED_COLUMNS = ("slide_id", "label")
OPTIONAL_COLUMNS = ("split", "path", "case_id", "site")
#: The usual grouping column (:func:`group_values`): the slide's site.
SITE_COLUMN = "site"


@dataclass(frozen=True)
class ManifestRow:
    """One slide of the manifest, as written (cells stripped; empty optional cells are None)."""

    slide_id: str
    label: str
    split: str | None = None
    path: str | None = None
    case_id: str | None = None
    outcome: Any = None
    """The truth of a task without classes (its :meth:`~abmil.tasks.base.Task.parse_row`: survival ``(time,
    event)``, regression the target); None where its cells are empty, and for classification (``label``)."""

    @property
    def case(self) -> str:
        """The slide's case: its ``case_id``, or the slide itself."""
        return self.case_id if self.case_id is not None else self.slide_id


def read_manifest(path: str | os.PathLike, *, task: type[Task] | None = None, require_labels: bool = True,
                  truth_columns: bool = True) -> list[ManifestRow]:
    """Read and check a manifest CSV (:func:`abmil.slides.tables.read_csv`, the one CSV reader): columns present,
    not empty, no duplicate or blank ids/labels; every reader of a manifest (the datasets, ``abmil evaluate``) reads
    it here.

    ``task`` (a :class:`~abmil.tasks.base.Task` class, :func:`abmil.tasks.get_task`; None: the ``label`` column's
    text only, as classification reads it, for readers below the tasks) names its columns
    (:attr:`~abmil.tasks.base.Task.columns`: classification ``label``, survival ``time`` and ``event``, regression
    ``target``) and reads and checks their cells (:meth:`~abmil.tasks.base.Task.parse_row`: time >= 0 and finite,
    event 0 or 1, target finite; a slide with a time needs an event and the reverse;
    :meth:`~abmil.tasks.base.Task.check_rows`: training data (``require_labels``) for survival needs at least one
    event). ``require_labels=False`` (prediction on new slides, evaluation): empty cells are allowed (a label is
    then read as ``""``, an outcome as None), and the columns themselves may be absent unless the task needs them
    to predict (:attr:`~abmil.tasks.base.Task.columns_to_predict`) and ``truth_columns`` (False: a manifest read for
    its case ids only).
    """
    outcome_columns = ("label",) if task is None else task.columns
    path = os.fspath(path)
    columns, raw = read_csv(path, "manifest")
    if require_labels:
        required = ("slide_id", *outcome_columns)
    elif (task is None or task.columns_to_predict) and truth_columns:
        required = ("slide_id", *outcome_columns)
    else:
        required = ("slide_id",)
    missing = [c for c in required if c not in columns]
    if missing:
        raise DataError(f"manifest is missing column(s) {', '.join(missing)} "
                        f"(found: {', '.join(columns) or 'none'})", path=path)

    rows: list[ManifestRow] = []
    seen: dict[str, int] = {}
    for line, cells in raw:
        slide_id = cells["slide_id"]
        if not slide_id:
            raise DataError(f"line {line}: field 'slide_id' is empty", path=path)
        if slide_id in seen:
            raise DataError(f"field 'slide_id': duplicate slide id (lines {seen[slide_id]} and {line})",
                            path=path, bag=slide_id)
        seen[slide_id] = line
        if require_labels:
            for column in outcome_columns:
                if not cells.get(column):
                    raise DataError(f"line {line}: field '{column}' is empty", path=path, bag=slide_id)
        label, outcome = (cells.get("label", ""), None) if task is None else \
            task.parse_row(cells, line, path, slide_id)
        split = (cells.get("split") or "").lower() or None  # "Train", "TEST": spreadsheets capitalise
        if split is not None and split not in SPLIT_VALUES:
            raise DataError(f"line {line}: field 'split': unknown value {split!r} (expected one of "
                            f"{', '.join(SPLIT_VALUES)}, or empty to leave the slide out)", path=path, bag=slide_id)
        rows.append(ManifestRow(slide_id, label, split, cells.get("path") or None, cells.get("case_id") or None,
                                outcome))
    if not rows:
        raise DataError("manifest is empty: no slides listed", path=path)
    if task is not None:
        task.check_rows(rows, path, require_labels)
    check_cases(rows, manifest=path)
    return rows


def check_cases(rows: Sequence[ManifestRow], *, manifest: str | None = None) -> None:
    """Every case's slides carry one label (empty cells aside) and one ``split`` value; DataError naming the case
    and its slides otherwise."""
    cases: dict[str, list[ManifestRow]] = {}
    for r in rows:
        cases.setdefault(r.case, []).append(r)
    for case, members in cases.items():
        if len(members) < 2:
            continue
        for field, value in (("label", lambda r: r.label or None), ("split", lambda r: r.split),
                             ("outcome", lambda r: r.outcome)):
            values = {value(r) for r in members} - ({None} if field in ("label", "outcome") else set())
            if len(values) > 1:
                slides = ", ".join(f"{r.slide_id} ({value(r) or 'empty'})" for r in members)
                raise DataError(f"field '{field}': case {case!r} has slides of {len(values)} {field}s: {slides}; "
                                f"all slides of a case need one {field}", path=manifest, bag=case)


def group_values(path: str | os.PathLike, column: str, slide_ids: Sequence[str], *, flag: str,
                 cases: Sequence[str] | None = None) -> list[str]:
    """The ``column`` cell of each of ``slide_ids`` in the manifest (or predictions file) at ``path``: what a study
    groups its folds by (``--group-by``) or an evaluation its rows (``--by``), e.g. :data:`SITE_COLUMN`.

    DataError naming ``flag`` and the file where the column is missing, a slide is absent or its cell empty, or
    (``cases``: each slide's case) a case's slides hold two values."""
    from .tables import read_table

    path = os.fspath(path)
    columns, rows = read_table(path, "manifest")
    if column not in columns:
        raise DataError(f"{flag} {column}: no column {column!r} (found: {', '.join(columns)})", path=path)
    value = {cells["slide_id"]: cells[column] for _, cells in rows}
    for s in slide_ids:
        if not value.get(s):
            what = "is empty" if s in value else "is missing (the slide is not listed)"
            raise DataError(f"{flag} {column}: the slide's {column!r} cell {what}", path=path, bag=s)
    out = [value[s] for s in slide_ids]
    if cases is not None:
        seen: dict[str, tuple[str, str]] = {}
        for s, c, v in zip(slide_ids, cases, out):
            first = seen.setdefault(c, (s, v))
            if first[1] != v:
                raise DataError(f"{flag} {column}: case {c!r} has slides in two {column}s ({first[0]} {first[1]!r}, "
                                f"{s} {v!r}): all slides of a case need one {column}", path=path, bag=c)
    return out


def _as_int(label: str) -> int | None:
    try:
        return int(label)
    except ValueError:
        return None


def encode_labels(rows: Sequence[ManifestRow], classes: Sequence[str] | None = None, *,
                  manifest: str | None = None) -> tuple[list[int], list[str] | None]:
    """Map each row's label to a class index. Returns ``(labels, classes)``.

    - ``classes`` given: each label must be one of them (compared as text, so ``classes=[0, 1]``
      matches the labels ``0`` and ``1``); the index is its position in ``classes``.
    - ``classes`` not given, every label an integer ≥ 0: the integers themselves, and ``None``.
    - otherwise: the sorted distinct labels are the classes, so the order never depends on row
      order and the same manifest always gives the same mapping.
    """
    if classes is not None:
        names = [str(c) for c in classes]
        if len(set(names)) != len(names):
            raise ValueError(f"classes has duplicates: {names}")
        index = {c: i for i, c in enumerate(names)}
        labels = []
        for r in rows:
            if r.label not in index:
                raise DataError(f"field 'label': {r.label!r} is not one of the classes {names}",
                                path=manifest, bag=r.slide_id)
            labels.append(index[r.label])
        return labels, names

    ints = [_as_int(r.label) for r in rows]
    numbered = [r for r, i in zip(rows, ints) if i is not None and r.label]
    named = [r for r, i in zip(rows, ints) if i is None and r.label]
    if numbered and named:  # e.g. a "1" among "tumor"/"normal": a typo that would become a class of its own
        raise DataError(f"field 'label': labels mix class indices and class names ({numbered[0].label!r} for "
                        f"{numbered[0].slide_id}, {named[0].label!r} for {named[0].slide_id}): use one or the other",
                        path=manifest, bag=numbered[0].slide_id)
    if all(i is not None for i in ints):
        for r, i in zip(rows, ints):
            if i < 0:
                raise DataError(f"field 'label': negative class index {i}", path=manifest, bag=r.slide_id)
        return ints, None
    names = sorted({r.label for r in rows})
    index = {c: i for i, c in enumerate(names)}
    return [index[r.label] for r in rows], names


def positive_last(classes: Sequence[str], positive: str) -> list[str]:
    """Two classes in the order that makes ``positive`` the second: the class whose probability the AUC, the
    thresholds, sensitivity and the figures are about (by default the sorted labels' last). ValueError naming
    ``--positive-class`` unless there are two classes and ``positive`` is one of them."""
    names = [str(c) for c in classes]
    if len(names) != 2:
        raise ValueError(f"--positive-class is for two classes; the manifest has {len(names)}: {', '.join(names)}")
    if str(positive) not in names:
        raise ValueError(f"--positive-class {positive!r} is not a class of the manifest ({', '.join(names)})")
    return [c for c in names if c != str(positive)] + [str(positive)]


VAL_SPLITS = ("val", "valid", "validation")
TRAIN_SPLIT = "train"
#: The values a manifest's split column may hold (empty: the slide is left out of training and validation).
SPLIT_VALUES = (TRAIN_SPLIT, *VAL_SPLITS, "test")


def train_val_split(labels: Sequence[int], splits: Sequence[str | None], val_split: float | None,
                    seed: int, cases: Sequence[str] | None = None) -> tuple[list[int], list[int]]:
    """Slide positions ``(train, val)``.

    - With a ``split`` column in the manifest: ``train`` rows train; ``val``/``valid``/
      ``validation`` rows validate; other rows (``test``, empty) are left out. ``val_split``
      then takes its fraction out of the ``train`` rows, and is refused if there are val rows.
    - Without: every slide trains, less a ``val_split`` fraction.

    The fraction is taken in whole cases (``cases``: each slide's case; None: each slide its own), per class,
    at least one case of a class of two or more: :func:`abmil.train.splits.stratified_group_holdout`, seeded by
    ``seed``.
    """
    from ..train.splits import stratified_group_holdout

    has_column = any(s is not None for s in splits)
    if has_column:
        pool = [i for i, s in enumerate(splits) if s == TRAIN_SPLIT]
        val = [i for i, s in enumerate(splits) if s in VAL_SPLITS]
        if val_split is not None and val:
            raise ValueError("the manifest's split column already names validation slides; "
                             "drop --val-split or the val rows")
        if not pool:
            raise ValueError(f"no training slides: the manifest's split column has no {TRAIN_SPLIT!r} rows")
    else:
        pool, val = list(range(len(labels))), []
    if not val_split:
        return pool, val
    if not 0.0 < val_split < 1.0:
        raise ValueError(f"val_split must be a fraction in (0, 1), got {val_split}")
    groups = None if cases is None else [cases[i] for i in pool]
    keep, held = stratified_group_holdout([labels[i] for i in pool], val_split, seed, groups, min_per_class=True)
    return [pool[j] for j in keep], [pool[j] for j in held]
