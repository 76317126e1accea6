"""Training attention MIL on whole-slide feature bags: resumable, data-parallel, bounded memory.

    train_feature_model(FeatureBagDataset(manifest, features), "runs/x", WSIConfig(epochs=20))

- Model: :func:`abmil.nn.zoo.slide_model`, an :class:`~abmil.nn.models.EmbeddingMIL` (CLAM-sized gated attention
  by default). Two classes: one logit, ``sigmoid``, the paper's clamped Bernoulli likelihood (as the rest of the
  package); more: one logit per class, softmax cross-entropy.
- Steps: one slide per optimizer step by default (the paper's batch size 1). With a larger batch
  (``batch_size``, or ``batch_instances`` filled by the sampler) consecutive slides of a step are
  packed end to end into one pass while together they fit in :func:`pack_limit` instances — the
  same gradient as one slide at a time — and larger slides go one at a time, gradients
  accumulating, so memory is that of one pass; slides above ``chunk_size`` instances are pooled
  in chunks.
- Checkpoints (:mod:`abmil.train.checkpoint`) after every epoch; ``resume=True`` continues from
  the last one. Because the schedule depends only on (seed, epoch) (:mod:`abmil.train.schedule`),
  dropout masks only on (seed, visit) (:mod:`abmil.nn.dropout`) and the optimizer state is
  restored, a run killed anywhere and resumed ends with the weights of an uninterrupted run.
- Data parallel under ``torchrun``: each rank reads only its slides of every step, DDP averages
  the gradients, and K ranks with batch b take the steps of one process with batch K·b
  (``--batch-size`` K·b, or ``--batch-instances`` K·N). Validation slides are shared out too.
  Only rank 0 writes.
"""
from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import torch
from torch import Tensor

from ..data.samplers import balanced_weights
from ..nn import chunked
from ..nn.chunked import DEFAULT_CHUNK_SIZE
from ..nn.models import EmbeddingMIL
from ..nn.zoo import SLIDE_KEYS, create_model, model_spec
from ..tasks import DEFAULT_BINS, DEFAULT_TASK, Task, get_task
from ..tasks.classification import ClassificationTask
from ..train.checkpoint import read_checkpoint
from ..train.config import TrainConfig
from ..train.distributed import World, gather_lists, init_distributed, max_divergence, shutdown
from ..train.loop import Callback, Checkpointing, EarlyStopping, FitHistory, bf16_autocast, train_loop
from ..train.loss import bag_losses, balanced_class_weights
from ..train.schedule import epoch_steps
from .features import BAG_LEVELS, CaseBagDataset, FeatureBagDataset, bags_at_level
from .manifest import train_val_split

#: ``--monitor`` choices → the validation metrics early stopping compares, in order, lower is better (ties of the
#: first broken by the next): the loss; the error (1 - accuracy), then the loss; the AUC as its negative, then the
#: loss.
MONITORS: dict[str, tuple[str, ...]] = {"val_loss": ("val_loss",), "val_error": ("val_error", "val_loss"),
                                        "val_auc": ("val_neg_auc", "val_loss"),
                                        "val_cindex": ("val_neg_cindex", "val_loss")}
#: (The monitors each task can use are its :attr:`~abmil.tasks.base.Task.monitors`.)
CLASS_WEIGHTS = ("balanced",)
SAMPLERS = ("shuffle", "balanced")


@dataclass(frozen=True)
class WSIConfig:
    """Model and training settings of a whole-slide run (stored in its checkpoint).

    Defaults are CLAM's (Lu et al. 2021): gated attention, 512/256, dropout 0.25, Adam at
    lr 1e-4 with L2 1e-5; one slide per step as in the paper.

    Attributes:
        pooling: the slide model, one of :data:`~abmil.nn.zoo.SLIDE_KEYS` (``gated``, ``attention``, ``mean``,
            ``max``, ``instance-mean``, ``instance-max``, ``clam-sb``, ``transmil``, ``linear-probe``).
        hidden, att_dim, dropout: :func:`~abmil.nn.zoo.slide_model`'s.
        optimizer, lr, weight_decay: as :class:`~abmil.train.config.TrainConfig` (L2 on all weights).
        epochs: passes over the training slides.
        batch_size: slides per step (per rank); default 1 unless ``batch_instances`` is given.
        batch_instances: instances per step (per rank): consecutive slides are grouped up to it.
        val_split: fraction of training slides held out for validation, in whole cases (see
            :func:`~abmil.slides.manifest.train_val_split`); None: the manifest's split column.
        seed: weights' initialisation, epoch orders, dropout masks, the validation split.
        chunk_size: slides above this many instances are pooled in chunks of this size.
        bf16: bfloat16 autocast for the forward pass (CUDA, recent CPUs).
        patience: early stopping: stop after this many epochs without a better ``monitor`` score and keep the best
            epoch's weights (needs validation slides); None: train all epochs, keep the last.
        monitor: what early stopping (and a cross-validation's model selection) compares: a key of
            :data:`MONITORS` (``val_loss``, ``val_error``, ``val_auc``).
        class_weights: ``"balanced"``: each slide's loss weighted by ``n / (classes · n_class)`` of the training
            slides (scikit-learn's ``compute_class_weight``); None: unweighted.
        sampler: ``"shuffle"`` (each epoch every training slide once, shuffled) or ``"balanced"`` (each epoch n
            slides drawn with replacement, every class equally likely; seeded by (seed, epoch)).
        bag_level: ``"slide"`` (a bag is a slide) or ``"case"`` (a case's slides pooled into one bag).
        task: a task of :data:`abmil.tasks.TASKS`: ``classification`` (the default), ``survival`` (manifest columns
            ``time``, ``event``) or ``regression`` (``target``): the head and its loss (:mod:`abmil.tasks`).
        loss: the task's loss (survival ``nll`` (default) or ``cox``; regression ``mse`` (default) or ``huber``);
            None: the task's default.
        n_bins: survival ``nll``: time bins (quantiles of the training part's event times).
        targets: multilabel: the manifest's target columns, comma-separated (``"A,B"``); None for the other tasks.
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
    patience: int | None = None
    monitor: str = "val_loss"
    class_weights: str | None = None
    sampler: str = "shuffle"
    bag_level: str = "slide"
    task: str = DEFAULT_TASK
    loss: str | None = None
    n_bins: int = DEFAULT_BINS
    targets: str | None = None

    def __post_init__(self) -> None:
        self.train_config()  # validates optimizer, lr, epochs, weight_decay
        if self.pooling not in SLIDE_KEYS:
            raise ValueError(f"--pooling must be one of {', '.join(SLIDE_KEYS)}, got {self.pooling!r}")
        if not model_spec(self.pooling).supports(self.task):
            raise ValueError(f"--pooling {self.pooling} is for the {' and '.join(model_spec(self.pooling).tasks)} "
                             f"task, not {self.task}")
        for name, allowed in (("monitor", tuple(MONITORS)), ("class_weights", (None, *CLASS_WEIGHTS)),
                              ("sampler", SAMPLERS), ("bag_level", BAG_LEVELS)):
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {', '.join(str(a) for a in allowed)}, "
                                 f"got {getattr(self, name)!r}")
        if self.patience is not None and (isinstance(self.patience, bool) or self.patience < 1):
            raise ValueError(f"patience must be >= 1, got {self.patience}")
        for name in ("batch_size", "batch_instances"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"{name} must be >= 1, got {value}")
        if self.hidden < 1 or self.att_dim < 1 or self.chunk_size < 1:
            raise ValueError("hidden, att_dim and chunk_size must be >= 1")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        task = self.task_class()
        if task.needs_targets and not task.columns:
            raise ValueError(f"--task {self.task} needs --targets A,B,... (its manifest columns)")
        object.__setattr__(self, "loss", task(self.loss).loss)  # validates the loss
        if self.monitor not in task.monitors:
            raise ValueError(f"--monitor {self.monitor} is not for the {self.task} task: use one of "
                             f"{', '.join(task.monitors)}")
        if not task.has_classes and (self.class_weights is not None or self.sampler != "shuffle"):
            raise ValueError("--class-weights and --sampler balanced are for classification")
        if isinstance(self.n_bins, bool) or self.n_bins < 1:
            raise ValueError(f"n_bins must be >= 1, got {self.n_bins}")

    def task_class(self) -> type[Task]:
        """The run's task (:func:`abmil.tasks.get_task` of :attr:`task` and :attr:`targets`)."""
        return get_task(self.task, self.targets)

    def train_config(self) -> TrainConfig:
        return TrainConfig(optimizer=self.optimizer, lr=self.lr, weight_decay=self.weight_decay,
                           epochs=self.epochs, batch_size=self.batch_size or 1)

    def early_stopping(self, select_best: bool = False) -> EarlyStopping | None:
        """Early stopping on :data:`MONITORS` ``[monitor]`` after ``patience`` epochs; with ``select_best`` and no
        patience, all epochs run and the best epoch's weights are kept; else None."""
        if self.patience is None and not select_best:
            return None
        return EarlyStopping(patience=self.patience or self.epochs, val_fraction=self.val_split or 0.2,
                             monitor=MONITORS[self.monitor])

    def to_dict(self) -> dict:
        d = asdict(self)
        if d["targets"] is None:  # added with multilabel: runs of the other tasks store what they stored before
            del d["targets"]
        return d

    @classmethod
    def from_dict(cls, d: dict) -> WSIConfig:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})


class NoValidationWarning(UserWarning):
    """A run that trains without validation slides: nothing measures it, the last epoch is kept."""


def build_model(in_dim: int, n_classes: int, config: WSIConfig, head: Task | None = None) -> torch.nn.Module:
    """The run's model (:func:`~abmil.nn.zoo.create_model`, family ``slide``), initialised from ``config.seed``;
    ``head``: the run's task (its outputs)."""
    torch.manual_seed(config.seed)
    n_out = None if head is None else head.n_out()
    return create_model(config.pooling, family="slide", in_dim=in_dim, n_classes=n_classes, hidden=config.hidden,
                        att_dim=config.att_dim, dropout=config.dropout, chunk_size=config.chunk_size, n_out=n_out,
                        task=None if head is None else head.name)


def slide_loss(out, label: int) -> Tensor:
    """Loss of one slide's output (logits (1, n_out)), class index → scalar."""
    return bag_losses(out, torch.tensor([label], device=out.logits.device))[0]


@torch.no_grad()
def _forward(model: EmbeddingMIL, dataset, indices: list[int], device: torch.device, bf16: bool):
    """``(bag position, MILOutput, label)`` of each bag of ``indices``, one bag at a time, in eval mode."""
    model.eval()
    for i in indices:
        bag = dataset.load(i)
        with bf16_autocast(device, bf16):
            out = model(bag.features.to(device))
        yield i, out, bag.label  # outside autocast: the caller's loss and probabilities run as before


def score_slides(model: EmbeddingMIL, dataset: FeatureBagDataset, indices: list[int], device: torch.device,
                 bf16: bool = False) -> list[tuple[int, float, list[float], int]]:
    """``(slide position, loss, class probabilities (n_classes,), label)`` for each slide of ``indices``."""
    return score_bags(model, dataset, indices, device, ClassificationTask(), bf16)


def score_bags(model: EmbeddingMIL, dataset, indices: list[int], device: torch.device, task: Task,
               bf16: bool = False) -> list[tuple]:
    """What validation keeps of each bag of ``indices`` (:meth:`~abmil.tasks.base.Task.val_row`)."""
    return [task.val_row(i, out, y) for i, out, y in _forward(model, dataset, indices, device, bf16)]


def _check_resumable(info: dict, config: WSIConfig, classes: list[str], in_dim: int, train_slides: list[str],
                     world: World) -> None:
    """A checkpoint continues only the same run: same settings (except epochs), data shape, world."""
    stored = {**WSIConfig().to_dict(), **info.get("config", {})}  # settings added since: their defaults
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
    slides one at a time, each encoded in blocks), on a GPU a chunk; 0 (one slide per pass) for a model that takes
    one dense bag at a time (:attr:`~abmil.nn.zoo.ModelSpec.packed`: TransMIL)."""
    if not model_spec(config.pooling).packed:
        return 0
    return min(config.chunk_size, chunked.ENCODE_BLOCK) if device.type == "cpu" else config.chunk_size


class SlideBags:
    """The training slides of a dataset as the loop's bag source: read from disk at each visit."""

    def __init__(self, dataset: FeatureBagDataset, positions: list[int], head: Task | None = None):
        self.dataset, self.positions = dataset, positions
        self.head = head or ClassificationTask()
        self._sizes = dataset.bag_sizes()  # metadata, cached by validate()

    def __len__(self) -> int:
        return len(self.positions)

    def size(self, i: int) -> int:
        return self._sizes[self.positions[i]]

    def load(self, i: int, epoch: int) -> tuple[Tensor, int]:
        bag = self.dataset.load(self.positions[i])
        outcomes = getattr(self.dataset, "outcomes", None)
        return bag.features, self.head.loop_target(None if outcomes is None else outcomes[self.positions[i]],
                                                   bag.label)


def train_feature_model(dataset: FeatureBagDataset | CaseBagDataset, run_dir: str | os.PathLike, config: WSIConfig,
                        *, device: str = "cpu", resume: bool = False,
                        on_epoch: Callable[[dict], None] | None = None, callbacks: Sequence[Callback] = (),
                        split: tuple[Sequence[int], Sequence[int]] | None = None, select_best: bool = False) -> dict:
    """Train a slide model (:func:`~abmil.nn.zoo.slide_model`) on ``dataset``; checkpoints go to ``run_dir``.

    Args:
        dataset: the slides (train and validation; see ``config.val_split``); with ``config.bag_level == "case"``
            their cases (:func:`~abmil.slides.features.bags_at_level`).
        run_dir: the run's folder; it must not hold a checkpoint unless ``resume``.
        config: model and training settings.
        device: ``"cpu"``, ``"cuda"`` (under torchrun: ``cuda:<LOCAL_RANK>``) or ``"mps"``.
        resume: continue from ``run_dir``'s checkpoint (start afresh if it has none).
        on_epoch: called on rank 0 with each epoch's record (epoch, train_loss, val metrics).
        callbacks: further :class:`~abmil.train.loop.Callback` s of the loop (on every rank).
        split: ``(train, val)`` bag positions (of the bags at ``config.bag_level``), instead of
            :func:`~abmil.slides.manifest.train_val_split` (a cross-validation fold's).
        select_best: keep the best validation epoch's weights even without ``config.patience``
            (:meth:`WSIConfig.early_stopping`).

    Returns:
        The final checkpoint's info (``checkpoint.json``'s content); with early stopping its ``extra["best"]``
        names the kept weights, which :func:`~abmil.slides.predict.load_run` loads.

    Every slide file is checked from metadata before training; a slide's NaN values are found
    when it is first read, before the first checkpoint is written.
    """
    world, dev = init_distributed(device)
    try:
        bags = dataset if isinstance(dataset, CaseBagDataset) else bags_at_level(dataset, config.bag_level)
        return _train(bags, Path(run_dir), config, world, dev, resume, on_epoch, callbacks, split, select_best)
    finally:
        shutdown(world)


def _train(dataset: FeatureBagDataset | CaseBagDataset, run_dir: Path, config: WSIConfig, world: World,
           dev: torch.device, resume: bool, on_epoch: Callable[[dict], None] | None, callbacks: Sequence[Callback],
           split: tuple[Sequence[int], Sequence[int]] | None, select_best: bool) -> dict:
    task = config.task_class()
    read_for = getattr(dataset, "task_class", get_task(DEFAULT_TASK))
    if read_for is not task:
        raise ValueError(f"the dataset was read for the {read_for.name} task ({', '.join(read_for.columns)}), the "
                         f"run is for {task.name} ({', '.join(task.columns)})")
    classes = task.class_names(dataset)
    in_dim = dataset.validate()
    outcomes = getattr(dataset, "outcomes", [None] * len(dataset.slide_ids))
    if split is None:
        train_idx, val_idx = train_val_split(task.strata(dataset.labels, outcomes).tolist(), dataset.splits,
                                             config.val_split, config.seed, dataset.case_ids)
    else:
        train_idx, val_idx = [int(i) for i in split[0]], [int(i) for i in split[1]]
    task.check_training_part(dataset, train_idx, classes)
    head = task.fit(config.loss, [outcomes[i] for i in train_idx], config.n_bins, manifest=dataset.manifest,
                    classes=classes)
    if config.loss == "cox" and config.batch_instances is None and (config.batch_size or 1) * world.size < 2:
        raise ValueError("--loss cox compares the slides of each step: give --batch-size 2 or more (e.g. 16-64; "
                         "under torchrun the risk set is the global batch of all processes)")
    stopping = config.early_stopping(select_best)
    if stopping is not None and not val_idx:
        raise ValueError("early stopping (--patience) needs validation slides: give --val-split or val rows in the "
                         "manifest's split column")
    if stopping is not None and config.monitor == "val_auc":
        missing = [classes[c] for c in range(len(classes)) if all(dataset.labels[i] != c for i in val_idx)]
        if missing:
            raise ValueError(f"--monitor val_auc needs every class among the validation slides, which have none of "
                             f"class {', '.join(missing)}: use more slides, a larger --val-split or --monitor "
                             "val_loss")
    train_slides = [dataset.slide_ids[i] for i in train_idx]
    train_labels = [dataset.labels[i] for i in train_idx]
    sizes = dataset.bag_sizes() if config.batch_instances is not None else None
    train_sizes = None if sizes is None else [sizes[i] for i in train_idx]
    class_weights = balanced_class_weights(train_labels, len(classes)) if config.class_weights else None
    sample_weights = balanced_weights(train_labels) if config.sampler == "balanced" else None

    def accept(found: dict) -> bool:  # a run's folder is resumed only when asked, and only by the same run
        if not resume:
            raise ValueError(f"{run_dir} already holds a run (checkpoint.json): pass --resume to continue it, "
                             "or choose another --out")
        _check_resumable(found, config, classes, in_dim, train_slides, world)
        return True

    model = build_model(in_dim, len(classes), config, head)
    baseline = head.baseline_logits([outcomes[i] for i in train_idx])
    if baseline is not None:  # the survival head starts from the training part's pooled hazards
        with torch.no_grad():
            bias = model.classifier.bias
            start = torch.as_tensor(baseline, dtype=bias.dtype)
            bias.copy_(torch.where(torch.isnan(start), bias, start))  # NaN: an output keeps its initialisation
    model = model.to(dev)
    net = _data_parallel(model, dev) if world.distributed else model

    def validate(m: torch.nn.Module) -> dict:
        record = {"rank_weight_max_diff": max_divergence(m, world)} if world.distributed else {}
        if val_idx:  # each rank scores its share of the validation slides
            rows = gather_lists(score_bags(m, dataset, val_idx[world.rank::world.size], dev, head, config.bf16),
                                world)
            record.update(head.val_record(rows, outcomes, config.monitor if stopping is not None else None))
        return record

    class Report(Callback):
        warned = False

        def on_epoch_end(self, epoch: int, record: dict, history: FitHistory) -> None:
            if on_epoch is not None and world.is_main:
                on_epoch(record)
            if not val_idx and world.is_main and not self.warned:  # once an epoch ran: the inputs were good
                self.warned = True
                warnings.warn(NoValidationWarning(
                    "no validation slides (no --val-split, no val rows in the manifest's split column): nothing "
                    f"measures the model while it trains and the last of {config.epochs} epochs is kept whatever "
                    "it is; give --val-split 0.2 (or val rows) to watch it, --patience to stop early"), stacklevel=2)

    info = {"in_dim": in_dim, "classes": classes, "config": config.to_dict(),
            "world_size": world.size, "train_slides": train_slides,
            "val_slides": [dataset.slide_ids[i] for i in val_idx], "class_weights": class_weights,
            "head": head.to_dict()}
    if model_spec(config.pooling).trained == "fitted":  # the linear probe: scikit-learn, no loop
        found = read_checkpoint(run_dir)
        if found is None or not accept(found):
            _fit_closed_form(model, dataset, train_idx, config, run_dir, info, validate, world)
        return read_checkpoint(run_dir)
    train_loop(model, SlideBags(dataset, train_idx, head), config.train_config(),
               lambda epoch, step: epoch_steps(len(train_idx), config.seed, epoch, rank=world.rank,
                                               world_size=world.size, batch_size=config.batch_size,
                                               batch_instances=config.batch_instances, bag_sizes=train_sizes,
                                               sample_weights=sample_weights),
               seed=config.seed, validate=validate, stopping=stopping,
               checkpoint=Checkpointing(run_dir, "slide", None, info, accept),
               callbacks=[*callbacks, Report()], net=net, world=world, device=dev, bf16=config.bf16,
               pack_limit=pack_limit(config, dev), class_weights=class_weights,
               objective=head.objective())
    return read_checkpoint(run_dir)


def _fit_closed_form(model: torch.nn.Module, dataset, train_idx: list[int], config: WSIConfig, run_dir: Path,
                     info: dict, validate: Callable[[torch.nn.Module], dict], world: World) -> None:
    """Fit a closed-form model (:meth:`abmil.nn.probe.LinearProbe.fit_bags`) on the training bags and write its
    checkpoint as one finished epoch of the loop would (history, validation metrics), so that predict, studies and
    evaluate read it as any run."""
    import time

    from ..train.checkpoint import save_checkpoint
    from ..train.optim import make_optimizer

    started = time.perf_counter()
    source = SlideBags(dataset, train_idx)
    bags = [source.load(i, 0)[0] for i in range(len(train_idx))]
    cases = getattr(dataset, "case_ids", None) or dataset.slide_ids
    chosen = model.fit_bags(bags, [dataset.labels[i] for i in train_idx], [cases[i] for i in train_idx],
                            seed=config.seed)
    model.eval()
    record = {"epoch": 1, **validate(model)}
    history = FitHistory([record], epochs_run=1, seconds=time.perf_counter() - started)
    if world.is_main:
        save_checkpoint(run_dir, model, make_optimizer(model, config.train_config()),
                        {**info, "kind": "slide", "key": None, "epoch": 1, "step": 0, "waited": 0, "best": None,
                         "history": history.to_dict(), "fitted": chosen})
