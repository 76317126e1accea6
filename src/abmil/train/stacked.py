"""Many independent runs trained at once, each exactly as it would train alone.

A CV protocol trains K = folds x repeats models of one architecture, each for thousands of
one-bag steps; alone, each step is almost all framework overhead. Here the K runs advance in
lockstep as one module: every ``nn.Linear`` becomes a batched matmul over K weight slices, and
each run's bag sits in its own block of rows of one packed batch. Run k still sees its own bags
in its own order (:func:`abmil.train.fit.epoch_order`), its own dropout masks (keyed by its seed
and step) and the update ``torch.optim`` would make, so its final weights equal those of
:func:`abmil.train.fit.fit` to float tolerance (tests/test_stacked.py).

Layout of one step: run j's bags are padded to the step's largest block of rows; padding rows go
to an extra dummy bag per run, so segment pooling ignores them without masks. Bag i of run j is
packed bag ``j * (B + 1) + i``. To keep padding small, runs are grouped each step by size
(:func:`size_buckets`). All weights live in one ``(K, P)`` tensor: the optimizer, memory bound at
this scale, makes a few in-place passes over it.
"""
from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn

from ..nn.dropout import KeyedDropout
from .config import TrainConfig
from .fit import epoch_order, is_decayed
from .loss import bernoulli_nll


@dataclass
class RunSpec:
    """One run: its seed, its training bags and its instance standardisation.

    ``train`` indexes bags of the shared dataset; ``shift``/``scale`` (d,) are applied to its
    instances (``(x - shift) / scale``), e.g. training-fold feature statistics.
    """

    seed: int
    train: np.ndarray
    shift: Tensor | None = None
    scale: Tensor | None = None


def size_buckets(sizes: np.ndarray, overhead: float) -> list[np.ndarray]:
    """Split runs into groups minimising ``sum(overhead + len(group) * max size in group)``.

    ``sizes`` (K,) are the rows of each run's block this step. Optimal over contiguous groups of
    the sorted sizes (dynamic programming, O(K^2)).
    """
    order = np.argsort(sizes, kind="stable")
    s = sizes[order]
    k = len(s)
    best = np.full(k + 1, np.inf)
    best[0], cut = 0.0, np.zeros(k + 1, dtype=int)
    for j in range(1, k + 1):
        i = np.arange(j)
        cost = best[:j] + overhead + (j - i) * s[j - 1]
        cut[j] = int(np.argmin(cost))
        best[j] = cost[cut[j]]
    groups, j = [], k
    while j > 0:
        groups.append(order[cut[j]:j])
        j = cut[j]
    return groups[::-1]


class _Weights:
    """The stacked weights of the current forward pass: name → (K_b, *shape), all runs or a group."""

    tensors: dict[str, Tensor]


class StackedLinear(nn.Module):
    """``nn.Linear`` for K runs at once: rows ``(K * r, in)`` → ``(K * r, out)``, block j by run j."""

    def __init__(self, source: _Weights, weight: str, bias: str | None, in_features: int, out_features: int):
        super().__init__()
        self.source, self.weight_name, self.bias_name = source, weight, bias
        self.in_features, self.out_features = in_features, out_features

    def forward(self, x: Tensor) -> Tensor:
        weight = self.source.tensors[self.weight_name]
        xs = x.reshape(weight.shape[0], -1, self.in_features)
        if self.bias_name is None:
            y = torch.bmm(xs, weight.transpose(1, 2))
        else:
            y = torch.baddbmm(self.source.tensors[self.bias_name].unsqueeze(1), xs, weight.transpose(1, 2))
        return y.reshape(-1, self.out_features)


def _stack_module(template: nn.Module, source: _Weights) -> nn.Module:
    """A copy of ``template`` whose Linear layers read their weights from ``source``."""
    stacked = copy.deepcopy(template)
    for name, mod in list(stacked.named_modules()):
        for child_name, child in list(mod.named_children()):
            full = f"{name}.{child_name}" if name else child_name
            if isinstance(child, nn.Linear):
                bias = f"{full}.bias" if child.bias is not None else None
                setattr(mod, child_name, StackedLinear(source, f"{full}.weight", bias,
                                                       child.in_features, child.out_features))
    leftover = [n for n, _ in stacked.named_parameters()]
    if leftover:
        raise ValueError(f"the stacked engine handles models whose parameters all belong to nn.Linear "
                         f"layers; {leftover[0]!r} does not (use engine='sequential')")
    return stacked


class StackedTrainer:
    """Train K runs of ``model_factory()`` in lockstep on one dataset.

    Args:
        model_factory: builds the model; called under ``torch.manual_seed(run.seed)`` so run k's
            initial weights are the ones it would have alone.
        bags: the dataset's bags [(n_i, d)], shared by all runs.
        labels: (n_bags,) 0/1.
        runs: one :class:`RunSpec` per run.
        config: training settings, shared by all runs.
        bucket_overhead: cost of one extra group, in padded rows (a speed knob only).
        dtype: parameter and data dtype (float64 makes the equality with solo runs exact
            enough to test tightly: Adam amplifies float32 rounding of tiny gradients).
    """

    def __init__(self, model_factory: Callable[[], nn.Module], bags: Sequence[Tensor], labels: Tensor,
                 runs: Sequence[RunSpec], config: TrainConfig, bucket_overhead: float = 64.0,
                 dtype: torch.dtype = torch.float32):
        self.config, self.runs, self.bucket_overhead = config, list(runs), bucket_overhead
        self.labels = torch.as_tensor(labels).to(dtype)
        self._labels_np = self.labels.numpy()
        self.sizes = np.array([b.shape[0] for b in bags])
        self.offsets = np.concatenate([[0], np.cumsum(self.sizes)])
        flat_x = torch.cat([torch.as_tensor(b) for b in bags]).to(dtype)
        # One standardised copy of the data per run: a gather per step instead of arithmetic.
        self.data = torch.stack([self._standardise(flat_x, r) for r in self.runs])
        models = []
        for r in self.runs:
            torch.manual_seed(r.seed)
            models.append(model_factory().to(dtype))
        self.template = models[0]
        self.slices: dict[str, tuple[int, int]] = {}
        off = 0
        for n, p in self.template.named_parameters():
            self.slices[n] = (off, off + p.numel())
            off += p.numel()
        self.flat = torch.stack([torch.cat([p.detach().reshape(-1) for p in m.parameters()]) for m in models])
        self.grad = torch.zeros_like(self.flat)
        # Views of the flat buffers by parameter name: the optimizer updates self.flat in place.
        k = len(models)
        self.views = {n: self.flat[:, self.slices[n][0]:self.slices[n][1]].view(k, *p.shape)
                      for n, p in self.template.named_parameters()}
        self.grad_views = {n: self.grad[:, a:b].view_as(self.views[n]) for n, (a, b) in self.slices.items()}
        self._source = _Weights()
        self._source.tensors = self.views
        self.stacked = _stack_module(self.template, self._source)
        self.dropouts = [m for m in self.stacked.modules() if isinstance(m, KeyedDropout)]
        for m in self.dropouts:
            m.keyed = True
        # Column ranges of the decayed parameters, merged where adjacent (a few slices, not a mask:
        # a broadcast multiply by a (P,) mask costs a full extra pass).
        self.decay_ranges: list[list[int]] = []
        for n, p in self.template.named_parameters():
            if config.weight_decay and (config.decay_biases or is_decayed(n, p)):
                a, b = self.slices[n]
                if self.decay_ranges and self.decay_ranges[-1][1] == a:
                    self.decay_ranges[-1][1] = b
                else:
                    self.decay_ranges.append([a, b])
        self.state: dict[str, Tensor] = {}
        self.steps = torch.zeros(len(self.runs), dtype=torch.float64)

    @staticmethod
    def _standardise(x: Tensor, run: RunSpec) -> Tensor:
        if run.shift is not None:
            x = x - run.shift.to(x.dtype)
        if run.scale is not None:
            x = x / run.scale.to(x.dtype)
        return x

    def _batch(self, run_ids: np.ndarray, batches: Sequence[np.ndarray], bs: int):
        """Packed rows (G * rows, d), bag_index (G * rows,), labels and valid masks (G, bs)."""
        g = len(run_ids)
        rows = int(max(self.sizes[b].sum() for b in batches))
        idx = np.zeros((g, rows), dtype=np.int64)
        bag_index = np.repeat(np.arange(g)[:, None] * (bs + 1) + bs, rows, axis=1)
        y = np.zeros((g, bs), dtype=self._labels_np.dtype)
        valid = np.zeros((g, bs), dtype=self._labels_np.dtype)
        for j, b in enumerate(batches):
            sizes = self.sizes[b]
            n = int(sizes.sum())
            starts = np.repeat(self.offsets[b] - np.concatenate([[0], np.cumsum(sizes)[:-1]]), sizes)
            idx[j, :n] = starts + np.arange(n)
            bag_index[j, :n] = j * (bs + 1) + np.repeat(np.arange(len(b)), sizes)
            y[j, :len(b)] = self._labels_np[b]
            valid[j, :len(b)] = 1.0
        x = self.data[torch.as_tensor(run_ids)[:, None], torch.as_tensor(idx)]
        return (x.reshape(g * rows, -1), torch.as_tensor(bag_index).reshape(-1), torch.as_tensor(y),
                torch.as_tensor(valid))

    def _forward(self, run_ids: np.ndarray, batches: Sequence[np.ndarray], bs: int, bind: bool = True):
        """The stacked model on these runs' batches; ``bind``: read the weights of ``run_ids``
        (otherwise the caller has set ``self._source.tensors``)."""
        x, bag_index, y, valid = self._batch(run_ids, batches, bs)
        if bind and len(run_ids) == len(self.runs):
            self._source.tensors = self.views
        elif bind:
            sel = torch.as_tensor(run_ids)
            self._source.tensors = {n: v[sel] for n, v in self.views.items()}
        out = self.stacked(x, bag_index, len(run_ids) * (bs + 1))
        return out, y, valid

    def fit(self, progress: Callable[[int], None] | None = None) -> None:
        """Train all runs for ``config.epochs``; ``progress(epoch)`` after each epoch."""
        cfg, bs = self.config, self.config.batch_size
        n_runs = len(self.runs)
        steps_per_epoch = -(-np.array([len(r.train) for r in self.runs]) // bs)
        seeds = torch.tensor([r.seed for r in self.runs])
        self.stacked.train()
        for epoch in range(cfg.epochs):
            orders = [r.train[epoch_order(r.seed, epoch, len(r.train))] for r in self.runs]
            for t in range(int(steps_per_epoch.max())):
                active = np.flatnonzero(t < steps_per_epoch)
                batches = {k: orders[k][t * bs:(t + 1) * bs] for k in active}
                lens = np.array([self.sizes[batches[k]].sum() for k in active])
                keys = torch.stack([seeds, self.steps.to(torch.int64)], 1)
                if len(active) < n_runs:
                    self.grad.zero_()
                for group in size_buckets(lens, self.bucket_overhead):
                    ids = np.sort(active[group])
                    sel = torch.as_tensor(ids)
                    for m in self.dropouts:
                        m.key = keys[sel]
                    full = len(ids) == n_runs
                    # Fresh leaves (the group's slices): no scatter of zeros in the backward.
                    leaves = {n: (v if full else v[sel]).detach().requires_grad_(True) for n, v in self.views.items()}
                    self._source.tensors = leaves
                    out, y, valid = self._forward(ids, [batches[k] for k in ids], bs, bind=False)
                    heads = out.aux_probs if out.aux_probs else (out.prob,)
                    # Sum over runs of each run's mean loss: run k's gradient is its own.
                    loss = sum(((bernoulli_nll(p.view(len(ids), bs + 1)[:, :bs], y) * valid).sum(1)
                                / valid.sum(1)).sum() for p in heads)
                    grads = torch.autograd.grad(loss, list(leaves.values()))
                    for n, g in zip(leaves, grads):
                        if full:
                            self.grad_views[n].copy_(g)
                        else:
                            self.grad_views[n].index_copy_(0, sel, g)
                mask = torch.zeros(n_runs, dtype=torch.bool)
                mask[torch.as_tensor(active)] = True
                self._update(self.grad, mask, all_active=len(active) == n_runs)
                self.steps += mask.to(torch.float64)
            if progress is not None:
                progress(epoch)
        self._source.tensors = self.views

    @torch.no_grad()
    def _update(self, g: Tensor, active: Tensor, all_active: bool) -> None:
        """One ``torch.optim`` step (same formulas) for the active runs; the others are untouched.

        ``g`` (K, P) is overwritten. In-place ops only: at K x P elements this is memory bound.
        """
        cfg, p = self.config, self.flat
        if not all_active:  # rare (a fold with fewer bags ends its epoch early): keep a copy
            keep = {k: v[~active].clone() for k, v in self.state.items() if v.dim() == 2}
            keep_p = p[~active].clone()
        neg_lr = (-cfg.lr / (1.0 + cfg.lr_decay * self.steps)).to(p.dtype).view(-1, 1)
        for a, b in self.decay_ranges:
            g[:, a:b].add_(p[:, a:b], alpha=cfg.weight_decay)
        if cfg.optimizer == "sgd":
            if cfg.momentum:
                buf = self.state.get("buf")
                if buf is None:
                    buf = self.state["buf"] = g.clone()
                else:
                    torch.add(g, buf, alpha=cfg.momentum, out=buf)
                if cfg.nesterov:
                    g.add_(buf, alpha=cfg.momentum)
                else:
                    g = buf
            if bool((self.steps == self.steps[0]).all()):
                p.add_(g, alpha=float(neg_lr[0]))  # one learning rate for all: a scalar, no broadcast
            else:
                p.addcmul_(g, neg_lr)
        else:
            b1, b2 = cfg.betas
            m = self.state.setdefault("m", torch.zeros_like(p))
            v = self.state.setdefault("v", torch.zeros_like(p))
            t = self.state.setdefault("t", torch.zeros(len(self.runs), dtype=torch.float64))
            t += active.to(torch.float64)
            m.lerp_(g, 1 - b1)
            v.mul_(b2).addcmul_(g, g, value=1 - b2)
            step = (neg_lr / (1 - b1 ** t).clamp_min(1e-30).to(p.dtype).view(-1, 1))
            bc2_sqrt = (1 - b2 ** t).clamp_min(1e-30).sqrt().to(p.dtype).view(-1, 1)
            denom = torch.div(v.sqrt(), bc2_sqrt, out=g).add_(cfg.eps)
            p.addcdiv_(m * step, denom)
        if not all_active:
            for k, v in keep.items():
                self.state[k][~active] = v
            p[~active] = keep_p

    def params(self, k: int) -> dict[str, Tensor]:
        """Run k's weights by parameter name."""
        shapes = dict(self.template.named_parameters())
        return {n: self.flat[k, a:b].view(shapes[n].shape).clone() for n, (a, b) in self.slices.items()}

    def model(self, k: int) -> nn.Module:
        """Run k as an ordinary module (a copy of the template with run k's weights)."""
        m = copy.deepcopy(self.template)
        m.load_state_dict(self.params(k), strict=False)
        for mod in m.modules():
            if isinstance(mod, KeyedDropout):
                mod.keyed = False
        return m

    @torch.no_grad()
    def predict(self, bag_sets: Sequence[np.ndarray]) -> list[Tensor]:
        """Each run's bag probabilities on its own bags ``bag_sets[k]`` (eval mode)."""
        self.stacked.eval()
        bs = max(len(s) for s in bag_sets)
        out, _, _ = self._forward(np.arange(len(self.runs)), [np.asarray(s) for s in bag_sets], bs)
        self.stacked.train()
        prob = out.prob.view(len(self.runs), bs + 1)
        return [prob[k, :len(s)] for k, s in enumerate(bag_sets)]
