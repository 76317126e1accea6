"""Regression: a number per bag (manifest column ``target``).

One output on the training part's standardised targets (``(y - mean) / sd``, stored); ``predicted`` =
``mean + sd * output``, in the target's units; loss ``mse`` (the default) or ``huber``. An ensemble of fold models
averages the predictions. Evaluation: :mod:`abmil.report.regression_evaluate`.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from ..slides.tables import PROB_PREFIX
from .base import Task, finite_number, nan_to_none, val_outputs

__all__ = ["RegressionTask"]


@dataclass(frozen=True)
class RegressionTask(Task):
    """A finite number per bag, ``target``."""

    name: ClassVar[str] = "regression"
    losses: ClassVar[tuple[str, ...]] = ("mse", "huber")
    columns: ClassVar[tuple[str, ...]] = ("target",)
    metrics: ClassVar[tuple[str, ...]] = ("r2", "mae", "pearson")
    stratum: ClassVar[str] = "target quantile group"
    description: ClassVar[str] = "a number (target)"
    metrics_note: ClassVar[str] = "r2, mae, pearson of each fold's test predictions."

    target_scale: tuple[float, float] | None = None
    """(mean, sd) of the training targets."""

    # ------------------------------------------------------------------ targets
    @classmethod
    def parse_row(cls, cells: dict[str, str], line: int, path: str, slide_id: str) -> tuple[str, Any]:
        return "", finite_number(cells, "target", line, path, slide_id)

    @classmethod
    def strata(cls, labels: Sequence, outcomes: Sequence, folds: int | None = None) -> np.ndarray:
        """The target's quantile group: ``min(5, n // folds)`` groups of equal size, at least 2, so that each has a
        bag for every fold."""
        from scipy.stats import rankdata

        y = np.asarray(outcomes, dtype=np.float64)
        groups = max(2, min(5, y.size // max(folds or 2, 2)))
        ranks = rankdata(y, method="min").astype(np.int64) - 1  # tied targets (a case's slides) share a group
        return (ranks * groups // max(y.size, 1)).astype(np.int64)

    # ------------------------------------------------------------------ fitting and the head
    @classmethod
    def fit(cls, loss: str | None, outcomes: Sequence, n_bins: int = 0, *,
            manifest: str | None = None, classes: Sequence[str] = ()) -> RegressionTask:
        y = np.asarray(outcomes, dtype=np.float64)
        sd = float(y.std()) if y.size > 1 else 0.0
        return cls(loss, target_scale=(float(y.mean()), sd if sd > 0 else 1.0))

    def loop_target(self, outcome: Any, label: int | None = None):
        """The standardised target."""
        mean, sd = self.target_scale
        return (float(outcome) - mean) / sd

    def torch_outputs(self, logits):
        """The prediction, in target units."""
        mean, sd = self.target_scale
        return mean + sd * logits

    # ------------------------------------------------------------------ validation
    def val_record(self, rows: list[tuple], outcomes: Sequence, monitor: str | None) -> dict:
        """The mean loss and R²."""
        from ..report.metrics import regression_metrics

        rows, loss, values = val_outputs(self, rows, outcomes)
        return {"val_loss": loss, "val_r2": regression_metrics([outcomes[i] for i, _ in rows], values[:, 0])["r2"]}

    # ------------------------------------------------------------------ predictions
    def header(self, classes: Sequence[str], id_column: str = "slide_id") -> list[str]:
        return [id_column, "target", "predicted"]

    def row(self, bag_id: str, truth, values: np.ndarray, classes: Sequence[str],
            threshold: float | None = None) -> list[str]:
        return [bag_id, "" if truth is None else f"{float(truth):.10g}", f"{float(values[0]):.8g}"]

    @classmethod
    def claims(cls, columns: Sequence[str]) -> bool:
        return "predicted" in columns and not any(c.startswith(PROB_PREFIX) for c in columns)

    def summary(self, values: np.ndarray, classes: Sequence[str]) -> str:
        return f"predicted {float(values[0]):.3g}"

    def contributions(self, shares: np.ndarray) -> tuple[str, np.ndarray] | None:
        """``sd · a_k · w h_k``, the patch's share of the prediction in target units (the prediction is their sum
        plus ``mean + sd · bias``)."""
        return "share of prediction", self.target_scale[1] * shares[:, 0]

    # ------------------------------------------------------------------ studies
    def fold_metrics(self, truths: Sequence, values: np.ndarray) -> dict:
        from ..report.metrics import regression_metrics

        m = regression_metrics(list(truths), [v[0] for v in values])
        return {k: nan_to_none(m[k]) for k in self.metrics}

    # ------------------------------------------------------------------ evaluation
    @classmethod
    def evaluate(cls, predictions_csv: str, *, out_dir, manifest, labels_from: str, threshold: float | None,
                 run, n_bootstrap: int, seed: int, times: Sequence[float] | None, risk_groups: int,
                 by: str | None = None) -> dict:
        from ..report.regression_evaluate import evaluate_regression

        cls.check_evaluate_options(threshold, times)
        if run is not None:
            cls.check_run(run)
        return evaluate_regression(predictions_csv, cls, out_dir=out_dir, manifest=manifest, labels_from=labels_from,
                                   n_bootstrap=n_bootstrap, seed=seed, by=by)

    @classmethod
    def output_columns(cls, columns: Sequence[str], path: str) -> list[str]:
        return ["predicted"]

    # ------------------------------------------------------------------ storage
    def fitted(self) -> dict:
        return {"target_scale": None if self.target_scale is None else list(self.target_scale)}

    @classmethod
    def from_dict(cls, d: dict) -> Task:
        scale = d.get("target_scale")
        return cls(d.get("loss"), None if scale is None else tuple(scale))
