"""Packed bags: the instances of many bags end to end, plus the bag each instance belongs to.

    instances  (n_instances, *instance_shape)   all bags' instances, bag after bag
    bag_index  (n_instances,) long, sorted       0..n_bags-1

This is the one batch format of abmil: pooling is a segment reduction over ``bag_index``
(``abmil.nn.segment``), so a batch of B bags costs one pass with no padding and no masks.
"""
from __future__ import annotations

from collections.abc import Sequence

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
