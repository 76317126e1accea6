"""Schedules: which bags each optimizer step (and each rank) sees, as :class:`~abmil.train.loop.Step` s.

A schedule is a pure function of (seed, epoch) and the world size, so that a resumed run replays exactly the steps
an uninterrupted one takes. Two schedules share the epoch order (``default_rng([seed, epoch]).permutation``):

:func:`paper_steps`, the paper's loop: ``batch_size`` consecutive bags of the order per step (1 in the paper), packed
into one pass whose dropout masks are keyed by the step number.

:func:`epoch_steps`, for whole slides: K data-parallel ranks together take the steps of one process with K times
their batch, and each bag's dropout mask is keyed by its own visit (so packing bags changes nothing):

- the epoch's order is :class:`~abmil.data.samplers.InstanceBudgetSampler`'s (``default_rng([seed, epoch])``);
- consecutive bags of that order form *global* batches of ``K * batch_size`` bags (or up to
  ``K * batch_instances`` instances);
- rank r takes bags ``r, r + K, ...`` of each global batch and weighs each bag's loss by
  ``K / len(global batch)``; DDP's gradient mean over the K ranks then equals the gradient of
  the mean loss over the global batch, which is what one process with the global batch computes.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ..data.samplers import InstanceBudgetSampler
from .loop import Step


def epoch_order(seed: int, epoch: int, n: int) -> np.ndarray:
    """The order in which a run with ``seed`` visits its ``n`` training bags in ``epoch``."""
    return np.random.default_rng([seed, epoch]).permutation(n)


def paper_steps(n_train: int, seed: int, epoch: int, first_step: int, batch_size: int = 1) -> list[Step]:
    """The paper's loop: ``batch_size`` bags per step in :func:`epoch_order`, each step's bags packed into one pass
    with one dropout key, the step number, and the step's mean loss."""
    order = epoch_order(seed, epoch, n_train).tolist()
    return [Step(order[start:start + batch_size], first_step + t, 1.0 / len(order[start:start + batch_size]))
            for t, start in enumerate(range(0, n_train, batch_size))]


def epoch_steps(n_train: int, seed: int, epoch: int, *, rank: int = 0, world_size: int = 1,
                batch_size: int | None = None, batch_instances: int | None = None,
                bag_sizes: Sequence[int] | None = None, sample_weights: Sequence[float] | None = None) -> list[Step]:
    """This rank's steps in ``epoch`` (see the module docstring).

    ``batch_size``: bags per step and rank (default 1 without ``batch_instances``);
    ``batch_instances``: instances per step and rank, needs ``bag_sizes`` (n_train,);
    ``sample_weights``: the epoch's order is drawn with replacement with these weights (n_train,) instead of
    shuffled (:class:`~abmil.data.samplers.InstanceBudgetSampler`), still a function of (seed, epoch)."""
    if batch_instances is not None and bag_sizes is None:
        raise ValueError("batch_instances needs bag_sizes")
    if batch_size is None and batch_instances is None:
        batch_size = 1
    sampler = InstanceBudgetSampler(
        bag_sizes if bag_sizes is not None else [1] * n_train,
        None if batch_instances is None else batch_instances * world_size,
        max_bags=None if batch_size is None else batch_size * world_size, seed=seed, weights=sample_weights)
    steps, offset = [], epoch * n_train
    for batch in sampler.batches(epoch):
        positions = range(rank, len(batch), world_size)
        steps.append(Step([batch[j] for j in positions], [offset + j for j in positions],
                          world_size / len(batch)))
        offset += len(batch)
    return steps
