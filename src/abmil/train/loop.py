"""The one training loop: every model, every experiment and ``abmil train`` train through :func:`train_loop`.

An epoch is a list of :class:`Step` s (a *schedule*, :mod:`abmil.train.schedule`): the bags of one optimizer step,
the keys of their dropout masks and the weight of each bag's loss. A step runs as one or more forward/backward
*passes*, gradients accumulating: all its bags packed end to end when they share one dropout key (the paper's loop,
:func:`abmil.train.schedule.paper_steps`), else consecutive bags packed while they fit ``pack_limit`` instances
and larger bags alone (whole slides, :func:`abmil.train.schedule.epoch_steps`). Around the steps:

* the learning rate of :meth:`TrainConfig.lr_at` before every step, subnormal weights flushed after every epoch;
* optional validation after every epoch (``validate(model) -> metrics``) and early stopping on those metrics, the
  best epoch's weights put back at the end (:class:`EarlyStopping`);
* optional checkpoints after every epoch and resuming from them (:class:`Checkpointing`): every random draw is keyed
  by (seed, epoch, step), so a run killed and resumed ends with the weights of one that never stopped;
* data parallel under ``torchrun``: pass the DDP-wrapped module as ``net`` and the :class:`World`; each rank
  computes its own bags of a step and DDP averages the gradients on the step's last pass;
* callbacks after every step and epoch (:class:`Callback`; tests inject faults through them).
"""
from __future__ import annotations

import copy
import json
import os
import time
from collections.abc import Callable, Mapping, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple, Protocol

import numpy as np
import torch
from torch import Tensor, nn

from ..data.bags import pack
from ..errors import DataError
from ..nn.dropout import set_dropout_key
from ..nn.models import MILOutput
from .checkpoint import CHECKPOINT, load_extra, load_into, read_checkpoint, restore_optimizer, save_checkpoint
from .config import TrainConfig
from .distributed import World, all_reduce_sum, barrier, gather_lists
from .loss import Objective, bag_losses
from .optim import make_optimizer
from .subnormal import flush_subnormal_, subnormals_as_zero

__all__ = ["Augment", "BagSource", "BestEpoch", "Callback", "Checkpointing", "EarlyStopping", "FitHistory", "Step",
           "TensorBags", "train_loop", "visit_generator"]

#: ``augment(i, bag, generator) -> bag'``: training bag ``i`` (its stored tensor ``bag``) as seen at one visit.
Augment = Callable[[int, Tensor, torch.Generator], Tensor]


class Step(NamedTuple):
    """One optimizer step, as seen by one process."""

    bags: list[int]
    """Positions (into the bag source) this process computes; may be empty under DDP."""
    keys: list[int] | int
    """Dropout keys: one per bag (each bag masked as if forwarded alone), or one for the whole step packed."""
    weight: float
    """Factor on each bag's loss (1 / bags in the step: the step's mean loss)."""


class BagSource(Protocol):
    """Where the loop reads its training bags from: in memory (:class:`TensorBags`) or from disk."""

    def __len__(self) -> int: ...

    def size(self, i: int) -> int:
        """Instances in bag ``i`` (to pack passes), without reading it."""

    def load(self, i: int, epoch: int) -> tuple[Tensor, int | float]:
        """Bag ``i`` as visited in ``epoch`` ``(n_instances, ...)`` and its label."""


def visit_generator(seed: int, epoch: int, index: int) -> torch.Generator:
    """The CPU generator of one visit of training bag ``index`` in ``epoch`` of a run with ``seed``."""
    key = np.random.SeedSequence([seed, epoch, index, 11]).generate_state(1, dtype=np.uint64)[0]
    return torch.Generator().manual_seed(int(key) & ((1 << 63) - 1))


class TensorBags:
    """Bags held in memory (any sequence of tensors, e.g. lazily converted patches) and their labels.

    ``augment``: applied to bag i at each visit with :func:`visit_generator` ``(seed, epoch, i)``, so that a run's
    augmentations depend on nothing else."""

    def __init__(self, bags: Sequence[Tensor], labels: Sequence | Tensor | np.ndarray,
                 augment: Augment | None = None, seed: int = 0):
        if len(bags) != len(labels):
            raise ValueError(f"{len(bags)} bags but {len(labels)} labels")
        self.bags, self.augment, self.seed = bags, augment, seed
        self.labels = torch.as_tensor(np.asarray(labels)).tolist()

    def __len__(self) -> int:
        return len(self.bags)

    def size(self, i: int) -> int:
        return int(self.bags[i].shape[0])

    def load(self, i: int, epoch: int) -> tuple[Tensor, int | float]:
        x = self.bags[i]
        if self.augment is not None:
            x = self.augment(int(i), x, visit_generator(self.seed, epoch, int(i)))
        return x, self.labels[i]


@dataclass(frozen=True)
class EarlyStopping:
    """When training stops, and how the training bags are split for it.

    Attributes:
        patience: stop after this many epochs in a row without a better validation score; ``None``: never stop
            early, train every epoch and keep the best one (model selection alone).
        val_fraction: share of the training bags held out for validation (stratified by label).
        monitor: the validation metrics compared, in order, lower is better: the default is gmum's rule for the
            paper's histology experiments (a lower validation error, or the same error and a lower loss).
    """

    patience: int | None = 25
    val_fraction: float = 0.2
    monitor: tuple[str, ...] = ("val_error", "val_loss")

    def __post_init__(self) -> None:
        if self.patience is not None and (isinstance(self.patience, bool) or not isinstance(self.patience, int)
                                          or self.patience < 1):
            raise ValueError(f"patience must be an integer >= 1 or None, got {self.patience!r}")
        if not 0.0 < self.val_fraction < 1.0:
            raise ValueError(f"val_fraction must be in (0, 1), got {self.val_fraction!r}")
        if not self.monitor:
            raise ValueError("monitor needs at least one metric")

    def score(self, metrics: Mapping[str, float]) -> tuple[float, ...]:
        missing = [m for m in self.monitor if m not in metrics]
        if missing:
            raise ValueError(f"early stopping monitors {missing}, which validation did not report "
                             f"(it reported {sorted(metrics)})")
        return tuple(float(metrics[m]) for m in self.monitor)

    def exhausted(self, waited: int) -> bool:
        """Whether ``waited`` epochs in a row without a better score end the run."""
        return self.patience is not None and waited >= self.patience

    def to_dict(self) -> dict:
        return {"patience": self.patience, "val_fraction": self.val_fraction}


class BestEpoch:
    """The best epoch of a run under :class:`EarlyStopping`: its score, its weights, the epochs waited since.

    One bookkeeping for every engine that validates (the loop below, :mod:`abmil.train.direct` through
    :func:`abmil.train.cv.run_cv`), so that they keep the same epoch."""

    def __init__(self, stopping: EarlyStopping, best: Sequence[float] | None = None, waited: int = 0,
                 epoch: int = -1, state: dict | None = None):
        self.stopping, self.waited, self.epoch, self.state = stopping, waited, epoch, state
        self.best = None if best is None else tuple(best)

    def update(self, epoch: int, metrics: Mapping[str, float], model: nn.Module) -> bool:
        """Score ``epoch`` (0-based) from its validation ``metrics``; keep ``model``'s weights if it is the best so
        far (a NaN score is never better). Returns whether training should stop now."""
        score = self.stopping.score(metrics)
        if score < (self.best or (float("inf"),) * len(score)):
            self.best, self.waited, self.epoch = score, 0, epoch
            self.state = copy.deepcopy(model.state_dict())
        else:
            self.waited += 1
        return self.stopping.exhausted(self.waited)

    def restore(self, model: nn.Module) -> None:
        """Load the best epoch's weights into ``model`` (nothing if no epoch was scored)."""
        if self.state is not None:
            model.load_state_dict(self.state)


@dataclass
class FitHistory:
    """What one training run did: one record per epoch, the epoch kept, the epochs run."""

    records: list[dict] = field(default_factory=list)
    """Per epoch: ``epoch`` (1-based), ``train_loss`` and the validation metrics."""
    best_epoch: int = -1
    """0-based epoch whose weights were kept (-1: no early stopping, the last epoch's weights)."""
    epochs_run: int = 0
    stopped_early: bool = False
    seconds: float = 0.0
    """Wall-clock seconds of training, summed over the sessions of a resumed run."""
    resumed_at: list[int] = field(default_factory=list)
    """Epochs (completed) from which the run was resumed from a checkpoint."""

    @property
    def val_error(self) -> list[float]:
        return [r["val_error"] for r in self.records if "val_error" in r]

    @property
    def val_loss(self) -> list[float]:
        return [r["val_loss"] for r in self.records if "val_loss" in r]

    def to_dict(self) -> dict:
        return {"val_error": self.val_error, "val_loss": self.val_loss, "best_epoch": self.best_epoch,
                "epochs_run": self.epochs_run, "stopped_early": self.stopped_early, "seconds": self.seconds,
                "resumed_at": self.resumed_at, "records": self.records}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any] | list[dict]) -> FitHistory:
        if isinstance(d, list):  # a slide run's checkpoint from before the one loop: its epoch records alone
            return cls(list(d), epochs_run=len(d))
        records = d.get("records")
        if records is None:  # written before records existed: the validation lists alone
            records = [{"epoch": e + 1, "val_error": err, "val_loss": loss}
                       for e, (err, loss) in enumerate(zip(d.get("val_error", []), d.get("val_loss", [])))]
        return cls(list(records), int(d.get("best_epoch", -1)), int(d.get("epochs_run", 0)),
                   bool(d.get("stopped_early", False)), float(d.get("seconds", 0.0)), list(d.get("resumed_at", [])))


@dataclass
class Checkpointing:
    """Save the run's state in ``directory`` after every epoch and resume from a checkpoint found there.

    Attributes:
        directory: the run's checkpoint folder (:mod:`abmil.train.checkpoint`'s layout).
        kind: which code wrote it (a checkpoint of another kind is never resumed).
        key: anything JSON-able that pins the run (data, settings, seed).
        info: JSON-able facts saved with every checkpoint (what the model is, the classes...).
        accept: decides on a checkpoint found there: True resumes it, False starts afresh and overwrites it; it
            may raise to refuse. Default: resume when its ``kind`` and ``key`` equal this one's.
    """

    directory: str | os.PathLike
    kind: str
    key: Any = None
    info: dict = field(default_factory=dict)
    accept: Callable[[dict], bool] | None = None

    def accepts(self, found: dict) -> bool:
        if self.accept is not None:
            return self.accept(found)
        return found.get("kind") == self.kind and found.get("key") == json.loads(json.dumps(self.key))


class Callback:
    """Hooks the loop calls; override what you need. Called on every process."""

    def on_step_end(self, step: int) -> None:
        """After optimizer step number ``step`` (1-based, counted over the whole run)."""

    def on_epoch_end(self, epoch: int, record: dict, history: FitHistory) -> None:
        """After ``epoch`` (0-based) with its ``record`` (train loss and validation metrics)."""


#: The world of a plain (not torchrun) process.
SINGLE_PROCESS = World()


def bf16_autocast(device: torch.device, enabled: bool):
    """bfloat16 autocast on ``device`` when ``enabled``, else nothing."""
    return torch.autocast(device.type, dtype=torch.bfloat16) if enabled else nullcontext()


def pack_groups(sizes: Sequence[int], limit: int | None) -> list[list[int]]:
    """Positions of consecutive bags grouped while a group's instances stay within ``limit`` (a larger bag alone;
    ``None``: all in one group)."""
    if limit is None:
        return [list(range(len(sizes)))] if len(sizes) else []
    groups: list[list[int]] = []
    total = 0
    for j, n in enumerate(sizes):
        if groups and total + n <= limit:
            groups[-1].append(j)
            total += n
        else:
            groups.append([j])
            total = n
    return groups


def _targets(bags: list[tuple[Tensor, Any]], device: torch.device) -> Tensor:
    """The labels of ``bags``: class indices or floats, or for survival (time bin, event, time) rows, float64."""
    ys = [y for _, y in bags]
    if isinstance(ys[0], (tuple, list)):
        return torch.tensor(ys, dtype=torch.float64, device=device)
    return torch.tensor(ys, device=device)


def _forward(net: nn.Module, model: nn.Module, bags: list[tuple[Tensor, Any]], keys: list[int] | int, seed: int,
             device: torch.device, bf16: bool):
    """The output of ``bags`` packed end to end (one bag: as it is, giant-bag mode included), dropout keyed."""
    if len(bags) == 1:
        x, bag_index = bags[0][0].to(device, non_blocking=True), None
        set_dropout_key(model, seed, keys if isinstance(keys, int) else keys[0])
    else:
        sizes = [b.shape[0] for b, _ in bags]
        x, bag_index = pack([b for b, _ in bags])
        x, bag_index = x.to(device, non_blocking=True), bag_index.to(device, non_blocking=True)
        if isinstance(keys, int):
            set_dropout_key(model, seed, keys)
        else:
            set_dropout_key(model, seed, keys, rows=sizes)
    with bf16_autocast(device, bf16):
        return net(x, bag_index, len(bags)) if bag_index is not None else net(x)


def _pass(net: nn.Module, model: nn.Module, bags: list[tuple[Tensor, Any]], keys: list[int] | int, seed: int,
          weight: float, device: torch.device, bf16: bool, class_weights: Tensor | None = None,
          objective: Objective | None = None, logit_grads: Tensor | None = None) -> float:
    """Forward and backward of ``bags`` packed end to end, each bag's loss times ``weight``; returns the sum of the
    bags' losses. ``logit_grads`` (n_bags, n_out): a coupled objective's gradient of the step's summed loss with
    respect to these bags' logits (:func:`_coupled_step`): the backward pass then follows it, and the returned sum
    is 0 (the step's losses are counted there)."""
    out = _forward(net, model, bags, keys, seed, device, bf16)
    if logit_grads is not None:
        (out.logits.float() * logit_grads.to(device, torch.float32)).sum().mul(weight).backward()
        return 0.0
    losses = bag_losses(out, _targets(bags, device), class_weights, objective)
    (losses.sum() * weight).backward()
    return float(losses.detach().sum())


def _coupled_step(model: nn.Module, source: BagSource, step: Step, groups: list[list[int]], epoch: int, seed: int,
                  device: torch.device, bf16: bool, world: World, objective: Objective
                  ) -> tuple[list[Tensor], float]:
    """A loss over the whole step (Cox): this rank's bags forwarded without gradients (the same dropout keys and
    passes as the training passes, so the same outputs), every rank's outputs and targets gathered, the step's
    per-bag losses and their gradients with respect to each logit computed on the gathered set. Returns the gradients
    of each pass's bags (to back-propagate through the passes) and this rank's share of the summed loss."""
    mine = []
    with torch.no_grad():
        for group in groups:
            keys = step.keys if isinstance(step.keys, int) else [step.keys[k] for k in group]
            bags = [source.load(step.bags[k], epoch) for k in group]
            out = _forward(model, model, bags, keys, seed, device, bf16)
            mine += [(world.rank, row.double().cpu(), y) for row, (_, y) in zip(out.logits.float(), bags)]
    gathered = gather_lists(mine, world) if world.distributed else mine
    if not gathered:
        return [], 0.0
    logits = torch.stack([row for _, row, _ in gathered]).requires_grad_(True)
    losses = bag_losses(MILOutput(logits), _targets([(None, y) for _, _, y in gathered], torch.device("cpu")),
                        objective=objective)
    losses.sum().backward()
    own = [k for k, (rank, _, _) in enumerate(gathered) if rank == world.rank]
    grads, total, start = [], float(losses.detach()[own].sum()) if own else 0.0, 0
    for group in groups:
        grads.append(logits.grad[own[start:start + len(group)]])
        start += len(group)
    return grads, total


def _run_step(net: nn.Module, model: nn.Module, source: BagSource, step: Step, epoch: int, seed: int,
              pack_limit: int | None, device: torch.device, bf16: bool, world: World,
              class_weights: Tensor | None = None, objective: Objective | None = None) -> float:
    """This process's passes of ``step``, gradients accumulating (DDP all-reduces once, on the last pass)."""
    coupled = objective is not None and objective.coupled
    if not step.bags:  # this rank still takes part in the all-reduce, with a zero-weighted dummy bag
        if coupled:
            _coupled_step(model, source, step, [], epoch, seed, device, bf16, world, objective)
        x, y = source.load(0, epoch)
        return _pass(net, model, [(torch.zeros_like(x[:1]), y)], 0, seed, 0.0, device, bf16,
                     objective=objective) * 0.0
    shared = isinstance(step.keys, int)
    groups = pack_groups([source.size(i) for i in step.bags], None if shared else pack_limit)
    grads, total = ([None] * len(groups), 0.0)
    if coupled:
        grads, total = _coupled_step(model, source, step, groups, epoch, seed, device, bf16, world, objective)
    for j, group in enumerate(groups):
        last = j == len(groups) - 1
        with nullcontext() if last or not world.distributed else net.no_sync():
            keys = step.keys if shared else [step.keys[k] for k in group]
            bags = [source.load(step.bags[k], epoch) for k in group]
            total += _pass(net, model, bags, keys, seed, step.weight, device, bf16, class_weights, objective,
                           grads[j])
    return total


def _resume(model: nn.Module, optimizer: torch.optim.Optimizer, checkpoint: Checkpointing | None) -> dict | None:
    """The state of an accepted checkpoint, with the model and optimizer restored from it; else None."""
    if checkpoint is None:
        return None
    info = read_checkpoint(checkpoint.directory)
    if info is None or not checkpoint.accepts(info):
        return None
    for key, kind in (("history", (dict, list)), ("step", int)):  # history: a list in older checkpoints
        if not isinstance(info.get(key), kind) or isinstance(info.get(key), bool):
            raise DataError(f"incomplete checkpoint: no {key!r} entry of the training loop (delete the folder to "
                            "start the run over)", path=str(Path(checkpoint.directory) / CHECKPOINT))
    load_into(model, checkpoint.directory, info)
    restore_optimizer(optimizer, checkpoint.directory, info)
    return info


@subnormals_as_zero()
def train_loop(model: nn.Module, source: BagSource, config: TrainConfig,
               schedule: Callable[[int, int], Sequence[Step]], *, seed: int,
               validate: Callable[[nn.Module], dict] | None = None, stopping: EarlyStopping | None = None,
               checkpoint: Checkpointing | None = None, callbacks: Sequence[Callback] = (),
               net: nn.Module | None = None, world: World = SINGLE_PROCESS, device: torch.device | str | None = None,
               bf16: bool = False, pack_limit: int | None = None,
               class_weights: Sequence[float] | None = None, objective: Objective | None = None) -> FitHistory:
    """Train ``model`` in place for ``config.epochs`` epochs (or until early stopping).

    Args:
        model: the model (initial weights as it holds them); ``net`` its DDP wrapper, if any.
        source: the training bags.
        config: optimizer, learning rate, epochs.
        schedule: ``schedule(epoch, first_step)`` → the epoch's steps for this process.
        seed: keys the dropout masks, ``(seed, key)``.
        validate: ``validate(model) -> metrics`` after every epoch (on every process; collectives allowed).
        stopping: early stopping on ``validate``'s metrics; the best epoch's weights are loaded back at the end.
        checkpoint: save after every epoch (the main process), resume from an accepted checkpoint.
        device: where bags are moved for the passes (default: the model's).
        bf16: bfloat16 autocast for the forward passes.
        pack_limit: most instances per pass where bags have their own dropout keys (None: the whole step).
        class_weights: (n_classes,) factors on each bag's loss by its label (:func:`~abmil.train.loss.bag_losses`);
            the epoch's ``train_loss`` is then the weighted loss.
        objective: a survival or regression head's loss (:class:`~abmil.train.loss.Objective`; None:
            classification). A coupled one (Cox) is computed over the bags of each step, across ranks.

    Returns:
        the run's :class:`FitHistory`; the model is left in eval mode.
    """
    if stopping is not None and validate is None:
        raise ValueError("early stopping needs validation (validate)")
    net = model if net is None else net
    device = torch.device(device) if device is not None else next(model.parameters()).device
    optimizer = make_optimizer(model, config)
    weights = None if class_weights is None else torch.as_tensor(class_weights, dtype=torch.float32, device=device)
    history, step, start_epoch = FitHistory(), 0, 0
    selection = None if stopping is None else BestEpoch(stopping)
    found = _resume(model, optimizer, checkpoint)
    if found is not None:
        history = FitHistory.from_dict(found["history"])
        start_epoch, step = int(found["epoch"]), int(found["step"])
        if selection is not None:
            selection = BestEpoch(stopping, found.get("best"), int(found.get("waited", 0)), history.best_epoch,
                                  load_extra(checkpoint.directory, found, "best")
                                  if "best" in found.get("extra", {}) else None)
        history.resumed_at.append(start_epoch)
    started = time.perf_counter() - history.seconds
    if selection is not None and stopping.exhausted(selection.waited):  # resumed after its stopping epoch
        start_epoch = config.epochs
    for epoch in range(start_epoch, config.epochs):
        model.train()
        loss_sum = n_bags = 0.0
        for s in schedule(epoch, step):
            for group in optimizer.param_groups:
                group["lr"] = config.lr_at(step)
            optimizer.zero_grad(set_to_none=True)
            loss_sum += _run_step(net, model, source, s, epoch, seed, pack_limit, device, bf16, world, weights,
                                  objective)
            n_bags += len(s.bags)
            optimizer.step()
            step += 1
            for cb in callbacks:
                cb.on_step_end(step)
        flush_subnormal_(model.parameters())
        loss_sum, n_bags = all_reduce_sum([loss_sum, n_bags], world, device)
        record = {"epoch": epoch + 1, "train_loss": loss_sum / max(n_bags, 1)}
        history.epochs_run = epoch + 1
        if validate is not None:
            record.update(validate(model))
        stop = False
        if selection is not None:
            stop = selection.update(epoch, record, model)
            history.best_epoch = selection.epoch
            history.stopped_early = stop and epoch + 1 < config.epochs
        history.records.append(record)
        history.seconds = time.perf_counter() - started
        if checkpoint is not None and world.is_main:
            best, waited = (None, 0) if selection is None else (selection.best, selection.waited)
            save_checkpoint(checkpoint.directory, model, optimizer,
                            {**checkpoint.info, "kind": checkpoint.kind, "key": json.loads(json.dumps(checkpoint.key)),
                             "epoch": epoch + 1, "step": step, "waited": waited,
                             "best": None if best is None else list(best), "history": history.to_dict()},
                            extra=None if selection is None or selection.state is None
                            else {"best": selection.state})
        for cb in callbacks:
            cb.on_epoch_end(epoch, record, history)
        barrier(world)
        if stop:
            break
    if selection is not None:
        selection.restore(model)
    model.eval()
    return history
