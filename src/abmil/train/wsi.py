"""Training attention MIL on whole-slide feature bags: resumable, data-parallel, bounded memory.

    train_feature_model(FeatureBagDataset(manifest, features), "runs/x", WSIConfig(epochs=20))

- Model: :func:`abmil.nn.zoo.slide_model`, an :class:`~abmil.nn.models.EmbeddingMIL` (CLAM-sized gated attention by default). Two classes:
  one logit, ``sigmoid``, the paper's clamped Bernoulli likelihood (as the rest of the package);
  more: one logit per class, softmax cross-entropy.
- Steps: one slide per optimizer step by default (the paper's batch size 1). With a larger batch
  (``batch_size``, or ``batch_instances`` filled by the sampler) consecutive slides of a step are
  packed end to end into one pass while together they fit in :func:`pack_limit` instances — the
  same gradient as one slide at a time — and larger slides go one at a time, gradients
  accumulating, so memory is that of one pass; slides above ``chunk_size`` instances are pooled
  in chunks.
- Checkpoints (:mod:`abmil.train.checkpoint`) after every epoch; ``resume=True`` continues from
  the last one. Because the schedule depends only on (seed, epoch) (:mod:`abmil.train.wsi_schedule`),
  dropout masks only on (seed, visit) (:mod:`abmil.nn.dropout`) and the optimizer state is
  restored, a run killed anywhere and resumed ends with the weights of an uninterrupted run.
- Data parallel under ``torchrun``: each rank reads only its slides of every step, DDP averages
  the gradients, and K ranks with batch b take the steps of one process with batch K·b
  (``--batch-size`` K·b, or ``--batch-instances`` K·N). Validation slides are shared out too.
  Only rank 0 writes.
"""
from __future__ import annotations

import os
import signal
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from ..data.features import FeatureBagDataset
from ..errors import DataError
from ..nn import chunked
from ..nn.chunked import DEFAULT_CHUNK_SIZE
from ..nn.dropout import set_dropout_key
from ..nn.models import EmbeddingMIL
from ..nn.zoo import slide_model
from .checkpoint import load_weights, read_checkpoint, restore_optimizer, save_checkpoint
from .config import TrainConfig
from .distributed import (World, all_reduce_sum, barrier, gather_lists, init_distributed, max_divergence,
                          shutdown)
from .fit import make_optimizer
from .loss import bag_losses
from .subnormal import flush_subnormal_, subnormals_as_zero
from .wsi_schedule import Step, epoch_steps, train_val_split

#: Test hook: a process SIGKILLs itself after this many optimizer steps (to test resuming).
KILL_AFTER_STEPS_ENV = "ABMIL_FAULT_KILL_AFTER_STEPS"


@dataclass(frozen=True)
class WSIConfig:
    """Model and training settings of a whole-slide run (stored in its checkpoint).

    Defaults are CLAM's (Lu et al. 2021): gated attention, 512/256, dropout 0.25, Adam at
    lr 1e-4 with L2 1e-5; one slide per step as in the paper.

    Attributes:
        pooling: ``"gated"`` or ``"attention"``.
        hidden, att_dim, dropout: :func:`~abmil.nn.zoo.slide_model`'s.
        optimizer, lr, weight_decay: as :class:`~abmil.train.config.TrainConfig` (L2 on all weights).
        epochs: passes over the training slides.
        batch_size: slides per step (per rank); default 1 unless ``batch_instances`` is given.
        batch_instances: instances per step (per rank): consecutive slides are grouped up to it.
        val_split: fraction of training slides held out for validation (see
            :func:`~abmil.train.wsi_schedule.train_val_split`); None: the manifest's split column.
        seed: weights' initialisation, epoch orders, dropout masks, the validation split.
        chunk_size: slides above this many instances are pooled in chunks of this size.
        bf16: bfloat16 autocast for the forward pass (CUDA, recent CPUs).
    """

    pooling: str = "gated"
    hidden: int = 512
    att_dim: int = 256
    dropout: float = 0.25
    optimizer: str = "adam"
    lr: float = 1e-4
    weight_decay: float = 1e-5
    epochs: int = 20
    batch_size: int | None = None
    batch_instances: int | None = None
    val_split: float | None = None
    seed: int = 0
    chunk_size: int = DEFAULT_CHUNK_SIZE
    bf16: bool = False

    def __post_init__(self) -> None:
        self.train_config()  # validates optimizer, lr, epochs, weight_decay
        for name in ("batch_size", "batch_instances"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"{name} must be >= 1, got {value}")
        if self.hidden < 1 or self.att_dim < 1 or self.chunk_size < 1:
            raise ValueError("hidden, att_dim and chunk_size must be >= 1")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")

    def train_config(self) -> TrainConfig:
        return TrainConfig(optimizer=self.optimizer, lr=self.lr, weight_decay=self.weight_decay,
                           epochs=self.epochs, batch_size=self.batch_size or 1)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> WSIConfig:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})


def build_model(in_dim: int, n_classes: int, config: WSIConfig) -> EmbeddingMIL:
    """The run's model, initialised from ``config.seed``."""
    torch.manual_seed(config.seed)
    return slide_model(config.pooling, in_dim, n_classes, hidden=config.hidden, att_dim=config.att_dim,
                       dropout=config.dropout, chunk_size=config.chunk_size)


def slide_loss(out, label: int) -> Tensor:
    """Loss of one slide's output (logits (1, n_out)), class index → scalar."""
    return bag_losses(out, torch.tensor([label], device=out.logits.device))[0]


def class_names(dataset: FeatureBagDataset) -> list[str]:
    """The run's classes: the manifest's names, or "0".."k" for integer labels (at least two)."""
    if dataset.classes is not None:
        names = list(dataset.classes)
    else:
        names = [str(i) for i in range(max(max(dataset.labels) + 1, 2))]
    if len(names) < 2:
        raise DataError(f"field 'label': a classifier needs at least two classes, the manifest has only "
                        f"{names}", path=dataset.manifest)
    return names


def _autocast(device: torch.device, enabled: bool):
    return torch.autocast(device.type, dtype=torch.bfloat16) if enabled else nullcontext()


@torch.no_grad()
def score_slides(model: EmbeddingMIL, dataset: FeatureBagDataset, indices: list[int], device: torch.device,
                 bf16: bool = False) -> list[tuple[int, float, list[float], int]]:
    """``(slide position, loss, class probabilities (n_classes,), label)`` for each slide of ``indices``."""
    model.eval()
    rows = []
    for i in indices:
        bag = dataset.load(i)
        with _autocast(device, bf16):
            out = model(bag.features.to(device))
        rows.append((i, float(slide_loss(out, bag.label)), out.probabilities()[0].cpu().tolist(), bag.label))
    return rows


def val_metrics(rows: list[tuple[int, float, list[float], int]]) -> dict:
    """Mean loss, accuracy and AUC (binary; one-vs-rest macro for more classes, when every class
    occurs, else None) of :func:`score_slides` rows, in slide order whatever order they come in."""
    from sklearn.metrics import roc_auc_score

    rows = sorted(rows)
    losses = np.array([r[1] for r in rows])
    p, y = np.array([r[2] for r in rows]), np.array([r[3] for r in rows])
    auc = None
    if p.shape[1] == 2 and len(set(y.tolist())) == 2:
        auc = float(roc_auc_score(y, p[:, 1]))
    elif p.shape[1] > 2 and len(set(y.tolist())) == p.shape[1]:
        auc = float(roc_auc_score(y, p, multi_class="ovr"))
    return {"loss": float(losses.mean()), "accuracy": float((p.argmax(1) == y).mean()), "auc": auc}


def _check_resumable(info: dict, config: WSIConfig, classes: list[str], in_dim: int, train_slides: list[str],
                     world: World) -> None:
    """A checkpoint continues only the same run: same settings (except epochs), data shape, world."""
    stored = info.get("config", {})
    for key, value in config.to_dict().items():
        if key != "epochs" and stored.get(key) != value:
            raise ValueError(f"--resume: setting {key!r} is {value!r} but the run was started with "
                             f"{stored.get(key)!r}")
    if info.get("classes") != classes or info.get("in_dim") != in_dim:
        raise ValueError(f"--resume: the run was trained on classes {info.get('classes')} with {info.get('in_dim')} "
                         f"features, this data has classes {classes} with {in_dim}")
    if info.get("train_slides") != train_slides:
        raise ValueError("--resume: the manifest's training slides differ from those the run was started with")
    if info.get("world_size", 1) != world.size:
        raise ValueError(f"--resume: the run was trained by {info.get('world_size', 1)} processes, this is "
                         f"{world.size}; resume with the same number so that the steps stay the same")


def _data_parallel(model: EmbeddingMIL, dev: torch.device) -> torch.nn.Module:
    """DDP that never copies rank 0's buffers over the others' in forward: the only buffers are the
    dropout keys, which differ per rank by design (each rank keys its own slides)."""
    import inspect

    from torch.nn.parallel import DistributedDataParallel as DDP

    # torch >= 2.12 renamed broadcast_buffers (and warns on the old name)
    key = "forward_sync_buffers" if "forward_sync_buffers" in inspect.signature(DDP).parameters else "broadcast_buffers"
    return DDP(model, device_ids=[dev] if dev.type == "cuda" else None, **{key: False})


def pack_limit(config: WSIConfig, device: torch.device) -> int:
    """Most instances forwarded packed at once: on CPU a cache-sized block (larger packs run slower than their
    slides one at a time, each encoded in blocks), on a GPU a chunk."""
    return min(config.chunk_size, chunked.ENCODE_BLOCK) if device.type == "cpu" else config.chunk_size


def pack_groups(sizes: Sequence[int], limit: int) -> list[list[int]]:
    """Positions of consecutive slides grouped while a group's instances stay within ``limit`` (a larger slide
    alone)."""
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


def _packed_pass(net: torch.nn.Module, model: EmbeddingMIL, bags: list, visits: list[int], weight: float,
                 config: WSIConfig, dev: torch.device) -> float:
    """Forward and backward of several slides packed end to end, each with the dropout mask and the
    loss weight it gets alone: the gradient of the one-at-a-time accumulation, in one pass."""
    sizes = [len(b.features) for b in bags]
    x = torch.cat([b.features for b in bags]).to(dev, non_blocking=True)
    bag_index = torch.repeat_interleave(torch.arange(len(bags), device=dev), torch.tensor(sizes, device=dev))
    labels = torch.tensor([b.label for b in bags], device=dev)
    set_dropout_key(model, config.seed, visits, rows=sizes)
    with _autocast(dev, config.bf16):
        out = net(x, bag_index, len(bags))
    losses = bag_losses(out, labels)
    (losses.sum() * weight).backward()
    return float(losses.detach().sum())


def _slide_pass(net: torch.nn.Module, model: EmbeddingMIL, x: Tensor, label: int, visit: int, weight: float,
                config: WSIConfig) -> float:
    """Forward and backward of one slide."""
    set_dropout_key(model, config.seed, visit)
    with _autocast(x.device, config.bf16):
        out = net(x)
    loss = slide_loss(out, label)
    (loss * weight).backward()
    return float(loss.detach())


def _backward_step(net: torch.nn.Module, model: EmbeddingMIL, dataset: FeatureBagDataset, slides: list[int],
                   s: Step, config: WSIConfig, world: World, dev: torch.device, in_dim: int) -> tuple[float, int]:
    """Forward and backward of this rank's ``slides`` of step ``s``, gradients accumulating (DDP all-reduces
    once, on the last pass). Consecutive slides that together fit in :func:`pack_limit` are packed into one
    pass; the others go one at a time. Returns (sum of the slides' losses, count)."""
    if not slides:  # this rank still takes part in the all-reduce, with a zero-weighted dummy
        _slide_pass(net, model, torch.zeros(1, in_dim, device=dev), 0, 0, 0.0, config)
        return 0.0, 0
    sizes = dataset.bag_sizes()  # metadata, cached by validate()
    groups = pack_groups([sizes[i] for i in slides], pack_limit(config, dev))
    total = 0.0
    for j, group in enumerate(groups):
        with nullcontext() if j == len(groups) - 1 or not world.distributed else net.no_sync():
            if len(group) > 1:
                total += _packed_pass(net, model, [dataset.load(slides[k]) for k in group],
                                      [s.visits[k] for k in group], s.weight, config, dev)
            else:
                bag = dataset.load(slides[group[0]])
                total += _slide_pass(net, model, bag.features.to(dev, non_blocking=True), bag.label,
                                     s.visits[group[0]], s.weight, config)
    return total, len(slides)


def _kill_after() -> int | None:
    value = os.environ.get(KILL_AFTER_STEPS_ENV)
    return int(value) if value else None


def train_feature_model(dataset: FeatureBagDataset, run_dir: str | os.PathLike, config: WSIConfig, *,
                        device: str = "cpu", resume: bool = False,
                        on_epoch: Callable[[dict], None] | None = None) -> dict:
    """Train a slide model (:func:`~abmil.nn.zoo.slide_model`) on ``dataset``; checkpoints go to ``run_dir``.

    Args:
        dataset: the slides (train and validation; see ``config.val_split``).
        run_dir: the run's folder; it must not hold a checkpoint unless ``resume``.
        config: model and training settings.
        device: ``"cpu"``, ``"cuda"`` (under torchrun: ``cuda:<LOCAL_RANK>``) or ``"mps"``.
        resume: continue from ``run_dir``'s checkpoint (start afresh if it has none).
        on_epoch: called on rank 0 with each epoch's record (epoch, train_loss, val metrics).

    Returns:
        The final checkpoint's info (``checkpoint.json``'s content).

    Every slide file is checked from metadata before training; a slide's NaN values are found
    when it is first read, before the first checkpoint is written.
    """
    world, dev = init_distributed(device)
    try:
        return _train(dataset, Path(run_dir), config, world, dev, resume, on_epoch)
    finally:
        shutdown(world)


@subnormals_as_zero()
def _train(dataset: FeatureBagDataset, run_dir: Path, config: WSIConfig, world: World, dev: torch.device,
           resume: bool, on_epoch: Callable[[dict], None] | None) -> dict:
    classes = class_names(dataset)
    in_dim = dataset.validate()
    train_idx, val_idx = train_val_split(dataset.labels, dataset.splits, config.val_split, config.seed)
    train_slides = [dataset.slide_ids[i] for i in train_idx]
    sizes = dataset.bag_sizes() if config.batch_instances is not None else None
    train_sizes = None if sizes is None else [sizes[i] for i in train_idx]

    info = read_checkpoint(run_dir)
    if info is not None and not resume:
        raise ValueError(f"{run_dir} already holds a run (checkpoint.json): pass --resume to continue it, "
                         "or choose another --out")
    if info is not None:
        _check_resumable(info, config, classes, in_dim, train_slides, world)

    model = build_model(in_dim, len(classes), config).to(dev)
    optimizer = make_optimizer(model, config.train_config())
    start_epoch, step, history = 0, 0, []
    if info is not None:
        model.load_state_dict(load_weights(run_dir, info))
        restore_optimizer(optimizer, run_dir, info)
        start_epoch, step, history = int(info["epoch"]), int(info["step"]), list(info["history"])
    net = model
    if world.distributed:
        net = _data_parallel(model, dev)
    kill_after, schedule = _kill_after(), config.train_config()
    base = {"model": "SlideMIL", "in_dim": in_dim, "classes": classes, "config": config.to_dict(),
            "world_size": world.size, "train_slides": train_slides,
            "val_slides": [dataset.slide_ids[i] for i in val_idx]}

    for epoch in range(start_epoch, config.epochs):
        model.train()
        loss_sum = n_bags = 0.0
        for s in epoch_steps(len(train_idx), config.seed, epoch, rank=world.rank, world_size=world.size,
                             batch_size=config.batch_size, batch_instances=config.batch_instances,
                             bag_sizes=train_sizes):
            for group in optimizer.param_groups:
                group["lr"] = schedule.lr_at(step)
            optimizer.zero_grad(set_to_none=True)
            total, count = _backward_step(net, model, dataset, [train_idx[b] for b in s.bags], s, config, world,
                                          dev, in_dim)
            loss_sum, n_bags = loss_sum + total, n_bags + count
            optimizer.step()
            step += 1
            if kill_after is not None and step >= kill_after:
                os.kill(os.getpid(), signal.SIGKILL)
        flush_subnormal_(model.parameters())
        loss_sum, n_bags = all_reduce_sum([loss_sum, n_bags], world, dev)
        record = {"epoch": epoch + 1, "train_loss": loss_sum / max(n_bags, 1)}
        if world.distributed:
            record["rank_weight_max_diff"] = max_divergence(model, world)
        if val_idx:  # each rank scores its share of the validation slides
            rows = gather_lists(score_slides(model, dataset, val_idx[world.rank::world.size], dev, config.bf16),
                                world)
            record.update({f"val_{k}": v for k, v in val_metrics(rows).items()})
        if world.is_main:
            history.append(record)
            info = {**base, "epoch": epoch + 1, "step": step, "history": history}
            save_checkpoint(run_dir, model, optimizer, info)
            if on_epoch is not None:
                on_epoch(record)
        barrier(world)
    return read_checkpoint(run_dir)
