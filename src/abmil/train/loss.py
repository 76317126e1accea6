"""The training objective, for every model and task: per-bag losses and their mean.

Two classes: the paper's loss, the negative Bernoulli log-likelihood of the bag probability clamped to
[1e-5, 1 - 1e-5] as in Ilse et al.'s reference code (for probability-pooling models the pooled probability itself).
More classes: softmax cross-entropy on the logits.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from ..nn.models import MILOutput

#: The reference code clamps probabilities to [1e-5, 1 - 1e-5] before the log.
PROB_CLAMP = 1e-5

_HALF = (torch.float16, torch.bfloat16)


def bernoulli_nll(prob: Tensor, y: Tensor) -> Tensor:
    """Per-bag negative Bernoulli log-likelihood of clamped probabilities, (n_bags,)."""
    p = prob.clamp(PROB_CLAMP, 1.0 - PROB_CLAMP)
    return -(y * torch.log(p) + (1.0 - y) * torch.log(1.0 - p))


def _binary_nll(prob: Tensor, y: Tensor) -> Tensor:
    prob = prob.float() if prob.dtype in _HALF else prob  # autocast logits: the loss in float32
    return bernoulli_nll(prob, y.to(prob.dtype))


def bag_losses(out: MILOutput, y: Tensor, class_weights: Tensor | None = None) -> Tensor:
    """The loss of each bag, (n_bags,): ``y`` 0/1 (two classes) or class indices. Deep-supervision heads
    (Wang et al.'s MI-Net with DS) add up. ``class_weights`` (n_classes,): each bag's loss times its class's weight
    (e.g. :func:`balanced_class_weights`; the mean of a step is then the sum of weighted losses over the bags of the
    step, not over their weights, so that a step of one bag keeps its weight)."""
    losses = _bag_losses(out, y)
    if class_weights is None:
        return losses
    return losses * class_weights.to(losses.device, losses.dtype)[y.long()]


def _bag_losses(out: MILOutput, y: Tensor) -> Tensor:
    if out.aux_logits:
        return sum(_binary_nll(torch.sigmoid(l[:, 0]), y) for l in out.aux_logits)
    if out.pooled_prob is not None:
        return _binary_nll(out.pooled_prob, y)
    logits = out.logits.float() if out.logits.dtype in _HALF else out.logits
    if logits.shape[-1] == 1:
        return _binary_nll(torch.sigmoid(logits[:, 0]), y)
    return F.cross_entropy(logits, y.long(), reduction="none")


def balanced_class_weights(labels, n_classes: int) -> list[float]:
    """scikit-learn's ``compute_class_weight("balanced")``: ``n / (n_classes_present * n_c)`` for each class present
    in ``labels`` (class indices), so that every class weighs as much in the summed loss; 1.0 for a class absent."""
    import numpy as np
    from sklearn.utils.class_weight import compute_class_weight

    labels = np.asarray(labels).astype(int)
    present = np.unique(labels)
    weights = np.ones(n_classes)
    weights[present] = compute_class_weight("balanced", classes=present, y=labels)
    return weights.tolist()


def mil_loss(out: MILOutput, y: Tensor) -> Tensor:
    """Mean bag loss of a step; with deep supervision, the sum over the heads of their means (Wang et al.'s
    loss weights [1, 1, 1, 0])."""
    if out.aux_logits:
        return sum(_binary_nll(torch.sigmoid(l[:, 0]), y).mean() for l in out.aux_logits)
    return bag_losses(out, y).mean()
