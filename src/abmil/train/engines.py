"""Which engine trains a run: one rule for cross-validation and for single runs.

All engines give :func:`abmil.train.fit.fit`'s numbers (tests: equal weights to 1e-9 in float64):

- ``"direct"`` (:mod:`abmil.train.direct`): one run at a time without autograd; MLP-encoder models at one bag per
  step (:func:`abmil.train.direct.supports`), the fastest where it applies;
- ``"stacked"`` (:mod:`abmil.train.stacked`): many runs at once as batched matmuls; any model made of ``nn.Linear``
  layers, any batch size; it pays off only with several runs;
- ``"sequential"``: :func:`abmil.train.fit.fit` itself, any model.

``"auto"``: direct where it applies, else stacked for several runs, else sequential.
"""
from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from .config import TrainConfig
from .direct import DirectTrainer, supports
from .fit import fit

ENGINES = ("auto", "direct", "stacked", "sequential")


def resolve_engine(engine: str, model: nn.Module, config: TrainConfig, n_runs: int = 1) -> str:
    """The engine ``engine`` names, with ``"auto"`` resolved for ``model`` trained ``n_runs`` times."""
    if engine not in ENGINES:
        raise ValueError(f"engine must be one of {', '.join(ENGINES)}, got {engine!r}")
    if engine != "auto":
        return engine
    if supports(model, config):
        return "direct"
    return "stacked" if n_runs > 1 else "sequential"


def fit_auto(model: nn.Module, bags: Sequence[Tensor], labels: Tensor, config: TrainConfig, *,
             seed: int) -> nn.Module:
    """One run with :func:`fit`'s numbers, through the engine ``"auto"`` picks; returns ``model``, trained."""
    if resolve_engine("auto", model, config) == "direct":
        return DirectTrainer(model, config, seed=seed).fit(bags, labels)
    fit(model, bags, labels, config, seed=seed)
    return model
