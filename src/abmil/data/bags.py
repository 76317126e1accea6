"""Packed bags: the instances of many bags end to end, plus the bag each instance belongs to.

    instances  (n_instances, *instance_shape)   all bags' instances, bag after bag
    bag_index  (n_instances,) long, sorted       0..n_bags-1
    labels     (n_bags,)                         bag labels

This is the one batch format of abmil: pooling is a segment reduction over ``bag_index``
(``abmil.nn.segment``), so a batch of B bags costs one pass with no padding and no masks.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor


def pack(bags: Sequence[Tensor | np.ndarray]) -> tuple[Tensor, Tensor]:
    """Concatenate bags ``[(n_i, *shape), ...]`` into ``(instances, bag_index)``.

    ``instances`` is ``(sum n_i, *shape)``; ``bag_index`` is ``(sum n_i,)`` long with value i
    on the rows of bag i.
    """
    if len(bags) == 0:
        raise ValueError("pack: no bags given")
    tensors = [torch.as_tensor(b) for b in bags]
    sizes = torch.tensor([t.shape[0] for t in tensors])
    if bool((sizes == 0).any()):
        raise ValueError(f"pack: bag {int((sizes == 0).nonzero()[0])} is empty")
    bag_index = torch.repeat_interleave(torch.arange(len(tensors)), sizes)
    return torch.cat(tensors), bag_index


def bag_offsets(bag_index: Tensor, n_bags: int) -> Tensor:
    """``(n_bags + 1,)`` start offsets of each bag in a packed batch (CSR-style pointer)."""
    counts = torch.bincount(bag_index, minlength=n_bags)
    return torch.cat([counts.new_zeros(1), counts.cumsum(0)])


def unpack(values: Tensor, bag_index: Tensor, n_bags: int) -> list[Tensor]:
    """Split per-instance ``values`` (n_instances, ...) back into one tensor per bag."""
    counts = torch.bincount(bag_index, minlength=n_bags)
    return list(torch.split(values, counts.tolist()))


@dataclass
class BagBatch:
    """A packed batch of bags (see the module docstring for the shapes)."""

    instances: Tensor
    bag_index: Tensor
    labels: Tensor
    bag_ids: list = field(default_factory=list)
    instance_labels: Tensor | None = None

    @property
    def n_bags(self) -> int:
        return int(self.labels.shape[0])

    def to(self, device: torch.device | str) -> BagBatch:
        return BagBatch(self.instances.to(device), self.bag_index.to(device), self.labels.to(device),
                        self.bag_ids,
                        None if self.instance_labels is None else self.instance_labels.to(device))


def collate_bags(items: Sequence[tuple]) -> BagBatch:
    """DataLoader ``collate_fn``: items ``(bag, label[, bag_id[, instance_labels]])`` → BagBatch."""
    instances, bag_index = pack([it[0] for it in items])
    labels = torch.as_tensor(np.asarray([float(it[1]) for it in items]), dtype=torch.float32)
    bag_ids = [it[2] if len(it) > 2 else i for i, it in enumerate(items)]
    inst = None
    if items and len(items[0]) > 3 and items[0][3] is not None:
        inst = torch.cat([torch.as_tensor(it[3]) for it in items])
    return BagBatch(instances, bag_index, labels, bag_ids, inst)
