"""The paper's training objective."""
from __future__ import annotations

import torch
from torch import Tensor

from ..nn.models import MILOutput

#: The reference code clamps probabilities to [1e-5, 1 - 1e-5] before the log.
PROB_CLAMP = 1e-5


def bernoulli_nll(prob: Tensor, y: Tensor) -> Tensor:
    """Per-bag negative Bernoulli log-likelihood of clamped probabilities, (n_bags,)."""
    p = prob.clamp(PROB_CLAMP, 1.0 - PROB_CLAMP)
    return -(y * torch.log(p) + (1.0 - y) * torch.log(1.0 - p))


def mil_loss(out: MILOutput, y: Tensor) -> Tensor:
    """Mean bag NLL; with deep supervision, the sum over the heads (Wang et al.'s [1, 1, 1, 0])."""
    if out.aux_probs:
        return sum(bernoulli_nll(p, y).mean() for p in out.aux_probs)
    return bernoulli_nll(out.prob, y).mean()
