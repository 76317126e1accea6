"""Training one model on bags in memory: the paper's loop, with or without validation and early stopping.

:func:`fit` runs :func:`abmil.train.loop.train_loop` on the paper's schedule (:func:`~abmil.train.schedule.paper_steps`:
each epoch visits the training bags in :func:`~abmil.train.schedule.epoch_order`, ``batch_size`` bags per optimizer
step, 1 in the paper; the learning rate of :meth:`TrainConfig.lr_at`; dropout keyed by (seed, step)). This is the
reference semantics every faster engine (:mod:`abmil.train.direct`, :mod:`abmil.train.stacked`) reproduces.

For the histopathology experiments it adds, from gmum's histology code (Rymarczyk et al., the code the paper's
authors released for those experiments; the paper's own protocol is unconfirmed):

* a held-out part of the training folds (:func:`validation_split`, 20 %) scored after every epoch;
* early stopping: stop after ``patience`` (25) epochs in a row without a better validation score, at most
  ``config.epochs`` (200) epochs, and put back the weights of the best epoch (evaluated on the test fold);
* an optional ``augment(i, bag, generator)`` applied to training bag i at each visit, with a generator seeded by
  (seed, epoch, i) so that a run's augmentations do not depend on anything else.

"Better" is gmum's rule: a lower validation error (threshold 0.5), or the same error and a lower validation loss
(mean Bernoulli NLL). gmum also requires a lower *training* error to accept a tie; we drop that third condition (the
training error under augmentation and dropout is a noisy number) and count patience the usual way (gmum's counter
stops one epoch later, after ``patience + 1`` epochs without improvement).
"""
from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from ..data.bags import pack
from ..nn.models import MILOutput
from .config import TrainConfig
from .loop import Augment, Callback, Checkpointing, EarlyStopping, FitHistory, TensorBags, train_loop
from .loss import bernoulli_nll
from .schedule import paper_steps
from .splits import stratified_group_holdout

__all__ = ["fit", "predict", "score_bags", "validation_split"]


class _EpochEnd(Callback):
    def __init__(self, fn: Callable[[int, FitHistory], None]):
        self.fn = fn

    def on_epoch_end(self, epoch: int, record: dict, history: FitHistory) -> None:
        self.fn(epoch, history)


def validation_split(labels: np.ndarray, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Split bag positions 0..n-1 into (train, val), stratified by ``labels`` (n,) 0/1.

    Each class gives ``round(val_fraction * n_class)`` of its bags to validation, drawn with
    ``numpy.random.default_rng([seed, 7])``; at least one bag goes to validation and at least one stays for
    training. Both returned arrays are sorted int64. (:func:`abmil.train.splits.stratified_group_holdout` with every
    bag its own case: the one splitter, the same draws.)

    Raises:
        ValueError: fewer than 2 bags.
    """
    return stratified_group_holdout(labels, val_fraction, seed)


@torch.no_grad()
def predict(model: nn.Module, bags: Sequence[Tensor], batch_size: int = 256) -> tuple[Tensor, list[Tensor | None]]:
    """Bag probabilities (n_bags,) and each bag's instance scores (attention or instance prob)."""
    model.eval()
    probs, scores = [], []
    for start in range(0, len(bags), batch_size):
        chunk = bags[start:start + batch_size]
        x, bag_index = pack(chunk)
        out: MILOutput = model(x, bag_index, len(chunk))
        probs.append(out.prob)
        s = out.instance_scores()
        sizes = [b.shape[0] for b in chunk]
        scores += list(torch.split(s, sizes)) if s is not None else [None] * len(chunk)
    return torch.cat(probs), scores


@torch.no_grad()
def score_bags(model: nn.Module, bags: Sequence[Tensor], labels: Tensor | np.ndarray) -> dict[str, float]:
    """``val_error`` (threshold 0.5) and ``val_loss`` (mean Bernoulli NLL) of ``model`` on ``bags``, one bag at a
    time (bounded memory)."""
    probs, _ = predict(model, bags, batch_size=1)
    y = torch.as_tensor(np.asarray(labels), dtype=torch.float32).to(probs.dtype)
    error = float(((probs >= 0.5).to(y.dtype) != y).float().mean())
    return {"val_error": error, "val_loss": float(bernoulli_nll(probs, y).mean())}


def fit(model: nn.Module, bags: Sequence[Tensor], labels: Tensor | np.ndarray, config: TrainConfig, *, seed: int,
        val_bags: Sequence[Tensor] | None = None, val_labels: Tensor | np.ndarray | None = None,
        stopping: EarlyStopping | None = None, augment: Augment | None = None,
        on_epoch_end: Callable[[int, FitHistory], None] | None = None, callbacks: Sequence[Callback] = (),
        checkpoint_dir: str | os.PathLike | None = None, checkpoint_key: Any = None) -> FitHistory:
    """Train ``model`` in place on ``bags`` [(n_i, *shape)] with ``labels`` (n_bags,) 0/1.

    The initial weights are whatever ``model`` holds (build it under ``torch.manual_seed``). With ``val_bags``,
    ``val_labels`` and ``stopping``, each epoch ends with a validation score; training stops after
    ``stopping.patience`` epochs without improvement (or ``config.epochs``) and the best epoch's weights are loaded
    back. Otherwise it trains ``config.epochs`` epochs and keeps the last weights. ``on_epoch_end(epoch, history)``
    is called after every epoch (a shorthand for a :class:`~abmil.train.loop.Callback`).

    ``checkpoint_dir``: save the run's state there after every epoch, and resume from a checkpoint found there whose
    ``checkpoint_key`` (anything JSON-able that pins the run: data, settings, seed) equals this call's; a
    checkpoint with another key is ignored and overwritten. The caller removes the folder once it has what it needs.

    Returns:
        the run's :class:`~abmil.train.loop.FitHistory`; the model is left in eval mode.
    """
    validate = val_bags is not None and len(val_bags) > 0
    if validate and (stopping is None or val_labels is None):
        raise ValueError("validation bags need val_labels and an EarlyStopping")
    source = TensorBags(bags, labels, augment, seed)
    if on_epoch_end is not None:
        callbacks = [*callbacks, _EpochEnd(on_epoch_end)]
    checkpoint = None if checkpoint_dir is None else Checkpointing(checkpoint_dir, "fit", checkpoint_key)
    return train_loop(model, source, config,
                      lambda epoch, step: paper_steps(len(source), seed, epoch, step, config.batch_size),
                      seed=seed, validate=(lambda m: score_bags(m, val_bags, val_labels)) if validate else None,
                      stopping=stopping if validate else None, checkpoint=checkpoint, callbacks=callbacks)
