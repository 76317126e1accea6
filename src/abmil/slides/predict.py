"""Predictions of a trained whole-slide run: the task's outputs per slide (or case), attention per patch.

The files (``preds.csv`` and ``preds.attention.h5``) are :mod:`abmil.slides.predictions`'; a run's folder
:mod:`abmil.slides.run_folder`'s.

A cross-validation run (:mod:`abmil.slides.study`) predicts with its fold models together (:func:`load_models`):
the mean of their class probabilities and of their attention weights (``attention_logits`` then are the log of
the mean weights), or with one fold's model.

Slides are streamed in chunks (:meth:`~abmil.nn.models.EmbeddingMIL.pool_chunks`): memory is one
chunk plus the slide's n attention logits. Everything is computed and checked before the first
byte is written, and both files are written atomically.
"""
from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..errors import DataError
from ..nn.chunked import DEFAULT_CHUNK_SIZE
from ..nn.models import EmbeddingMIL
from ..nn.zoo import ModelSpec, model_spec
from ..tasks import Task, combine_heads, head_from_info
from ..train.checkpoint import load_into, read_checkpoint
from .feature_files import FeatureFile
from .features import CaseBagDataset, FeatureBagDataset
from .predictions import (  # noqa: F401 (the files' owner; imported from here before it existed)
    SlidePrediction,
    attention_path,
    prediction_header,
    prediction_row,
    write_predictions,
)
from .run_folder import CHECKPOINT, fold_dirs, is_cv_run, run_threshold  # noqa: F401 (run_threshold: as above)
from .train import WSIConfig, build_model


@dataclass
class TrainedRun:
    """A run's model (in eval mode, on ``device``) and what it was trained on."""

    model: EmbeddingMIL
    classes: list[str]
    in_dim: int
    info: dict
    device: torch.device


    @property
    def bag_level(self) -> str:
        return self.info.get("config", {}).get("bag_level", "slide")

    @property
    def head(self) -> Task:
        """What the model predicts: its task, fitted on its training part (:mod:`abmil.tasks`)."""
        return head_from_info(self.info)

    @property
    def task(self) -> str:
        return self.head.name

    @property
    def spec(self) -> ModelSpec:
        """What the run's model can do (:func:`~abmil.nn.zoo.model_spec` of its pooling)."""
        return model_spec(self.info.get("config", {}).get("pooling", "gated"))


def load_run(run_dir: str | os.PathLike, device: str = "cpu") -> TrainedRun:
    """The model of ``run_dir``'s last checkpoint (safetensors weights, JSON settings): the weights early stopping
    kept (the best epoch's) where it ran, else the last epoch's."""
    info = read_checkpoint(run_dir)
    if info is None:
        hint = " (a cross-validation run: use load_models)" if is_cv_run(run_dir) else ""
        raise DataError(f"no checkpoint.json: not a finished epoch of `abmil train` here{hint}",
                        path=os.fspath(run_dir))
    where = os.fspath(Path(run_dir) / CHECKPOINT)
    missing = [k for k in ("config", "in_dim", "classes") if k not in info]
    if missing:
        raise DataError(f"not a slide run's checkpoint: no {', '.join(repr(k) for k in missing)}", path=where)
    try:
        config = WSIConfig.from_dict(info["config"])
        in_dim, classes = int(info["in_dim"]), [str(c) for c in info["classes"]]
    except (TypeError, ValueError) as e:
        raise DataError(f"unreadable slide-run settings ({e})", path=where) from None
    model = build_model(in_dim, len(classes), config, head_from_info(info))
    load_into(model, run_dir, info, "best" if info.get("extra", {}).get("best") else "weights")
    dev = torch.device(device)
    return TrainedRun(model.to(dev).eval(), classes, in_dim, info, dev)


def load_models(run_dir: str | os.PathLike, device: str = "cpu",
                fold: tuple[int, int] | None = None) -> list[TrainedRun]:
    """The models that predict for ``run_dir``: a single run's one model; a cross-validation run's fold models,
    all of them (an ensemble; the study must be finished) or the one of ``fold`` = (repeat, fold)."""
    if not is_cv_run(run_dir):
        if fold is not None:
            raise ValueError(f"--fold picks a fold model of a cross-validation run; {run_dir} is a single run")
        return [load_run(run_dir, device)]
    return [load_run(d, device) for d in fold_dirs(run_dir, fold)]


def ensemble_head(runs: TrainedRun | Sequence[TrainedRun]) -> Task:
    """The head of one run, or of an ensemble of fold models (:func:`~abmil.tasks.combine_heads`): what their
    averaged predictions mean, and the CSV's columns."""
    runs = [runs] if isinstance(runs, TrainedRun) else list(runs)
    return combine_heads([r.head for r in runs])


def check_dim(run: TrainedRun, file: FeatureFile) -> int:
    """A slide's instance count, after checking from metadata that its dim is the model's."""
    n, d = file.shape()
    if d != run.in_dim:
        raise file.error("features", f"feature dimension {d} differs from the {run.in_dim} the model was trained on")
    return n


def predict_file(run: TrainedRun | Sequence[TrainedRun], file: FeatureFile,
                 label: int | None = None) -> SlidePrediction:
    """Stream one slide file through the model(s); checks dim (metadata) and NaN (each chunk)."""
    return predict_bag(run, [file], file.slide_id, label)


def predict_bag(run: TrainedRun | Sequence[TrainedRun], files: Sequence[FeatureFile], bag_id: str,
                label: int | None = None) -> SlidePrediction:
    """One bag, the instances of ``files`` end to end (one slide, or a case's slides), streamed through each model:
    its probabilities, and attention, averaged over the models (one model: its own attention logits)."""
    runs = [run] if isinstance(run, TrainedRun) else list(run)
    head = ensemble_head(runs)
    sizes = [check_dim(r, f) for r in runs[:1] for f in files]
    coords: list[np.ndarray] = []
    probs, weights, logits = [], [], None
    for k, r in enumerate(runs):
        def chunks(r: TrainedRun = r, keep: bool = k == 0) -> Iterator[torch.Tensor]:
            for file in files:
                start = 0
                for features, c in file.iter_chunks(getattr(r.model, "chunk_size", None) or DEFAULT_CHUNK_SIZE):
                    if keep:
                        file.check_finite(features, first_row=start)
                        if c is not None:
                            coords.append(c.numpy())
                    start += features.shape[0]
                    yield features.float()

        if r.spec.chunked:
            out = r.model.pool_chunks(chunks(), device=r.device)
            logits = out.attention_logits.float().cpu()
            scores = torch.softmax(logits.double(), 0)
        else:  # a model that takes the bag whole
            with torch.no_grad():
                out = r.model(torch.cat(list(chunks())).to(r.device))
            scores = out.instance_scores()
        probs.append(r.head.prediction(out, head))
        weights.append(None if scores is None else scores.double().cpu().numpy())
    other = None
    if not runs[0].spec.chunked:
        logits, other = None, (None if weights[0] is None else np.mean(weights, 0).astype(np.float32))
    elif len(runs) > 1:
        logits = torch.from_numpy(np.log(np.mean(weights, 0))).float()
    has_coords = len(coords) > 0 and sum(len(c) for c in coords) == sum(sizes)
    mean = probs[0] if len(runs) == 1 else np.mean(probs, 0, dtype=np.float64)
    return SlidePrediction(bag_id, mean, None if logits is None else logits.numpy(),
                           np.concatenate(coords) if has_coords else None,
                           label, None if len(files) == 1 and files[0].slide_id == bag_id
                           else tuple((f.slide_id, n) for f, n in zip(files, sizes)), other)


def dataset_bags(dataset: FeatureBagDataset, bag_level: str = "slide"
                 ) -> list[tuple[str, list[FeatureFile], int | None]]:
    """``(bag id, files, label)`` of each bag of ``dataset`` at ``bag_level``: each slide, or each case (its slides
    in manifest order, cases in order of first appearance)."""
    if bag_level == "slide":
        return [(f.slide_id, [f], label) for f, label in zip(dataset.files, dataset.labels)]
    cases = CaseBagDataset(dataset)
    return [(case, [dataset.files[i] for i in members], label)
            for case, members, label in zip(cases.case_ids, cases.members, cases.labels)]


def predict_dataset(run: TrainedRun | Sequence[TrainedRun], dataset: FeatureBagDataset,
                    positions: Sequence[int] | None = None) -> list[SlidePrediction]:
    """Every bag of ``dataset`` (or those at ``positions``) at the run's bag level (all dims checked from metadata
    first, so a mismatch fails fast); several runs: their ensemble (:func:`predict_bag`)."""
    runs = [run] if isinstance(run, TrainedRun) else list(run)
    for r in runs[1:]:
        if r.classes != runs[0].classes or r.bag_level != runs[0].bag_level:
            raise ValueError("an ensemble's models must share their classes and bag level")
    head = ensemble_head(runs)
    for f in dataset.files:
        check_dim(runs[0], f)
    bags = dataset_bags(dataset, runs[0].bag_level)
    outcomes = dataset.outcomes if runs[0].bag_level == "slide" else CaseBagDataset(dataset).outcomes
    # the truth of each bag: the class, (time, event), the target ...
    bags = [(bag_id, files, head.truth(label, outcome)) for (bag_id, files, label), outcome in zip(bags, outcomes)]
    if positions is not None:
        bags = [bags[i] for i in positions]
    return [predict_bag(runs, files, bag_id, label) for bag_id, files, label in bags]
