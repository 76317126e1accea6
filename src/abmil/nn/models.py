"""MIL models over packed bags: instance encoder f → MIL pooling σ → bag classifier g.

Every model maps ``(x, bag_index, n_bags)`` — x ``(n_instances, *instance_shape)`` — to a
:class:`MILOutput` whose ``logits`` are ``(n_bags, n_out)``: one logit for two classes (the bag
probability is its sigmoid), one per class otherwise. The models that pool *probabilities* — the
instance-level mi-Net and MI-Net with deep supervision (Wang et al. 2018) — have no exact bag logit;
they carry their pooled probability (``pooled_prob``) and the loss uses it as it is.
"""
from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import NamedTuple

import torch
from torch import Tensor, nn

from .dropout import KeyedDropout
from .pooling import POOLINGS, make_pool
from .segment import num_bags


class MILOutput(NamedTuple):
    logits: Tensor
    """(n_bags, n_out) bag logits: one for two classes, else one per class."""
    weights: Tensor | None = None
    """(n_instances,) attention weights (sum to 1 per bag), for attention pooling."""
    attention_logits: Tensor | None = None
    """(n_instances,) unnormalised attention (one bag: ``weights = softmax(attention_logits)``)."""
    instance_prob: Tensor | None = None
    """(n_instances,) instance probabilities, for instance-level models."""
    aux_logits: tuple[Tensor, ...] = ()
    """deep-supervision heads, each (n_bags, 1); trained with the same loss as the bag."""
    pooled_prob: Tensor | None = None
    """(n_bags,) the bag probability of models that pool probabilities (``logits`` is its logit)."""
    aux_loss: Tensor | None = None
    """(n_bags, n_classes) an auxiliary loss term of each bag for each label it could have (CLAM's instance
    clustering, in training); the loss of a bag is ``bag_weight`` times its bag loss plus its label's term."""
    bag_weight: float = 1.0
    """the weight of the bag loss beside ``aux_loss``."""

    @property
    def prob(self) -> Tensor:
        """(n_bags,) probability that each bag is positive (two classes)."""
        if self.pooled_prob is not None:
            return self.pooled_prob
        if self.logits.shape[-1] != 1:
            raise ValueError(f"prob is for two classes; these logits have {self.logits.shape[-1]} classes "
                             "(use probabilities())")
        return torch.sigmoid(self.logits[:, 0])

    def probabilities(self) -> Tensor:
        """(n_bags, n_classes) class probabilities: ``[1 - p, p]`` for one logit, else the softmax."""
        if self.pooled_prob is not None:
            p = self.pooled_prob.float().unsqueeze(-1)
        elif self.logits.shape[-1] == 1:
            p = torch.sigmoid(self.logits.float())
        else:
            return torch.softmax(self.logits.float(), dim=-1)
        return torch.cat([1.0 - p, p], dim=-1)

    def instance_scores(self) -> Tensor | None:
        """The per-instance evidence: attention weights, else instance probabilities."""
        return self.weights if self.weights is not None else self.instance_prob


def _probability_logits(prob: Tensor) -> Tensor:
    """(n_bags,) pooled probabilities → (n_bags, 1) logits (for ranking and ``decision_function``)."""
    return torch.logit(prob.detach()).unsqueeze(-1)


class EmbeddingMIL(nn.Module):
    """Embedding-level MIL: ``logits = g(σ(f(x)))`` — attention MIL, MI-Net, Embedding+mean/max, slide models.

    Args:
        encoder: instance encoder with attribute ``out_dim``.
        pool: a pooling module (``abmil.nn.pooling``).
        dropout: dropout on the pooled bag embedding before the classifier.
        n_out: logits per bag: 1 for two classes, else the number of classes.
        chunk_size: giant-bag mode (attention pooling only): a single bag passed without ``bag_index`` is pooled
            in bounded memory (:func:`abmil.nn.chunked.attention_pool_bag`: chunks of this size, recomputed in
            the backward pass) and can be streamed from disk (:meth:`pool_chunks`). ``None``: every bag goes
            through the segment pooling, as the paper's models do.
    """

    def __init__(self, encoder: nn.Module, pool: nn.Module, dropout: float = 0.0, *, n_out: int = 1,
                 chunk_size: int | None = None):
        super().__init__()
        if n_out < 1:
            raise ValueError(f"n_out must be >= 1, got {n_out}")
        if chunk_size is not None:
            if not getattr(pool, "chunkable", False):
                raise TypeError(f"chunked pooling needs a chunkable pooling (AttentionPool), got {type(pool).__name__}")
            if chunk_size < 1:
                raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
        self.encoder, self.pool = encoder, pool
        self.dropout = KeyedDropout(dropout, salt=101) if dropout > 0 else nn.Identity()
        self.classifier = nn.Linear(encoder.out_dim, n_out)
        self.chunk_size = chunk_size

    @property
    def n_out(self) -> int:
        return self.classifier.out_features

    def forward(self, x: Tensor, bag_index: Tensor | None = None, n_bags: int | None = None) -> MILOutput:
        """Packed bags ``x`` (n_instances, ...) with ``bag_index`` → logits (n_bags, n_out).

        Without ``bag_index`` ``x`` is one bag; in giant-bag mode (``chunk_size``) it is then pooled in blocks or
        chunks as its size asks."""
        if bag_index is None and self.chunk_size is not None:
            from .chunked import attention_pool_bag

            z, logits = attention_pool_bag(self.encoder, self.pool, x, self.chunk_size)
            return MILOutput(self.classifier(self.dropout(z)), torch.softmax(logits.detach(), 0), logits)
        if bag_index is None:
            bag_index = torch.zeros(x.shape[0], dtype=torch.long, device=x.device)
        n = num_bags(bag_index, n_bags)
        z, weights = self.pool(self.encoder(x), bag_index, n)
        return MILOutput(self.classifier(self.dropout(z)), weights)

    @torch.no_grad()
    def pool_chunks(self, chunks: Iterable[Tensor | Sequence], device: torch.device | str | None = None
                    ) -> MILOutput:
        """Inference on one bag streamed as chunks ``(n_chunk, in_dim)`` (or ``(features, coords)`` pairs, as
        :meth:`abmil.slides.features.FeatureBagDataset.iter_chunks` yields): memory O(chunk), plus O(n_instances)
        attention logits. Logits (1, n_out); ``attention_logits`` (n_instances,), no ``weights``."""
        from .chunked import chunked_attention_pool

        if not getattr(self.pool, "chunkable", False):
            raise TypeError(f"streamed pooling needs a chunkable pooling (AttentionPool), got "
                            f"{type(self.pool).__name__}")
        z, logits = chunked_attention_pool(self.encoder, self.pool, chunks, return_logits=True, device=device)
        return MILOutput(self.classifier(self.dropout(z.to(self.classifier.weight.dtype))), attention_logits=logits)


class InstanceMIL(nn.Module):
    """Instance-level MIL (mi-Net, Instance+mean/max): score each instance, pool the scores.

    ``prob = pool_k sigm(g(f(x_k)))`` with ``pooling`` mean or max.
    """

    def __init__(self, encoder: nn.Module, pooling: str = "max"):
        super().__init__()
        if pooling not in ("mean", "max"):
            raise ValueError(f"instance-level pooling must be mean or max, got {pooling!r}")
        self.encoder = encoder
        self.pool = make_pool(pooling, 1)
        self.classifier = nn.Linear(encoder.out_dim, 1)

    def forward(self, x: Tensor, bag_index: Tensor | None = None, n_bags: int | None = None) -> MILOutput:
        if bag_index is None:
            bag_index = torch.zeros(x.shape[0], dtype=torch.long, device=x.device)
        n = num_bags(bag_index, n_bags)
        inst = torch.sigmoid(self.classifier(self.encoder(x)))
        prob, _ = self.pool(inst, bag_index, n)
        prob = prob.squeeze(-1)
        return MILOutput(_probability_logits(prob), instance_prob=inst.squeeze(-1), pooled_prob=prob)


class DeepSupervisedMINet(nn.Module):
    """MI-Net with deep supervision (Wang et al. 2018): a pooled head after every layer.

    Each layer's output is dropped out, pooled and classified; every head is trained on the bag
    label, and the prediction is the mean of the heads' probabilities.
    """

    def __init__(self, in_dim: int, hidden: Sequence[int] = (256, 128, 64), pooling: str = "max",
                 dropout: float = 0.5):
        super().__init__()
        dims = (in_dim, *hidden)
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(dims[:-1], dims[1:]))
        self.drops = nn.ModuleList(KeyedDropout(dropout, salt=i) if dropout > 0 else nn.Identity()
                                   for i in range(len(hidden)))
        self.pool = make_pool(pooling, 0)
        self.heads = nn.ModuleList(nn.Linear(d, 1) for d in hidden)

    def forward(self, x: Tensor, bag_index: Tensor | None = None, n_bags: int | None = None) -> MILOutput:
        if bag_index is None:
            bag_index = torch.zeros(x.shape[0], dtype=torch.long, device=x.device)
        n = num_bags(bag_index, n_bags)
        heads, h = [], x
        for layer, drop, head in zip(self.layers, self.drops, self.heads):
            h = torch.relu(layer(h))
            z, _ = self.pool(drop(h), bag_index, n)
            heads.append(head(z))
        prob = torch.stack([torch.sigmoid(l[:, 0]) for l in heads]).mean(0)
        return MILOutput(_probability_logits(prob), aux_logits=tuple(heads), pooled_prob=prob)


class ResidualMINet(nn.Module):
    """MI-Net with residual connections (Wang et al. 2018).

    Instance layers of equal width; each layer's dropped-out output is pooled and the pooled
    vectors are summed (``z = σ(h1) + σ(h2) + σ(h3)``) before the classifier.
    """

    def __init__(self, in_dim: int, width: int = 128, depth: int = 3, pooling: str = "max",
                 dropout: float = 0.5):
        super().__init__()
        dims = (in_dim,) + (width,) * depth
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(dims[:-1], dims[1:]))
        self.drops = nn.ModuleList(KeyedDropout(dropout, salt=i) if dropout > 0 else nn.Identity()
                                   for i in range(depth))
        self.pool = make_pool(pooling, 0)
        self.classifier = nn.Linear(width, 1)

    def forward(self, x: Tensor, bag_index: Tensor | None = None, n_bags: int | None = None) -> MILOutput:
        if bag_index is None:
            bag_index = torch.zeros(x.shape[0], dtype=torch.long, device=x.device)
        n = num_bags(bag_index, n_bags)
        z, h = 0, x
        for layer, drop in zip(self.layers, self.drops):
            h = torch.relu(layer(h))
            z = z + self.pool(drop(h), bag_index, n)[0]
        return MILOutput(self.classifier(z))


__all__ = ["POOLINGS", "DeepSupervisedMINet", "EmbeddingMIL", "InstanceMIL", "MILOutput", "ResidualMINet"]
