"""One run trained without autograd: the MLP-encoder MIL models with their backward passes written out.

At one bag per step a Musk bag is about five instances: its arithmetic takes microseconds, and
autograd's graph, ``torch.optim``'s Python ``step`` and per-call setup are the cost of a step. Here
forward and backward are a fixed list of tensor calls on the module's own parameters, gradients
go into preallocated buffers, and torch's fused optimizer kernel updates the weights in place.

The numbers are those of :func:`abmil.train.fit.fit`: the same bags in the same order
(:func:`~abmil.train.schedule.epoch_order`), the same keyed dropout masks, the same clamped loss and
the same optimizer update (tests/test_direct.py: equal weights to 1e-9 in float64). Supported:
:class:`~abmil.nn.models.EmbeddingMIL` and :class:`~abmil.nn.models.InstanceMIL` over an
:class:`~abmil.nn.encoders.MLPEncoder` with attention, gated attention, mean or max pooling, one bag
per step (:func:`supports`); other models train with the stacked or sequential engine.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from ..nn.dropout import KeyedDropout, hash_keep_masks
from ..nn.encoders import MLPEncoder
from ..nn.models import EmbeddingMIL, InstanceMIL
from ..nn.pooling import AttentionPool, MaxPool, MeanPool
from .config import TrainConfig
from .loss import PROB_CLAMP
from .optim import fused_update, is_decayed, state_kinds
from .schedule import epoch_order
from .subnormal import flush_subnormal_, subnormals_as_zero

_ENCODER_LAYERS = (nn.Linear, nn.ReLU, KeyedDropout, nn.Identity)


def supports(model: nn.Module, config: TrainConfig) -> bool:
    """Whether :class:`DirectTrainer` can train ``model`` under ``config`` (else use another engine)."""
    if config.batch_size != 1:
        return False
    if type(model) is EmbeddingMIL:  # a subclass (CLAM) may add terms the written-out passes do not have
        pool_ok = isinstance(model.pool, (AttentionPool, MeanPool, MaxPool))
        head_ok = isinstance(model.dropout, (KeyedDropout, nn.Identity))
    elif isinstance(model, InstanceMIL):
        pool_ok, head_ok = isinstance(model.pool, (MeanPool, MaxPool)), True
    else:
        return False
    encoder = model.encoder
    return (pool_ok and head_ok and isinstance(encoder, MLPEncoder)
            and all(isinstance(m, _ENCODER_LAYERS) for m in encoder.layers)
            and all(m.bias is not None for m in model.modules() if isinstance(m, nn.Linear)))


class _Linear:
    """``y = x Wᵀ + b`` and its backward, gradients written into the buffers ``grads[W]``, ``grads[b]``."""

    def __init__(self, m: nn.Linear, grads: dict[Tensor, Tensor]):
        self.weight, self.bias = m.weight, m.bias
        self.weight_t = m.weight.t()  # a view: follows the in-place updates
        self.g_weight, self.g_bias = grads[m.weight], grads[m.bias]

    def forward(self, x: Tensor) -> Tensor:
        self.x = x
        return torch.addmm(self.bias, x, self.weight_t)

    def backward(self, g: Tensor, need_input: bool = True) -> Tensor | None:
        torch.mm(g.t(), self.x, out=self.g_weight)
        torch.sum(g, 0, out=self.g_bias)
        return torch.mm(g, self.weight) if need_input else None

    def backward_row(self, g: float) -> Tensor:
        """:meth:`backward` of a one-row input and one output, whose gradient ``g`` is a float."""
        torch.mul(self.x, g, out=self.g_weight)
        self.g_bias.fill_(g)
        return self.weight * g


class _ReLU:
    def forward(self, x: Tensor) -> Tensor:
        self.y = torch.relu(x)
        return self.y

    def backward(self, g: Tensor) -> Tensor:
        return torch.ops.aten.threshold_backward(g, self.y, 0)  # what autograd runs for relu


class _Dropout:
    """:class:`KeyedDropout`'s masks for one run, made an epoch at a time: the same elements dropped as in
    :func:`abmil.train.fit.fit`."""

    def __init__(self, m: KeyedDropout, width: int):
        self.p, self.salt, self.width = m.p, m.salt, width

    def plan(self, seed: int, steps: range, rows: np.ndarray, dtype: torch.dtype) -> None:
        """Masks of the epoch's steps, step ``steps[j]`` seeing ``rows[j]`` rows of ``width`` units."""
        keep = hash_keep_masks(seed, steps, self.salt, rows * self.width, self.p)
        # x * mask == KeyedDropout's (x * keep) * scale, keep being 0 or 1; the scale is rounded to x's dtype as there
        scale = torch.tensor(1.0 / (1.0 - self.p), dtype=dtype).numpy()
        self.masks = torch.from_numpy(keep * scale).split((rows * self.width).tolist())
        self.step = 0  # index into the epoch's masks, set by the trainer

    def forward(self, x: Tensor) -> Tensor:
        self.mask = self.masks[self.step].view_as(x)
        return x * self.mask

    def backward(self, g: Tensor) -> Tensor:
        return g * self.mask


class _Attention:
    """Attention (or gated attention) pooling of one bag: ``h`` (n, M) → ``z`` (1, M), and back."""

    def __init__(self, pool: AttentionPool, grads: dict[Tensor, Tensor]):
        self.V, self.w = _Linear(pool.V, grads), _Linear(pool.w, grads)
        self.U = _Linear(pool.U, grads) if pool.U is not None else None

    def forward(self, h: Tensor) -> Tensor:
        self.h = h
        self.tanh = torch.tanh(self.V.forward(h))
        gate = self.tanh
        if self.U is not None:
            self.sigm = torch.sigmoid(self.U.forward(h))
            gate = self.tanh * self.sigm
        s = self.w.forward(gate).squeeze(-1)
        e = torch.exp(s - s.max())
        self.a = e / e.sum()
        return (self.a.unsqueeze(-1) * h).sum(0, keepdim=True)

    def backward(self, gz: Tensor) -> Tensor:
        a = self.a
        gh = a.unsqueeze(-1) * gz
        ga = torch.mv(self.h, gz.squeeze(0))
        gs = a * (ga - (a * ga).sum())
        g_gate = self.w.backward(gs.unsqueeze(-1))
        if self.U is None:
            gh += self.V.backward(g_gate * (1.0 - self.tanh * self.tanh))
        else:
            gh += self.V.backward(g_gate * self.sigm * (1.0 - self.tanh * self.tanh))
            gh += self.U.backward(g_gate * self.tanh * self.sigm * (1.0 - self.sigm))
        return gh


class _Mean:
    def forward(self, h: Tensor) -> Tensor:
        self.n = h.shape[0]
        return h.sum(0, keepdim=True) / self.n

    def backward(self, gz: Tensor) -> Tensor:
        return (gz / self.n).expand(self.n, -1)


class _Max:
    """Element-wise max over the bag; ties share the gradient equally, as ``scatter_reduce("amax")``'s backward."""

    def forward(self, h: Tensor) -> Tensor:
        z = h.amax(0, keepdim=True)
        self.hit = (h == z).to(h.dtype)
        return z

    def backward(self, gz: Tensor) -> Tensor:
        return self.hit * (gz / self.hit.sum(0, keepdim=True))


def _pool(pool: nn.Module, grads: dict[Tensor, Tensor]):
    if isinstance(pool, AttentionPool):
        return _Attention(pool, grads)
    return _Max() if isinstance(pool, MaxPool) else _Mean()


class DirectTrainer:
    """Train one supported model (see :func:`supports`) in place, exactly as :func:`fit` would.

    Args:
        model: an :class:`EmbeddingMIL` or :class:`InstanceMIL` over an :class:`MLPEncoder`, with its
            initial weights (build it under ``torch.manual_seed``).
        config: training settings (``batch_size`` must be 1).
        seed: the run's seed: epoch orders and dropout masks.
    """

    def __init__(self, model: nn.Module, config: TrainConfig, *, seed: int):
        if not supports(model, config):
            raise ValueError(f"the direct engine trains EmbeddingMIL / InstanceMIL over an MLPEncoder with "
                             f"batch_size 1; got {type(model).__name__} with batch_size {config.batch_size}")
        self.model, self.config, self.seed = model, config, seed
        params = list(model.named_parameters())
        self.grads = {p: torch.zeros_like(p) for _, p in params}
        decayed = [config.decay_biases or is_decayed(n, p) for n, p in params]
        # fit's parameter groups: decayed, then not decayed
        self._groups = [(config.weight_decay, [p for (_, p), d in zip(params, decayed) if d]),
                        (0.0, [p for (_, p), d in zip(params, decayed) if not d])]
        self._states = {p: [torch.zeros_like(p) for _ in state_kinds(config)] for _, p in params}
        self.encoder, width = [], None
        for m in model.encoder.layers:
            if isinstance(m, nn.Linear):
                self.encoder.append(_Linear(m, self.grads))
                width = m.out_features
            elif isinstance(m, nn.ReLU):
                self.encoder.append(_ReLU())
            elif isinstance(m, KeyedDropout) and m.p > 0:
                self.encoder.append(_Dropout(m, width))
        self.instance_level = isinstance(model, InstanceMIL)
        self.pool = _pool(model.pool, self.grads)
        self.head_dropout = (_Dropout(model.dropout, model.classifier.in_features) if not self.instance_level
                             and isinstance(model.dropout, KeyedDropout) and model.dropout.p > 0 else None)
        self.classifier = _Linear(model.classifier, self.grads)
        self._dropouts = [m for m in (*self.encoder, self.head_dropout) if isinstance(m, _Dropout)]
        self.step = 0

    def _forward(self, x: Tensor) -> Tensor:
        """The bag probability, shape (1,), keeping what the backward pass needs."""
        h = x
        for layer in self.encoder:
            h = layer.forward(h)
        if self.instance_level:
            self.inst = torch.sigmoid(self.classifier.forward(h))  # (n, 1)
            return self.pool.forward(self.inst).squeeze(-1)
        z = self.pool.forward(h)
        if self.head_dropout is not None:
            z = self.head_dropout.forward(z)
        self.prob = torch.sigmoid(self.classifier.forward(z).squeeze(-1))
        return self.prob

    def _backward(self, prob: Tensor, y: float) -> None:
        """Gradients of :func:`abmil.train.loss.bernoulli_nll` (mean over the one bag) into the buffers.

        The loss and the classifier head of one bag are scalars: computed on Python floats (double precision), not
        as a dozen one-element tensor calls."""
        p = float(prob)
        # the clamp to [PROB_CLAMP, 1 - PROB_CLAMP] passes no gradient outside it
        g_prob = 0.0 if p < PROB_CLAMP or p > 1.0 - PROB_CLAMP else -(y / p) + (1.0 - y) / (1.0 - p)
        if self.instance_level:
            g_inst = self.pool.backward(torch.full((1, 1), g_prob, dtype=prob.dtype))
            g = self.classifier.backward(g_inst * (1.0 - self.inst) * self.inst)
        else:
            g_z = self.classifier.backward_row(g_prob * (1.0 - p) * p)
            if self.head_dropout is not None:
                g_z = self.head_dropout.backward(g_z)
            g = self.pool.backward(g_z)
        for i in range(len(self.encoder) - 1, -1, -1):
            layer = self.encoder[i]
            g = layer.backward(g, need_input=i > 0) if isinstance(layer, _Linear) else layer.backward(g)

    @torch.no_grad()
    def _step(self, x: Tensor, y: float) -> None:
        """One optimizer step on one bag ``x`` (n, d) with label ``y`` (0.0 or 1.0)."""
        self._backward(self._forward(x), y)
        for wd, group in self._groups:
            fused_update(self.config, self.step, wd, group, [self.grads[p] for p in group],
                         [[self._states[p][k] for p in group] for k in range(len(state_kinds(self.config)))])
        self.step += 1

    @subnormals_as_zero()
    def fit(self, bags: Sequence[Tensor], labels: Tensor,
            on_epoch_end: Callable[[int], bool | None] | None = None) -> nn.Module:
        """Train on ``bags`` [(n_i, d)] with ``labels`` (n_bags,) 0/1 for ``config.epochs``; returns the model.

        ``on_epoch_end(epoch)`` is called after every epoch with the model's weights up to date; a true return value
        ends training there (early stopping)."""
        labels = torch.as_tensor(labels, dtype=torch.float64).tolist()
        sizes = np.array([b.shape[0] for b in bags])
        self.model.train()
        for epoch in range(self.config.epochs):
            order = epoch_order(self.seed, epoch, len(bags))
            steps = range(self.step, self.step + len(order))
            for m in self._dropouts:
                m.plan(self.seed, steps, np.ones_like(sizes[order]) if m is self.head_dropout else sizes[order],
                       bags[0].dtype)
            for j, i in enumerate(order):
                for m in self._dropouts:
                    m.step = j
                self._step(bags[i], labels[i])
            flush_subnormal_(self.model.parameters())
            if on_epoch_end is not None and on_epoch_end(epoch):
                break
        return self.model
