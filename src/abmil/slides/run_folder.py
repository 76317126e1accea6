"""The layout of a slide run's folder: one module reads and writes it.

A single run (``abmil train``)::

    RUN/checkpoint.json     what the run is and how far it got (:mod:`abmil.train.checkpoint`: settings, classes,
                            the head, per-epoch history), its safetensors weights, the kept (best) weights

A cross-validation study (``abmil train --folds``, :mod:`abmil.slides.study`)::

    RUN/run.json            the study: settings, classes, fold keys, status; when finished the mean of the folds'
                            Youden thresholds ("threshold", two classes) and the summary
    RUN/splits.json         each fold's train / val / test cases and slides: auditable
    RUN/folds/r{r}_f{f}/    the fold's run (a single run's files); fold.json once finished (its validation
                            threshold and metrics, test metrics and predictions, the kept epoch); with
                            ``--seeds N``: seeds/s{j}/, the runs of the seed ensemble's members j = 1 .. N-1
                            (member 0 is the fold's own run)
    RUN/oof.csv             out-of-fold predictions (:mod:`abmil.slides.predictions` plus ``case_id``, ``repeat``,
                            ``fold``)
    RUN/summary.json/.csv/.md   per fold metrics; mean and SD over the folds

Every file is written atomically. Readers: :func:`read_cv_run`, :func:`fold_dirs`, :func:`run_threshold`,
:func:`read_run_threshold`, :func:`run_classes`, :func:`run_head_info`, :func:`read_summary`,
:func:`read_run_settings`.
"""
from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path

from ..errors import DataError
from ..io import write_json_atomic, write_text_atomic
from ..train.checkpoint import CHECKPOINT

__all__ = ["CHECKPOINT", "CV_FORMAT", "FOLDS", "OOF_CSV", "RUN_JSON", "SPLITS_JSON", "THRESHOLD_FILES", "fold_dir",
           "fold_dirs", "fold_key", "folds_dir", "is_cv_run", "member_dir", "read_cv_run", "read_run_settings",
           "read_run_threshold", "read_summary", "run_classes", "run_head_info", "run_threshold", "write_oof",
           "write_run_json", "write_splits", "write_summary"]

CV_FORMAT = "abmil-slide-cv-1"
RUN_JSON = "run.json"
SPLITS_JSON = "splits.json"
OOF_CSV = "oof.csv"
FOLDS = "folds"
#: A finished fold's record (:class:`abmil.experiments.runner.UnitCache` key): ``folds/<key>/fold.json``.
FOLD_RECORD = "fold"
SUMMARY = "summary"
#: Where a run folder may store a decision threshold, looked up in this order.
THRESHOLD_FILES = ("threshold.json", RUN_JSON, CHECKPOINT)


def fold_key(repeat: int, fold: int) -> str:
    """A study's name of one (repeat, fold), as :attr:`abmil.train.splits.CaseSplit.key`."""
    return f"r{repeat}_f{fold}"


def folds_dir(run_dir: str | os.PathLike) -> Path:
    """The folder of a study's fold runs."""
    return Path(run_dir) / FOLDS


def fold_dir(run_dir: str | os.PathLike, key: str) -> Path:
    """The folder of a study's fold ``key``."""
    return folds_dir(run_dir) / key


def member_dir(fold_folder: str | os.PathLike, member: int) -> Path:
    """The folder of member ``member`` of a fold's seed ensemble: the fold's own folder for member 0."""
    return Path(fold_folder) if member == 0 else Path(fold_folder) / "seeds" / f"s{member}"


# ---------------------------------------------------------------------------------------------- readers
def read_cv_run(run_dir: str | os.PathLike) -> dict | None:
    """The study's run.json, or None where there is none (a DataError if it is not a study's)."""
    path = Path(run_dir) / RUN_JSON
    if not path.is_file():
        return None
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise DataError(f"unreadable run.json ({e})", path=str(path)) from None
    if not isinstance(info, dict) or info.get("format") != CV_FORMAT:
        return None
    return info


def is_cv_run(run_dir: str | os.PathLike) -> bool:
    """Whether ``run_dir`` holds a cross-validation study (its run.json)."""
    return read_cv_run(run_dir) is not None


def fold_dirs(run_dir: str | os.PathLike, fold: tuple[int, int] | None = None) -> list[Path]:
    """The finished fold runs of a study: all (the study must be finished) or the one of ``fold`` (repeat, fold); a
    study of ``--seeds N``: every member of each fold's seed ensemble (:func:`member_dir`)."""
    info = read_cv_run(run_dir)
    if info is None:
        raise DataError("not a cross-validation run (no run.json of `abmil train --folds`)", path=os.fspath(run_dir))
    keys = info["fold_keys"]
    if fold is not None:
        key = fold_key(*fold)
        if key not in keys:
            raise ValueError(f"--fold {fold[0]},{fold[1]}: the study in {run_dir} has folds "
                             f"r0..{info['settings']['repeats'] - 1}, f0..{info['settings']['folds'] - 1}")
        keys = [key]
    missing = [k for k in keys if not (fold_dir(run_dir, k) / f"{FOLD_RECORD}.json").is_file()]
    if missing:
        raise ValueError(f"the cross-validation in {run_dir} has not finished fold(s) {', '.join(missing)}: rerun "
                         "its `abmil train --folds` command to finish it, or pick a finished fold with --fold")
    seeds = info["settings"].get("seeds", 1)
    return [member_dir(fold_dir(run_dir, k), j) for k in keys for j in range(seeds)]


def run_threshold(run_dir: str | os.PathLike, fold: tuple[int, int] | None = None) -> float | None:
    """The decision threshold a cross-validation study stored (two classes): one fold's (chosen on its validation
    part) or, for the ensemble of all folds, their mean (run.json). None for a single run, multi-class or another
    task."""
    info = read_cv_run(run_dir)
    if info is None:
        return None
    if fold is None:
        return info.get("threshold")
    return info.get("fold_thresholds", {}).get(fold_key(*fold))


def read_run_threshold(run_dir: str | os.PathLike) -> tuple[float, str]:
    """The decision threshold stored in a run folder as ``"threshold"`` in ``threshold.json``, ``run.json`` or
    ``checkpoint.json`` (the first that has one). Returns ``(threshold, file)``; DataError if none has one."""
    run = Path(run_dir)
    if not run.is_dir():
        raise DataError("run folder not found", path=os.fspath(run))
    for name in THRESHOLD_FILES:
        path = run / name
        if not path.is_file():
            continue
        try:
            info = json.loads(path.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise DataError(f"not a readable JSON file ({e})", path=str(path)) from None
        if isinstance(info, dict) and info.get("threshold") is not None:
            t = info["threshold"]
            if isinstance(t, bool) or not isinstance(t, (int, float)) or not 0.0 <= t <= 1.0:
                raise DataError(f"field 'threshold': {t!r} is not a probability in [0, 1]", path=str(path))
            return float(t), str(path)
    raise DataError(f"no stored \"threshold\" in {', '.join(THRESHOLD_FILES)}: give --threshold instead",
                    path=os.fspath(run))


def run_classes(run_dir: str | os.PathLike) -> list[str] | None:
    """The classes a run was trained on (its checkpoint.json), or None when it does not say."""
    path = Path(run_dir) / CHECKPOINT
    with contextlib.suppress(OSError, ValueError):
        classes = json.loads(path.read_text(encoding="utf-8")).get("classes")
        if isinstance(classes, list):
            return [str(c) for c in classes]
    return None


def run_head_info(run_dir: str | os.PathLike) -> dict:
    """The checkpoint info of a run, or of a study's first fold (what says its task: ``info["head"]``); DataError
    where there is none."""
    run = Path(run_dir)
    candidates = [run / CHECKPOINT, *sorted(run.glob(f"{FOLDS}/*/{CHECKPOINT}"))[:1]]
    for path in candidates:
        if path.is_file():
            try:
                return json.loads(path.read_text(encoding="utf-8"))
            except (OSError, ValueError) as e:
                raise DataError(f"not a readable JSON file ({e})", path=str(path)) from None
    raise DataError(f"no {CHECKPOINT} of `abmil train` in the run folder", path=os.fspath(run))


# ---------------------------------------------------------------------------------------------- writers
def write_run_json(out: Path, info: dict) -> None:
    write_json_atomic(out / RUN_JSON, info)


def write_splits(out: Path, splits: dict) -> None:
    write_json_atomic(out / SPLITS_JSON, splits)


def write_oof(out: Path, text: str) -> None:
    write_text_atomic(out / OOF_CSV, text)


def write_summary(out: Path, summary: dict, csv_text: str, markdown: str) -> None:
    """summary.json, summary.csv and summary.md."""
    write_json_atomic(out / f"{SUMMARY}.json", summary)
    write_text_atomic(out / f"{SUMMARY}.csv", csv_text)
    write_text_atomic(out / f"{SUMMARY}.md", markdown)


def read_summary(run_dir: str | os.PathLike) -> dict | None:
    """A finished study's summary.json (per fold metrics, their mean and SD), or None where there is none."""
    return _read_json_or_none(Path(run_dir) / f"{SUMMARY}.json")


def read_run_settings(run_dir: str | os.PathLike) -> dict | None:
    """The settings ``abmil train`` ran with (``RUN/config.json``, which ``--config`` reads back), or None."""
    return _read_json_or_none(Path(run_dir) / "config.json")


def _read_json_or_none(path: Path) -> dict | None:
    if not path.is_file():
        return None
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise DataError(f"not a readable JSON file ({e})", path=str(path)) from None
    return info if isinstance(info, dict) else None
