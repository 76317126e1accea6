"""Many independent runs trained at once, each exactly as it would train alone.

A CV protocol trains K = folds x repeats models of one architecture, each for thousands of
one-bag steps; alone, each step is almost all framework overhead. Here the K runs advance in
lockstep as one module: every ``nn.Linear`` becomes a batched matmul over K weight slices, and
each run's bag sits in its own block of rows of one packed batch. Run k still sees its own bags
in its own order (:func:`abmil.train.schedule.epoch_order`), its own dropout masks (keyed by its seed
and step) and the update ``torch.optim`` would make, so its final weights equal those of
:func:`abmil.train.fit.fit` to float tolerance (tests/test_stacked.py).

Layout of one step: run j's bags are padded to the step's largest block of rows; padding rows go
to an extra dummy bag per run, so segment pooling ignores them without masks. Bag i of run j is
packed bag ``j * (B + 1) + i``. To keep padding small, each step splits the runs into contiguous
ranges by their sizes (:func:`size_segments`). Each parameter of all runs lives in one ``(K, *shape)`` tensor, updated
by torch's fused optimizer kernels (one pass over the weights: this update is memory bound).
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
from .loss import bernoulli_nll
from .optim import fused_update, is_decayed, state_kinds
from .schedule import epoch_order
from .subnormal import flush_subnormal_, subnormals_as_zero


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


def size_segments(sizes: np.ndarray, overhead: float) -> list[np.ndarray]:
    """Split runs into contiguous ranges minimising ``sum(overhead + len(range) * max size in range)``.

    ``sizes`` (K,) are the rows of each run's block this step. Ranges of the runs in their stored order, not
    groups of sorted sizes: a range's weights are a view of the stacked tensors, so no gather of weights and no
    scatter of gradients (measured on Musk1, 25-50 runs: 10-25% faster per step than sorted groups, despite
    more padding). Optimal over such ranges (dynamic programming, O(K^2)).
    """
    k = len(sizes)
    best = np.full(k + 1, np.inf)
    best[0], cut = 0.0, np.zeros(k + 1, dtype=int)
    for j in range(1, k + 1):
        i = np.arange(j)
        run_max = np.maximum.accumulate(sizes[:j][::-1])[::-1]  # max of sizes[i:j] for each i
        cost = best[:j] + overhead + (j - i) * run_max
        cut[j] = int(np.argmin(cost))
        best[j] = cost[cut[j]]
    groups, j = [], k
    while j > 0:
        groups.append(np.arange(cut[j], j))
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

    Internally the runs are ordered by steps per epoch, longest first: runs that advance
    together then form contiguous blocks (one learning rate, one fused optimizer call each), and
    the runs still active late in an epoch are a prefix. ``params(k)``, ``model(k)`` and
    ``predict`` speak in the caller's order.
    """

    def __init__(self, model_factory: Callable[[], nn.Module], bags: Sequence[Tensor], labels: Tensor,
                 runs: Sequence[RunSpec], config: TrainConfig, bucket_overhead: float = 96.0,
                 dtype: torch.dtype = torch.float32):
        self.config, self.bucket_overhead = config, bucket_overhead
        steps_per_epoch = np.array([-(-len(r.train) // config.batch_size) for r in runs])
        self._order = np.argsort(-steps_per_epoch, kind="stable")  # internal position -> caller's index
        self._position = np.argsort(self._order)  # caller's index -> internal position
        self.runs = [runs[i] for i in self._order]
        self.steps_per_epoch = steps_per_epoch[self._order]
        self.blocks = [(int(a), int(b)) for a, b in _equal_runs(self.steps_per_epoch)]
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
        # Each parameter of all runs in one contiguous (K, *shape) tensor: a group's slice is a
        # view, a gather or scatter copies whole rows, and the optimizer takes them as they are.
        self.weights = {n: torch.stack([dict(m.named_parameters())[n].detach() for m in models])
                        for n, _ in self.template.named_parameters()}
        self.grads = {n: torch.zeros_like(w) for n, w in self.weights.items()}
        self.decayed = [n for n, p in self.template.named_parameters()
                        if config.weight_decay and (config.decay_biases or is_decayed(n, p))]
        # parameter names updated with weight decay and without: two fused optimizer calls per block of runs
        self._decay_groups = (self.decayed, [n for n in self.weights if n not in self.decayed])
        self._source = _Weights()
        self._source.tensors = self.weights
        self.stacked = _stack_module(self.template, self._source)
        self.dropouts = [m for m in self.stacked.modules() if isinstance(m, KeyedDropout)]
        for m in self.dropouts:
            m.keyed, m.rows = True, None
        self.state: dict[str, dict[str, Tensor]] = {}
        self._steps = torch.zeros(len(self.runs), dtype=torch.float64)

    @property
    def steps(self) -> Tensor:
        """(K,) optimizer steps each run has taken, in the order the runs were given."""
        return self._steps[torch.as_tensor(self._position)]

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

    @subnormals_as_zero()
    def fit(self, progress: Callable[[int], None] | None = None) -> None:
        """Train all runs for ``config.epochs``; ``progress(epoch)`` after each epoch."""
        cfg, bs = self.config, self.config.batch_size
        seeds = torch.tensor([r.seed for r in self.runs])
        self.stacked.train()
        for epoch in range(cfg.epochs):
            orders = [r.train[epoch_order(r.seed, epoch, len(r.train))] for r in self.runs]
            for t in range(int(self.steps_per_epoch[0])):
                n_active = int((t < self.steps_per_epoch).sum())  # a prefix: longest runs first
                batches = [orders[k][t * bs:(t + 1) * bs] for k in range(n_active)]
                lens = np.array([self.sizes[b].sum() for b in batches])
                keys = torch.stack([seeds, self._steps.to(torch.int64)], 1)
                for ids in size_segments(lens, self.bucket_overhead):
                    span = slice(int(ids[0]), int(ids[-1]) + 1)
                    for m in self.dropouts:
                        m.key = keys[span]
                    # Fresh leaves viewing the range's weights: autograd returns the range's gradients only.
                    leaves = {n: w[span].detach().requires_grad_(True) for n, w in self.weights.items()}
                    self._source.tensors = leaves
                    x, bag_index, y, valid = self._batch(ids, [batches[k] for k in ids], bs)
                    out = self.stacked(x, bag_index, len(ids) * (bs + 1))
                    heads = tuple(torch.sigmoid(l[:, 0]) for l in out.aux_logits) or (out.prob,)
                    # Sum over runs of each run's mean loss: run k's gradient is its own.
                    loss = sum(((bernoulli_nll(p.view(len(ids), bs + 1)[:, :bs], y) * valid).sum(1)
                                / valid.sum(1)).sum() for p in heads)
                    grads = torch.autograd.grad(loss, list(leaves.values()))
                    for n, g in zip(leaves, grads):
                        self.grads[n][span].copy_(g)
                self._update(n_active)
                self._steps[:n_active] += 1
            flush_subnormal_(self.weights.values())
            if progress is not None:
                progress(epoch)
        self._source.tensors = self.weights

    def _update(self, n_active: int) -> None:
        """One ``torch.optim`` step (same formulas, torch's fused kernels) for the first
        ``n_active`` runs, one call per block of runs that share a step count."""
        for a, b in self.blocks:
            if a >= n_active:
                break
            for names, wd in zip(self._decay_groups, (self.config.weight_decay, 0.0)):
                fused_update(self.config, int(self._steps[a]), wd, [self.weights[n][a:b] for n in names],
                             [self.grads[n][a:b] for n in names],
                             [[self._state(n, kind)[a:b] for n in names] for kind in state_kinds(self.config)])

    def _state(self, name: str, kind: str) -> Tensor:
        """Optimizer state ``kind`` of parameter ``name``, (K, *shape), zeros at first use."""
        per_param = self.state.setdefault(kind, {})
        if name not in per_param:
            per_param[name] = torch.zeros_like(self.weights[name])
        return per_param[name]

    def params(self, k: int) -> dict[str, Tensor]:
        """Run k's weights by parameter name (k in the order the runs were given)."""
        i = int(self._position[k])
        return {n: w[i].clone() for n, w in self.weights.items()}

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
        sets = [np.asarray(bag_sets[i]) for i in self._order]
        bs = max(len(s) for s in sets)
        self._source.tensors = self.weights
        x, bag_index, _, _ = self._batch(np.arange(len(self.runs)), sets, bs)
        out = self.stacked(x, bag_index, len(self.runs) * (bs + 1))
        self.stacked.train()
        prob = out.prob.view(len(self.runs), bs + 1)
        return [prob[int(self._position[k]), :len(bag_sets[k])] for k in range(len(bag_sets))]


def _equal_runs(values: np.ndarray) -> list[tuple[int, int]]:
    """Maximal ranges ``[a, b)`` of equal consecutive ``values``."""
    cuts = [0, *(np.flatnonzero(np.diff(values)) + 1).tolist(), len(values)]
    return list(zip(cuts[:-1], cuts[1:]))
