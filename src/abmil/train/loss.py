"""The training objective, for every model and task: per-bag losses and their mean.

Classification (the default task). Two classes: the paper's loss, the negative Bernoulli log-likelihood of the bag
probability clamped to [1e-5, 1 - 1e-5] as in Ilse et al.'s reference code (for probability-pooling models the pooled
probability itself). More classes: softmax cross-entropy on the logits.

Survival (:class:`Objective` ``loss="nll"`` or ``"cox"``), targets ``(n_bags, 3)`` = (time bin, event, time):

- ``nll``: discrete-time hazards (Zadeh & Schmid 2021; PORPOISE's ``nll_surv``): ``n_bins`` logits, hazard
  ``h_k = sigmoid(logit_k)``, survival ``S_k = prod_{j<=k} (1 - h_j)``; an event in bin ``y`` costs
  ``-log S_{y-1} - log h_y``, a bag censored in bin ``y`` costs ``-log S_y`` (it survived bin ``y``)
  (:func:`discrete_survival_nll`). Per bag: separable.
- ``cox``: the negative Cox partial log-likelihood over the bags of one optimizer step (the risk set of an event
  bag is every bag of the step with a time >= its time, Breslow's handling of ties; censored bags add 0)
  (:func:`cox_partial_nll`). Not separable: the loop computes the step's risks first, then each pass's gradient
  from them (:attr:`Objective.coupled`); a step of one bag, or without an event, contributes 0.

Regression (``loss="mse"`` or ``"huber"``), targets ``(n_bags,)`` (standardised by the caller): ``mse`` or ``huber``.

Multilabel (``loss="bce"``), targets ``(n_bags, K)`` 0/1: each target's binary cross-entropy on its own logit
(``binary_cross_entropy_with_logits``), averaged over the K targets (:func:`multilabel_bce`).

Multitarget (:class:`CompositeObjective`): the sum of several heads' losses, each on its slice.
"""
from __future__ import annotations

from dataclasses import dataclass

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


#: The losses of an :class:`Objective`: ``bernoulli`` (classification, :func:`bag_losses`'s default) and the
#: losses of other heads' targets (:func:`task_losses`). Which task trains with which is the task's
#: (:attr:`abmil.tasks.base.Task.losses`).
BERNOULLI = "bernoulli"
TARGET_LOSSES = ("nll", "cox", "mse", "huber", "bce")


@dataclass(frozen=True)
class Objective:
    """What a head is trained for: its ``loss`` (:data:`TARGET_LOSSES`, or ``bernoulli``: the classifier's).
    ``alpha``: PORPOISE's extra weight on the uncensored term of ``nll`` (0: the plain likelihood).
    ``huber_delta``: Huber's threshold (in standardised target units)."""

    loss: str = BERNOULLI
    alpha: float = 0.0
    huber_delta: float = 1.0

    def __post_init__(self) -> None:
        if self.loss not in (BERNOULLI, *TARGET_LOSSES):
            raise ValueError(f"loss must be one of {', '.join((BERNOULLI, *TARGET_LOSSES))}, got {self.loss!r}")
        if not 0.0 <= self.alpha <= 1.0 or self.huber_delta <= 0:
            raise ValueError("alpha must be in [0, 1] and huber_delta > 0")

    @property
    def coupled(self) -> bool:
        """Whether a bag's loss depends on the other bags of its step (Cox): the loop then computes the step's
        outputs first and each pass's gradient from them."""
        return self.loss == "cox"


CLASSIFICATION = Objective()


@dataclass(frozen=True)
class CompositeObjective:
    """Several heads trained at once (a multitarget task): a bag's loss is the sum of its heads' losses, each
    ``(objective, output slice, target slice)`` on its slice of the logits and of the targets ``(n_bags, k)``;
    objective None: the classifier's (its target the class index, the class weights its own). Per bag: none of
    the heads may be coupled."""

    parts: tuple[tuple[Objective | None, slice, slice], ...]
    loss: str = "sum"
    coupled: bool = False


def discrete_survival_nll(logits: Tensor, bins: Tensor, events: Tensor, alpha: float = 0.0) -> Tensor:
    """Per-bag negative log-likelihood of discrete-time hazards, (n_bags,): ``logits`` (n_bags, n_bins), ``bins``
    (n_bags,) the bin of each bag's time, ``events`` (n_bags,) 1 = event, 0 = censored. With ``alpha``, PORPOISE's
    ``(1 - alpha) * nll + alpha * uncensored term``. Computed with log-sigmoids (no clamp)."""
    logits = logits.float() if logits.dtype in _HALF else logits
    bins = bins.long().clamp(0, logits.shape[1] - 1).unsqueeze(1)
    events = events.to(logits.dtype)
    log_h = F.logsigmoid(logits)              # log h_k
    log_s = torch.cumsum(F.logsigmoid(-logits), 1)  # log S_k = sum_{j<=k} log(1 - h_j)
    log_s_before = (log_s - F.logsigmoid(-logits)).gather(1, bins)[:, 0]  # log S_{y-1} (0 for y = 0)
    uncensored = -events * (log_s_before + log_h.gather(1, bins)[:, 0])
    censored = -(1.0 - events) * log_s.gather(1, bins)[:, 0]
    return (1.0 - alpha) * (censored + uncensored) + alpha * uncensored


def cox_partial_nll(risk: Tensor, times: Tensor, events: Tensor) -> Tensor:
    """Per-bag terms of the negative Cox partial log-likelihood of one set of bags, (n_bags,): an event bag i gives
    ``log sum_{j: t_j >= t_i} exp(r_j) - r_i`` (Breslow's ties), a censored bag 0; their sum is the set's negative
    partial log-likelihood. ``risk`` (n_bags,) log hazard ratios."""
    risk = risk.float() if risk.dtype in _HALF else risk
    times = times.to(risk.device)
    at_risk = times[None, :] >= times[:, None]           # [i, j]: j is in i's risk set
    masked = risk[None, :].expand(risk.numel(), -1).masked_fill(~at_risk, float("-inf"))
    return events.to(risk.dtype) * (torch.logsumexp(masked, 1) - risk)


def regression_losses(pred: Tensor, target: Tensor, loss: str = "mse", delta: float = 1.0) -> Tensor:
    """Per-bag squared error or Huber loss (PyTorch's ``huber_loss``), (n_bags,)."""
    pred = pred.float() if pred.dtype in _HALF else pred
    target = target.to(pred.dtype)
    if loss == "mse":
        return (pred - target) ** 2
    return F.huber_loss(pred, target, reduction="none", delta=delta)


def multilabel_bce(logits: Tensor, y: Tensor) -> Tensor:
    """Per-bag binary cross-entropy of K independent targets, averaged over the targets, (n_bags,): ``logits``
    (n_bags, K), ``y`` (n_bags, K) 0/1."""
    logits = logits.float() if logits.dtype in _HALF else logits
    y = y.to(logits.dtype).reshape(logits.shape)
    return F.binary_cross_entropy_with_logits(logits, y, reduction="none").mean(1)


def task_losses(out: MILOutput, y: Tensor, objective: Objective) -> Tensor:
    """Per-bag losses of a survival, regression or multilabel head (see the module docstring for ``y``)."""
    logits = out.logits
    if objective.loss == "bce":
        return multilabel_bce(logits, y)
    if objective.loss in ("mse", "huber"):
        return regression_losses(logits[:, 0], y.reshape(-1), objective.loss, objective.huber_delta)
    y = y.reshape(-1, 3)
    if objective.loss == "nll":
        return discrete_survival_nll(logits, y[:, 0], y[:, 1], objective.alpha)
    return cox_partial_nll(logits[:, 0], y[:, 2], y[:, 1])


def bag_losses(out: MILOutput, y: Tensor, class_weights: Tensor | None = None,
               objective: Objective | None = None) -> Tensor:
    """The loss of each bag, (n_bags,): ``y`` 0/1 (two classes) or class indices. Deep-supervision heads
    (Wang et al.'s MI-Net with DS) add up. ``class_weights`` (n_classes,): each bag's loss times its class's weight
    (e.g. :func:`balanced_class_weights`; the mean of a step is then the sum of weighted losses over the bags of the
    step, not over their weights, so that a step of one bag keeps its weight). A model's ``aux_loss`` (CLAM) adds its
    label's term to ``bag_weight`` times the bag loss. ``objective``: a survival or
    regression head (:class:`Objective`; ``y`` its targets); None: classification."""
    if isinstance(objective, CompositeObjective):
        y = y.reshape(out.logits.shape[0], -1)
        return sum(bag_losses(MILOutput(out.logits[:, o]), y[:, t.start] if part is None else y[:, t],
                              class_weights if part is None else None, part) for part, o, t in objective.parts)
    if objective is not None and objective.loss in TARGET_LOSSES:
        if class_weights is not None:
            raise ValueError("class weights are for classification")
        return task_losses(out, y, objective)
    losses = _bag_losses(out, y)
    if out.aux_loss is not None:  # e.g. CLAM's instance clustering: the term of each bag's own label
        aux = out.aux_loss.gather(1, y.long().reshape(-1, 1).to(out.aux_loss.device))[:, 0]
        losses = out.bag_weight * losses + aux.to(losses.dtype)
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
