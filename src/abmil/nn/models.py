"""MIL models over packed bags: instance encoder f → MIL pooling σ → bag classifier g.

Every model maps ``(x, bag_index, n_bags)`` — x ``(n_instances, *instance_shape)`` — to a
:class:`MILOutput` whose ``prob`` is the bag probability ``(n_bags,)``. Probabilities, not logits,
because the instance-level models pool probabilities (mi-Net) and because the paper's loss is
the Bernoulli log-likelihood of a clamped probability (``abmil.train.loss``).
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch
from torch import Tensor, nn

from .dropout import KeyedDropout
from .pooling import AttentionPool, MaxPool, MeanPool
from .segment import num_bags


class MILOutput(NamedTuple):
    prob: Tensor
    """(n_bags,) probability that each bag is positive."""
    weights: Tensor | None = None
    """(n_instances,) attention weights (sum to 1 per bag), for attention pooling."""
    instance_prob: Tensor | None = None
    """(n_instances,) instance probabilities, for instance-level models."""
    aux_probs: tuple[Tensor, ...] = ()
    """deep-supervision heads, each (n_bags,); trained with the same loss as ``prob``."""

    def instance_scores(self) -> Tensor | None:
        """The per-instance evidence: attention weights, else instance probabilities."""
        return self.weights if self.weights is not None else self.instance_prob


def make_pool(kind: str, dim: int, att_dim: int = 128) -> nn.Module:
    """``"mean"``, ``"max"``, ``"attention"`` or ``"gated"``."""
    if kind == "mean":
        return MeanPool()
    if kind == "max":
        return MaxPool()
    if kind in ("attention", "gated"):
        return AttentionPool(dim, att_dim, gated=kind == "gated")
    raise ValueError(f"unknown pooling {kind!r}: expected mean, max, attention or gated")


class EmbeddingMIL(nn.Module):
    """Embedding-level MIL: ``prob = sigm(g(σ(f(x))))`` — attention MIL, MI-Net, Embedding+mean/max.

    Args:
        encoder: instance encoder with attribute ``out_dim``.
        pool: a pooling module (``abmil.nn.pooling``).
        dropout: dropout on the pooled bag embedding before the classifier.
    """

    def __init__(self, encoder: nn.Module, pool: nn.Module, dropout: float = 0.0):
        super().__init__()
        self.encoder, self.pool = encoder, pool
        self.dropout = KeyedDropout(dropout, salt=101) if dropout > 0 else nn.Identity()
        self.classifier = nn.Linear(encoder.out_dim, 1)

    def forward(self, x: Tensor, bag_index: Tensor, n_bags: int | None = None) -> MILOutput:
        n = num_bags(bag_index, n_bags)
        z, weights = self.pool(self.encoder(x), bag_index, n)
        return MILOutput(torch.sigmoid(self.classifier(self.dropout(z)).squeeze(-1)), weights)


class InstanceMIL(nn.Module):
    """Instance-level MIL (mi-Net, Instance+mean/max): score each instance, pool the scores.

    ``prob = pool_k sigm(g(f(x_k)))`` with ``pool`` mean or max.
    """

    def __init__(self, encoder: nn.Module, pool: str = "max"):
        super().__init__()
        if pool not in ("mean", "max"):
            raise ValueError(f"instance-level pooling must be mean or max, got {pool!r}")
        self.encoder = encoder
        self.pool = make_pool(pool, 1)
        self.classifier = nn.Linear(encoder.out_dim, 1)

    def forward(self, x: Tensor, bag_index: Tensor, n_bags: int | None = None) -> MILOutput:
        n = num_bags(bag_index, n_bags)
        inst = torch.sigmoid(self.classifier(self.encoder(x)))
        prob, _ = self.pool(inst, bag_index, n)
        return MILOutput(prob.squeeze(-1), instance_prob=inst.squeeze(-1))


class DeepSupervisedMINet(nn.Module):
    """MI-Net with deep supervision (Wang et al. 2018): a pooled head after every layer.

    Each layer's output is dropped out, pooled and classified; every head is trained on the bag
    label, and the prediction is the mean of the heads' probabilities.
    """

    def __init__(self, in_dim: int, hidden: Sequence[int] = (256, 128, 64), pool: str = "max",
                 dropout: float = 0.5):
        super().__init__()
        dims = (in_dim, *hidden)
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(dims[:-1], dims[1:]))
        self.drops = nn.ModuleList(KeyedDropout(dropout, salt=i) if dropout > 0 else nn.Identity()
                                   for i in range(len(hidden)))
        self.pool = make_pool(pool, 0)
        self.heads = nn.ModuleList(nn.Linear(d, 1) for d in hidden)

    def forward(self, x: Tensor, bag_index: Tensor, n_bags: int | None = None) -> MILOutput:
        n = num_bags(bag_index, n_bags)
        probs, h = [], x
        for layer, drop, head in zip(self.layers, self.drops, self.heads):
            h = torch.relu(layer(h))
            z, _ = self.pool(drop(h), bag_index, n)
            probs.append(torch.sigmoid(head(z).squeeze(-1)))
        return MILOutput(torch.stack(probs).mean(0), aux_probs=tuple(probs))


class ResidualMINet(nn.Module):
    """MI-Net with residual connections (Wang et al. 2018).

    Instance layers of equal width; each layer's dropped-out output is pooled and the pooled
    vectors are summed (``z = σ(h1) + σ(h2) + σ(h3)``) before the classifier.
    """

    def __init__(self, in_dim: int, width: int = 128, depth: int = 3, pool: str = "max",
                 dropout: float = 0.5):
        super().__init__()
        dims = (in_dim,) + (width,) * depth
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(dims[:-1], dims[1:]))
        self.drops = nn.ModuleList(KeyedDropout(dropout, salt=i) if dropout > 0 else nn.Identity()
                                   for i in range(depth))
        self.pool = make_pool(pool, 0)
        self.classifier = nn.Linear(width, 1)

    def forward(self, x: Tensor, bag_index: Tensor, n_bags: int | None = None) -> MILOutput:
        n = num_bags(bag_index, n_bags)
        z, h = 0, x
        for layer, drop in zip(self.layers, self.drops):
            h = torch.relu(layer(h))
            z = z + self.pool(drop(h), bag_index, n)[0]
        return MILOutput(torch.sigmoid(self.classifier(z).squeeze(-1)))
