"""The interface of a task: what a slide run predicts, and everything that depends on it.

A task is a frozen dataclass; its class says what the task is (its manifest columns, losses, monitors, metrics,
stratum), an instance is a task *fitted* on a run's training part (:meth:`Task.fit`: survival time bins, the
regression scale) and stored in the run's checkpoint (``info["head"]``, :meth:`Task.to_dict`), so that
``abmil predict``, ``evaluate`` and ``heatmap`` read a run's task from the run.

One task, one module (:mod:`abmil.tasks.classification`, ``survival``, ``regression``); the registry
(:data:`abmil.tasks.TASKS`) names them. Everything else (the manifest reader, the training loop, studies, predict,
heatmaps, evaluate) asks the task and never switches on its name. What a task owns:

- targets: the manifest columns (:attr:`Task.columns`), parsed and checked per row (:meth:`Task.parse_row`), the
  truth of a bag (:meth:`Task.truth`), what splits are stratified by (:meth:`Task.strata`);
- the head: its outputs (:meth:`Task.n_out`), loss (:attr:`Task.losses`, :meth:`Task.objective`; the math is
  :mod:`abmil.train.loss`'s), what is fitted on the training part (:meth:`Task.fit`), the loop's targets
  (:meth:`Task.loop_target`);
- validation: :attr:`Task.monitors` and the metrics behind them (:meth:`Task.val_row`, :meth:`Task.val_record`);
- predictions: values from logits (:meth:`Task.prediction`), the CSV's columns written and read back
  (:meth:`Task.header`, :meth:`Task.row`, :meth:`Task.claims`), an ensemble's common head (:meth:`Task.combine`);
- studies: fold metrics and the summary's table (:attr:`Task.metrics`, :meth:`Task.fold_metrics`,
  :meth:`Task.summary_table`);
- evaluation of a predictions CSV (:meth:`Task.evaluate`, metric code in :mod:`abmil.report`).
"""
from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from ..errors import DataError

__all__ = ["Task", "finite_number", "nan_to_none", "val_outputs"]


def nan_to_none(x: float | None) -> float | None:
    return None if x is None or (isinstance(x, float) and math.isnan(x)) else x


def finite_number(cells: dict, column: str, line: int, path: str, slide_id: str, *, non_negative: bool = False
                  ) -> float | None:
    """A manifest cell as a finite number (None where empty); DataError naming the line, field and slide."""
    text = cells.get(column, "")
    if not text:
        return None
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or (non_negative and value < 0):
        what = "a finite number >= 0" if non_negative else "a finite number"
        raise DataError(f"line {line}: field '{column}': {text!r} is not {what}", path=path, bag=slide_id)
    return value


@dataclass(frozen=True)
class Task:
    """A task, fitted or not: ``loss`` one of :attr:`losses` (None: the first, the default)."""

    name: ClassVar[str]
    losses: ClassVar[tuple[str, ...]]
    """The task's losses (:mod:`abmil.train.loss`); the first is its default."""
    columns: ClassVar[tuple[str, ...]]
    """The manifest columns of a bag's truth (besides ``slide_id``)."""
    columns_to_predict: ClassVar[bool] = False
    """Whether a manifest of slides to predict needs :attr:`columns` too (their cells may be empty)."""
    monitors: ClassVar[tuple[str, ...]] = ("val_loss",)
    """The ``--monitor`` choices (:data:`abmil.slides.train.MONITORS`) of the task."""
    metrics: ClassVar[tuple[str, ...]] = ()
    """A study's metrics of each fold and of its summary."""
    stratum: ClassVar[str] = "class"
    """How a splitter's messages call a stratum (:meth:`strata`)."""
    has_classes: ClassVar[bool] = False
    """Whether bags have classes (``label``): class names, class weights, the balanced sampler, thresholds."""
    description: ClassVar[str] = ""
    """A few words for ``--help``."""
    needs_targets: ClassVar[bool] = False
    """Whether the task's columns are named by the user (``--targets``, :meth:`with_targets`)."""
    takes_times: ClassVar[bool] = False
    """Whether ``abmil evaluate --times`` (the times of time-dependent metrics) is for this task's predictions."""
    loop_width: ClassVar[int] = 1
    """How many numbers :meth:`loop_target` gives a bag."""
    default_name: ClassVar[str] = "classification"
    """The task of a run stored before runs had heads (no ``info["head"]``)."""

    loss: str | None = None

    @classmethod
    def with_targets(cls, targets: Sequence[str]) -> type[Task]:
        """The task whose columns are ``targets`` (tasks that :attr:`needs_targets`)."""
        raise ValueError(f"the {cls.name} task has fixed columns ({', '.join(cls.columns)}), not --targets")

    def __post_init__(self) -> None:
        if self.loss is None:
            object.__setattr__(self, "loss", self.losses[0])
        if self.loss not in self.losses:
            raise ValueError(f"the {self.name} task's loss must be one of {', '.join(self.losses)}, "
                             f"got {self.loss!r}")

    # ------------------------------------------------------------------ targets (the manifest)
    @classmethod
    def parse_row(cls, cells: dict[str, str], line: int, path: str, slide_id: str) -> tuple[str, Any]:
        """One manifest row's ``(label text, outcome)``: the class name (``""`` for tasks without classes) and the
        task's truth (None where its cells are empty), checked; DataError naming the line, field and slide."""
        raise NotImplementedError

    @classmethod
    def check_rows(cls, rows: Sequence, path: str, require_labels: bool) -> None:
        """Checks over all rows of a manifest (``rows``: :class:`~abmil.slides.manifest.ManifestRow`)."""

    @classmethod
    def truth(cls, label: int | None, outcome: Any) -> Any:
        """A bag's truth as predictions carry it: the class index, or the outcome."""
        return outcome

    @classmethod
    def strata(cls, labels: Sequence, outcomes: Sequence, folds: int | None = None) -> np.ndarray:
        """What a split is stratified by, per bag (n_bags,) integers."""
        raise NotImplementedError

    @classmethod
    def check_study(cls, outcomes: Sequence, manifest: str | None) -> None:
        """Checks of a study's bags before any split is made."""

    @classmethod
    def class_names(cls, dataset) -> list[str]:
        """The run's classes ([] for tasks without classes)."""
        return []

    @classmethod
    def check_training_part(cls, dataset, train_idx: Sequence[int], classes: list[str]) -> None:
        """Checks of a run's training part before anything is fitted."""

    # ------------------------------------------------------------------ fitting and the head
    @classmethod
    def fit(cls, loss: str | None, outcomes: Sequence, n_bins: int, *, manifest: str | None = None,
            classes: Sequence[str] = ()) -> Task:
        """The task fitted on a run's training part (``outcomes``: its bags' truths; ``classes``: the run's)."""
        return cls(loss)

    def objective(self, **kwargs):
        """The training loss (:class:`abmil.train.loss.Objective`)."""
        from ..train.loss import Objective

        return Objective(self.loss, **kwargs)

    def n_out(self) -> int | None:
        """Outputs of the model's last layer; None: the classifier's (one logit for two classes, else one each)."""
        return 1

    def baseline_logits(self, outcomes: Sequence) -> np.ndarray | None:
        """The output bias the head starts from (None, or NaN for an output: the model's initialisation)."""
        return None

    def loop_target(self, outcome: Any, label: int | None = None):
        """The training loop's target of one bag."""
        raise NotImplementedError

    def outputs(self, logits) -> np.ndarray:
        """(n_bags, k) what a prediction holds, from the model's logits (n_bags, n_out): :meth:`torch_outputs` in
        float64."""
        return self.torch_outputs(logits.detach().double().cpu()).numpy()

    def torch_outputs(self, logits):
        """(n_bags, k) :meth:`outputs` as a tensor function of the logits (n_bags, n_out), in their dtype: the head
        an exported model carries (:mod:`abmil.export`); a task without one cannot be exported."""
        raise NotImplementedError(f"the {self.name} task has no tensor form of its outputs")

    def prediction(self, out, common: Task) -> np.ndarray:
        """(k,) one bag's prediction from its model output (a :class:`~abmil.nn.models.MILOutput` of one bag), on
        ``common``'s terms (an ensemble's head, :meth:`combine`)."""
        return self.align(self.outputs(out.logits)[0], common)

    def align(self, values: np.ndarray, other: Task) -> np.ndarray:
        """This head's outputs as ``other`` (the same task and loss, fitted on another part) would give them."""
        return np.asarray(values)

    @classmethod
    def combine(cls, heads: Sequence[Task]) -> Task:
        """The head of an ensemble (a study's fold models): they must share task and loss."""
        first = heads[0]
        for h in heads[1:]:
            if (h.name, h.loss) != (first.name, first.loss):
                raise ValueError(f"an ensemble's models must share their head: {first.name}/{first.loss} and "
                                 f"{h.name}/{h.loss}")
        return first

    # ------------------------------------------------------------------ validation
    def val_row(self, position: int, out, label) -> tuple:
        """What validation keeps of one bag's output (gathered over ranks: plain numbers)."""
        return (position, out.logits[0].float().cpu().tolist())

    def val_record(self, rows: list[tuple], outcomes: Sequence, monitor: str) -> dict:
        """The validation metrics (``val_<metric>``) of all rows together, the monitor's among them."""
        raise NotImplementedError

    # ------------------------------------------------------------------ predictions
    def header(self, classes: Sequence[str], id_column: str = "slide_id") -> list[str]:
        """The predictions CSV's columns."""
        raise NotImplementedError

    def row(self, bag_id: str, truth, values: np.ndarray, classes: Sequence[str],
            threshold: float | None = None) -> list[str]:
        """A CSV row of :meth:`header`: ``truth`` as :meth:`truth` gives it, or None."""
        raise NotImplementedError

    def study_row(self, bag_id: str, truth, values: np.ndarray, fold: Task, classes: Sequence[str],
                  threshold: float | None) -> list[str]:
        """An out-of-fold row: ``values`` the fold model's own outputs, ``fold`` its head, self the study's."""
        return self.row(bag_id, truth, fold.align(values, self), classes, threshold)

    @classmethod
    def claims(cls, columns: Sequence[str]) -> bool:
        """Whether a predictions CSV with ``columns`` holds this task's predictions."""
        raise NotImplementedError

    def predicted(self, values: np.ndarray, classes: Sequence[str], threshold: float | None = None):
        """One prediction in a word or number (the attention HDF5's ``predicted`` attribute)."""
        return float(values[0])

    def summary(self, values: np.ndarray, classes: Sequence[str]) -> str:
        """A few words on one prediction (heatmap titles)."""
        raise NotImplementedError

    def title_label(self, label, classes: Sequence[str]) -> str:
        """The truth in a heatmap's title ("" for none)."""
        return ""

    def contributions(self, shares: np.ndarray) -> tuple[str, np.ndarray]:
        """The signed patch map of a heatmap, ``(name, (n,))``, from the patches' shares ``a_k · W h_k`` (n, n_out)
        of the logits."""
        raise NotImplementedError

    def patch_maps(self, shares: Callable[[], np.ndarray], classes: Sequence[str]) -> list[tuple[str, np.ndarray]]:
        """A heatmap's maps beyond the attention, ``[(name, (n,))]``; ``shares()`` computes the patches' shares of
        the logits (one more pass over the slide, only when asked). Default: :meth:`contributions`."""
        return [self.contributions(shares())]

    # ------------------------------------------------------------------ studies
    def threshold(self, val_predictions: Sequence, classes: Sequence[str]) -> float | None:
        """A decision threshold chosen on a fold's validation predictions (None: the task has none)."""
        return None

    def fold_metrics(self, truths: Sequence, values: np.ndarray) -> dict:
        """A fold's :attr:`metrics` of its predictions (None where undefined)."""
        raise NotImplementedError

    def summary_table(self, per_fold: list[dict]) -> list[str]:
        """The summary.md lines after the mean table: one row per fold, and a note."""
        metrics = self.metrics
        lines = [f"| fold | n test | {' | '.join(metrics)} | best epoch |", "|---|---|" + "---|" * len(metrics)
                 + "---|"]
        lines += [f"| {f['key']} | {f['n_test']} | " + " | ".join(_fmt(f[m]) for m in metrics)
                  + f" | {f['best_epoch']} |" for f in per_fold]
        return [*lines, "", "SD: sample standard deviation over folds (ddof 1). " + self.metrics_note]

    metrics_note: ClassVar[str] = ""

    # ------------------------------------------------------------------ evaluation
    @classmethod
    def evaluate(cls, predictions_csv: str, *, out_dir, manifest, labels_from: str, threshold: float | None,
                 run, n_bootstrap: int, seed: int, times: Sequence[float] | None, risk_groups: int,
                 by: str | None = None) -> dict:
        """``abmil evaluate`` of a predictions CSV of this task (:func:`abmil.report.evaluate.evaluate_predictions`);
        ``by``: a column whose values get rows of their own (``--by site``)."""
        raise NotImplementedError

    @classmethod
    def check_evaluate_options(cls, threshold: float | None, times: Sequence[float] | None) -> None:
        """ValueError for an option of :meth:`evaluate` that is another task's (a threshold, ``--times``)."""
        if threshold is not None and not cls.has_classes:
            raise ValueError(f"a decision threshold is for classification; these are {cls.name} predictions")
        if times is not None and not cls.takes_times:
            raise ValueError("--times is for survival predictions (a risk column)")

    @classmethod
    def output_columns(cls, columns: Sequence[str], path: str) -> list[str]:
        """The columns of a predictions CSV (``columns``, at ``path``) that hold an outcome task's outputs, in order
        (:func:`abmil.report.outcome_evaluate.read_outcomes`)."""
        raise NotImplementedError

    # ------------------------------------------------------------------ paired comparison (abmil compare)
    @classmethod
    def scored_predictions(cls, predictions_csv: str, manifest) -> tuple[list[str], list[str], bool, list[str],
                                                                          np.ndarray, np.ndarray]:
        """``(slide ids, case ids, has cases, classes, truth (n,) or (n, k), scores (n, m))`` of a predictions CSV,
        for :func:`abmil.report.compare.compare_runs`; ValueError for a task that is not compared."""
        raise ValueError(f"abmil compare does not compare {cls.name} predictions yet")

    @classmethod
    def comparison_metrics(cls, classes: Sequence[str]) -> Callable[[np.ndarray, np.ndarray], dict]:
        """``metrics(truth, scores) -> {(metric, class): value}`` of one sample, the rows of a paired comparison."""
        raise ValueError(f"abmil compare does not compare {cls.name} predictions yet")

    @classmethod
    def check_run(cls, run) -> None:
        """A run folder given to evaluate these predictions (its checkpoint, or a study's first fold's) must be of
        this task; DataError otherwise."""
        import os

        from ..slides.run_folder import run_head_info

        found = (run_head_info(run).get("head") or {}).get("task", Task.default_name)
        if found != cls.name:
            raise DataError(f"the run was trained for {found}, the predictions are {cls.name} predictions",
                            path=os.fspath(run))

    # ------------------------------------------------------------------ storage
    def fitted(self) -> dict:
        """What :meth:`fit` found, as JSON."""
        return {}

    def to_dict(self) -> dict:
        # every head stored since heads exist has these four keys: kept, so that checkpoints stay byte-identical
        return {"task": self.name, "loss": self.loss, "time_bins": None, "target_scale": None, **self.fitted()}

    @classmethod
    def from_dict(cls, d: dict) -> Task:
        """The head of :meth:`to_dict`'s ``d``."""
        return cls(d.get("loss"))


def val_outputs(task: Task, rows: list[tuple[int, list[float]]], outcomes: Sequence):
    """Validation rows ``(position, logits)`` in bag order, their mean loss (over all of them together) and the
    task's outputs."""
    import torch

    from ..nn.models import MILOutput
    from ..train.loss import bag_losses

    rows = sorted(rows)
    logits = torch.tensor([r[1] for r in rows], dtype=torch.float64)
    y = torch.tensor([task.loop_target(outcomes[i]) for i, _ in rows], dtype=torch.float64)
    loss = float(bag_losses(MILOutput(logits), y, objective=task.objective()).mean())
    return rows, loss, task.outputs(logits)


def _fmt(x: float | None) -> str:
    return "" if x is None else f"{x:.4f}"
