"""The optimizer: torch's SGD/Adam with fused kernels, and those kernels called directly.

:func:`make_optimizer` builds the ``torch.optim`` optimizer that :func:`abmil.train.loop.train_loop` steps.
``torch.optim.SGD/Adam(fused=True)`` run one kernel per parameter list, but their Python ``step`` costs tens of
microseconds: at one small bag per step that is most of a step. The engines that
own their gradient buffers (:mod:`abmil.train.stacked`, :mod:`abmil.train.direct`) call the same
kernels with the same arguments ``torch.optim`` would pass, so the update is identical.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from .config import TrainConfig


def is_decayed(name: str, param: Tensor) -> bool:
    """Weight matrices (and conv kernels) get L2; biases only when ``decay_biases``."""
    return param.dim() >= 2


def make_optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    """torch optimizer with two parameter groups: decayed and (optionally) not."""
    params = list(model.named_parameters())
    decayed = [p for n, p in params if config.decay_biases or is_decayed(n, p)]
    other = [p for n, p in params if not (config.decay_biases or is_decayed(n, p))]
    groups = [{"params": decayed, "weight_decay": config.weight_decay}]
    if other:
        groups.append({"params": other, "weight_decay": 0.0})
    # torch's fused kernels: one pass over the weights per step instead of several (same formulas).
    if config.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=config.lr, momentum=config.momentum, nesterov=config.nesterov, fused=True)
    return torch.optim.Adam(groups, lr=config.lr, betas=config.betas, eps=config.eps, fused=True)


def state_kinds(config: TrainConfig) -> tuple[str, ...]:
    """Names of the per-parameter optimizer state tensors, in the order :func:`fused_update` takes them."""
    if config.optimizer == "sgd":
        return ("momentum_buffer",) if config.momentum else ()
    return ("exp_avg", "exp_avg_sq")


@torch.no_grad()
def fused_update(config: TrainConfig, step: int, weight_decay: float, params: Sequence[Tensor],
                 grads: Sequence[Tensor], states: Sequence[Sequence[Tensor]]) -> None:
    """Update ``params`` in place as the ``step``-th (0-based) step of ``torch.optim`` with ``config`` would.

    ``states``: one list per :func:`state_kinds` entry, aligned with ``params`` (zeros before the first step).
    ``weight_decay``: this parameter group's coupled L2 (0 for a group exempt from decay).
    """
    if not params:
        return
    lr = config.lr_at(int(step))
    if config.optimizer == "sgd":
        bufs = list(states[0]) if config.momentum else []
        torch._fused_sgd_(list(params), list(grads), bufs, weight_decay=weight_decay, momentum=config.momentum,
                          lr=lr, dampening=0.0, nesterov=config.nesterov, maximize=False, is_first_step=step == 0)
    else:
        t = torch.tensor(float(step) + 1.0, dtype=torch.float32)  # torch counts Adam steps from 1
        torch._fused_adam_(list(params), list(grads), list(states[0]), list(states[1]), [], [t] * len(params),
                           lr=lr, beta1=config.betas[0], beta2=config.betas[1], weight_decay=weight_decay,
                           eps=config.eps, amsgrad=False, maximize=False)
