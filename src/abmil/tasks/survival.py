"""Survival: a bag's time to an event, possibly censored (manifest columns ``time``, ``event``).

- loss ``nll`` (discrete-time hazards, the default): ``n_bins`` time bins whose inner edges are the quantiles
  ``k / n_bins`` of the *training part's* event times (PORPOISE's ``qcut`` of the uncensored times); the edges are
  ``0, q_1, ..., q_{n_bins-1}, t_max`` (``t_max`` the largest training event time; later times fall in the last
  bin). The model gives each bin's hazard ``h_k``; a bag's survival at the end of bin k is
  ``S_k = prod_{j<=k} (1 - h_j)``, its risk ``-sum_k S_k`` (PORPOISE's: minus the expected number of bins survived).
  Columns: ``risk`` and ``surv_<edge>`` = ``S_k`` at each bin's upper edge (``S(t)`` in between: linear from
  ``S(0) = 1``; after ``t_max``: ``S_{n_bins}``).
- loss ``cox``: one logit, the log hazard ratio, which is the ``risk`` column (no survival function: the baseline
  hazard is not estimated).

An ensemble of fold models averages the survival functions (nll; the risk is then that of the mean) or the log hazard
ratios (cox). Evaluation: :mod:`abmil.report.survival_evaluate` (scikit-survival).
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from ..errors import DataError
from ..slides.tables import SURV_PREFIX
from .base import Task, finite_number, nan_to_none, val_outputs

__all__ = ["DEFAULT_BINS", "SURV_PREFIX", "SurvivalTask"]

#: Time bins of the discrete-time survival head (PORPOISE's 4).
DEFAULT_BINS = 4


def _event(cells: dict, line: int, path: str, slide_id: str) -> int | None:
    text = cells.get("event", "")
    if not text:
        return None
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if value not in (0.0, 1.0):
        raise DataError(f"line {line}: field 'event': {text!r} is not 0 (censored) or 1 (event)", path=path,
                        bag=slide_id)
    return int(value)


@dataclass(frozen=True)
class SurvivalTask(Task):
    """Time to event: ``time`` (>= 0, any unit) and ``event`` (1 = observed at ``time``, 0 = censored there)."""

    name: ClassVar[str] = "survival"
    losses: ClassVar[tuple[str, ...]] = ("nll", "cox")
    columns: ClassVar[tuple[str, ...]] = ("time", "event")
    monitors: ClassVar[tuple[str, ...]] = ("val_loss", "val_cindex")
    metrics: ClassVar[tuple[str, ...]] = ("c_index",)
    stratum: ClassVar[str] = "event"
    loop_width: ClassVar[int] = 3
    takes_times: ClassVar[bool] = True
    description: ClassVar[str] = "survival (time, event: 1 event, 0 censored)"
    metrics_note: ClassVar[str] = "c_index: Harrell's, of each fold's test risks."

    time_bins: tuple[float, ...] | None = None
    """nll: the bin edges (n_bins + 1), from 0 to the largest training event time."""

    # ------------------------------------------------------------------ targets
    @classmethod
    def parse_row(cls, cells: dict[str, str], line: int, path: str, slide_id: str) -> tuple[str, Any]:
        time = finite_number(cells, "time", line, path, slide_id, non_negative=True)
        event = _event(cells, line, path, slide_id)
        if (time is None) != (event is None):
            raise DataError(f"line {line}: field '{'event' if event is None else 'time'}' is empty (a slide "
                            "with a time needs an event and the reverse)", path=path, bag=slide_id)
        return "", None if time is None else (time, event)

    @classmethod
    def check_rows(cls, rows: Sequence, path: str, require_labels: bool) -> None:
        if require_labels and not any(r.outcome is not None and r.outcome[1] for r in rows):
            raise DataError("field 'event': every slide is censored (event 0): survival models need observed "
                            "events", path=path)

    @classmethod
    def strata(cls, labels: Sequence, outcomes: Sequence, folds: int | None = None) -> np.ndarray:
        return np.array([int(e) for _, e in outcomes])

    @classmethod
    def check_study(cls, outcomes: Sequence, manifest: str | None) -> None:
        if not any(e for _, e in outcomes):
            raise DataError("field 'event': every slide is censored (event 0)", path=manifest)

    # ------------------------------------------------------------------ fitting and the head
    @classmethod
    def fit(cls, loss: str | None, outcomes: Sequence, n_bins: int = DEFAULT_BINS, *,
            manifest: str | None = None, classes: Sequence[str] = ()) -> SurvivalTask:
        task = cls(loss)
        if task.loss == "nll":
            if n_bins < 1:
                raise ValueError(f"n_bins must be >= 1, got {n_bins}")
            times = np.array([t for t, e in outcomes if e], dtype=np.float64)
            if times.size == 0:
                raise DataError("field 'event': every training slide is censored (event 0): the time bins and the "
                                "likelihood need observed events", path=manifest)
            cuts = np.quantile(times, np.arange(1, n_bins) / n_bins) if n_bins > 1 else np.zeros(0)
            edges = (0.0, *[float(c) for c in cuts], float(times.max()))
            return cls(task.loss, time_bins=edges)
        if not any(e for _, e in outcomes):
            raise DataError("field 'event': every training slide is censored (event 0): the Cox likelihood "
                            "needs observed events", path=manifest)
        return task

    @property
    def n_bins(self) -> int:
        return len(self.time_bins) - 1 if self.time_bins is not None else 0

    def n_out(self) -> int | None:
        return self.n_bins if self.loss == "nll" else 1

    def baseline_logits(self, outcomes: Sequence) -> np.ndarray | None:
        """nll: the logits of the pooled discrete hazards of ``outcomes`` (the training part's), ``events in bin k /
        bags at risk at its start`` (a bag censored in bin k counts as at risk through it), clipped to [0.001,
        0.999]: the output bias a survival head starts from. Starting at ``h = 0.5`` instead, the first epochs fit
        the baseline through the weights too, which (tested on the synthetic cohort) transiently ranks the bags with
        the largest embeddings lowest. None for Cox."""
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

    def loop_target(self, outcome: Any, label: int | None = None):
        """(time bin, event, time)."""
        time, event = outcome
        return (float(self.bin_of(time)) if self.time_bins is not None else 0.0, float(event), float(time))

    def torch_outputs(self, logits):
        """``S_k`` at each bin's upper edge (nll); the log hazard ratio (cox)."""
        import torch

        if self.loss == "nll":
            return torch.cumprod(torch.sigmoid(-logits), -1)
        return logits

    def risk(self, values: np.ndarray) -> float:
        """A prediction's risk (higher: earlier event)."""
        values = np.asarray(values, dtype=np.float64)
        return float(-values.sum()) if self.loss == "nll" else float(values[0])

    def survival_at(self, values: np.ndarray, times: np.ndarray) -> np.ndarray:
        """nll: ``S(t)`` at ``times``, linear between the bins' upper edges from ``S(0) = 1``."""
        return np.interp(times, np.asarray(self.time_bins), np.concatenate([[1.0], values]))

    def align(self, values: np.ndarray, other: Task) -> np.ndarray:
        """nll survival functions interpolated at ``other``'s bin ends (:meth:`survival_at`); cox unchanged."""
        if self.loss != "nll" or self.time_bins == other.time_bins:
            return np.asarray(values)
        return self.survival_at(values, np.asarray(other.time_bins[1:]))

    @classmethod
    def combine(cls, heads: Sequence[Task]) -> Task:
        """nll folds, whose time bins come from each fold's training part, are put on the mean of their bin edges
        (each fold's survival function interpolated there, :meth:`align`)."""
        first = heads[0]
        for h in heads[1:]:
            if (h.name, h.loss) != (first.name, first.loss) or h.n_bins != first.n_bins:
                raise ValueError(f"an ensemble's models must share their head: {first.name}/{first.loss} and "
                                 f"{h.name}/{h.loss}")
        if first.loss == "nll" and any(h.time_bins != first.time_bins for h in heads):
            edges = np.mean([h.time_bins for h in heads], 0)
            return cls(first.loss, time_bins=tuple(float(e) for e in edges))
        return first

    # ------------------------------------------------------------------ validation
    def val_record(self, rows: list[tuple], outcomes: Sequence, monitor: str | None) -> dict:
        """The mean loss (Cox: the partial likelihood of the whole validation part, per bag) and Harrell's c-index
        of the risks, and its negative (what ``val_cindex`` minimises)."""
        from ..report.metrics import harrell_c_index

        rows, loss, values = val_outputs(self, rows, outcomes)
        risk = [self.risk(v) for v in values]
        c = harrell_c_index([outcomes[i][0] for i, _ in rows], [outcomes[i][1] for i, _ in rows], risk)
        return {"val_loss": loss, "val_cindex": c, "val_neg_cindex": -c if c == c else float("nan")}

    # ------------------------------------------------------------------ predictions
    def header(self, classes: Sequence[str], id_column: str = "slide_id") -> list[str]:
        return [id_column, "time", "event", "risk", *[f"{SURV_PREFIX}{e:g}" for e in (self.time_bins or ())[1:]]]

    def row(self, bag_id: str, truth, values: np.ndarray, classes: Sequence[str],
            threshold: float | None = None) -> list[str]:
        time, event = ("", "") if truth is None else (f"{float(truth[0]):.10g}", str(int(truth[1])))
        surv = [f"{v:.6f}" for v in values] if self.loss == "nll" else []
        return [bag_id, time, event, f"{self.risk(values):.8g}", *surv]

    def study_row(self, bag_id: str, truth, values: np.ndarray, fold: Task, classes: Sequence[str],
                  threshold: float | None) -> list[str]:
        """The study's survival function (at its mean bin ends) but the fold model's own risk, not that of its
        interpolated survival function."""
        row = self.row(bag_id, truth, fold.align(values, self), classes, threshold)
        if self.loss == "nll":
            row[3] = f"{fold.risk(np.asarray(values)):.8g}"
        return row

    @classmethod
    def claims(cls, columns: Sequence[str]) -> bool:
        return "risk" in columns

    def predicted(self, values: np.ndarray, classes: Sequence[str], threshold: float | None = None):
        return self.risk(values)

    def summary(self, values: np.ndarray, classes: Sequence[str]) -> str:
        return f"risk {self.risk(values):.3g}"

    def contributions(self, shares: np.ndarray) -> tuple[str, np.ndarray] | None:
        """Cox: ``a_k · w h_k``, the patch's share of the log hazard ratio (the risk is their sum plus the bias);
        discrete-time: the mean over the bins of ``a_k · W_b h_k``, its share of the mean hazard logit (higher: more
        hazard)."""
        if self.loss == "cox":
            return "share of risk", shares[:, 0]
        return "share of mean hazard logit", shares.mean(1)

    # ------------------------------------------------------------------ studies
    def fold_metrics(self, truths: Sequence, values: np.ndarray) -> dict:
        from ..report.metrics import harrell_c_index

        return {"c_index": nan_to_none(harrell_c_index([t[0] for t in truths], [t[1] for t in truths],
                                                       [self.risk(v) for v in values]))}

    # ------------------------------------------------------------------ evaluation
    @classmethod
    def evaluate(cls, predictions_csv: str, *, out_dir, manifest, labels_from: str, threshold: float | None,
                 run, n_bootstrap: int, seed: int, times: Sequence[float] | None, risk_groups: int,
                 time_unit: str | None = None, by: str | None = None) -> dict:
        from ..report.survival_evaluate import evaluate_survival

        cls.check_evaluate_options(threshold, times)
        if run is not None:
            cls.check_run(run)
        return evaluate_survival(predictions_csv, cls, out_dir=out_dir, manifest=manifest, labels_from=labels_from,
                                 n_bootstrap=n_bootstrap, seed=seed, times=times, risk_groups=risk_groups,
                                 time_unit=time_unit, by=by)

    @classmethod
    def scored_predictions(cls, predictions_csv: str, manifest):
        """The risk column is the score (Harrell's C needs no survival function)."""
        from ..report.outcome_evaluate import read_outcomes

        slide_ids, truth, outputs, case_ids, has_cases, *_ = read_outcomes(predictions_csv, cls, manifest)
        return slide_ids, case_ids, has_cases, [], truth, outputs[:, :1]

    @classmethod
    def comparison_metrics(cls, classes: Sequence[str]):
        from ..report.metrics import harrell_c_index

        return lambda truth, risk: {("c_index_harrell", ""): harrell_c_index(truth[:, 0], truth[:, 1], risk[:, 0])}

    @classmethod
    def output_columns(cls, columns: Sequence[str], path: str) -> list[str]:
        """``risk`` and the ``surv_<t>`` columns (their times numbers)."""
        surv = [c for c in columns if c.startswith(SURV_PREFIX)]
        for c in surv:
            try:
                float(c[len(SURV_PREFIX):])
            except ValueError:
                raise DataError(f"columns {', '.join(surv)}: {SURV_PREFIX}<time> needs a number", path=path) \
                    from None
        return ["risk", *surv]

    # ------------------------------------------------------------------ storage
    def fitted(self) -> dict:
        return {"time_bins": None if self.time_bins is None else list(self.time_bins)}

    @classmethod
    def from_dict(cls, d: dict) -> Task:
        bins = d.get("time_bins")
        return cls(d.get("loss"), None if bins is None else tuple(bins))

