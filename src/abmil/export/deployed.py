"""An exported model at work, without its training run (``abmil predict --model DIR``): export.json says what the
model is, TorchScript runs through ``torch.jit.load``, ONNX through onnxruntime (the ``onnx`` extra).

The predictions are :mod:`abmil.slides.predictions`' files, as ``abmil predict --run`` writes them: the task's
outputs per slide (or case); per patch the attention weights (``attention_logits``: their log, as for an ensemble
of folds) or the instance scores.
"""
from __future__ import annotations

import json
import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..errors import DataError, optional_import
from ..slides.feature_files import FeatureFile
from ..slides.features import CaseBagDataset, FeatureBagDataset
from ..slides.predict import dataset_bags
from ..slides.predictions import SlidePrediction
from ..tasks import Task, head_from_info
from .source import EXPORT_FORMAT, EXPORT_JSON

__all__ = ["ExportedModel", "load_export", "predict_exported"]


@dataclass
class ExportedModel:
    """An export folder's model: :meth:`__call__` maps a bag (n, in_dim) float32 to ``(outputs (k,), scores (n,) or
    None)``, the task's outputs (wsinfer-mil's log outputs taken back)."""

    folder: Path
    meta: dict
    run: object

    @property
    def classes(self) -> list[str]:
        return list(self.meta["classes"])

    @property
    def head(self) -> Task:
        return head_from_info({"head": self.meta["head"]})

    @property
    def in_dim(self) -> int:
        return int(self.meta["in_dim"])

    @property
    def bag_level(self) -> str:
        return self.meta.get("bag_level", "slide")

    @property
    def threshold(self) -> float | None:
        return self.meta.get("threshold")

    def __call__(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        outputs, scores = self.run(np.ascontiguousarray(x, dtype=np.float32))
        outputs = np.asarray(outputs, dtype=np.float64)[0]
        if self.meta.get("outputs") == "log":
            outputs = np.exp(outputs)
        scores = np.asarray(scores, dtype=np.float32)
        return outputs, (scores if scores.size else None)


def _torchscript(path: Path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # torch.jit: deprecated for torch.export, still supported
        model = torch.jit.load(str(path), map_location="cpu")

    def run(x: np.ndarray):
        with torch.no_grad():
            out, scores = model(torch.from_numpy(x))
        return out.numpy(), scores.numpy()
    return run


def _onnx(path: Path):
    ort = optional_import("onnxruntime", "onnx", "running an ONNX export", package="onnxruntime")
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return lambda x: session.run(None, {name: x})


def load_export(folder: str | os.PathLike) -> ExportedModel:
    """The model of an ``abmil export`` folder; DataError naming the file where it is not one."""
    folder = Path(folder)
    path = folder / EXPORT_JSON
    if not folder.is_dir():
        raise FileNotFoundError(f"--model: no export folder {folder}")
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise DataError(f"not an `abmil export` folder ({e})", path=str(path)) from None
    if not isinstance(meta, dict) or meta.get("format") != EXPORT_FORMAT:
        raise DataError(f"not an `abmil export` folder (format {EXPORT_FORMAT} expected)", path=str(path))
    model_file = folder / str(meta.get("model_file"))
    if not model_file.is_file():
        raise DataError("the export's model file is missing", path=str(model_file))
    run = _onnx(model_file) if model_file.suffix == ".onnx" else _torchscript(model_file)
    return ExportedModel(folder, meta, run)


def _check_dim(model: ExportedModel, file: FeatureFile) -> int:
    """A file's instance count, after checking from metadata that its dim is the model's."""
    n, d = file.shape()
    if d != model.in_dim:
        raise file.error("features", f"feature dimension {d} differs from the {model.in_dim} the model was exported "
                                     "for")
    return n


def predict_bag_exported(model: ExportedModel, files: Sequence[FeatureFile], bag_id: str,
                         label=None) -> SlidePrediction:
    """One bag (a slide, or a case's slides end to end) through the exported model."""
    parts, coords, sizes = [], [], []
    for file in files:
        n = _check_dim(model, file)
        x, c = file.read(check_finite=True)
        parts.append(x.float().numpy())
        sizes.append(n)
        if c is not None:
            coords.append(c.numpy())
    outputs, scores = model(np.concatenate(parts))
    attention = model.meta.get("scores") == "attention" and scores is not None
    with np.errstate(divide="ignore"):  # a weight of exactly 0: logit -inf, softmax gives it back
        logits = np.log(scores).astype(np.float32) if attention else None
    has_coords = len(coords) == len(files) and sum(len(c) for c in coords) == sum(sizes)
    return SlidePrediction(bag_id, outputs, logits, np.concatenate(coords) if has_coords else None, label,
                           None if len(files) == 1 and files[0].slide_id == bag_id
                           else tuple((f.slide_id, n) for f, n in zip(files, sizes)),
                           None if attention else scores)


def predict_exported(model: ExportedModel, dataset: FeatureBagDataset) -> list[SlidePrediction]:
    """Every bag of ``dataset`` at the export's bag level (dims checked from metadata first)."""
    for f in dataset.files:
        _check_dim(model, f)
    head = model.head
    bags = dataset_bags(dataset, model.bag_level)
    outcomes = dataset.outcomes if model.bag_level == "slide" else CaseBagDataset(dataset).outcomes
    return [predict_bag_exported(model, files, bag_id, head.truth(label, outcome))
            for (bag_id, files, label), outcome in zip(bags, outcomes)]
