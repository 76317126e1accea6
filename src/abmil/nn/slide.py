"""Whole-slide attention MIL on patch features, CLAM-sized, binary or multi-class.

    x (n, in_dim) → Linear(in_dim, hidden) + ReLU + dropout       (f, an MLPEncoder)
                  → attention pooling, plain or gated (hidden → att_dim → 1)
                  → Linear(hidden, n_out)                           (g)

``n_out`` is 1 for two classes (the bag probability is ``sigmoid``, trained with the paper's
clamped Bernoulli likelihood, as the rest of the package) and ``n_classes`` otherwise (softmax,
cross-entropy). One bag per call, or several small bags packed end to end with a ``bag_index``
(one pass for many small slides; ``abmil.train.wsi`` packs consecutive slides of a step up to
:func:`~abmil.train.wsi.pack_limit` instances and accumulates the passes' gradients).

On CPU a bag above :data:`~abmil.nn.chunked.ENCODE_BLOCK` instances is encoded in cache-sized blocks (the
same values, faster, the same memory); a bag larger than ``chunk_size`` instances is pooled by
:func:`abmil.nn.chunked.chunked_attention` while training (activation memory of one chunk; in the
weights' dtype, autocast or not) and, without gradients, streamed chunk by chunk
(:meth:`SlideMIL.pool_chunks`), which also accepts chunks read one at a time from disk.
"""
from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import NamedTuple

import torch
from torch import Tensor, nn

from . import chunked
from .chunked import DEFAULT_CHUNK_SIZE, chunked_attention, chunked_attention_pool, encode_blocks
from .encoders import MLPEncoder
from .pooling import AttentionPool
from .segment import num_bags, segment_softmax, segment_sum

POOLINGS = ("gated", "attention")


class SlideOutput(NamedTuple):
    logits: Tensor
    """(n_out,) class logits of the bag: one logit for two classes, else one per class; (n_bags, n_out) packed."""
    attention_logits: Tensor
    """(n_instances,) unnormalised attention; the weights are ``softmax(attention_logits, 0)``."""


class SlideMIL(nn.Module):
    """Attention MIL over one slide's patch features.

    Args:
        in_dim: feature dimension D of the patches.
        n_classes: number of classes, >= 2.
        pooling: ``"gated"`` (Ilse et al. eq. 9, CLAM's default) or ``"attention"`` (eq. 8).
        hidden: width of the instance layer f (CLAM: 512).
        att_dim: hidden size L of the attention net (CLAM: 256).
        dropout: dropout after f (CLAM: 0.25); keyed, see :func:`abmil.nn.dropout.set_dropout_key`.
        chunk_size: bags above this many instances are pooled in chunks of this size.
    """

    def __init__(self, in_dim: int, n_classes: int, *, pooling: str = "gated", hidden: int = 512,
                 att_dim: int = 256, dropout: float = 0.25, chunk_size: int = DEFAULT_CHUNK_SIZE):
        super().__init__()
        if pooling not in POOLINGS:
            raise ValueError(f"unknown pooling {pooling!r}: expected one of {', '.join(POOLINGS)}")
        if n_classes < 2:
            raise ValueError(f"n_classes must be >= 2, got {n_classes}")
        if chunk_size < 1:
            raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
        self.in_dim, self.n_classes, self.chunk_size = in_dim, n_classes, chunk_size
        self.encoder = MLPEncoder(in_dim, (hidden,), dropout=dropout)
        self.pool = AttentionPool(hidden, att_dim, gated=pooling == "gated")
        self.classifier = nn.Linear(hidden, 1 if n_classes == 2 else n_classes)

    def forward(self, x: Tensor, bag_index: Tensor | None = None, n_bags: int | None = None) -> SlideOutput:
        """One bag ``x`` (n_instances, in_dim) → logits (n_out,), attention logits (n_instances,).

        Packed: ``x`` holds several bags end to end and ``bag_index`` (n_instances,) says whose each row is →
        logits (n_bags, n_out). Never chunked: the caller packs only what fits.
        """
        if x.dim() != 2 or x.shape[0] == 0 or x.shape[1] != self.in_dim:
            raise ValueError(f"expected one bag (n_instances, {self.in_dim}), got shape {tuple(x.shape)}")
        if bag_index is not None:
            n = num_bags(bag_index, n_bags)
            h = self.encoder(x)
            logits = self.pool.scores(h)
            z = segment_sum(segment_softmax(logits, bag_index, n).unsqueeze(-1) * h, bag_index, n)
            return SlideOutput(self.classifier(z), logits)
        if x.shape[0] > self.chunk_size:
            if torch.is_grad_enabled():
                # the weights' dtype even under autocast: chunked_attention's recomputing backward mixes
                # dtypes otherwise
                with torch.autocast(x.device.type, enabled=False):
                    x = x.to(self.classifier.weight.dtype)
                    z, logits = chunked_attention(x, self.encoder, self.pool, self.chunk_size)
            else:
                z, logits = chunked_attention_pool(self.encoder, self.pool, x.split(self.chunk_size),
                                                   return_logits=True)
        elif x.device.type == "cpu" and x.shape[0] > chunked.ENCODE_BLOCK:  # cache-sized blocks kept for autograd
            blocks = [(h, l) for _, h, l in encode_blocks(self.encoder, self.pool, x)]
            logits = torch.cat([l for _, l in blocks])
            weights = torch.softmax(logits, 0).split([len(l) for _, l in blocks])
            z = sum((a.unsqueeze(0) @ h).to(h.dtype) for a, (h, _) in zip(weights, blocks))  # (1, hidden)
        else:
            h = self.encoder(x)
            logits = self.pool.scores(h)
            z = (torch.softmax(logits, 0).unsqueeze(0) @ h).to(h.dtype)  # (1, hidden)
        return SlideOutput(self.classifier(z).squeeze(0), logits)

    @torch.no_grad()
    def pool_chunks(self, chunks: Iterable[Tensor | Sequence], device: torch.device | str | None = None
                    ) -> SlideOutput:
        """Inference on a bag streamed as chunks ``(n_chunk, in_dim)`` (or ``(features, coords)``
        pairs, as :meth:`abmil.data.features.FeatureBagDataset.iter_chunks` yields): memory
        O(chunk), plus O(n_instances) attention logits."""
        z, logits = chunked_attention_pool(self.encoder, self.pool, chunks, return_logits=True, device=device)
        return SlideOutput(self.classifier(z.to(self.classifier.weight.dtype)).squeeze(0), logits)


def class_probabilities(logits: Tensor) -> Tensor:
    """Logits (..., n_out) → probabilities (..., n_classes): ``[1 - p, p]`` for one logit, else softmax."""
    logits = logits.float()
    if logits.shape[-1] == 1:
        p = torch.sigmoid(logits)
        return torch.cat([1.0 - p, p], dim=-1)
    return torch.softmax(logits, dim=-1)
