"""Repeated k-fold cross-validation, the paper's protocol for the MIL benchmarks.

Each (repeat, fold) is one *run*: a fresh model trained on the training folds and scored on the
held-out fold. Runs are independent: the direct engine trains them one by one without autograd
(``abmil.train.direct``), the stacked engine all at once (``abmil.train.stacked``), with the same
numbers as training them one by one with :func:`abmil.train.fit.fit`.
"""
from __future__ import annotations

import multiprocessing as mp
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from sklearn.model_selection import StratifiedKFold
from torch import nn

from .config import TrainConfig
from .engines import resolve_engine, train_run
from .fit import predict, validation_split
from .loop import EarlyStopping
from .stacked import RunSpec, StackedTrainer


@dataclass(frozen=True)
class Split:
    repeat: int
    fold: int
    seed: int
    train: np.ndarray
    test: np.ndarray


def cv_splits(labels: np.ndarray, *, folds: int = 10, repeats: int = 5, seed: int = 0) -> list[Split]:
    """Stratified ``folds``-fold splits, reshuffled for each repeat; each run gets its own seed."""
    labels = np.asarray(labels)
    out = []
    for r in range(repeats):
        skf = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed * 1000 + r)
        for f, (tr, te) in enumerate(skf.split(np.zeros(len(labels)), labels)):
            out.append(Split(r, f, seed * 100_000 + r * 1000 + f, tr, te))
    return out


def fold_standardiser(bags: Sequence[np.ndarray], train: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-feature mean and std of the training fold's instances (std 0 → 1).

    Statistics from the training folds only: Wang et al.'s code standardises with the whole
    dataset, test folds included, which leaks.
    """
    x = np.concatenate([bags[i] for i in train]).astype(np.float64)
    sd = x.std(0)
    sd[sd == 0] = 1.0
    return torch.as_tensor(x.mean(0), dtype=torch.float32), torch.as_tensor(sd, dtype=torch.float32)


@dataclass
class CVResult:
    splits: list[Split]
    probs: list[np.ndarray] = field(default_factory=list)
    """each run's test-bag probabilities, aligned with ``splits[k].test``."""
    best_epochs: list[int] = field(default_factory=list)
    """each run's kept epoch (0-based) under model selection on validation; empty without it."""

    def accuracies(self, labels: np.ndarray) -> np.ndarray:
        return np.array([np.mean((p >= 0.5) == (labels[s.test] == 1)) for s, p in zip(self.splits, self.probs)])


def run_cv(bags: Sequence[np.ndarray], labels: np.ndarray, model_factory: Callable[[], nn.Module],
           config: TrainConfig, *, folds: int = 10, repeats: int = 5, seed: int = 0, engine: str = "auto",
           progress: Callable[[int, int], None] | None = None, n_jobs: int = 1,
           stopping: EarlyStopping | None = None) -> CVResult:
    """Train and test one model per (repeat, fold).

    Args:
        engine: how the runs are trained; all give the same numbers (to float rounding):
            ``"direct"`` one run after another with hand-written backward passes
            (:mod:`abmil.train.direct`; MLP-encoder models at batch size 1), ``"stacked"`` all runs at
            once (:mod:`abmil.train.stacked`), ``"sequential"`` one after another with
            :func:`abmil.train.fit.fit`; ``"auto"``: :func:`abmil.train.engines.resolve_engine`.
        progress: called as ``progress(done, total)`` in epochs (stacked) or runs (direct, sequential).
        n_jobs: split the runs over this many forked worker processes (one CPU core each); the runs
            are independent, so the numbers do not change.
        stopping: model selection on a validation split: ``stopping.val_fraction`` of each run's training folds
            held out (:func:`abmil.train.fit.validation_split`, stratified, keyed by the run's seed), the epoch
            with the best validation score kept (and training stopped after ``stopping.patience`` epochs without
            one, unless it is None). Engines ``"direct"`` and ``"sequential"`` only (``"auto"`` picks one of them).
    """
    labels = np.asarray(labels)
    engine = resolve_engine(engine, model_factory(), config, n_runs=folds * repeats, validates=stopping is not None)
    splits = cv_splits(labels, folds=folds, repeats=repeats, seed=seed)
    stats = [fold_standardiser(bags, s.train) for s in splits]
    result = CVResult(splits)
    tensors = [torch.as_tensor(b) for b in bags]
    if engine == "stacked":
        runs = [RunSpec(s.seed, s.train, mu, sd) for s, (mu, sd) in zip(splits, stats)]
        tests = [s.test for s in splits]

        def train(part: slice, report: Callable[[int], None] | None) -> list[np.ndarray]:
            trainer = StackedTrainer(model_factory, tensors, torch.as_tensor(labels), runs[part], config)
            trainer.fit(progress=None if report is None else (lambda e: report(e + 1)))
            return [p.numpy() for p in trainer.predict(tests[part])]

        total = config.epochs
    else:
        def train(part: slice, report: Callable[[int], None] | None) -> list[tuple[np.ndarray, int]]:
            ks = range(len(splits))[part]
            out = []
            for j, k in enumerate(ks):
                s, (mu, sd) = splits[k], stats[k]
                torch.manual_seed(s.seed)
                model = model_factory()
                std = [(b - mu) / sd for b in tensors]
                train_idx, val_idx = s.train, s.train[:0]
                if stopping is not None:
                    keep, held = validation_split(labels[s.train], stopping.val_fraction, s.seed)
                    train_idx, val_idx = s.train[keep], s.train[held]
                train_bags, train_labels = [std[i] for i in train_idx], torch.as_tensor(labels[train_idx])
                val_bags, val_labels = [std[i] for i in val_idx], labels[val_idx]
                best_epoch = train_run(engine, model, train_bags, train_labels, config, seed=s.seed,
                                       val_bags=val_bags, val_labels=val_labels, stopping=stopping)
                out.append((predict(model, [std[i] for i in s.test])[0].numpy(), best_epoch))
                if report is not None:  # this part's share of the runs, scaled to all runs
                    report(round((j + 1) * len(splits) / len(ks)))
            return out

        total = len(splits)
    report = None if progress is None else (lambda done: progress(done, total))
    n_jobs = max(1, min(int(n_jobs), len(splits)))
    runs = train(slice(None), report) if n_jobs == 1 else _in_workers(train, len(splits), n_jobs, report)
    if engine == "stacked":
        result.probs = runs
    else:
        result.probs = [p for p, _ in runs]
        if stopping is not None:
            result.best_epochs = [e for _, e in runs]
    return result


def _in_workers(train: Callable, n_runs: int, n_jobs: int, report: Callable[[int], None] | None) -> list:
    """Run ``train(part, report)`` on ``n_jobs`` contiguous parts of the runs in forked processes.

    Fork (not spawn): the children inherit the data and the model factory without pickling them;
    only each run's result (numpy arrays and ints we made) comes back. Worker 0 reports progress.
    """
    ctx = mp.get_context("fork")
    queue = ctx.Queue()
    bounds = np.linspace(0, n_runs, n_jobs + 1).round().astype(int)

    def work(j: int) -> None:
        torch.set_num_threads(1)
        try:
            tick = (lambda e: queue.put(("epoch", j, e))) if j == 0 else None
            queue.put(("done", j, train(slice(bounds[j], bounds[j + 1]), tick)))
        except BaseException as exc:  # noqa: BLE001 - reported to the parent, which raises
            queue.put(("error", j, f"{type(exc).__name__}: {exc}"))

    procs = [ctx.Process(target=work, args=(j,), daemon=True) for j in range(n_jobs)]
    for p in procs:
        p.start()
    parts: dict[int, list] = {}
    try:
        while len(parts) < n_jobs:
            kind, j, payload = queue.get()
            if kind == "epoch" and report is not None:
                report(payload)
            elif kind == "done":
                parts[j] = payload
            elif kind == "error":
                raise RuntimeError(f"CV worker {j} failed: {payload}")
    finally:
        for p in procs:
            if p.is_alive() and len(parts) < n_jobs:
                p.terminate()
            p.join()
    return [prob for j in range(n_jobs) for prob in parts[j]]
