"""Which slides train, which validate, and which slides each optimizer step (and each rank) sees.

The schedule is a pure function of (seed, epoch) and the world size, so that a resumed run
replays exactly the steps an uninterrupted one takes, and K data-parallel ranks together take
the steps of one process with K times their batch:

- the epoch's order is :class:`~abmil.data.samplers.InstanceBudgetSampler`'s (``default_rng([seed, epoch])``);
- consecutive bags of that order form *global* batches of ``K * batch_size`` bags (or up to
  ``K * batch_instances`` instances);
- rank r takes bags ``r, r + K, ...`` of each global batch and weighs each bag's loss by
  ``K / len(global batch)``; DDP's gradient mean over the K ranks then equals the gradient of
  the mean loss over the global batch, which is what one process with the global batch computes.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import numpy as np

from ..data.samplers import InstanceBudgetSampler

VAL_SPLITS = ("val", "valid", "validation")
TRAIN_SPLIT = "train"


def train_val_split(labels: Sequence[int], splits: Sequence[str | None], val_split: float | None,
                    seed: int) -> tuple[list[int], list[int]]:
    """Slide positions ``(train, val)``.

    - With a ``split`` column in the manifest: ``train`` rows train; ``val``/``valid``/
      ``validation`` rows validate; other rows (``test``, empty) are left out. ``val_split``
      then takes its fraction out of the ``train`` rows, and is refused if there are val rows.
    - Without: every slide trains, less a ``val_split`` fraction.

    The fraction is taken per class (stratified, at least one slide of a class of two or more),
    chosen by ``seed``.
    """
    has_column = any(s is not None for s in splits)
    if has_column:
        pool = [i for i, s in enumerate(splits) if s == TRAIN_SPLIT]
        val = [i for i, s in enumerate(splits) if s in VAL_SPLITS]
        if val_split is not None and val:
            raise ValueError("the manifest's split column already names validation slides; "
                             "drop --val-split or the val rows")
        if not pool:
            raise ValueError(f"no training slides: the manifest's split column has no {TRAIN_SPLIT!r} rows")
    else:
        pool, val = list(range(len(labels))), []
    if not val_split:
        return pool, val
    if not 0.0 < val_split < 1.0:
        raise ValueError(f"val_split must be a fraction in (0, 1), got {val_split}")
    rng = np.random.default_rng([seed, 0x5A11])  # its own stream: not the epoch orders'
    chosen: list[int] = []
    for c in sorted({labels[i] for i in pool}):
        members = [i for i in pool if labels[i] == c]
        k = int(round(val_split * len(members)))
        if len(members) >= 2:
            k = min(max(k, 1), len(members) - 1)
        else:
            k = 0
        chosen += [members[j] for j in rng.permutation(len(members))[:k]]
    val = sorted(chosen)
    taken = set(val)
    train = [i for i in pool if i not in taken]
    if not train:
        raise ValueError(f"val_split {val_split} leaves no training slides")
    return train, val


class Step(NamedTuple):
    """One optimizer step, as seen by one rank."""

    bags: list[int]
    """Positions (into the training slides) this rank computes; may be empty."""
    visits: list[int]
    """A unique number per (epoch, bag) visit, keying the bags' dropout masks."""
    weight: float
    """Factor on each bag's loss: world_size / len(global batch)."""


def epoch_steps(n_train: int, seed: int, epoch: int, *, rank: int = 0, world_size: int = 1,
                batch_size: int | None = None, batch_instances: int | None = None,
                bag_sizes: Sequence[int] | None = None) -> list[Step]:
    """This rank's steps in ``epoch`` (see the module docstring).

    ``batch_size``: bags per step and rank (default 1 without ``batch_instances``);
    ``batch_instances``: instances per step and rank, needs ``bag_sizes`` (n_train,)."""
    if batch_instances is not None and bag_sizes is None:
        raise ValueError("batch_instances needs bag_sizes")
    if batch_size is None and batch_instances is None:
        batch_size = 1
    sampler = InstanceBudgetSampler(
        bag_sizes if bag_sizes is not None else [1] * n_train,
        None if batch_instances is None else batch_instances * world_size,
        max_bags=None if batch_size is None else batch_size * world_size, seed=seed)
    steps, offset = [], epoch * n_train
    for batch in sampler.batches(epoch):
        positions = range(rank, len(batch), world_size)
        steps.append(Step([batch[j] for j in positions], [offset + j for j in positions],
                          world_size / len(batch)))
        offset += len(batch)
    return steps
