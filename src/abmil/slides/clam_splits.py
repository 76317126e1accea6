"""CLAM's split files as a study's folds: ``abmil train --splits-from DIR``.

CLAM's ``create_splits_seq.py`` writes, per split K, ``DIR/splits_K.csv`` (pandas' ``to_csv``: an unnamed index
column, then the columns ``train``, ``val``, ``test`` of slide ids, the shorter columns padded with empty cells),
beside ``splits_K_bool.csv`` and ``splits_K_descriptor.csv`` (not read here)::

    ,train,val,test
    0,slide_110,slide_403,slide_13
    1,slide_112,,

:func:`read_clam_splits` turns them into :class:`abmil.train.splits.CaseSplit` s over the bags of a dataset, each
fold seeded as a study's (:func:`abmil.train.splits.fold_seed`). CLAM's own splits are drawn anew for each K
(Monte-Carlo: a slide may be tested in several), so splits whose test parts overlap become one repeat each
(``r{K}_f0``, every out-of-fold row once per repeat); splits whose test parts are disjoint (a K-fold partition) are
the folds of one repeat (``r0_f{K}``). Checked before anything is written: every id is a slide of the manifest,
no slide is in two parts of a split, a case's slides are in one part (else its patient leaks), every split has
training and validation slides.
"""
from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np

from ..errors import DataError
from ..train.splits import CaseSplit, fold_seed
from .features import FeatureBagDataset, bags_at_level
from .tables import read_csv

__all__ = ["CLAM_PARTS", "clam_split_files", "read_clam_splits"]

CLAM_PARTS = ("train", "val", "test")
_NAME = re.compile(r"splits_(\d+)\.csv")


def clam_split_files(folder: str | os.PathLike, k: int | None = None) -> list[Path]:
    """``splits_0.csv ... splits_{k-1}.csv`` in ``folder`` (``k`` None: all of them, which must run from 0 without
    a gap); DataError naming the folder or the missing file."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError("--splits-from: not a folder of CLAM splits_K.csv files", path=os.fspath(folder))
    found = {int(m.group(1)): folder / m.group(0) for p in folder.iterdir() if (m := _NAME.fullmatch(p.name))}
    if not found:
        raise DataError("--splits-from: no splits_K.csv file (CLAM's create_splits_seq.py) in the folder",
                        path=os.fspath(folder))
    k = max(found) + 1 if k is None else k
    missing = [i for i in range(k) if i not in found]
    if missing:
        raise DataError(f"--splits-from: no splits_{missing[0]}.csv ({k} splits asked for"
                        + ("" if k == max(found) + 1 else f"; found {', '.join(str(i) for i in sorted(found))}")
                        + ")", path=os.fspath(folder))
    return [found[i] for i in range(k)]


def _read_one(path: Path) -> dict[str, list[str]]:
    columns, rows = read_csv(os.fspath(path), "CLAM split file")
    absent = [c for c in CLAM_PARTS if c not in columns]
    if absent:
        raise DataError(f"no column(s) {', '.join(absent)} (CLAM's splits_K.csv has train, val, test; found "
                        f"{', '.join(c or repr(c) for c in columns)})", path=os.fspath(path))
    parts = {p: [cells[p] for _, cells in rows if cells.get(p)] for p in CLAM_PARTS}
    for p, ids in parts.items():
        seen: set[str] = set()
        for sid in ids:
            if sid in seen:
                raise DataError(f"column {p!r}: slide listed twice", path=os.fspath(path), bag=sid)
            seen.add(sid)
    return parts


def read_clam_splits(folder: str | os.PathLike, dataset: FeatureBagDataset, *, bag_level: str = "slide",
                     k: int | None = None, seed: int = 0) -> list[CaseSplit]:
    """The splits of ``folder`` (:func:`clam_split_files`; ``k``: how many) as positions of ``dataset``'s bags at
    ``bag_level`` (:func:`~abmil.slides.features.bags_at_level`), for
    :func:`abmil.slides.study.cross_validate`'s ``splits``; ``seed``: the study's. A manifest slide a split does
    not list is left out of that split (CLAM's ``label_frac`` < 1)."""
    slide_ids, case_ids = list(dataset.slide_ids), list(dataset.case_ids)
    bag_ids = bags_at_level(dataset, bag_level).slide_ids
    slide_pos = {s: i for i, s in enumerate(slide_ids)}
    bag_pos = {b: i for i, b in enumerate(bag_ids)}
    files = clam_split_files(folder, k)
    parts_per_file = []
    for path in files:
        parts = _read_one(path)
        owner: dict[str, str] = {}
        case_part: dict[str, tuple[str, str]] = {}
        for p in CLAM_PARTS:
            for sid in parts[p]:
                if sid not in slide_pos:
                    raise DataError(f"column {p!r}: slide not in the manifest", path=os.fspath(path), bag=sid)
                if sid in owner:
                    raise DataError(f"slide in both {owner[sid]!r} and {p!r}", path=os.fspath(path), bag=sid)
                owner[sid] = p
                case = case_ids[slide_pos[sid]]
                if case in case_part and case_part[case][0] != p:
                    other_part, other = case_part[case]
                    raise DataError(f"case {case!r} has slides in {other_part!r} ({other}) and {p!r} ({sid}): its "
                                    "patient would be on both sides; keep a case's slides in one part",
                                    path=os.fspath(path), bag=sid)
                case_part.setdefault(case, (p, sid))
        for p in ("train", "val"):
            if not parts[p]:
                raise DataError(f"no {p!r} slides: every fold of a study trains and keeps its best validation "
                                "epoch", path=os.fspath(path))
        if not parts["test"]:
            raise DataError("no 'test' slides: the fold would predict nothing", path=os.fspath(path))
        level = (lambda s: s) if bag_level == "slide" else (lambda s: case_ids[slide_pos[s]])
        parts_per_file.append({p: np.array(sorted({bag_pos[level(s)] for s in parts[p]}), dtype=np.int64)
                               for p in CLAM_PARTS})
    tests = [set(p["test"].tolist()) for p in parts_per_file]
    disjoint = sum(len(t) for t in tests) == len(set().union(*tests))
    out = []
    for i, parts in enumerate(parts_per_file):
        repeat, fold = (0, i) if disjoint else (i, 0)
        out.append(CaseSplit(repeat, fold, fold_seed(seed, repeat, fold), parts["train"], parts["val"],
                             parts["test"]))
    return out
