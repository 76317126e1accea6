"""Classification: a bag's class (manifest column ``label``), the paper's head.

Two classes: one logit, ``sigmoid``, the paper's clamped Bernoulli likelihood; more: one logit per class, softmax
cross-entropy (:func:`abmil.train.loss.bag_losses`). Predictions: the class probabilities (``prob_<class>``
columns) and the class :func:`decide` picks. Evaluation: :mod:`abmil.report.class_evaluate`.
"""
from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from ..errors import DataError
from ..slides.tables import PROB_PREFIX
from .base import Task, _fmt, nan_to_none

__all__ = ["ClassificationTask", "decide"]



def decide(probabilities: np.ndarray, classes: Sequence[str], threshold: float | None = None) -> str:
    """The predicted class: with two classes and a ``threshold``, the second (positive) one when its probability is
    at least the threshold (a study's Youden threshold, :func:`abmil.slides.run_folder.run_threshold`); else the most
    probable one."""
    if threshold is not None and len(classes) == 2:
        return classes[1] if float(probabilities[1]) >= threshold else classes[0]
    return classes[int(np.argmax(probabilities))]


@dataclass(frozen=True)
class ClassificationTask(Task):
    """Classes, from the manifest's ``label`` column (class names or indices)."""

    name: ClassVar[str] = "classification"
    losses: ClassVar[tuple[str, ...]] = ("bernoulli",)
    columns: ClassVar[tuple[str, ...]] = ("label",)
    columns_to_predict: ClassVar[bool] = True
    monitors: ClassVar[tuple[str, ...]] = ("val_loss", "val_error", "val_auc")
    metrics: ClassVar[tuple[str, ...]] = ("auc", "accuracy", "balanced_accuracy")
    stratum: ClassVar[str] = "class"
    has_classes: ClassVar[bool] = True
    description: ClassVar[str] = "classes (label)"

    # ------------------------------------------------------------------ targets
    @classmethod
    def parse_row(cls, cells: dict[str, str], line: int, path: str, slide_id: str) -> tuple[str, Any]:
        return cells.get("label", ""), None

    @classmethod
    def truth(cls, label: int | None, outcome: Any) -> Any:
        return label

    @classmethod
    def strata(cls, labels: Sequence, outcomes: Sequence, folds: int | None = None) -> np.ndarray:
        return np.asarray(labels)

    @classmethod
    def class_names(cls, dataset) -> list[str]:
        """The manifest's names, or "0".."k" for integer labels (at least two)."""
        if dataset.classes is not None:
            names = list(dataset.classes)
        else:
            names = [str(i) for i in range(max(max(dataset.labels) + 1, 2))]
        if len(names) < 2:
            raise DataError(f"field 'label': a classifier needs at least two classes, the manifest has only "
                            f"{names}", path=dataset.manifest)
        return names

    @classmethod
    def check_training_part(cls, dataset, train_idx: Sequence[int], classes: list[str]) -> None:
        trained = sorted({int(dataset.labels[i]) for i in train_idx})
        if len(trained) < 2:
            names = ", ".join(classes[c] for c in trained) or "none"
            raise DataError(f"the training slides hold one class only ({names}): a classifier needs at least two",
                            path=getattr(dataset, "manifest", None))

    # ------------------------------------------------------------------ the head
    def n_out(self) -> int | None:
        return None

    def loop_target(self, outcome: Any, label: int | None = None):
        return label

    def torch_outputs(self, logits):
        import torch

        if logits.shape[-1] == 1:
            p = torch.sigmoid(logits)
            return torch.cat([1.0 - p, p], -1)
        return torch.softmax(logits, -1)

    def prediction(self, out, common: Task) -> np.ndarray:
        return out.probabilities()[0].cpu().numpy()

    # ------------------------------------------------------------------ validation
    def val_row(self, position: int, out, label) -> tuple:
        """``(position, loss, class probabilities, label)``."""
        import torch

        from ..train.loss import bag_losses

        loss = bag_losses(out, torch.tensor([label], device=out.logits.device))[0]
        return (position, float(loss), out.probabilities()[0].cpu().tolist(), label)

    def val_record(self, rows: list[tuple], outcomes: Sequence, monitor: str | None) -> dict:
        """Mean loss, accuracy, error (1 - accuracy) and AUC (binary; one-vs-rest macro for more classes, when
        every class occurs, else None) in bag order whatever order the rows come in; ``val_neg_auc`` when
        ``monitor`` is ``val_auc``."""
        record = {f"val_{k}": v for k, v in val_metrics(rows).items()}
        if monitor == "val_auc":
            record["val_neg_auc"] = -record["val_auc"] if record["val_auc"] is not None else float("nan")
        return record

    # ------------------------------------------------------------------ predictions
    def header(self, classes: Sequence[str], id_column: str = "slide_id") -> list[str]:
        return [id_column, "label", *[f"{PROB_PREFIX}{c}" for c in classes], "predicted"]

    def row(self, bag_id: str, truth, values: np.ndarray, classes: Sequence[str],
            threshold: float | None = None) -> list[str]:
        text = "" if truth is None else classes[truth]
        return [bag_id, text, *[f"{v:.6f}" for v in values], decide(values, classes, threshold)]

    @classmethod
    def claims(cls, columns: Sequence[str]) -> bool:
        return True  # the reader's last resort: read_predictions says what is missing

    def predicted(self, values: np.ndarray, classes: Sequence[str], threshold: float | None = None):
        return decide(values, classes, threshold)

    def summary(self, values: np.ndarray, classes: Sequence[str]) -> str:
        """The predicted class and its probability, in words (heatmap titles)."""
        k = int(np.argmax(values))
        return f"predicted {classes[k]!r}, P = {float(values[k]):.2f}"

    def patch_maps(self, shares: Callable[[], np.ndarray], classes: Sequence[str]) -> list[tuple[str, np.ndarray]]:
        """More than two classes (one logit each): each patch's share of each class logit; two: none."""
        if len(classes) <= 2:
            return []
        values = shares()
        return [(f"{name}: share of logit", values[:, c]) for c, name in enumerate(classes)]

    def title_label(self, label, classes: Sequence[str]) -> str:
        return "" if label is None else f", label {classes[label]}"

    # ------------------------------------------------------------------ studies
    def threshold(self, val_predictions: Sequence, classes: Sequence[str]) -> float | None:
        """Youden's J on the validation predictions (two classes)."""
        if len(classes) != 2:
            return None
        from ..report.metrics import youden_threshold

        return nan_to_none(youden_threshold([p.label for p in val_predictions],
                                            [p.probabilities[1] for p in val_predictions]))

    def fold_metrics(self, truths: Sequence, values: np.ndarray) -> dict:
        """AUC (binary, or one-vs-rest macro when every class occurs; None where undefined), accuracy, balanced
        accuracy of class probabilities (n, n_classes) against labels (n,), argmax predictions."""
        from sklearn.metrics import balanced_accuracy_score

        from ..report.metrics import class_metrics

        labels, probs = np.array(truths), np.asarray(values, dtype=np.float64)
        m = class_metrics(probs, labels)
        with warnings.catch_warnings():  # a validation part of one class: "y_pred contains classes not in y_true"
            warnings.simplefilter("ignore", UserWarning)
            balanced = float(balanced_accuracy_score(labels, probs.argmax(1)))
        return {"auc": m["auc"], "accuracy": m["accuracy"], "balanced_accuracy": balanced}

    def summary_table(self, per_fold: list[dict]) -> list[str]:
        lines = ["| fold | n test | AUC | accuracy | balanced accuracy | threshold | best epoch |",
                 "|---|---|---|---|---|---|---|"]
        lines += [f"| {f['key']} | {f['n_test']} | {_fmt(f['auc'])} | {_fmt(f['accuracy'])} | "
                  f"{_fmt(f['balanced_accuracy'])} | {_fmt(f['threshold'])} | {f['best_epoch']} |" for f in per_fold]
        return [*lines, "", "SD: sample standard deviation over folds (ddof 1). AUC: binary of the last class, else "
                "one-vs-rest macro. Threshold: Youden's J on the fold's validation part (two classes)."]

    # ------------------------------------------------------------------ evaluation
    @classmethod
    def scored_predictions(cls, predictions_csv: str, manifest):
        from ..report.class_evaluate import read_predictions

        p = read_predictions(predictions_csv, manifest=manifest)
        return p.slide_ids, p.case_ids, p.has_cases, p.classes, p.labels, p.probs

    @classmethod
    def comparison_metrics(cls, classes: Sequence[str]):
        from ..report.class_evaluate import compute_metrics

        return lambda labels, probs: compute_metrics(labels, probs, classes)

    @classmethod
    def evaluate(cls, predictions_csv: str, *, out_dir, manifest, labels_from: str, threshold: float | None,
                 run, n_bootstrap: int, seed: int, times: Sequence[float] | None, risk_groups: int,
                 by: str | None = None) -> dict:
        from ..report.class_evaluate import evaluate_classification

        cls.check_evaluate_options(threshold, times)
        return evaluate_classification(predictions_csv, out_dir=out_dir, manifest=manifest, labels_from=labels_from,
                                       threshold=threshold, run=run, n_bootstrap=n_bootstrap, seed=seed, by=by)


def val_metrics(rows: list[tuple[int, float, list[float], int]]) -> dict:
    """Mean loss, accuracy, error (1 - accuracy) and AUC (binary; one-vs-rest macro for more classes, when every
    class occurs, else None) of :meth:`ClassificationTask.val_row` rows, in bag order whatever order they come in."""
    from ..report.metrics import class_metrics

    rows = sorted(rows)
    losses = np.array([r[1] for r in rows])
    metrics = class_metrics(np.array([r[2] for r in rows]), np.array([r[3] for r in rows]))
    return {"loss": float(losses.mean()), **metrics, "error": 1.0 - metrics["accuracy"]}
