"""The predictions files of a slide run: one module writes them and reads them back.

    preds.csv              one row per slide (or case): the columns of the run's task
                           (:meth:`abmil.tasks.base.Task.header`): classification ``slide_id, label, prob_<class>...,
                           predicted``; survival ``slide_id, time, event, risk[, surv_<t>...]``; regression
                           ``slide_id, target, predicted`` (a run trained on cases: ``case_id`` first; a study's
                           oof.csv adds ``case_id``, ``repeat``, ``fold``)
    preds.attention.h5     one group per slide (or case): ``attention`` (n,) softmax weights,
                           ``attention_logits`` (n,) (a model without attention pooling: ``instance_scores`` (n,),
                           its instance probabilities or TransMIL's class-token attention, or nothing), ``coords``
                           (n, 2) when the slide has them;
                           attributes ``probabilities`` (the task's outputs) and ``predicted`` (a case: ``slides``
                           and ``slide_sizes``, its slides' ids and patch counts in the order of the rows); the file's
                           ``classes`` and ``task``

Reading back (:func:`read_table`, :func:`predictions_task`): the CSV's header says which task wrote it (each task
claims its columns, :meth:`abmil.tasks.base.Task.claims`); the task's evaluation reads its columns.
"""
from __future__ import annotations

import csv
import io
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np

from ..errors import DataError
from ..io import atomic_open
from ..tasks import Task, task_for_columns
from ..tasks.classification import ClassificationTask
from .tables import case_column, read_table

__all__ = ["SlidePrediction", "attention_path", "case_column", "prediction_header", "prediction_row",
           "predictions_task", "read_table", "write_predictions"]


class SlidePrediction(NamedTuple):
    slide_id: str
    probabilities: np.ndarray
    """(n_classes,) class probabilities; for other tasks what :meth:`~abmil.tasks.base.Task.outputs` gives:
    survival ``S_k`` at each bin's end (nll) or the log hazard ratio (cox), the prediction (regression)."""
    attention_logits: np.ndarray | None
    """(n_instances,) float32; weights = softmax. None for a model without attention pooling."""
    coords: np.ndarray | None
    """(n_instances, 2) or None."""
    label: int | None = None
    """The truth where known (:meth:`~abmil.tasks.base.Task.truth`): the class index; survival (time, event);
    regression the target."""
    slides: tuple[tuple[str, int], ...] | None = None
    """A case's slides: (slide id, patches) in the order of its instances; None for a slide."""
    scores: np.ndarray | None = None
    """(n_instances,) the instance scores of a model without attention pooling (instance probabilities, TransMIL's
    class-token attention); None otherwise."""

    @property
    def attention(self) -> np.ndarray:
        """(n_instances,) attention weights, summing to 1."""
        import torch

        return torch.softmax(torch.from_numpy(self.attention_logits).double(), 0).float().numpy()

    @property
    def instance_scores(self) -> np.ndarray | None:
        """(n_instances,) per-patch evidence: the attention weights, else :attr:`scores` (None: the model has
        none, e.g. mean or max pooling)."""
        return self.attention if self.attention_logits is not None else self.scores


def attention_path(csv_path: str | os.PathLike) -> Path:
    """``preds.csv`` → ``preds.attention.h5`` beside it."""
    p = Path(csv_path)
    return p.with_name(p.stem + ".attention.h5")


def prediction_header(classes: Sequence[str], id_column: str = "slide_id", head: Task | None = None) -> list[str]:
    """The CSV's columns (:meth:`~abmil.tasks.base.Task.header`; no head: classification)."""
    return (head or ClassificationTask()).header(classes, id_column)


def prediction_row(p: SlidePrediction, classes: Sequence[str], head: Task | None = None,
                   threshold: float | None = None) -> list[str]:
    """A CSV row of :func:`prediction_header` (:meth:`~abmil.tasks.base.Task.row`; classification: probabilities
    with 6 decimals and the class :func:`~abmil.tasks.classification.decide` picks)."""
    return (head or ClassificationTask()).row(p.slide_id, p.label, p.probabilities, classes, threshold)


def write_predictions(preds: Iterable[SlidePrediction], classes: list[str], csv_path: str | os.PathLike,
                      h5_path: str | os.PathLike | None = None, id_column: str = "slide_id",
                      head: Task | None = None, threshold: float | None = None,
                      attrs: Mapping[str, str] | None = None, case_ids: Mapping[str, str] | None = None) -> Path:
    """Write the CSV and the attention HDF5 (default :func:`attention_path`); returns the HDF5 path.
    ``id_column``: the first column's name (``case_id`` for cases). ``head``: the run's task (None:
    classification; the HDF5's ``probabilities`` attribute holds its outputs, ``predicted``
    :meth:`~abmil.tasks.base.Task.predicted`); ``threshold``: a two-class run's decision threshold; ``attrs``: more
    attributes of the HDF5 file (the run's record, :mod:`abmil.slides.leakage`); ``case_ids``: ``{slide id: case
    id}``, written as a ``case_id`` column after the first (as a study's oof.csv), so that evaluate finds the
    patients without the manifest."""
    head = head or ClassificationTask()
    import h5py

    preds = list(preds)
    for p in preds:
        if "/" in p.slide_id or p.slide_id in (".", ""):
            raise DataError(f"field '{id_column}': cannot name an HDF5 group ('/' or '.')", bag=p.slide_id)
    h5_path = Path(h5_path) if h5_path is not None else attention_path(csv_path)
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    header = prediction_header(classes, id_column, head)
    writer.writerow(header if case_ids is None else [header[0], "case_id", *header[1:]])
    for p in preds:
        row = prediction_row(p, classes, head, threshold)
        writer.writerow(row if case_ids is None else [row[0], case_ids[p.slide_id], *row[1:]])
    # Both files or neither: each goes to a temporary file, and they are renamed only once both are complete (the
    # HDF5 first). Should the CSV's rename then fail, a new HDF5 is taken back out.
    h5_is_new = not h5_path.exists()
    try:
        with atomic_open(csv_path, "w", encoding="utf-8", newline="") as out_csv, atomic_open(h5_path, "w+b") as f, \
                h5py.File(f, "w") as h5:  # h5py reads back as it writes
            out_csv.write(buf.getvalue())
            h5.attrs["classes"] = classes
            h5.attrs["task"] = head.name
            for key, value in (attrs or {}).items():
                h5.attrs[key] = value
            for p in preds:
                g = h5.create_group(p.slide_id)
                if p.attention_logits is not None:
                    g.create_dataset("attention", data=p.attention)
                    g.create_dataset("attention_logits", data=p.attention_logits)
                elif p.scores is not None:
                    g.create_dataset("instance_scores", data=p.scores)
                if p.coords is not None:
                    g.create_dataset("coords", data=p.coords)
                g.attrs["probabilities"] = p.probabilities
                g.attrs["predicted"] = head.predicted(p.probabilities, classes, threshold)
                if p.slides is not None:
                    g.attrs["slides"] = [sid for sid, _ in p.slides]
                    g.attrs["slide_sizes"] = [n for _, n in p.slides]
    except BaseException:
        if h5_is_new and h5_path.exists() and not Path(csv_path).exists():
            h5_path.unlink()
        raise
    return h5_path


# ---------------------------------------------------------------------------------------------- reading back
def predictions_task(path: str | os.PathLike) -> type[Task]:
    """The task whose predictions the CSV at ``path`` holds, from its header (:func:`abmil.tasks.task_for_columns`:
    survival a ``risk`` column, regression ``predicted`` and no ``prob_<class>`` column, else classification)."""
    columns, _ = read_table(os.fspath(path), "predictions file")
    return task_for_columns(columns)
