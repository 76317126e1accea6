"""Permutation-invariant MIL pooling over packed bags.

Every pooling module has the same contract::

    z, weights = pool(h, bag_index, n_bags=None)

with ``h`` (n_instances, dim), ``bag_index`` (n_instances,) long, ``z`` (n_bags, dim) and
``weights`` (n_instances,) — the attention weights, summing to 1 within each bag — or ``None``
for pooling without weights. Pooling a batch of bags equals pooling each bag alone.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from .segment import num_bags, segment_max, segment_mean, segment_softmax, segment_sum


class MeanPool(nn.Module):
    """z = mean of the instances of each bag."""

    def forward(self, h: Tensor, bag_index: Tensor, n_bags: int | None = None) -> tuple[Tensor, None]:
        return segment_mean(h, bag_index, num_bags(bag_index, n_bags)), None


class MaxPool(nn.Module):
    """z = element-wise maximum over the instances of each bag."""

    def forward(self, h: Tensor, bag_index: Tensor, n_bags: int | None = None) -> tuple[Tensor, None]:
        return segment_max(h, bag_index, num_bags(bag_index, n_bags)), None


class AttentionPool(nn.Module):
    """Attention pooling of Ilse et al. (2018), eq. 8 (``gated=False``) and eq. 9 (``gated=True``).

    ``a_k = softmax_k(wᵀ tanh(V h_k))`` or ``softmax_k(wᵀ (tanh(V h_k) ⊙ sigm(U h_k)))``, and
    ``z = Σ_k a_k h_k`` within each bag. As in the reference code, V, U and w carry biases
    (the bias of w cancels in the softmax).

    Args:
        in_dim: dimension M of the instance embeddings h_k.
        att_dim: dimension L of the attention hidden layer.
        gated: add the sigmoid gate U.
    """

    #: Pools by a softmax of per-instance :meth:`scores`: a giant bag can be pooled in chunks (:mod:`.chunked`).
    chunkable = True

    def __init__(self, in_dim: int, att_dim: int = 128, gated: bool = False):
        super().__init__()
        self.in_dim, self.att_dim, self.gated = in_dim, att_dim, gated
        self.V = nn.Linear(in_dim, att_dim)
        self.U = nn.Linear(in_dim, att_dim) if gated else None
        self.w = nn.Linear(att_dim, 1)

    def scores(self, h: Tensor) -> Tensor:
        """Unnormalised attention logits, (n_instances,)."""
        a = torch.tanh(self.V(h))
        if self.U is not None:
            a = a * torch.sigmoid(self.U(h))
        return self.w(a).squeeze(-1)

    def forward(self, h: Tensor, bag_index: Tensor, n_bags: int | None = None) -> tuple[Tensor, Tensor]:
        n = num_bags(bag_index, n_bags)
        weights = segment_softmax(self.scores(h), bag_index, n)
        return segment_sum(weights.unsqueeze(-1) * h, bag_index, n), weights

    def extra_repr(self) -> str:
        return f"in_dim={self.in_dim}, att_dim={self.att_dim}, gated={self.gated}"


#: The pooling choices, by the one name used everywhere (models, estimator, configs, CLI).
POOLINGS = ("attention", "gated", "mean", "max")


def make_pool(pooling: str, dim: int, att_dim: int = 128) -> nn.Module:
    """The pooling named ``pooling`` (one of :data:`POOLINGS`) over ``dim``-wide embeddings."""
    if pooling == "mean":
        return MeanPool()
    if pooling == "max":
        return MaxPool()
    if pooling in ("attention", "gated"):
        return AttentionPool(dim, att_dim, gated=pooling == "gated")
    raise ValueError(f"unknown pooling {pooling!r}: expected one of {', '.join(POOLINGS)}")
