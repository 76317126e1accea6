"""Predictions of a trained whole-slide run: class probabilities per slide, attention per patch.

    preds.csv              slide_id, label, prob_<class> for each class, predicted
                           (survival: slide_id, time, event, risk[, surv_<t>...]; regression: slide_id, target,
                           predicted: :mod:`abmil.slides.outcomes`)
                           (a run trained on cases, ``bag_level="case"``: case_id, label, ..., one row per case)
    preds.attention.h5     one group per slide (or case): ``attention`` (n,) softmax weights,
                           ``attention_logits`` (n,) (a model without attention pooling: ``instance_scores`` (n,),
                           its instance probabilities or TransMIL's class-token attention, or nothing), ``coords``
                           (n, 2) when the slide has them;
                           attributes ``probabilities`` (n_classes,) and ``predicted`` (a case: ``slides`` and
                           ``slide_sizes``, its slides' ids and patch counts in the order of the rows)

A cross-validation run (:mod:`abmil.slides.study`) predicts with its fold models together (:func:`load_models`):
the mean of their class probabilities and of their attention weights (``attention_logits`` then are the log of
the mean weights), or with one fold's model.

Slides are streamed in chunks (:meth:`~abmil.nn.models.EmbeddingMIL.pool_chunks`): memory is one
chunk plus the slide's n attention logits (models that cannot stream, :attr:`~abmil.nn.zoo.ModelSpec.chunked`,
forward the slide whole). Everything is computed and checked before the first
byte is written, and both files are written atomically.
"""
from __future__ import annotations

import csv
import io
import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch

from ..errors import DataError
from ..io import atomic_open
from ..nn.chunked import DEFAULT_CHUNK_SIZE
from ..nn.models import EmbeddingMIL
from ..nn.zoo import ModelSpec, model_spec
from ..train.checkpoint import load_into, read_checkpoint
from .feature_files import FeatureFile
from .features import CaseBagDataset, FeatureBagDataset
from .outcomes import Head, common_head, decide
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
    def head(self) -> Head:
        """What the model predicts: classes, survival or a number (:class:`~abmil.slides.outcomes.Head`)."""
        return Head.from_info(self.info)

    @property
    def task(self) -> str:
        return self.head.task

    @property
    def spec(self) -> ModelSpec:
        """What the run's model can do (:func:`~abmil.nn.zoo.model_spec` of its pooling)."""
        return model_spec(self.info.get("config", {}).get("pooling", "gated"))


def load_run(run_dir: str | os.PathLike, device: str = "cpu") -> TrainedRun:
    """The model of ``run_dir``'s last checkpoint (safetensors weights, JSON settings): the weights early stopping
    kept (the best epoch's) where it ran, else the last epoch's."""
    info = read_checkpoint(run_dir)
    if info is None:
        from .study import is_cv_run

        hint = " (a cross-validation run: use load_models)" if is_cv_run(run_dir) else ""
        raise DataError(f"no checkpoint.json: not a finished epoch of `abmil train` here{hint}",
                        path=os.fspath(run_dir))
    where = os.fspath(Path(run_dir) / "checkpoint.json")
    missing = [k for k in ("config", "in_dim", "classes") if k not in info]
    if missing:
        raise DataError(f"not a slide run's checkpoint: no {', '.join(repr(k) for k in missing)}", path=where)
    try:
        config = WSIConfig.from_dict(info["config"])
        in_dim, classes = int(info["in_dim"]), [str(c) for c in info["classes"]]
    except (TypeError, ValueError) as e:
        raise DataError(f"unreadable slide-run settings ({e})", path=where) from None
    model = build_model(in_dim, len(classes), config, Head.from_info(info))
    load_into(model, run_dir, info, "best" if info.get("extra", {}).get("best") else "weights")
    dev = torch.device(device)
    return TrainedRun(model.to(dev).eval(), classes, in_dim, info, dev)


def load_models(run_dir: str | os.PathLike, device: str = "cpu",
                fold: tuple[int, int] | None = None) -> list[TrainedRun]:
    """The models that predict for ``run_dir``: a single run's one model; a cross-validation run's fold models,
    all of them (an ensemble; the study must be finished) or the one of ``fold`` = (repeat, fold)."""
    from .study import fold_dirs, is_cv_run

    if not is_cv_run(run_dir):
        if fold is not None:
            raise ValueError(f"--fold picks a fold model of a cross-validation run; {run_dir} is a single run")
        return [load_run(run_dir, device)]
    return [load_run(d, device) for d in fold_dirs(run_dir, fold)]


class SlidePrediction(NamedTuple):
    slide_id: str
    probabilities: np.ndarray
    """(n_classes,) class probabilities; for other heads what :meth:`~abmil.slides.outcomes.Head.outputs` gives:
    survival ``S_k`` at each bin's end (nll) or the log hazard ratio (cox), the prediction (regression)."""
    attention_logits: np.ndarray | None
    """(n_instances,) float32; weights = softmax. None for a model without attention pooling."""
    coords: np.ndarray | None
    """(n_instances, 2) or None."""
    label: int | None = None
    """The truth where known: the class index; survival (time, event); regression the target."""
    slides: tuple[tuple[str, int], ...] | None = None
    """A case's slides: (slide id, patches) in the order of its instances; None for a slide."""
    scores: np.ndarray | None = None
    """(n_instances,) the instance scores of a model without attention pooling (instance probabilities, TransMIL's
    class-token attention); None otherwise."""

    @property
    def attention(self) -> np.ndarray:
        """(n_instances,) attention weights, summing to 1."""
        return torch.softmax(torch.from_numpy(self.attention_logits).double(), 0).float().numpy()

    @property
    def instance_scores(self) -> np.ndarray | None:
        """(n_instances,) per-patch evidence: the attention weights, else :attr:`scores` (None: the model has
        none, e.g. mean or max pooling)."""
        return self.attention if self.attention_logits is not None else self.scores


def ensemble_head(runs: TrainedRun | Sequence[TrainedRun]) -> Head:
    """The head of one run, or of an ensemble of fold models (:func:`~abmil.slides.outcomes.common_head`): what
    their averaged predictions mean, and the CSV's columns."""
    runs = [runs] if isinstance(runs, TrainedRun) else list(runs)
    return common_head([r.head for r in runs])


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
        probs.append(out.probabilities()[0].cpu().numpy() if r.head.is_classification
                     else r.head.align(r.head.outputs(out.logits)[0], head))
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
    ensemble_head(runs)
    for f in dataset.files:
        check_dim(runs[0], f)
    bags = dataset_bags(dataset, runs[0].bag_level)
    if not runs[0].head.is_classification:  # the truth of each bag: (time, event) or the target
        outcomes = (dataset.outcomes if runs[0].bag_level == "slide"
                    else CaseBagDataset(dataset).outcomes)
        bags = [(bag_id, files, outcome) for (bag_id, files, _), outcome in zip(bags, outcomes)]
    if positions is not None:
        bags = [bags[i] for i in positions]
    return [predict_bag(runs, files, bag_id, label) for bag_id, files, label in bags]


def attention_path(csv_path: str | os.PathLike) -> Path:
    """``preds.csv`` → ``preds.attention.h5`` beside it."""
    p = Path(csv_path)
    return p.with_name(p.stem + ".attention.h5")


def prediction_header(classes: Sequence[str], id_column: str = "slide_id", head: Head | None = None) -> list[str]:
    """The CSV's columns: ``id, label, prob_<class>..., predicted``; survival ``id, time, event, risk[, surv_<t>...]``;
    regression ``id, target, predicted`` (:meth:`~abmil.slides.outcomes.Head.header`)."""
    return (head or Head()).header(classes, id_column)


def run_threshold(run_dir: str | os.PathLike, fold: tuple[int, int] | None = None) -> float | None:
    """The decision threshold a cross-validation study stored (two classes): one fold's (chosen on its validation
    part) or, for the ensemble of all folds, their mean (run.json). None for a single run, multi-class or another
    task."""
    from .study import read_cv_run

    info = read_cv_run(run_dir)
    if info is None:
        return None
    if fold is None:
        return info.get("threshold")
    return info.get("fold_thresholds", {}).get(f"r{fold[0]}_f{fold[1]}")


def prediction_row(p: SlidePrediction, classes: Sequence[str], head: Head | None = None,
                   threshold: float | None = None) -> list[str]:
    """A CSV row of :func:`prediction_header`: probabilities with 6 decimals and the class :func:`decide` picks (or
    a survival or regression head's columns)."""
    return (head or Head()).row(p.slide_id, p.label, p.probabilities, classes, threshold)


def write_predictions(preds: Iterable[SlidePrediction], classes: list[str], csv_path: str | os.PathLike,
                      h5_path: str | os.PathLike | None = None, id_column: str = "slide_id",
                      head: Head | None = None, threshold: float | None = None) -> Path:
    """Write the CSV and the attention HDF5 (default :func:`attention_path`); returns the HDF5 path.
    ``id_column``: the first column's name (``case_id`` for cases). ``head``: a survival or regression run's (the
    HDF5's ``probabilities`` attribute then holds its outputs, and ``predicted`` its risk or prediction);
    ``threshold``: a two-class run's decision threshold (:func:`decide`)."""
    head = head or Head()
    import h5py

    preds = list(preds)
    for p in preds:
        if "/" in p.slide_id or p.slide_id in (".", ""):
            raise DataError(f"field '{id_column}': cannot name an HDF5 group ('/' or '.')", bag=p.slide_id)
    h5_path = Path(h5_path) if h5_path is not None else attention_path(csv_path)
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(prediction_header(classes, id_column, head))
    for p in preds:
        writer.writerow(prediction_row(p, classes, head, threshold))
    # Both files or neither: each goes to a temporary file, and they are renamed only once both are complete (the
    # HDF5 first). Should the CSV's rename then fail, a new HDF5 is taken back out.
    h5_is_new = not h5_path.exists()
    try:
        with atomic_open(csv_path, "w", encoding="utf-8", newline="") as out_csv, atomic_open(h5_path, "w+b") as f, \
                h5py.File(f, "w") as h5:  # h5py reads back as it writes
            out_csv.write(buf.getvalue())
            h5.attrs["classes"] = classes
            h5.attrs["task"] = head.task
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
                g.attrs["predicted"] = (decide(p.probabilities, classes, threshold) if head.is_classification
                                        else head.risk(p.probabilities) if head.task == "survival"
                                        else float(p.probabilities[0]))
                if p.slides is not None:
                    g.attrs["slides"] = [sid for sid, _ in p.slides]
                    g.attrs["slide_sizes"] = [n for _, n in p.slides]
    except BaseException:
        if h5_is_new and h5_path.exists() and not Path(csv_path).exists():
            h5_path.unlink()
        raise
    return h5_path
