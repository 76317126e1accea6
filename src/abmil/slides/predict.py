"""Predictions of a trained whole-slide run: class probabilities per slide, attention per patch.

    preds.csv              slide_id, label, prob_<class> for each class, predicted
    preds.attention.h5     one group per slide: ``attention`` (n,) softmax weights,
                           ``attention_logits`` (n,), ``coords`` (n, 2) when the slide has them;
                           attributes ``probabilities`` (n_classes,) and ``predicted``

Slides are streamed in chunks (:meth:`~abmil.nn.models.EmbeddingMIL.pool_chunks`): memory is one
chunk plus the slide's n attention logits. Everything is computed and checked before the first
byte is written, and both files are written atomically.
"""
from __future__ import annotations

import csv
import io
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch

from ..errors import DataError
from ..io import atomic_open, write_text_atomic
from ..nn.models import EmbeddingMIL
from ..train.checkpoint import load_weights, read_checkpoint
from .feature_files import FeatureFile
from .features import FeatureBagDataset
from .train import WSIConfig, build_model


@dataclass
class TrainedRun:
    """A run's model (in eval mode, on ``device``) and what it was trained on."""

    model: EmbeddingMIL
    classes: list[str]
    in_dim: int
    info: dict
    device: torch.device


def load_run(run_dir: str | os.PathLike, device: str = "cpu") -> TrainedRun:
    """The model of ``run_dir``'s last checkpoint (safetensors weights, JSON settings)."""
    info = read_checkpoint(run_dir)
    if info is None:
        raise DataError("no checkpoint.json: not a finished epoch of `abmil train` here", path=os.fspath(run_dir))
    config = WSIConfig.from_dict(info["config"])
    model = build_model(int(info["in_dim"]), len(info["classes"]), config)
    model.load_state_dict(load_weights(run_dir, info))
    dev = torch.device(device)
    return TrainedRun(model.to(dev).eval(), list(info["classes"]), int(info["in_dim"]), info, dev)


class SlidePrediction(NamedTuple):
    slide_id: str
    probabilities: np.ndarray
    """(n_classes,)"""
    attention_logits: np.ndarray
    """(n_instances,) float32; weights = softmax."""
    coords: np.ndarray | None
    """(n_instances, 2) or None."""
    label: int | None = None

    @property
    def attention(self) -> np.ndarray:
        """(n_instances,) attention weights, summing to 1."""
        return torch.softmax(torch.from_numpy(self.attention_logits).double(), 0).float().numpy()


def check_dim(run: TrainedRun, file: FeatureFile) -> int:
    """A slide's instance count, after checking from metadata that its dim is the model's."""
    n, d = file.shape()
    if d != run.in_dim:
        raise file.error("features", f"feature dimension {d} differs from the {run.in_dim} the model was trained on")
    return n


def predict_file(run: TrainedRun, file: FeatureFile, label: int | None = None) -> SlidePrediction:
    """Stream one slide file through the model; checks dim (metadata) and NaN (each chunk)."""
    check_dim(run, file)
    coords: list[np.ndarray] = []

    def chunks() -> Iterator[torch.Tensor]:
        start = 0
        for features, c in file.iter_chunks(run.model.chunk_size):
            file.check_finite(features, first_row=start)
            start += features.shape[0]
            if c is not None:
                coords.append(c.numpy())
            yield features.float()

    out = run.model.pool_chunks(chunks(), device=run.device)
    probs = out.probabilities()[0].cpu().numpy()
    return SlidePrediction(file.slide_id, probs, out.attention_logits.float().cpu().numpy(),
                           np.concatenate(coords) if coords else None, label)


def predict_dataset(run: TrainedRun, dataset: FeatureBagDataset) -> list[SlidePrediction]:
    """Every slide of ``dataset`` (all dims checked from metadata first, so a mismatch fails fast)."""
    for f in dataset.files:
        check_dim(run, f)
    return [predict_file(run, f, label) for f, label in zip(dataset.files, dataset.labels)]


def attention_path(csv_path: str | os.PathLike) -> Path:
    """``preds.csv`` → ``preds.attention.h5`` beside it."""
    p = Path(csv_path)
    return p.with_name(p.stem + ".attention.h5")


def write_predictions(preds: Iterable[SlidePrediction], classes: list[str], csv_path: str | os.PathLike,
                      h5_path: str | os.PathLike | None = None) -> Path:
    """Write the CSV and the attention HDF5 (default :func:`attention_path`); returns the HDF5 path."""
    import h5py

    preds = list(preds)
    for p in preds:
        if "/" in p.slide_id or p.slide_id in (".", ""):
            raise DataError("field 'slide_id': cannot name an HDF5 group ('/' or '.')", bag=p.slide_id)
    h5_path = Path(h5_path) if h5_path is not None else attention_path(csv_path)
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["slide_id", "label", *[f"prob_{c}" for c in classes], "predicted"])
    for p in preds:
        label = "" if p.label is None else classes[p.label]
        writer.writerow([p.slide_id, label, *[f"{v:.6f}" for v in p.probabilities],
                         classes[int(np.argmax(p.probabilities))]])
    with atomic_open(h5_path, "w+b") as f, h5py.File(f, "w") as h5:  # h5py reads back as it writes
        h5.attrs["classes"] = classes
        for p in preds:
            g = h5.create_group(p.slide_id)
            g.create_dataset("attention", data=p.attention)
            g.create_dataset("attention_logits", data=p.attention_logits)
            if p.coords is not None:
                g.create_dataset("coords", data=p.coords)
            g.attrs["probabilities"] = p.probabilities
            g.attrs["predicted"] = classes[int(np.argmax(p.probabilities))]
    write_text_atomic(csv_path, buf.getvalue())
    return h5_path
