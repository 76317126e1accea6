"""The slide manifest of a feature-bag dataset: its rows, its label encoding, its split into train and validation.

A manifest is a CSV with one row per slide::

    slide_id,label,split,path
    TCGA-A1-0001,tumor,train,
    TCGA-A1-0002,normal,test,other/TCGA-A1-0002.h5

``slide_id`` and ``label`` are required; ``split`` and ``path`` are optional columns (and an
empty ``path`` cell means "find the file by its slide id"). Labels are integers or class names;
class names become indices in a stable order, kept so that a run can store the mapping.
"""
from __future__ import annotations

import csv
import os
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ..errors import DataError

REQUIRED_COLUMNS = ("slide_id", "label")
OPTIONAL_COLUMNS = ("split", "path")


@dataclass(frozen=True)
class ManifestRow:
    """One slide of the manifest, as written (cells stripped; empty optional cells are None)."""

    slide_id: str
    label: str
    split: str | None = None
    path: str | None = None


def read_manifest(path: str | os.PathLike, *, require_labels: bool = True) -> list[ManifestRow]:
    """Read and check a manifest CSV: columns present, not empty, no duplicate or blank ids/labels.

    ``require_labels=False`` (prediction on new slides): an empty ``label`` cell is allowed and read as ``""``.
    """
    path = os.fspath(path)
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:  # -sig: spreadsheets write a BOM
            reader = csv.DictReader(f)
            columns = [c.strip() for c in (reader.fieldnames or [])]
            missing = [c for c in REQUIRED_COLUMNS if c not in columns]
            if missing:
                raise DataError(f"manifest is missing column(s) {', '.join(missing)} "
                                f"(found: {', '.join(columns) or 'none'})", path=path)
            reader.fieldnames = columns
            raw = list(reader)
    except FileNotFoundError:
        raise DataError("manifest not found", path=path) from None

    rows: list[ManifestRow] = []
    seen: dict[str, int] = {}
    for line, r in enumerate(raw, start=2):  # line 1 is the header
        cells = {k: (v or "").strip() for k, v in r.items() if k is not None}
        if not any(cells.values()):
            continue  # a trailing blank line is not a slide
        slide_id = cells["slide_id"]
        if not slide_id:
            raise DataError(f"line {line}: field 'slide_id' is empty", path=path)
        if slide_id in seen:
            raise DataError(f"field 'slide_id': duplicate slide id (lines {seen[slide_id]} and {line})",
                            path=path, bag=slide_id)
        seen[slide_id] = line
        if not cells["label"] and require_labels:
            raise DataError(f"line {line}: field 'label' is empty", path=path, bag=slide_id)
        rows.append(ManifestRow(slide_id, cells["label"], cells.get("split") or None,
                                cells.get("path") or None))
    if not rows:
        raise DataError("manifest is empty: no slides listed", path=path)
    return rows


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
    if all(i is not None for i in ints):
        for r, i in zip(rows, ints):
            if i < 0:
                raise DataError(f"field 'label': negative class index {i}", path=manifest, bag=r.slide_id)
        return ints, None
    names = sorted({r.label for r in rows})
    index = {c: i for i, c in enumerate(names)}
    return [index[r.label] for r in rows], names


VAL_SPLITS = ("val", "valid", "validation")
TRAIN_SPLIT = "train"


def train_val_split(labels: Sequence[int], splits: Sequence[str | None], val_split: float | None,
                    seed: int) -> tuple[list[int], list[int]]:
    """Slide positions ``(train, val)``.

    - With a ``split`` column in the manifest: ``train`` rows train; ``val``/``valid``/
      ``validation`` rows validate; other rows (``test``, empty) are left out. ``val_split``
      then takes its fraction out of the ``train`` rows, and is refused if there are val rows.
    - Without: every slide trains, less a ``val_split`` fraction.

    The fraction is taken per class (stratified, at least one slide of a class of two or more),
    chosen by ``seed``.
    """
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
    rng = np.random.default_rng([seed, 0x5A11])  # its own stream: not the epoch orders'
    chosen: list[int] = []
    for c in sorted({labels[i] for i in pool}):
        members = [i for i in pool if labels[i] == c]
        k = int(round(val_split * len(members)))
        if len(members) >= 2:
            k = min(max(k, 1), len(members) - 1)
        else:
            k = 0
        chosen += [members[j] for j in rng.permutation(len(members))[:k]]
    val = sorted(chosen)
    taken = set(val)
    train = [i for i in pool if i not in taken]
    if not train:
        raise ValueError(f"val_split {val_split} leaves no training slides")
    return train, val
