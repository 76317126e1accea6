"""Training with a validation split, early stopping and per-visit augmentation (the histopathology protocol).

The loop is :func:`abmil.train.fit.fit`'s (same bag order :func:`~abmil.train.fit.epoch_order`, optimizer, learning
rate, keyed dropout and loss) with three additions, all from gmum's histology code (shared/paper/protocols.md
section 4 "Optimiser, training, evaluation"; the paper's own protocol is unconfirmed):

* a held-out part of the training folds (:func:`validation_split`, 20 %) scored after every epoch;
* early stopping: stop after ``patience`` (25) epochs in a row without a better validation score, at most
  ``config.epochs`` (200) epochs, and put back the weights of the best epoch (evaluated on the test fold);
* an optional ``augment(i, bag, generator)`` applied to training bag i at each visit, with a generator seeded by
  (seed, epoch, i) so that a run's augmentations do not depend on anything else.

With ``checkpoint_dir``, the state after every epoch (weights, optimizer, the best epoch's weights, the counters) is
saved there (:mod:`abmil.train.checkpoint`), and a later call with the same ``checkpoint_key`` continues from it: since
every random draw is keyed by (seed, epoch, step), a run killed and resumed ends with the same weights as one that
never stopped.

"Better" is gmum's rule: a lower validation error (threshold 0.5), or the same error and a lower validation loss
(mean Bernoulli NLL). gmum also requires a lower *training* error to accept a tie; we drop that third condition (the
training error under augmentation and dropout is a noisy number) and count patience the usual way (gmum's counter
stops one epoch later, after ``patience + 1`` epochs without improvement).
"""
from __future__ import annotations

import copy
import json
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from ..nn.dropout import set_dropout_key
from .checkpoint import load_extra, load_weights, read_checkpoint, restore_optimizer, save_checkpoint
from .config import TrainConfig
from .fit import epoch_order, make_optimizer, predict
from .loss import bernoulli_nll, mil_loss
from .subnormal import flush_subnormal_, subnormals_as_zero

__all__ = ["EarlyStopping", "FitHistory", "Augment", "fit_early_stopping", "validation_split", "visit_generator"]

#: ``augment(i, bag, generator) -> bag'``: training bag ``i`` (its stored tensor ``bag``) as seen at one visit.
Augment = Callable[[int, Tensor, torch.Generator], Tensor]

_CHECKPOINT_KIND = "fit_early_stopping"


@dataclass(frozen=True)
class EarlyStopping:
    """How the training folds are split and when training stops.

    Attributes:
        patience: stop after this many epochs in a row without a better validation score.
        val_fraction: share of the training bags held out for validation (stratified by label).
    """

    patience: int = 25
    val_fraction: float = 0.2

    def __post_init__(self) -> None:
        if isinstance(self.patience, bool) or not isinstance(self.patience, int) or self.patience < 1:
            raise ValueError(f"patience must be an integer >= 1, got {self.patience!r}")
        if not 0.0 < self.val_fraction < 1.0:
            raise ValueError(f"val_fraction must be in (0, 1), got {self.val_fraction!r}")

    def to_dict(self) -> dict:
        return {"patience": self.patience, "val_fraction": self.val_fraction}


@dataclass
class FitHistory:
    """What one training run did: per-epoch validation scores, the epoch kept, the epochs run."""

    val_error: list[float] = field(default_factory=list)
    val_loss: list[float] = field(default_factory=list)
    best_epoch: int = -1
    """0-based epoch whose weights were kept (-1: no validation, the last epoch's weights)."""
    epochs_run: int = 0
    stopped_early: bool = False
    seconds: float = 0.0
    """Wall-clock seconds of training, summed over the sessions of a resumed run."""
    resumed_at: list[int] = field(default_factory=list)
    """Epochs (completed) from which the run was resumed from a checkpoint."""

    def to_dict(self) -> dict:
        return {"val_error": self.val_error, "val_loss": self.val_loss, "best_epoch": self.best_epoch,
                "epochs_run": self.epochs_run, "stopped_early": self.stopped_early, "seconds": self.seconds,
                "resumed_at": self.resumed_at}


def validation_split(labels: np.ndarray, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Split bag positions 0..n-1 into (train, val), stratified by ``labels`` (n,) 0/1.

    Each class gives ``round(val_fraction * n_class)`` of its bags to validation, drawn with
    ``numpy.random.default_rng([seed, 7])``; at least one bag goes to validation and at least one stays for
    training. Both returned arrays are sorted int64.

    Raises:
        ValueError: fewer than 2 bags.
    """
    labels = np.asarray(labels).ravel()
    n = labels.size
    if n < 2:
        raise ValueError(f"need >= 2 training bags to hold some out for validation, got {n}")
    rng = np.random.default_rng([seed, 7])
    val: list[np.ndarray] = []
    for c in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == c))
        val.append(members[:int(round(val_fraction * members.size))])
    chosen = np.concatenate(val).astype(np.int64)
    if chosen.size == 0:
        chosen = rng.permutation(n)[:1].astype(np.int64)
    elif chosen.size == n:
        chosen = chosen[:-1]
    is_val = np.zeros(n, bool)
    is_val[chosen] = True
    return np.flatnonzero(~is_val).astype(np.int64), np.flatnonzero(is_val).astype(np.int64)


def visit_generator(seed: int, epoch: int, index: int) -> torch.Generator:
    """The CPU generator of one visit of training bag ``index`` in ``epoch`` of a run with ``seed``."""
    key = np.random.SeedSequence([seed, epoch, index, 11]).generate_state(1, dtype=np.uint64)[0]
    return torch.Generator().manual_seed(int(key) & ((1 << 63) - 1))


@torch.no_grad()
def _score(model: nn.Module, bags: Sequence[Tensor], labels: Tensor) -> tuple[float, float]:
    """(error at 0.5, mean Bernoulli NLL) of ``model`` on ``bags``, one bag at a time (bounded memory)."""
    probs, _ = predict(model, bags, batch_size=1)
    y = labels.to(probs.dtype)
    error = float(((probs >= 0.5).to(y.dtype) != y).float().mean())
    return error, float(bernoulli_nll(probs, y).mean())


@subnormals_as_zero()
def fit_early_stopping(
    model: nn.Module,
    bags: Sequence[Tensor],
    labels: Tensor | np.ndarray,
    config: TrainConfig,
    *,
    seed: int,
    val_bags: Sequence[Tensor] | None = None,
    val_labels: Tensor | np.ndarray | None = None,
    stopping: EarlyStopping | None = None,
    augment: Augment | None = None,
    on_epoch_end: Callable[[int, FitHistory], None] | None = None,
    checkpoint_dir: str | os.PathLike | None = None,
    checkpoint_key: Any = None,
) -> FitHistory:
    """Train ``model`` in place on ``bags`` [(n_i, *shape)] with ``labels`` (n_bags,) 0/1, one bag per step.

    With ``val_bags``/``val_labels`` and ``stopping``, each epoch ends with a validation score; training stops after
    ``stopping.patience`` epochs without improvement (or ``config.epochs``) and the best epoch's weights are loaded
    back. Without them it trains ``config.epochs`` epochs and keeps the last weights; with ``augment=None`` too, the
    weights equal :func:`abmil.train.fit.fit`'s. ``config.batch_size`` must be 1 (the paper's setting).

    ``checkpoint_dir``: save the run's state there after every epoch that does not end it, and resume from a
    checkpoint found there whose ``checkpoint_key`` (anything JSON-able that pins the run: data, settings, seed)
    equals this call's; a checkpoint with another key is ignored and overwritten. The caller removes the folder once
    it has what it needs.

    Returns:
        the run's :class:`FitHistory`; the model is left in eval mode.
    """
    if config.batch_size != 1:
        raise ValueError(f"fit_early_stopping trains one bag per step; got batch_size {config.batch_size}")
    validate = val_bags is not None and len(val_bags) > 0
    if validate and (stopping is None or val_labels is None):
        raise ValueError("validation bags need val_labels and an EarlyStopping")
    labels = torch.as_tensor(np.asarray(labels), dtype=torch.float32)
    val_y = torch.as_tensor(np.asarray(val_labels), dtype=torch.float32) if validate else None
    opt = make_optimizer(model, config)
    history, best_state, best, waited, step, start_epoch = FitHistory(), None, (np.inf, np.inf), 0, 0, 0
    key = json.loads(json.dumps(checkpoint_key))
    info = None if checkpoint_dir is None else read_checkpoint(checkpoint_dir)
    if info is not None and info.get("key") == key and info.get("kind") == _CHECKPOINT_KIND:
        model.load_state_dict(load_weights(checkpoint_dir, info))
        restore_optimizer(opt, checkpoint_dir, info)
        if "best" in info["extra"]:
            best_state = load_extra(checkpoint_dir, info, "best")
        history = FitHistory(**info["history"])
        start_epoch, step, waited = int(info["epoch"]), int(info["step"]), int(info["waited"])
        best = tuple(info["best"])
        history.resumed_at.append(start_epoch)
    started = time.perf_counter() - history.seconds
    for epoch in range(start_epoch, config.epochs):
        model.train()
        for i in epoch_order(seed, epoch, len(bags)):
            x = bags[i] if augment is None else augment(int(i), bags[i], visit_generator(seed, epoch, int(i)))
            set_dropout_key(model, seed, step)
            for group in opt.param_groups:
                group["lr"] = config.lr_at(step)
            loss = mil_loss(model(x, torch.zeros(x.shape[0], dtype=torch.long), 1), labels[i:i + 1])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
        flush_subnormal_(model.parameters())
        history.epochs_run = epoch + 1
        if validate:
            error, vloss = _score(model, val_bags, val_y)
            history.val_error.append(error)
            history.val_loss.append(vloss)
            if (error, vloss) < best:  # lower error, or the same error and a lower loss
                best, waited, history.best_epoch = (error, vloss), 0, epoch
                best_state = copy.deepcopy(model.state_dict())
            else:
                waited += 1
        history.seconds = time.perf_counter() - started
        if validate and waited >= stopping.patience:
            history.stopped_early = epoch + 1 < config.epochs
        elif checkpoint_dir is not None and epoch + 1 < config.epochs:
            save_checkpoint(checkpoint_dir, model, opt,
                            {"kind": _CHECKPOINT_KIND, "key": key, "epoch": epoch + 1, "step": step, "waited": waited,
                             "best": list(best), "history": history.to_dict()},
                            extra=None if best_state is None else {"best": best_state})
        if on_epoch_end is not None:
            on_epoch_end(epoch, history)
        if history.stopped_early:
            break
    if best_state is not None:
        model.load_state_dict(best_state)
    model.eval()
    return history
