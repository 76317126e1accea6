"""Segment reductions over packed bags.

A packed batch stores the instances of B bags end to end, ``(n_instances, ...)``, with a
``bag_index`` of shape ``(n_instances,)`` that maps each instance to its bag in ``0..B-1``.
Every function here reduces over the instances of each bag at once: one kernel call for the
whole batch, no padding, no Python loop over bags.
"""
from __future__ import annotations

import torch
from torch import Tensor


def num_bags(bag_index: Tensor, n_bags: int | None = None) -> int:
    """The number of bags: ``n_bags`` if given, else ``bag_index.max() + 1``."""
    if n_bags is not None:
        return int(n_bags)
    return int(bag_index.max().item()) + 1 if bag_index.numel() else 0


def _expand(bag_index: Tensor, like: Tensor) -> Tensor:
    return bag_index.view(-1, *([1] * (like.dim() - 1))).expand_as(like)


def segment_sum(x: Tensor, bag_index: Tensor, n_bags: int) -> Tensor:
    """Sum within each bag. ``x`` (n_instances, *rest) → (n_bags, *rest).

    Half-precision inputs (bf16/fp16, e.g. under autocast) are accumulated in float32: summed one by one in bf16, a
    bag's 1000 attention-weighted terms lose most of their mass to rounding.
    """
    acc = torch.float32 if x.dtype in (torch.float16, torch.bfloat16) else x.dtype
    out = x.new_zeros((n_bags, *x.shape[1:]), dtype=acc)
    return out.index_add(0, bag_index, x.to(acc)).to(x.dtype)


def segment_count(bag_index: Tensor, n_bags: int) -> Tensor:
    """Instances per bag, (n_bags,) long."""
    return torch.bincount(bag_index, minlength=n_bags)


def segment_mean(x: Tensor, bag_index: Tensor, n_bags: int) -> Tensor:
    """Mean within each bag. ``x`` (n_instances, *rest) → (n_bags, *rest)."""
    counts = segment_count(bag_index, n_bags).clamp_min(1).to(x.dtype)
    return segment_sum(x, bag_index, n_bags) / counts.view(-1, *([1] * (x.dim() - 1)))


def segment_max(x: Tensor, bag_index: Tensor, n_bags: int) -> Tensor:
    """Maximum within each bag. ``x`` (n_instances, *rest) → (n_bags, *rest)."""
    out = x.new_zeros((n_bags, *x.shape[1:]))
    return out.scatter_reduce(0, _expand(bag_index, x), x, reduce="amax", include_self=False)


#: Bags of up to this many instances take softmax's sum in float32, one term after another (index_add): its rounding
#: drifts with the bag's size, measured (benchmarks/segment_softmax_accuracy.py, worst of 3 draws of |Σw - 1| and the
#: largest relative error of a weight) at up to 6.8e-6 at 4096 instances for peaked logits (N(0, 5²)), 2.1e-5 at
#: 16384, 5.4e-4 at 2^20. Larger bags are normalised in float64 (6e-8 at 2^20, against 1.1e-4 for torch.softmax in
#: float32); bags up to this size keep their float32 bits, as every reproduction's bags do (the largest: Musk2's, 1044
#: instances; a 896x768 breast image cuts into 672 patches).
FLOAT32_SOFTMAX_MAX = 4096


def _softmax(logits: Tensor, bag_index: Tensor, n_bags: int) -> Tensor:
    bag_max = segment_max(logits.detach(), bag_index, n_bags)
    e = torch.exp(logits - bag_max[bag_index])
    return e / segment_sum(e, bag_index, n_bags)[bag_index]


def segment_softmax(logits: Tensor, bag_index: Tensor, n_bags: int) -> Tensor:
    """Softmax over the instances of each bag. ``logits`` (n_instances,) → (n_instances,).

    Each bag's maximum is subtracted before ``exp`` (it cancels in the ratio), so logits of
    ±1e4 neither overflow nor underflow to 0/0. A bag of more than :data:`FLOAT32_SOFTMAX_MAX` instances is
    normalised in float64 (forward and backward), so its weights sum to 1 within 1e-7 at a million instances; the
    other bags of the batch are unchanged to the bit.
    """
    if logits.dtype in (torch.float16, torch.bfloat16):  # forward and backward sums in float32 (see segment_sum)
        return segment_softmax(logits.float(), bag_index, n_bags).to(logits.dtype)
    weights = _softmax(logits, bag_index, n_bags)
    if logits.dtype != torch.float32 or logits.shape[0] <= FLOAT32_SOFTMAX_MAX:  # no bag can be large
        return weights
    large = segment_count(bag_index, n_bags) > FLOAT32_SOFTMAX_MAX
    if not bool(large.any()):
        return weights
    exact = _softmax(logits.double(), bag_index, n_bags).to(logits.dtype)
    return torch.where(large[bag_index], exact, weights)
