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

import numpy as np
from torch import Tensor, nn

from .config import TrainConfig
from .direct import DirectTrainer, supports
from .fit import fit, score_bags
from .loop import BestEpoch, EarlyStopping

ENGINES = ("auto", "direct", "stacked", "sequential")


def resolve_engine(engine: str, model: nn.Module, config: TrainConfig, n_runs: int = 1, *,
                   validates: bool = False) -> str:
    """The engine ``engine`` names, with ``"auto"`` resolved for ``model`` trained ``n_runs`` times.

    ``validates``: the runs select their epoch on a validation split, which the stacked engine does not do."""
    if engine not in ENGINES:
        raise ValueError(f"engine must be one of {', '.join(ENGINES)}, got {engine!r}")
    if validates and engine == "stacked":
        raise ValueError("the stacked engine does not validate: use engine 'direct', 'sequential' or 'auto' "
                         "with model selection on a validation split")
    if engine != "auto":
        return engine
    if supports(model, config):
        return "direct"
    return "stacked" if n_runs > 1 and not validates else "sequential"


def train_run(engine: str, model: nn.Module, bags: Sequence[Tensor], labels: Tensor, config: TrainConfig, *,
              seed: int, val_bags: Sequence[Tensor] = (), val_labels: Tensor | np.ndarray | None = None,
              stopping: EarlyStopping | None = None) -> int:
    """Train ``model`` in place with :func:`fit`'s numbers through ``engine`` (``"direct"`` or ``"sequential"``).

    With ``stopping``, every epoch is scored on ``val_bags`` (:func:`abmil.train.fit.score_bags`) and the best one's
    weights are kept (:class:`abmil.train.loop.BestEpoch`, as :func:`fit` keeps them). Returns the kept epoch
    (0-based; -1 without ``stopping``: the last)."""
    if engine == "sequential":
        history = fit(model, bags, labels, config, seed=seed, val_bags=val_bags if stopping else None,
                      val_labels=val_labels, stopping=stopping)
        return history.best_epoch
    if engine != "direct":
        raise ValueError(f"train_run trains one run with engine 'direct' or 'sequential', got {engine!r}")
    trainer = DirectTrainer(model, config, seed=seed)
    if stopping is None:
        trainer.fit(bags, labels)
        return -1
    best = BestEpoch(stopping)

    def select(epoch: int) -> bool:
        stop = best.update(epoch, score_bags(model, val_bags, val_labels), model)
        model.train()  # score_bags left it in eval mode
        return stop

    trainer.fit(bags, labels, on_epoch_end=select)
    best.restore(model)
    return best.epoch


def fit_auto(model: nn.Module, bags: Sequence[Tensor], labels: Tensor, config: TrainConfig, *,
             seed: int) -> nn.Module:
    """One run with :func:`fit`'s numbers, through the engine ``"auto"`` picks; returns ``model``, trained."""
    train_run(resolve_engine("auto", model, config), model, bags, labels, config, seed=seed)
    return model
