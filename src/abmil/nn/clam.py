"""CLAM-SB (Lu et al. 2021, *Data-efficient and weakly supervised computational pathology on whole-slide images*):
gated attention MIL with an instance-level clustering loss.

The bag path is attention MIL's (:class:`~abmil.nn.models.EmbeddingMIL` with gated attention pooling); CLAM adds one
instance classifier ``Linear(dim, 2)`` per class. In training, for each bag of label ``c``, the ``k`` instances of
highest attention are taken as class-``c`` evidence and the ``k`` of lowest attention as not, and classifier ``c`` is
trained on these pseudo-labels by cross-entropy (CLAM's default instance loss); with ``subtyping`` (CLAM's multi-class
setting) the top ``k`` are also negatives for every other class's classifier and the sum is divided by the number of
classes. A bag's loss is ``bag_weight · bag loss + (1 - bag_weight) · instance loss`` (CLAM: 0.7).

The model returns the instance loss of every bag for every label it could have (``MILOutput.aux_loss``,
(n_bags, n_classes)); :func:`abmil.train.loss.bag_losses` adds its label's column, so the training loop needs no
CLAM-specific code. Outside training the instance loss is not computed and the model is attention MIL: predictions
stream giant slides in chunks (:meth:`~abmil.nn.models.EmbeddingMIL.pool_chunks`). Training forwards each bag
densely (the instance loss needs the encoded top-``k`` patches); bags can be packed.

Differences from torchmil's ``CLAM_SB`` (tested equal where they agree, ``tests/test_clam_transmil.py``): torchmil
always adds the out-of-class term for binary bags and sums the terms without dividing (CLAM's ``subtyping`` without
its division); its default instance loss (``SmoothTop1SVM``) broadcasts its ``(2k, 1)`` targets against the
``(2k, 2)`` scores in torchmil 1.0.2, so we use CLAM's default cross-entropy. The attention's output layer carries a
bias (torchmil's has none; it cancels in the softmax).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .models import EmbeddingMIL, MILOutput
from .pooling import AttentionPool
from .segment import num_bags, segment_softmax, segment_sum


class ClamSB(EmbeddingMIL):
    """CLAM single branch over ``encoder``'s embeddings: gated attention (``att_dim``), a bag classifier with
    ``n_out`` logits, ``max(n_out, 2)`` instance classifiers.

    Args:
        encoder: instance encoder with ``out_dim`` (the slides' Linear + ReLU + dropout).
        att_dim: attention hidden size.
        n_out: 1 (two classes, sigmoid) or the number of classes.
        k_sample: instances taken from each end of the attention ranking (CLAM: 8; fewer in a smaller bag).
        bag_weight: weight of the bag loss (CLAM: 0.7); the instance loss weighs ``1 - bag_weight``.
        subtyping: CLAM's out-of-class term (default: with more than two classes).
        chunk_size: giant-bag inference, as :class:`EmbeddingMIL`.
    """

    def __init__(self, encoder: nn.Module, att_dim: int = 256, *, n_out: int = 1, k_sample: int = 8,
                 bag_weight: float = 0.7, subtyping: bool | None = None, chunk_size: int | None = None):
        super().__init__(encoder, AttentionPool(encoder.out_dim, att_dim, gated=True), n_out=n_out,
                         chunk_size=chunk_size)
        if k_sample < 1 or not 0.0 < bag_weight <= 1.0:
            raise ValueError("k_sample must be >= 1 and bag_weight in (0, 1]")
        self.n_classes = max(n_out, 2)
        self.instance_classifiers = nn.ModuleList(nn.Linear(encoder.out_dim, 2) for _ in range(self.n_classes))
        self.k_sample, self.bag_weight = k_sample, bag_weight
        self.subtyping = self.n_classes > 2 if subtyping is None else subtyping

    def forward(self, x: Tensor, bag_index: Tensor | None = None, n_bags: int | None = None) -> MILOutput:
        """As :class:`EmbeddingMIL`; in training also ``aux_loss`` (n_bags, n_classes) and ``bag_weight``."""
        if not self.training:
            return super().forward(x, bag_index, n_bags)
        if bag_index is None:
            bag_index = torch.zeros(x.shape[0], dtype=torch.long, device=x.device)
        n = num_bags(bag_index, n_bags)
        h = self.encoder(x)
        scores = self.pool.scores(h)
        weights = segment_softmax(scores, bag_index, n)
        z = segment_sum(weights.unsqueeze(-1) * h, bag_index, n)
        aux = self.instance_losses(h, scores, bag_index, n)
        return MILOutput(self.classifier(self.dropout(z)), weights, scores, aux_loss=(1.0 - self.bag_weight) * aux,
                         bag_weight=self.bag_weight)

    def instance_losses(self, h: Tensor, scores: Tensor, bag_index: Tensor, n_bags: int) -> Tensor:
        """(n_bags, n_classes): each bag's instance clustering loss were its label each class. ``h`` (n, dim) the
        encoded instances, ``scores`` (n,) their attention logits, ``bag_index`` sorted."""
        counts = torch.bincount(bag_index, minlength=n_bags).tolist()
        rows = []
        for hb, sb in zip(h.split(counts), scores.split(counts)):
            k = min(self.k_sample, hb.shape[0])
            top, bottom = hb[torch.topk(sb, k)[1]], hb[torch.topk(-sb, k)[1]]
            pseudo = torch.cat([torch.ones(k, dtype=torch.long), torch.zeros(k, dtype=torch.long)]).to(h.device)
            inside = torch.stack([F.cross_entropy(clf(torch.cat([top, bottom])), pseudo)
                                  for clf in self.instance_classifiers])            # (n_classes,)
            if not self.subtyping:
                rows.append(inside)
                continue
            negative = torch.zeros(k, dtype=torch.long, device=h.device)
            outside = torch.stack([F.cross_entropy(clf(top), negative) for clf in self.instance_classifiers])
            rows.append((inside + outside.sum() - outside) / self.n_classes)
        return torch.stack(rows)

    def extra_repr(self) -> str:
        return f"k_sample={self.k_sample}, bag_weight={self.bag_weight}, subtyping={self.subtyping}"
