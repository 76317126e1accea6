"""Many independent runs trained at once, each exactly as it would train alone.

A CV protocol trains K = folds x repeats models of one architecture, each for thousands of
one-bag steps; alone, each step is almost all framework overhead. Here the K runs advance in
lockstep: the weights of run k are slice k of stacked tensors, and one step evaluates all K
models with ``torch.func.vmap`` over those slices. Run k still sees its own bags in its own
order (:func:`abmil.train.fit.epoch_order`), its own dropout masks (keyed by its seed and step)
and the same optimizer update that ``torch.optim`` would make, so its final weights equal
those of :func:`abmil.train.fit.fit` to float tolerance (tests/test_stacked.py).

Bags of different runs differ in size; each run's bags sit in a padded slab and the padding
rows are routed to an extra dummy bag, so segment pooling ignores them without masks. To keep
padding waste small, runs are grouped each step by bag size (:func:`size_buckets`).
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn
from torch.func import functional_call, grad, vmap

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

    ``sizes`` (K,) are the instance counts of each run's slab this step. Optimal over
    contiguous groups of the sorted sizes (dynamic programming, O(K^2)).
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


class StackedTrainer:
    """Train K runs of ``model_factory()`` in lockstep on one dataset.

    Args:
        model_factory: builds the model; called under ``torch.manual_seed(run.seed)`` so run k's
            initial weights are the ones it would have alone.
        bags: the dataset's bags [(n_i, d)], shared by all runs.
        labels: (n_bags,) 0/1.
        runs: one :class:`RunSpec` per run.
        config: training settings, shared by all runs.
        bucket_overhead: cost of one extra group, in padded instance rows (speed knob only).
        dtype: parameter and data dtype (float64 makes the equality with solo runs exact
            enough to test tightly: Adam amplifies float32 rounding of tiny gradients).
    """

    def __init__(self, model_factory: Callable[[], nn.Module], bags: Sequence[Tensor], labels: Tensor,
                 runs: Sequence[RunSpec], config: TrainConfig, bucket_overhead: float | None = None,
                 dtype: torch.dtype = torch.float32):
        self.config, self.runs = config, list(runs)
        self.labels = torch.as_tensor(labels, dtype=dtype)
        self.sizes = np.array([b.shape[0] for b in bags])
        self.offsets = np.concatenate([[0], np.cumsum(self.sizes)])
        flat = torch.cat([torch.as_tensor(b) for b in bags]).to(dtype)
        # One standardised copy of the data per run: a gather per step instead of arithmetic.
        self.data = torch.stack([self._standardise(flat, r) for r in self.runs])
        models = []
        for r in self.runs:
            torch.manual_seed(r.seed)
            models.append(model_factory().to(dtype))
        self.template = models[0]
        for m in self.template.modules():
            if isinstance(m, KeyedDropout):
                m.keyed = True
        self.params = {n: torch.stack([dict(m.named_parameters())[n].detach() for m in models]).contiguous()
                       for n, _ in self.template.named_parameters()}
        self.buffers = {n: torch.stack([dict(m.named_buffers())[n] for m in models]).clone()
                        for n, _ in self.template.named_buffers()}
        self.key_names = [n for n in self.buffers if n.endswith(".key")]
        self.decayed = {n: config.decay_biases or is_decayed(n, p) for n, p in self.template.named_parameters()}
        self.state = {n: {} for n in self.params}
        self.steps = torch.zeros(len(self.runs), dtype=torch.float64)
        self.bucket_overhead = 16.0 * len(self.runs) if bucket_overhead is None else bucket_overhead
        self._grad = vmap(grad(self._loss), in_dims=(0, 0, 0, 0, 0, 0, None))

    @staticmethod
    def _standardise(x: Tensor, run: RunSpec) -> Tensor:
        if run.shift is not None:
            x = x - run.shift
        if run.scale is not None:
            x = x / run.scale
        return x

    def _loss(self, params, buffers, x, bag_index, y, valid, n_bags):
        out = functional_call(self.template, (params, buffers), (x, bag_index, n_bags))
        heads = out.aux_probs if out.aux_probs else (out.prob,)
        nv = valid.sum()
        return sum((bernoulli_nll(p[:-1], y) * valid).sum() / nv for p in heads)

    def _slabs(self, run_ids: np.ndarray, batches: list[np.ndarray], bs: int):
        """Padded instances (G, rows, d), bag_index (G, rows), labels and valid masks (G, bs)."""
        lens = [self.sizes[b].sum() for b in batches]
        rows = int(max(lens))
        g = len(run_ids)
        idx = np.zeros((g, rows), dtype=np.int64)
        bag_index = np.full((g, rows), bs, dtype=np.int64)
        y = np.zeros((g, bs), dtype=self.labels.numpy().dtype)
        valid = np.zeros((g, bs), dtype=self.labels.numpy().dtype)
        for j, b in enumerate(batches):
            r = np.concatenate([np.arange(self.offsets[i], self.offsets[i + 1]) for i in b])
            idx[j, :len(r)] = r
            bag_index[j, :len(r)] = np.repeat(np.arange(len(b)), self.sizes[b])
            y[j, :len(b)] = self.labels.numpy()[b]
            valid[j, :len(b)] = 1.0
        x = self.data[torch.as_tensor(run_ids)[:, None], torch.as_tensor(idx)]
        return x, torch.as_tensor(bag_index), torch.as_tensor(y), torch.as_tensor(valid)

    def fit(self, progress: Callable[[int], None] | None = None) -> None:
        cfg, bs = self.config, self.config.batch_size
        n_runs = len(self.runs)
        n_train = np.array([len(r.train) for r in self.runs])
        steps_per_epoch = -(-n_train // bs)
        for epoch in range(cfg.epochs):
            orders = [r.train[epoch_order(r.seed, epoch, len(r.train))] for r in self.runs]
            for t in range(int(steps_per_epoch.max())):
                active = np.flatnonzero(t < steps_per_epoch)
                batches = {k: orders[k][t * bs:(t + 1) * bs] for k in active}
                lens = np.array([self.sizes[batches[k]].sum() for k in active])
                grads = {n: torch.zeros_like(p) for n, p in self.params.items()}
                for key in self.key_names:
                    self.buffers[key][:, 0] = torch.tensor([r.seed for r in self.runs])
                    self.buffers[key][:, 1] = self.steps.to(torch.int64)
                for group in size_buckets(lens, self.bucket_overhead):
                    ids = np.sort(active[group])
                    x, bag_index, y, valid = self._slabs(ids, [batches[k] for k in ids], bs)
                    sel = torch.as_tensor(ids)
                    full = len(ids) == n_runs
                    p = self.params if full else {n: v[sel] for n, v in self.params.items()}
                    b = self.buffers if full else {n: v[sel] for n, v in self.buffers.items()}
                    g = self._grad(p, b, x, bag_index, y, valid, bs + 1)
                    for n in grads:
                        if full:
                            grads[n] = g[n]
                        else:
                            grads[n].index_copy_(0, sel, g[n])
                mask = torch.zeros(n_runs, dtype=torch.bool)
                mask[torch.as_tensor(active)] = True
                self._update(grads, mask)
                self.steps += mask.to(torch.float64)
            if progress is not None:
                progress(epoch)

    @torch.no_grad()
    def _update(self, grads: dict[str, Tensor], active: Tensor) -> None:
        """One ``torch.optim`` step for the active runs; the others are left untouched."""
        cfg = self.config
        lr = cfg.lr / (1.0 + cfg.lr_decay * self.steps)
        for n, p in self.params.items():
            shape = (-1,) + (1,) * (p.dim() - 1)
            act, lr_n = active.view(shape), lr.to(p.dtype).view(shape)
            g = grads[n]
            if self.decayed[n] and cfg.weight_decay:
                g = g + cfg.weight_decay * p
            st = self.state[n]
            if cfg.optimizer == "sgd":
                if cfg.momentum:
                    buf = st.get("buf")
                    buf = g.clone() if buf is None else torch.where(act, cfg.momentum * buf + g, buf)
                    st["buf"] = buf
                    g = g + cfg.momentum * buf if cfg.nesterov else buf
                p.sub_(torch.where(act, lr_n * g, torch.zeros((), dtype=p.dtype)))
            else:
                b1, b2 = cfg.betas
                m = st.setdefault("m", torch.zeros_like(p))
                v = st.setdefault("v", torch.zeros_like(p))
                t = st.setdefault("t", torch.zeros(len(self.runs), dtype=torch.float64))
                t += active.to(torch.float64)
                m.copy_(torch.where(act, b1 * m + (1 - b1) * g, m))
                v.copy_(torch.where(act, b2 * v + (1 - b2) * g * g, v))
                bc1 = (1 - b1 ** t).clamp_min(1e-30).to(p.dtype).view(shape)
                bc2 = (1 - b2 ** t).clamp_min(1e-30).to(p.dtype).view(shape)
                upd = (lr_n / bc1) * m / (v.sqrt() / bc2.sqrt() + cfg.eps)
                p.sub_(torch.where(act, upd, torch.zeros((), dtype=p.dtype)))

    def model(self, k: int) -> nn.Module:
        """Run k as an ordinary module (a copy of the template with run k's weights)."""
        import copy

        m = copy.deepcopy(self.template)
        m.load_state_dict({n: v[k] for n, v in self.params.items()}, strict=False)
        for mod in m.modules():
            if isinstance(mod, KeyedDropout):
                mod.keyed = False
        return m

    @torch.no_grad()
    def predict(self, bag_sets: Sequence[np.ndarray]) -> list[Tensor]:
        """Each run's bag probabilities on its own bags ``bag_sets[k]`` (eval mode)."""
        self.template.eval()
        n_max = max(len(s) for s in bag_sets)
        ids = np.arange(len(self.runs))
        x, bag_index, _, _ = self._slabs(ids, [np.asarray(s) for s in bag_sets], n_max)

        def forward(params, buffers, x, bag_index):
            return functional_call(self.template, (params, buffers), (x, bag_index, n_max + 1)).prob

        prob = vmap(forward)(self.params, self.buffers, x, bag_index)
        self.template.train()
        return [prob[k, :len(s)] for k, s in enumerate(bag_sets)]
