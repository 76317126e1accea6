"""Which scored slides a run's models trained (or validated) on: the leakage check of ``abmil predict`` and
``abmil evaluate``.

A model scores the slides it was fitted on far better than new ones (the UCSB study: AUC 0.94 on its own training
slides against 0.79 out of fold), and nothing in a predictions file says so. The run folder knows
(:mod:`abmil.slides.run_folder`): a study's ``splits.json`` lists each fold's train / val / test slides and cases, a
single run's ``checkpoint.json`` its ``train_slides`` and ``val_slides``. :func:`training_overlap` compares the ids
of the scored bags (slide ids, or case ids for a run trained on cases) with them, model by model:

    overlap = training_overlap("runs/cv", ["s00", "s01", ...])   # the ensemble of all fold models
    if overlap:
        print(overlap.message())    # how many, which, by which model(s); for a study: oof.csv is the honest one

``abmil predict`` warns and records the overlap beside its predictions (attributes of ``preds.attention.h5``:
:data:`RUN_ATTR`, :data:`FOLD_ATTR`, :data:`OVERLAP_ATTR`); ``abmil evaluate`` reads it back
(:func:`recorded_overlap`) and refuses such predictions unless told to evaluate them anyway.
"""
from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import DataError
from .run_folder import CHECKPOINT, OOF_CSV, SPLITS_JSON, fold_key, read_cv_run

__all__ = ["FOLD_ATTR", "OVERLAP_ATTR", "PARTS", "RUN_ATTR", "TrainingOverlap", "csv_overlap", "model_parts",
           "prediction_record", "recorded_overlap", "training_overlap"]

#: The parts of a run's data a model has seen: fitted on (train) and selected on (val: early stopping, the kept
#: epoch, a study's thresholds).
PARTS = ("train", "val")
#: Attributes of ``preds.attention.h5`` that ``abmil predict`` writes: the run's folder, the fold (``R,F``, or
#: empty for all its models) and the overlap (:meth:`TrainingOverlap.to_json`).
RUN_ATTR = "run"
FOLD_ATTR = "fold"
OVERLAP_ATTR = "training_overlap"
#: How many ids and models a message names before it says "and N more".
_SHOWN = 5
#: The longest record kept whole in an HDF5 attribute (whose limit is 64 KiB).
_MAX_RECORD = 60_000


def model_parts(run_dir: str | os.PathLike, fold: tuple[int, int] | None = None
                ) -> tuple[dict[str, dict[str, frozenset[str]]], bool, str]:
    """``({model: {"train": ids, "val": ids}}, is_study, unit)`` of the models that predict for ``run_dir`` (a study's
    fold models, all or the one of ``fold``; a single run's one model, named ``"run"``), the ids at the run's bag
    level (slide ids, or case ids for a run trained on cases; ``unit``: "slides" or "cases"). Empty where the
    folder does not say (e.g. a ``threshold.json`` alone); DataError where its splits.json or checkpoint.json
    cannot be read."""
    run = Path(run_dir)
    if read_cv_run(run) is not None:
        path = run / SPLITS_JSON
        try:
            splits = json.loads(path.read_text(encoding="utf-8"))
            level = "cases" if splits.get("bag_level") == "case" else "slides"
            parts = {f["key"]: {p: frozenset(map(str, f[p][level])) for p in PARTS} for f in splits["folds"]}
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
            raise DataError(f"unreadable splits of the study ({e!r}): the slides its models trained on are unknown",
                            path=str(path)) from None
        if fold is not None:
            key = fold_key(*fold)
            parts = {key: parts[key]} if key in parts else {}
        return parts, True, level
    path = run / CHECKPOINT
    if not path.is_file():
        return {}, False, "slides"
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
        parts = {p: frozenset(map(str, info.get(f"{p}_slides") or ())) for p in PARTS}
        unit = "cases" if (info.get("config") or {}).get("bag_level") == "case" else "slides"
    except (OSError, ValueError, TypeError, AttributeError) as e:
        raise DataError(f"not a readable JSON file ({e})", path=str(path)) from None
    return ({"run": parts} if any(parts.values()) else {}), False, unit


@dataclass(frozen=True)
class TrainingOverlap:
    """The scored bags that the models scoring them had seen in training. ``models``: for each model that saw
    some, the ids of those it trained on (``"train"``) and validated on (``"val"``), sorted."""

    run: str
    n_scored: int
    n_models: int
    study: bool
    models: dict[str, dict[str, list[str]]] = field(default_factory=dict)
    fold: str = ""
    unit: str = "slides"

    @property
    def ids(self) -> list[str]:
        """The scored ids that some model had seen, sorted."""
        return sorted({i for parts in self.models.values() for p in PARTS for i in parts[p]})

    def __bool__(self) -> bool:
        return bool(self.models)

    def message(self) -> str:
        """One paragraph (a line): how many of the scored bags, which, which model(s) saw them, what to do."""
        ids = self.ids
        shown = ", ".join(ids[:_SHOWN]) + (f" and {len(ids) - _SHOWN} more" if len(ids) > _SHOWN else "")
        per_model = [f"{name} trained on {len(parts['train'])}, validated on {len(parts['val'])}"
                     for name, parts in sorted(self.models.items())]
        if len(per_model) > _SHOWN:
            per_model = [*per_model[:_SHOWN], f"... ({len(per_model) - _SHOWN} more)"]
        if self.study:
            models = (f"{len(self.models)} of the {self.n_models} fold model(s) that scored them"
                      + (f" (--fold {self.fold})" if self.fold else " (their mean)"))
        else:
            models = "the run's model"
        text = (f"{len(ids)} of the {self.n_scored} {self.unit} scored ({shown}) were in the training or "
                f"validation part of {models}: {'; '.join(per_model)}. Metrics on them are optimistic, not an "
                "estimate on new slides")
        if self.study:
            text += (f"; this study's honest estimate is its out-of-fold predictions, "
                     f"{Path(self.run) / OOF_CSV} (each slide scored by the fold model that never saw it)")
        else:
            text += "; score held-out slides instead"
        return text

    def to_json(self) -> str:
        """The record ``abmil predict`` keeps; a study of thousands of slides: each model's ids cut to the first
        few, with ``"truncated": true`` (an HDF5 attribute holds 64 KiB)."""
        record = {"run": self.run, "fold": self.fold, "n_scored": self.n_scored, "n_models": self.n_models,
                  "study": self.study, "models": self.models, "unit": self.unit}
        text = json.dumps(record)
        if len(text) > _MAX_RECORD:
            text = json.dumps({**record, "truncated": True,
                               "models": {m: {p: v[p][:_SHOWN] for p in PARTS} for m, v in self.models.items()}})
        return text

    @classmethod
    def from_json(cls, text: str) -> TrainingOverlap:
        d = json.loads(text)
        return cls(run=str(d["run"]), n_scored=int(d["n_scored"]), n_models=int(d["n_models"]),
                   study=bool(d["study"]), models=d["models"], fold=str(d.get("fold", "")),
                   unit=str(d.get("unit", "slides")))


def training_overlap(run_dir: str | os.PathLike, ids: Sequence[str], fold: tuple[int, int] | None = None,
                     row_models: Sequence[str] | None = None) -> TrainingOverlap:
    """Which of the scored ``ids`` (bag ids: slide ids, or case ids for a run trained on cases) the models of
    ``run_dir`` (:func:`model_parts`) had seen. Each id is scored by every model (an ensemble), or by the one model
    ``row_models[i]`` names (a study's out-of-fold rows: their ``repeat`` and ``fold``). Falsy where none."""
    parts, study, unit = model_parts(run_dir, fold)
    seen: dict[str, dict[str, list[str]]] = {}
    for name, model in parts.items():
        scored = set(ids) if row_models is None else {i for i, m in zip(ids, row_models) if m == name}
        hits = {p: sorted(scored & model[p]) for p in PARTS}
        if any(hits.values()):
            seen[name] = hits
    return TrainingOverlap(run=os.fspath(run_dir), n_scored=len(set(ids)), n_models=len(parts), study=study,
                           models=seen, fold="" if fold is None else f"{fold[0]},{fold[1]}", unit=unit)


def prediction_record(overlap: TrainingOverlap) -> dict[str, str]:
    """The attributes ``abmil predict`` writes into ``preds.attention.h5``: the run (an absolute path, so that
    evaluate finds it from anywhere), the fold, the overlap."""
    return {RUN_ATTR: os.path.abspath(overlap.run), FOLD_ATTR: overlap.fold, OVERLAP_ATTR: overlap.to_json()}


def csv_overlap(predictions_csv: str | os.PathLike, run_dir: str | os.PathLike | None = None
                ) -> TrainingOverlap | None:
    """The overlap of a predictions CSV's bags: the one ``abmil predict`` recorded (:func:`recorded_overlap`,
    which knows the fold that scored them), else against ``run_dir``'s models (a study's out-of-fold rows, with
    ``repeat`` and ``fold`` columns: each row against its own fold's model). None where neither says."""
    from .tables import read_csv

    path = os.fspath(predictions_csv)
    columns, rows = read_csv(path, "predictions file")
    id_column = "slide_id" if "slide_id" in columns else "case_id" if "case_id" in columns else None
    if id_column is None:
        return None  # evaluate names the missing column
    ids = [cells[id_column] for _, cells in rows]
    found = recorded_overlap(path, ids)
    if found is not None or run_dir is None:
        return found
    row_models = None
    if "repeat" in columns and "fold" in columns:
        try:
            row_models = [fold_key(int(cells["repeat"]), int(cells["fold"])) for _, cells in rows]
        except ValueError:
            raise DataError("columns 'repeat' and 'fold' must hold integers (a study's oof.csv)", path=path) from None
    found = training_overlap(run_dir, ids, row_models=row_models)
    return found if found.n_models else None


def recorded_overlap(predictions_csv: str | os.PathLike, ids: Sequence[str]) -> TrainingOverlap | None:
    """The overlap ``abmil predict`` recorded beside ``predictions_csv`` (its attention HDF5's attributes), for the
    ``ids`` the CSV holds now: recomputed from the run folder where it is still there, else the recorded one
    restricted to ``ids``. None where nothing was recorded (another tool's CSV, an older abmil, no HDF5)."""
    from .predictions import attention_path

    h5_path = attention_path(predictions_csv)
    if not h5_path.is_file():
        return None
    import h5py

    try:
        with h5py.File(h5_path, "r") as h5:
            attrs = {k: h5.attrs[k] for k in (RUN_ATTR, FOLD_ATTR, OVERLAP_ATTR) if k in h5.attrs}
    except OSError:
        return None  # not ours to judge: evaluate reads the CSV only
    attrs = {k: v.decode() if isinstance(v, bytes) else str(v) for k, v in attrs.items()}
    if RUN_ATTR not in attrs:
        return None
    run, fold = attrs[RUN_ATTR], attrs.get(FOLD_ATTR, "")
    if Path(run).is_dir():
        try:
            parts = tuple(int(x) for x in fold.split(",")) if fold else None
            return training_overlap(run, ids, parts)  # type: ignore[arg-type]
        except (DataError, ValueError):
            pass
    if OVERLAP_ATTR not in attrs:
        return None
    try:
        recorded = TrainingOverlap.from_json(attrs[OVERLAP_ATTR])
    except (ValueError, KeyError, TypeError):
        raise DataError(f"unreadable attribute {OVERLAP_ATTR!r}", path=str(h5_path)) from None
    if json.loads(attrs[OVERLAP_ATTR]).get("truncated"):
        return recorded  # the ids were cut: the record as it was, for all the bags it was made for
    keep = set(ids)
    models = {m: {p: [i for i in parts[p] if i in keep] for p in PARTS} for m, parts in recorded.models.items()}
    return TrainingOverlap(run=recorded.run, n_scored=len(keep), n_models=recorded.n_models, study=recorded.study,
                           models={m: parts for m, parts in models.items() if any(parts.values())},
                           fold=recorded.fold, unit=recorded.unit)
