"""What a slide run's head predicts: classes, survival or a number; its training targets and its prediction columns.

A :class:`Head` is fitted on the training part of a run (:meth:`Head.fit`) and stored in the run's checkpoint
(``info["head"]``), so that ``abmil predict``, ``evaluate`` and ``heatmap`` read a run's task from the run:

- ``classification``: the class probabilities (``prob_<class>`` columns), as before.
- ``survival``, loss ``nll`` (discrete-time hazards): ``n_bins`` time bins whose inner edges are the quantiles
  ``k / n_bins`` of the *training part's* event times (PORPOISE's ``qcut`` of the uncensored times); the edges are
  ``0, q_1, ..., q_{n_bins-1}, t_max`` (``t_max`` the largest training event time; later times fall in the last
  bin). The model gives each bin's hazard ``h_k``; a bag's survival at the end of bin k is
  ``S_k = prod_{j<=k} (1 - h_j)``, its risk ``-sum_k S_k`` (PORPOISE's: minus the expected number of bins survived).
  Columns: ``risk`` and ``surv_<edge>`` = ``S_k`` at each bin's upper edge (``S(t)`` in between: linear from
  ``S(0) = 1``; after ``t_max``: ``S_{n_bins}``).
- ``survival``, loss ``cox``: one logit, the log hazard ratio, which is the ``risk`` column (no survival function:
  the baseline hazard is not estimated).
- ``regression``: one output on the training part's standardised targets (``(y - mean) / sd``, stored);
  ``predicted`` = ``mean + sd * output``, in the target's units.

An ensemble of fold models averages the survival functions (nll; the risk is then that of the mean), the log hazard
ratios (cox) or the predictions (regression).
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from ..errors import DataError
from ..train.loss import TASKS, Objective

__all__ = ["DEFAULT_BINS", "Head", "strata"]

#: Time bins of the discrete-time survival head (PORPOISE's 4).
DEFAULT_BINS = 4


def decide(probabilities: np.ndarray, classes: Sequence[str], threshold: float | None = None) -> str:
    """The predicted class: with two classes and a ``threshold``, the second (positive) one when its probability is
    at least the threshold (a study's Youden threshold, :func:`abmil.slides.predict.run_threshold`); else the most
    probable one."""
    if threshold is not None and len(classes) == 2:
        return classes[1] if float(probabilities[1]) >= threshold else classes[0]
    return classes[int(np.argmax(probabilities))]


@dataclass(frozen=True)
class Head:
    """A run's task, its loss, and what was fitted on its training part (survival time bins, regression scale)."""

    task: str = "classification"
    loss: str | None = None
    time_bins: tuple[float, ...] | None = None
    """nll: the bin edges (n_bins + 1), from 0 to the largest training event time."""
    target_scale: tuple[float, float] | None = None
    """regression: (mean, sd) of the training targets."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "loss", self.objective().loss)

    def objective(self) -> Objective:
        return Objective(self.task, self.loss)

    @property
    def is_classification(self) -> bool:
        return self.task == "classification"

    @property
    def n_bins(self) -> int:
        return len(self.time_bins) - 1 if self.time_bins is not None else 0

    def n_out(self, n_classes: int = 2) -> int:
        """Outputs of the model's last layer."""
        if self.is_classification:
            return 1 if n_classes == 2 else n_classes
        return self.n_bins if self.loss == "nll" else 1

    # ------------------------------------------------------------------ fitting and targets
    @classmethod
    def fit(cls, task: str, loss: str | None, outcomes: Sequence, n_bins: int = DEFAULT_BINS, *,
            manifest: str | None = None) -> Head:
        """The head of a run trained on ``outcomes`` (its training bags': (time, event) or targets)."""
        if task not in TASKS:
            raise ValueError(f"task must be one of {', '.join(TASKS)}, got {task!r}")
        objective = Objective(task, loss)
        if task == "survival" and objective.loss == "nll":
            if n_bins < 1:
                raise ValueError(f"n_bins must be >= 1, got {n_bins}")
            times = np.array([t for t, e in outcomes if e], dtype=np.float64)
            if times.size == 0:
                raise DataError("field 'event': every training slide is censored (event 0): the time bins and the "
                                "likelihood need observed events", path=manifest)
            cuts = np.quantile(times, np.arange(1, n_bins) / n_bins) if n_bins > 1 else np.zeros(0)
            edges = (0.0, *[float(c) for c in cuts], float(times.max()))
            return cls(task, objective.loss, time_bins=edges)
        if task == "survival":
            if not any(e for _, e in outcomes):
                raise DataError("field 'event': every training slide is censored (event 0): the Cox likelihood "
                                "needs observed events", path=manifest)
            return cls(task, objective.loss)
        if task == "regression":
            y = np.asarray(outcomes, dtype=np.float64)
            sd = float(y.std()) if y.size > 1 else 0.0
            return cls(task, objective.loss, target_scale=(float(y.mean()), sd if sd > 0 else 1.0))
        return cls(task, objective.loss)

    def baseline_logits(self, outcomes: Sequence) -> np.ndarray | None:
        """nll: the logits of the pooled discrete hazards of ``outcomes`` (the training part's), ``events in bin k /
        bags at risk at its start`` (a bag censored in bin k counts as at risk through it), clipped to [0.001,
        0.999]: the output bias a survival head starts from. Starting at ``h = 0.5`` instead, the first epochs fit
        the baseline through the weights too, which (tested on the synthetic cohort) transiently ranks the bags with
        the largest embeddings lowest. None for the other heads."""
        if self.loss != "nll":
            return None
        bins = np.array([self.bin_of(t) for t, _ in outcomes])
        events = np.array([bool(e) for _, e in outcomes])
        d = np.bincount(bins[events], minlength=self.n_bins)[: self.n_bins]
        at_risk = np.array([(bins >= k).sum() for k in range(self.n_bins)])
        h = np.clip(d / np.maximum(at_risk, 1), 1e-3, 1 - 1e-3)
        return np.log(h / (1 - h))

    def bin_of(self, time: float) -> int:
        """The time bin of ``time`` (bins are [edge_k, edge_k+1); before 0: bin 0, after t_max: the last)."""
        cuts = np.asarray(self.time_bins[1:-1])
        return int(np.searchsorted(cuts, time, side="right"))

    def loop_target(self, outcome, label: int | None = None):
        """The training loop's target of one bag: the class index, (time bin, event, time), or the standardised
        target."""
        if self.is_classification:
            return label
        if self.task == "survival":
            time, event = outcome
            return (float(self.bin_of(time)) if self.time_bins is not None else 0.0, float(event), float(time))
        mean, sd = self.target_scale
        return (float(outcome) - mean) / sd

    # ------------------------------------------------------------------ outputs
    def outputs(self, logits: torch.Tensor) -> np.ndarray:
        """(n_bags, k) what a prediction holds, from the model's logits (n_bags, n_out): the class probabilities;
        ``S_k`` at each bin's upper edge (nll); the log hazard ratio (cox); the prediction (regression)."""
        logits = logits.detach().double().cpu()
        if self.is_classification:
            if logits.shape[-1] == 1:
                p = torch.sigmoid(logits)
                return torch.cat([1.0 - p, p], -1).numpy()
            return torch.softmax(logits, -1).numpy()
        if self.loss == "nll":
            return torch.cumprod(torch.sigmoid(-logits), -1).numpy()
        if self.task == "regression":
            mean, sd = self.target_scale
            return (mean + sd * logits).numpy()
        return logits.numpy()

    def risk(self, values: np.ndarray) -> float:
        """A survival prediction's risk (higher: earlier event)."""
        values = np.asarray(values, dtype=np.float64)
        return float(-values.sum()) if self.loss == "nll" else float(values[0])

    def survival_at(self, values: np.ndarray, times: np.ndarray) -> np.ndarray:
        """nll: ``S(t)`` at ``times``, linear between the bins' upper edges from ``S(0) = 1``."""
        return np.interp(times, np.asarray(self.time_bins), np.concatenate([[1.0], values]))

    # ------------------------------------------------------------------ CSV
    def header(self, classes: Sequence[str], id_column: str = "slide_id") -> list[str]:
        if self.is_classification:
            return [id_column, "label", *[f"prob_{c}" for c in classes], "predicted"]
        if self.task == "regression":
            return [id_column, "target", "predicted"]
        return [id_column, "time", "event", "risk", *[f"surv_{e:g}" for e in (self.time_bins or ())[1:]]]

    def align(self, values: np.ndarray, other: Head) -> np.ndarray:
        """This head's outputs ``values`` as ``other`` (the same task and loss, other time bins) would give them:
        nll survival functions interpolated at ``other``'s bin ends (:meth:`survival_at`); others unchanged."""
        if self.loss != "nll" or self.time_bins == other.time_bins:
            return np.asarray(values)
        return self.survival_at(values, np.asarray(other.time_bins[1:]))

    def row(self, bag_id: str, label, values: np.ndarray, classes: Sequence[str],
            threshold: float | None = None) -> list[str]:
        """A CSV row of :meth:`header`: ``label`` the truth (class index, (time, event), target, or None);
        ``threshold``: the decision threshold of a two-class run (:func:`decide`)."""
        if self.is_classification:
            text = "" if label is None else classes[label]
            return [bag_id, text, *[f"{v:.6f}" for v in values], decide(values, classes, threshold)]
        if self.task == "regression":
            return [bag_id, "" if label is None else f"{float(label):.10g}", f"{float(values[0]):.8g}"]
        time, event = ("", "") if label is None else (f"{float(label[0]):.10g}", str(int(label[1])))
        surv = [f"{v:.6f}" for v in values] if self.loss == "nll" else []
        return [bag_id, time, event, f"{self.risk(values):.8g}", *surv]

    def summary(self, values: np.ndarray, classes: Sequence[str]) -> str:
        """A few words on one prediction (heatmap titles)."""
        if self.is_classification:
            k = int(np.argmax(values))
            return f"{classes[k]} ({values[k]:.2f})"
        if self.task == "regression":
            return f"predicted {float(values[0]):.3g}"
        return f"risk {self.risk(values):.3g}"

    # ------------------------------------------------------------------ storage
    def to_dict(self) -> dict:
        return {"task": self.task, "loss": self.loss,
                "time_bins": None if self.time_bins is None else list(self.time_bins),
                "target_scale": None if self.target_scale is None else list(self.target_scale)}

    @classmethod
    def from_info(cls, info: dict) -> Head:
        """The head stored in a run's checkpoint info (a run from before heads: classification)."""
        d = info.get("head") or {}
        bins, scale = d.get("time_bins"), d.get("target_scale")
        return cls(d.get("task", "classification"), d.get("loss"), None if bins is None else tuple(bins),
                   None if scale is None else tuple(scale))


def common_head(heads: Sequence[Head]) -> Head:
    """The head of an ensemble (a cross-validation's fold models): the heads must share task and loss; nll folds,
    whose time bins come from each fold's training part, are put on the mean of their bin edges (each fold's
    survival function interpolated there, :meth:`Head.align`), regression folds' predictions are in target units
    already."""
    first = heads[0]
    for h in heads[1:]:
        if (h.task, h.loss) != (first.task, first.loss) or h.n_bins != first.n_bins:
            raise ValueError(f"an ensemble's models must share their head: {first.task}/{first.loss} and "
                             f"{h.task}/{h.loss}")
    if first.loss == "nll" and any(h.time_bins != first.time_bins for h in heads):
        edges = np.mean([h.time_bins for h in heads], 0)
        return Head(first.task, first.loss, time_bins=tuple(float(e) for e in edges))
    return first


def strata(task: str, labels: Sequence, outcomes: Sequence, folds: int | None = None) -> np.ndarray:
    """What a split is stratified by, per bag: the class (classification), the event (survival), or the target's
    quantile group (regression: ``min(5, n // folds)`` groups of equal size, at least 2, so that each has a bag for
    every fold)."""
    if task == "classification":
        return np.asarray(labels)
    if task == "survival":
        return np.array([int(e) for _, e in outcomes])
    y = np.asarray(outcomes, dtype=np.float64)
    groups = max(2, min(5, y.size // max(folds or 2, 2)))
    from scipy.stats import rankdata

    ranks = rankdata(y, method="min").astype(np.int64) - 1  # tied targets (a case's slides) share a group
    return (ranks * groups // max(y.size, 1)).astype(np.int64)


def stratum_names(task: str) -> str:
    """How a splitter's messages call a stratum."""
    return {"classification": "class", "survival": "event", "regression": "target quantile group"}[task]


def nan_to_none(x: float | None) -> float | None:
    return None if x is None or (isinstance(x, float) and math.isnan(x)) else x
