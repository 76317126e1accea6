"""Multilabel: K independent yes/no targets per bag (``--task multilabel --targets A,B,...``: manifest columns ``A``,
``B``, ... holding 0 or 1).

One logit per target, ``sigmoid`` each (the targets are not exclusive: a slide may be positive for several or none);
loss ``bce``, the binary cross-entropy of each target averaged over the targets
(:func:`abmil.train.loss.multilabel_bce`). Validation: the loss, each target's AUC (``val_auc_<target>``) and their
mean (``val_auc``, a ``--monitor``). Predictions: the truth columns (``A``, ``B``, ...) and one ``prob_<target>``
column each. Heatmaps: each patch's share of each target's logit. Evaluation (:mod:`abmil.report.multilabel_evaluate`):
per target AUC, average precision, Brier score and accuracy at 0.5, with case-bootstrap intervals.

The task's class is made per set of targets (:meth:`MultilabelTask.with_targets`; :func:`abmil.tasks.get_task`
``("multilabel", targets)``); a run stores its targets in its head (``info["head"]["targets"]``).
"""
from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from ..errors import DataError
from ..slides.tables import PROB_PREFIX
from .base import Task, nan_to_none, val_outputs

__all__ = ["RESERVED_COLUMNS", "MultilabelTask"]

#: Columns a target may not be called: the manifest's own and the predictions files'.
RESERVED_COLUMNS = ("slide_id", "split", "path", "case_id", "repeat", "fold", "label", "predicted")


def _binary(cells: dict, column: str, line: int, path: str, slide_id: str) -> int | None:
    text = cells.get(column, "")
    if not text:
        return None
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if value not in (0.0, 1.0):
        raise DataError(f"line {line}: field '{column}': {text!r} is not 0 or 1 (a multilabel target)", path=path,
                        bag=slide_id)
    return int(value)


def _auc(y: np.ndarray, p: np.ndarray) -> float | None:
    """ROC AUC (scikit-learn's), None where ``y`` holds one value."""
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(y, p)) if np.unique(y).size == 2 else None


@dataclass(frozen=True)
class MultilabelTask(Task):
    """K 0/1 targets (:attr:`columns`, the ``--targets``); the unparametrised class knows none."""

    name: ClassVar[str] = "multilabel"
    losses: ClassVar[tuple[str, ...]] = ("bce",)
    columns: ClassVar[tuple[str, ...]] = ()
    monitors: ClassVar[tuple[str, ...]] = ("val_loss", "val_auc")
    metrics: ClassVar[tuple[str, ...]] = ("mean_auc",)
    stratum: ClassVar[str] = "value of the first target"
    description: ClassVar[str] = "several 0/1 targets (--targets A,B,...)"
    metrics_note: ClassVar[str] = ("mean_auc: the mean over the targets of each target's AUC (auc_<target>) of "
                                   "each fold's test predictions.")
    needs_targets: ClassVar[bool] = True

    @classmethod
    def with_targets(cls, targets: Sequence[str]) -> type[MultilabelTask]:
        """The task of these targets (manifest columns); ValueError for none, duplicates or reserved names."""
        return _with_targets(tuple(str(t).strip() for t in targets))

    # ------------------------------------------------------------------ targets
    @classmethod
    def _targets(cls) -> tuple[str, ...]:
        if not cls.columns:
            raise ValueError("the multilabel task needs its targets: --targets A,B,...")
        return cls.columns

    @classmethod
    def parse_row(cls, cells: dict[str, str], line: int, path: str, slide_id: str) -> tuple[str, Any]:
        values = [_binary(cells, c, line, path, slide_id) for c in cls._targets()]
        if all(v is None for v in values):
            return "", None
        if any(v is None for v in values):
            empty = cls.columns[values.index(None)]
            raise DataError(f"line {line}: field '{empty}' is empty (a slide with targets needs all of "
                            f"{', '.join(cls.columns)})", path=path, bag=slide_id)
        return "", tuple(values)

    @classmethod
    def check_rows(cls, rows: Sequence, path: str, require_labels: bool) -> None:
        if not require_labels:
            return
        for k, c in enumerate(cls.columns):
            seen = {r.outcome[k] for r in rows if r.outcome is not None}
            if len(seen) < 2:
                raise DataError(f"field '{c}': every slide is {seen.pop() if seen else 'empty'}: a target needs "
                                "slides of both values (0 and 1)", path=path)

    @classmethod
    def strata(cls, labels: Sequence, outcomes: Sequence, folds: int | None = None) -> np.ndarray:
        """The first target's value."""
        return np.array([int(o[0]) for o in outcomes], dtype=np.int64)

    @classmethod
    def check_training_part(cls, dataset, train_idx: Sequence[int], classes: list[str]) -> None:
        outcomes = dataset.outcomes
        for k, c in enumerate(cls._targets()):
            if len({outcomes[i][k] for i in train_idx}) < 2:
                raise DataError(f"field '{c}': the training slides hold one value of the target only: it needs "
                                "both (0 and 1)", path=getattr(dataset, "manifest", None))

    # ------------------------------------------------------------------ the head
    def objective(self, **kwargs):
        from ..train.loss import Objective

        return Objective("bce", **kwargs)

    def n_out(self) -> int | None:
        return len(self._targets())

    def loop_target(self, outcome: Any, label: int | None = None):
        return tuple(float(v) for v in outcome)

    def torch_outputs(self, logits):
        """Each target's probability, ``sigmoid(logit)``."""
        import torch

        return torch.sigmoid(logits)

    @classmethod
    def combine(cls, heads: Sequence[Task]) -> Task:
        """Fold models of one set of targets (their probabilities are averaged)."""
        first = heads[0]
        for h in heads[1:]:
            if h.columns != first.columns:
                raise ValueError(f"an ensemble's models must share their targets: {', '.join(first.columns)} and "
                                 f"{', '.join(h.columns)}")
        return super().combine(heads)

    # ------------------------------------------------------------------ validation
    def val_record(self, rows: list[tuple], outcomes: Sequence, monitor: str | None) -> dict:
        """The mean loss, each target's AUC (``val_auc_<target>``, None where the part holds one value) and their
        mean (``val_auc``, over the targets where defined); ``val_neg_auc`` when ``monitor`` is ``val_auc``."""
        rows, loss, values = val_outputs(self, rows, outcomes)
        truth = np.array([outcomes[i] for i, _ in rows], dtype=np.float64)
        aucs = {t: _auc(truth[:, k], values[:, k]) for k, t in enumerate(self.columns)}
        defined = [a for a in aucs.values() if a is not None]
        mean = float(np.mean(defined)) if defined else None
        record = {"val_loss": loss, "val_auc": mean, **{f"val_auc_{t}": a for t, a in aucs.items()}}
        if monitor == "val_auc":
            record["val_neg_auc"] = -mean if mean is not None else float("nan")
        return record

    # ------------------------------------------------------------------ predictions
    def header(self, classes: Sequence[str], id_column: str = "slide_id") -> list[str]:
        return [id_column, *self.columns, *[f"{PROB_PREFIX}{t}" for t in self.columns]]

    def row(self, bag_id: str, truth, values: np.ndarray, classes: Sequence[str],
            threshold: float | None = None) -> list[str]:
        known = [""] * len(self.columns) if truth is None else [str(int(v)) for v in truth]
        return [bag_id, *known, *[f"{v:.6f}" for v in values]]

    @classmethod
    def claims(cls, columns: Sequence[str]) -> bool:
        """``prob_<t>`` columns each beside a ``<t>`` column, and no ``label``/``predicted`` (classification's)."""
        probs = [c[len(PROB_PREFIX):] for c in columns if c.startswith(PROB_PREFIX)]
        return bool(probs) and "label" not in columns and "predicted" not in columns and all(
            t in columns for t in probs)

    @classmethod
    def targets_of(cls, columns: Sequence[str]) -> tuple[str, ...]:
        """The targets of a predictions CSV's columns (its ``prob_<t>`` columns)."""
        return tuple(c[len(PROB_PREFIX):] for c in columns if c.startswith(PROB_PREFIX))

    @classmethod
    def output_columns(cls, columns: Sequence[str], path: str) -> list[str]:
        return [f"{PROB_PREFIX}{t}" for t in cls._targets()]

    def predicted(self, values: np.ndarray, classes: Sequence[str], threshold: float | None = None):
        """The targets at probability >= 0.5, comma-separated ("" for none)."""
        return ",".join(t for t, v in zip(self.columns, values) if v >= 0.5)

    def summary(self, values: np.ndarray, classes: Sequence[str]) -> str:
        return ", ".join(f"{t} {v:.2f}" for t, v in zip(self.columns, values))

    def title_label(self, label, classes: Sequence[str]) -> str:
        return "" if label is None else ", truth " + " ".join(f"{t}={int(v)}" for t, v in zip(self.columns, label))

    def patch_maps(self, shares: Callable[[], np.ndarray], classes: Sequence[str]) -> list[tuple[str, np.ndarray]]:
        """Each target's map: each patch's share ``a_k · w_t h_k`` of the target's logit."""
        values = shares()
        return [(f"{t}: share of logit", values[:, k]) for k, t in enumerate(self.columns)]

    # ------------------------------------------------------------------ studies
    def fold_metrics(self, truths: Sequence, values: np.ndarray) -> dict:
        truth = np.asarray(list(truths), dtype=np.float64)
        values = np.asarray(values, dtype=np.float64)
        aucs = {f"auc_{t}": _auc(truth[:, k], values[:, k]) for k, t in enumerate(self.columns)}
        defined = [a for a in aucs.values() if a is not None]
        return {"mean_auc": nan_to_none(float(np.mean(defined))) if defined else None, **aucs}

    # ------------------------------------------------------------------ evaluation
    @classmethod
    def evaluate(cls, predictions_csv: str, *, out_dir, manifest, labels_from: str, threshold: float | None,
                 run, n_bootstrap: int, seed: int, times: Sequence[float] | None, risk_groups: int,
                 by: str | None = None) -> dict:
        import os

        from ..report.multilabel_evaluate import evaluate_multilabel
        from ..slides.tables import read_table

        cls.check_evaluate_options(threshold, times)
        task = cls.with_targets(cls.targets_of(read_table(os.fspath(predictions_csv), "predictions file")[0]))
        if run is not None:
            task.check_run(run)
        return evaluate_multilabel(predictions_csv, task, out_dir=out_dir, manifest=manifest, labels_from=labels_from,
                                   n_bootstrap=n_bootstrap, seed=seed, by=by)

    @classmethod
    def check_run(cls, run) -> None:
        """The run must be multilabel, of these targets."""
        import os

        from ..slides.run_folder import run_head_info

        super().check_run(run)
        stored = tuple((run_head_info(run).get("head") or {}).get("targets") or ())
        if stored != cls.columns:
            raise DataError(f"the run was trained for the targets {', '.join(stored)}, the predictions are of "
                            f"{', '.join(cls.columns)}", path=os.fspath(run))

    # ------------------------------------------------------------------ storage
    def fitted(self) -> dict:
        return {"targets": list(self.columns)}

    @classmethod
    def from_dict(cls, d: dict) -> Task:
        return cls.with_targets(d.get("targets") or ())(d.get("loss"))


@functools.cache
def _with_targets(targets: tuple[str, ...]) -> type[MultilabelTask]:
    """One class per tuple of targets (cached: runs of the same targets share it, so their heads compare equal)."""
    if not targets or any(not t for t in targets):
        raise ValueError(f"--targets needs one or more column names, got {','.join(targets)!r}")
    if len(set(targets)) != len(targets):
        dup = sorted({t for t in targets if targets.count(t) > 1})
        raise ValueError(f"--targets names {', '.join(dup)} twice")
    reserved = [t for t in targets if t in RESERVED_COLUMNS or t.startswith(PROB_PREFIX)]
    if reserved:
        raise ValueError(f"--targets: {reserved[0]!r} names a column of the manifest or the predictions itself")
    metrics = ("mean_auc", *[f"auc_{t}" for t in targets])
    return type(f"MultilabelTask[{','.join(targets)}]", (MultilabelTask,),
                {"columns": targets, "metrics": metrics, "__module__": __name__, "__qualname__": "MultilabelTask"})
