"""The exported network: one bag ``(n_instances, in_dim)`` float32 in, ``(outputs, scores)`` out.

    outputs   (1, k)            the task's outputs (:meth:`abmil.tasks.base.Task.torch_outputs`): class
                                probabilities, survival ``S_k`` at the bins' ends or the log hazard ratio, the
                                regression value, the targets' probabilities; an ensemble: their mean over the folds
    scores    (n_instances,)    the per-patch scores ``abmil predict`` writes: attention weights (attention, gated,
                                clam-sb), instance probabilities (instance-mean / -max), TransMIL's class-token
                                attention; an ensemble: their mean. Empty ``(0,)`` where the model has none (mean,
                                max, linear-probe)

Each model is rewritten for one bag from its trained parts (encoder, pooling, classifier: the same modules, the same
weights), without ``bag_index`` or the giant-bag chunking, so that tracing records no size-dependent branch: a
:class:`BagGraph` per :class:`~abmil.nn.zoo.ModelSpec` level. Attention is normalised in float64, as ``abmil predict``
normalises its attention logits (a float32 softmax over 10⁵ patches drifts by ~1e-5 relative). TransMIL's padding to
a square grid depends on the bag's size: its graph is scripted (:func:`scriptable`), the others are traced.
"""
from __future__ import annotations

import copy
import math
import warnings

import torch
from torch import Tensor, nn

from ..nn.zoo import ModelSpec
from ..tasks import Task

__all__ = ["BagGraph", "Ensemble", "HeadOutputs", "Member", "bag_graph", "scriptable"]


def _frozen_encoder(encoder: nn.Module, in_dim: int) -> nn.Module:
    """The encoder traced in eval mode (its keyed dropout is the identity there and is not scriptable)."""
    enc = copy.deepcopy(encoder).eval()
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # torch.jit: deprecated for torch.export, still supported
        return torch.jit.trace(enc, torch.zeros(2, in_dim))


class BagGraph(nn.Module):
    """One bag through one trained model: ``x`` (n, in_dim) → ``(logits (1, n_out), scores (n,) or (0,))``.

    ``returns_outputs``: the first result already is the task's outputs (instance-level models pool probabilities).
    """

    returns_outputs = False


class AttentionGraph(BagGraph):
    """Attention pooling (attention, gated, clam-sb): ``z = Σ_k softmax(a)_k h_k``, ``logits = g(z)``."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.encoder, self.pool, self.classifier = model.encoder, model.pool, model.classifier

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        h = self.encoder(x)
        weights = torch.softmax(self.pool.scores(h).double(), 0).float()
        return self.classifier(weights.unsqueeze(0) @ h), weights


class PoolGraph(BagGraph):
    """Embedding mean or max pooling: ``logits = g(pool_k h_k)``; no per-patch scores."""

    def __init__(self, model: nn.Module, pooling: str):
        super().__init__()
        self.encoder, self.classifier, self.max = model.encoder, model.classifier, pooling == "max"

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        h = self.encoder(x)
        z = h.amax(0, keepdim=True) if self.max else h.mean(0, keepdim=True)
        return self.classifier(z), x.new_zeros(0)


class InstanceGraph(BagGraph):
    """Instance-level MIL (instance-mean / -max, two classes): ``p = pool_k sigm(g(f(x_k)))``, outputs ``[1-p, p]``."""

    returns_outputs = True

    def __init__(self, model: nn.Module, pooling: str):
        super().__init__()
        self.encoder, self.classifier, self.max = model.encoder, model.classifier, pooling == "max"

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        inst = torch.sigmoid(self.classifier(self.encoder(x)))[:, 0]
        p = (inst.amax(0, keepdim=True) if self.max else inst.mean(0, keepdim=True)).unsqueeze(0)
        return torch.cat([1.0 - p, p], 1), inst


class ProbeGraph(BagGraph):
    """The linear probe: ``logits = W · mean_k(x_k) + b``; no per-patch scores."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.classifier = model.classifier

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return self.classifier(x.mean(0, keepdim=True)), x.new_zeros(0)


class TransMILGraph(BagGraph):
    """TransMIL on one bag (:meth:`abmil.nn.transmil.TransMIL._bag`, written out to be scriptable): the bag padded
    with its first rows to a square grid, two Nyström layers around the PPEG, the class token's logits and its
    attention row."""

    def __init__(self, model: nn.Module, in_dim: int):
        super().__init__()
        self.encoder = _frozen_encoder(model.encoder, in_dim)
        self.cls_token, self.layer1, self.ppeg = model.cls_token, model.layer1, model.ppeg
        self.layer2, self.norm, self.classifier = model.layer2, model.norm, model.classifier

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        h = self.encoder(x)
        n = h.shape[0]
        side = int(math.ceil(math.sqrt(n)))
        h = torch.cat([self.cls_token.to(h.dtype), h, h[:side * side - n]])   # (1 + side², dim)
        h, _ = self.layer1(h)
        h = self.ppeg(h, side)
        h, row = self.layer2(h, query_row=0)
        assert row is not None
        return self.classifier(self.norm(h)[:1]), row[1:n + 1]


def bag_graph(model: nn.Module, spec: ModelSpec, in_dim: int) -> BagGraph:
    """The one-bag graph of a trained slide model (in eval mode) of capabilities ``spec``."""
    if spec.level == "transformer":
        return TransMILGraph(model, in_dim)
    if spec.level == "probe":
        return ProbeGraph(model)
    if spec.level == "instance":
        return InstanceGraph(model, spec.pooling)
    if spec.level == "embedding" and spec.pooling in ("attention", "gated"):
        return AttentionGraph(model)
    if spec.level == "embedding" and spec.pooling in ("mean", "max"):
        return PoolGraph(model, spec.pooling)
    raise ValueError(f"no exported form of the {spec.title} model")


def scriptable(spec: ModelSpec) -> bool:
    """Whether the graph must be scripted (its shapes depend on the bag's size beyond what tracing records)."""
    return spec.level == "transformer"


class HeadOutputs(nn.Module):
    """A head's outputs from its logits (1, n_out): :meth:`~abmil.tasks.base.Task.torch_outputs` (traced: its
    branches are on the head's settings and the logits' width, fixed once trained)."""

    def __init__(self, head: Task):
        super().__init__()
        self.head = head

    def forward(self, logits: Tensor) -> Tensor:
        return self.head.torch_outputs(logits)


class Member(nn.Module):
    """One fold model: its graph, then its head's outputs (``returns_outputs``: the graph gives them)."""

    def __init__(self, graph: nn.Module, head: nn.Module, returns_outputs: bool):
        super().__init__()
        self.graph, self.head, self.returns_outputs = graph, head, returns_outputs

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        out, scores = self.graph(x)
        if self.returns_outputs:
            return out, scores
        return self.head(out), scores


class Ensemble(nn.Module):
    """The mean outputs and scores of ``members`` (one member: its own); ``log_outputs``: their log (wsinfer-mil
    applies softmax to what the model returns: ``softmax(log p) = p``)."""

    def __init__(self, members: list[nn.Module], log_outputs: bool = False):
        super().__init__()
        self.members = nn.ModuleList(members)
        self.log_outputs = log_outputs

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        outputs: list[Tensor] = []
        scores: list[Tensor] = []
        for m in self.members:
            o, s = m(x)
            outputs.append(o)
            scores.append(s)
        out = torch.stack(outputs).mean(0)
        att = torch.stack(scores).mean(0)
        if self.log_outputs:
            out = torch.log(out)
        return out, att
