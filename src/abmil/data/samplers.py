"""Batch samplers for bags of very different sizes.

Whole-slide bags range from a few hundred to a few hundred thousand instances, so a fixed
number of bags per batch gives batches whose memory differs a thousandfold. An
:class:`InstanceBudgetSampler` batches by instance count instead; pass it to a DataLoader as
``batch_sampler`` with a ``collate_fn`` that packs the bags (:func:`abmil.data.bags.pack`).
"""
from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
from torch.utils.data import Sampler


class InstanceBudgetSampler(Sampler[list[int]]):
    """Yields lists of bag indices whose total instance count fits ``max_instances``.

    Each epoch visits every bag once, in an order shuffled by ``(seed, epoch)``; consecutive
    bags of that order are grouped while they fit the budget (no reordering by size, so which
    bags share a batch stays random). A bag larger than the budget forms a batch alone.

    Args:
        bag_sizes: instances in each bag, (n_bags,).
        max_instances: the instance budget per batch; ``None``: no budget.
        max_bags: at most this many bags per batch; ``max_bags=1`` is the paper's batch size 1.
        shuffle: shuffle per epoch; ``False`` keeps index order.
        seed: the shuffle seed. The order of epoch e depends only on (seed, e).
        weights: draw each epoch's order instead: n bags with replacement, bag i with probability proportional to
            ``weights[i]`` (e.g. :func:`balanced_weights`), from ``default_rng([seed, epoch, 0xBA1])``.

    The epoch advances by one after each full iteration; :meth:`set_epoch` sets it (to resume,
    or to keep distributed ranks in step).
    """

    def __init__(self, bag_sizes: Sequence[int], max_instances: int | None = None, *,
                 max_bags: int | None = None, shuffle: bool = True, seed: int = 0,
                 weights: Sequence[float] | None = None):
        if max_instances is None and max_bags is None:
            raise ValueError("give max_instances, max_bags (max_bags=1 for one bag per batch) or both")
        if max_instances is not None and max_instances < 1:
            raise ValueError(f"max_instances must be >= 1, got {max_instances}")
        if max_bags is not None and max_bags < 1:
            raise ValueError(f"max_bags must be >= 1, got {max_bags}")
        self.bag_sizes = [int(n) for n in bag_sizes]
        self.max_instances, self.max_bags = max_instances, max_bags
        self.shuffle, self.seed = shuffle, seed
        self.weights = None
        if weights is not None:
            w = np.asarray(weights, dtype=np.float64)
            if w.shape != (len(self.bag_sizes),) or not np.all(np.isfinite(w)) or np.any(w < 0) or w.sum() <= 0:
                raise ValueError(f"weights must be {len(self.bag_sizes)} finite numbers >= 0, not all 0")
            self.weights = w / w.sum()
        self.epoch = 0

    @classmethod
    def one_bag_per_batch(cls, n_bags: int, *, shuffle: bool = True, seed: int = 0) -> InstanceBudgetSampler:
        """Batch size 1, as in the paper: each batch is one bag."""
        return cls([1] * n_bags, max_bags=1, shuffle=shuffle, seed=seed)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def order(self, epoch: int) -> list[int]:
        """The bag order of an epoch."""
        n = len(self.bag_sizes)
        if self.weights is not None:
            return np.random.default_rng([self.seed, epoch, 0xBA1]).choice(n, size=n, p=self.weights).tolist()
        if not self.shuffle:
            return list(range(n))
        # SeedSequence([seed, epoch]): distinct (seed, epoch) pairs never share a stream
        return np.random.default_rng([self.seed, epoch]).permutation(n).tolist()

    def batches(self, epoch: int) -> list[list[int]]:
        """The batches of an epoch, without advancing the epoch."""
        budget = self.max_instances if self.max_instances is not None else float("inf")
        cap = self.max_bags if self.max_bags is not None else float("inf")
        out: list[list[int]] = []
        batch: list[int] = []
        total = 0
        for i in self.order(epoch):
            n = self.bag_sizes[i]
            if batch and (total + n > budget or len(batch) >= cap):
                out.append(batch)
                batch, total = [], 0
            batch.append(i)
            total += n
        if batch:
            out.append(batch)
        return out

    def __iter__(self) -> Iterator[list[int]]:
        batches = self.batches(self.epoch)
        self.epoch += 1
        return iter(batches)

    def __len__(self) -> int:
        """Batches of the next iteration (with a budget, the count depends on that epoch's order)."""
        return len(self.batches(self.epoch))


def balanced_weights(labels: Sequence[int]) -> list[float]:
    """Sampling weights that draw every class equally often: ``1 / (bags of the bag's class)`` for each bag."""
    labels = np.asarray(labels)
    values, counts = np.unique(labels, return_counts=True)
    per_class = dict(zip(values.tolist(), counts.tolist()))
    return [1.0 / per_class[v] for v in labels.tolist()]
