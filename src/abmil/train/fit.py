"""Training one model: the paper's loop, one run at a time.

This is the reference semantics every faster path must reproduce: each epoch visits the training
bags in the order :func:`epoch_order` gives, ``batch_size`` bags per optimizer step (1 in the
paper), with the learning rate of :meth:`TrainConfig.lr_at` and dropout keyed by (seed, step).
"""
from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from ..data.bags import pack
from ..nn.dropout import set_dropout_key
from ..nn.models import MILOutput
from .config import TrainConfig
from .loss import mil_loss
from .subnormal import flush_subnormal_, subnormals_as_zero


def epoch_order(seed: int, epoch: int, n: int) -> np.ndarray:
    """The order in which a run with ``seed`` visits its ``n`` training bags in ``epoch``."""
    return np.random.default_rng([seed, epoch]).permutation(n)


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


@subnormals_as_zero()
def fit(model: nn.Module, bags: Sequence[Tensor], labels: Tensor, config: TrainConfig, *, seed: int,
        on_epoch_end: Callable[[int, nn.Module], None] | None = None) -> nn.Module:
    """Train ``model`` in place on ``bags`` [(n_i, *shape)] with ``labels`` (n_bags,) 0/1.

    The initial weights are whatever ``model`` holds (build it under ``torch.manual_seed``).
    """
    labels = torch.as_tensor(labels).to(bags[0].dtype if bags[0].is_floating_point() else torch.float32)
    opt = make_optimizer(model, config)
    n, bs, step = len(bags), config.batch_size, 0
    single = [torch.zeros(b.shape[0], dtype=torch.long) for b in bags] if bs == 1 else None
    model.train()
    for epoch in range(config.epochs):
        order = epoch_order(seed, epoch, n)
        for start in range(0, n, bs):
            idx = order[start:start + bs]
            if bs == 1:
                x, bag_index = bags[idx[0]], single[idx[0]]
            else:
                x, bag_index = pack([bags[i] for i in idx])
            set_dropout_key(model, seed, step)
            for group in opt.param_groups:
                group["lr"] = config.lr_at(step)
            loss = mil_loss(model(x, bag_index, len(idx)), labels[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
        flush_subnormal_(model.parameters())
        if on_epoch_end is not None:
            on_epoch_end(epoch, model)
    return model


@torch.no_grad()
def predict(model: nn.Module, bags: Sequence[Tensor], batch_size: int = 256) -> tuple[Tensor, list[Tensor | None]]:
    """Bag probabilities (n_bags,) and each bag's instance scores (attention or instance prob)."""
    model.eval()
    probs, scores = [], []
    for start in range(0, len(bags), batch_size):
        chunk = bags[start:start + batch_size]
        x, bag_index = pack(chunk)
        out: MILOutput = model(x, bag_index, len(chunk))
        probs.append(out.prob)
        s = out.instance_scores()
        sizes = [b.shape[0] for b in chunk]
        scores += list(torch.split(s, sizes)) if s is not None else [None] * len(chunk)
    return torch.cat(probs), scores
