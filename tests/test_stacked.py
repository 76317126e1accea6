"""The stacked engine: K runs trained at once, each getting the weights it would get trained alone.

The reference is :func:`abmil.train.fit.fit` on one model. In float64 the stacked weights must
match it to 1e-9 (only summation order differs), for SGD (Nesterov, L2 on weights only, Keras lr
decay) and Adam (coupled L2), one and four bags per step, with keyed dropout, deep supervision and
instance-level pooling, and with runs of different training-set sizes so that some runs sit out
the last steps of an epoch. To keep the file fast, most checks train on a stratified subset of
the shipped Musk1 bags (the runs still index into the full dataset).
"""
from __future__ import annotations

import itertools
from functools import cache

import numpy as np
import pytest
import torch

from abmil.data.benchmarks import load_benchmark
from abmil.nn.zoo import benchmark_model
from abmil.train.config import TrainConfig
from abmil.train.cv import cv_splits, fold_standardiser, run_cv
from abmil.train.fit import fit, predict
from abmil.train.presets import benchmark_config
from abmil.train.stacked import RunSpec, StackedTrainer, size_segments

IN_DIM = 166
N_RUNS = 4

OPTIMIZERS = {
    "sgd": dict(optimizer="sgd", lr=5e-3, weight_decay=1e-2, decay_biases=False, momentum=0.9, nesterov=True,
                lr_decay=1e-2),
    "adam": dict(optimizer="adam", lr=1e-3, weight_decay=5e-3),
}
MODELS = ("gated", "mi-net-ds", "instance-max")


@cache
def musk1():
    return load_benchmark("musk1")


@cache
def subset() -> np.ndarray:
    """A stratified subset of Musk1 bag indices (with its largest bag, for padding)."""
    ds = musk1()
    rng = np.random.default_rng(0)
    pos, neg = np.flatnonzero(ds.labels == 1), np.flatnonzero(ds.labels == 0)
    sizes = np.array([len(b) for b in ds.bags])
    pick = set(rng.choice(pos, 6, replace=False)) | set(rng.choice(neg, 6, replace=False)) | {int(sizes.argmax())}
    return np.array(sorted(pick))


def make_runs(folds: int = 4) -> list[RunSpec]:
    """4 CV runs on the subset; run k drops training bags down to (smallest fold - 0, 1, 3 or 5), so sizes differ."""
    ds, sub = musk1(), subset()
    splits = cv_splits(ds.labels[sub], folds=folds, repeats=1, seed=0)[:N_RUNS]
    m = min(len(s.train) for s in splits)
    runs = []
    for k, s in enumerate(splits):
        train = sub[s.train][:m - (0, 1, 3, 5)[k]]
        mu, sd = fold_standardiser(ds.bags, train)
        runs.append(RunSpec(s.seed, train, mu, sd))
    assert len({len(r.train) for r in runs}) == N_RUNS
    return runs


def held_out_sets(runs) -> list[np.ndarray]:
    """Bags each run predicts: the subset bags it did not train on, plus two it did."""
    sub = subset()
    return [np.concatenate([np.setdiff1d(sub, r.train), r.train[:2]]) for r in runs]


def solo(key: str, run: RunSpec, cfg: TrainConfig, dtype: torch.dtype):
    """Run trained alone with fit(): the reference."""
    ds = musk1()
    torch.manual_seed(run.seed)
    model = benchmark_model(key, IN_DIM).to(dtype)
    std = {i: (torch.as_tensor(ds.bags[i]).to(dtype) - run.shift.to(dtype)) / run.scale.to(dtype)
           for i in range(len(ds.bags))}
    fit(model, [std[i] for i in run.train], torch.as_tensor(ds.labels[run.train]), cfg, seed=run.seed)
    return model, std


def stacked(key: str, runs, cfg: TrainConfig, dtype: torch.dtype, overhead: float = 64.0) -> StackedTrainer:
    ds = musk1()
    trainer = StackedTrainer(lambda: benchmark_model(key, IN_DIM), [torch.as_tensor(b) for b in ds.bags],
                             torch.as_tensor(ds.labels), runs, cfg, bucket_overhead=overhead, dtype=dtype)
    trainer.fit()
    return trainer


def param_diff(model: torch.nn.Module, params: dict[str, torch.Tensor]) -> float:
    named = dict(model.named_parameters())
    assert set(named) == set(params)
    return max((p.detach() - params[n]).abs().max().item() for n, p in named.items())


# ----------------------------------------------------------------------------- the central claim
@pytest.mark.parametrize("batch_size", [1, 4])
@pytest.mark.parametrize("opt", list(OPTIMIZERS))
@pytest.mark.parametrize("key", MODELS)
def test_stacked_equals_solo_float64(key, opt, batch_size):
    cfg = TrainConfig(**OPTIMIZERS[opt], epochs=2, batch_size=batch_size)
    runs = make_runs()
    # bs=1: a small bucket overhead splits the runs into size groups (the partial-group path)
    trainer = stacked(key, runs, cfg, torch.float64, overhead=0.5 if batch_size == 1 else 64.0)
    expected_steps = [cfg.epochs * -(-len(r.train) // batch_size) for r in runs]
    assert trainer.steps.tolist() == expected_steps
    assert len(set(expected_steps)) > 1  # some runs are inactive at the end of an epoch
    sets = held_out_sets(runs)
    stacked_probs = trainer.predict(sets)
    for k, run in enumerate(runs):
        model, std = solo(key, run, cfg, torch.float64)
        params = trainer.params(k)
        assert all(v.dtype == torch.float64 for v in params.values())
        assert param_diff(model, params) < 1e-9, (key, opt, batch_size, k)
        # predictions: the stacked trainer's, fit.predict of the solo model, and of trainer.model(k)
        p_solo, _ = predict(model, [std[i] for i in sets[k]])
        p_model, _ = predict(trainer.model(k), [std[i] for i in sets[k]])
        assert stacked_probs[k].shape == (len(sets[k]),)
        assert (stacked_probs[k] - p_solo).abs().max().item() < 1e-9
        assert (p_model - p_solo).abs().max().item() < 1e-9
    # the runs did train (and differently)
    torch.manual_seed(runs[0].seed)
    init = benchmark_model(key, IN_DIM).double()
    assert param_diff(init, trainer.params(0)) > 1e-6
    assert param_diff(trainer.model(0), trainer.params(1)) > 1e-6


@pytest.mark.parametrize("key", ["gated", "mi-net-ds"])
def test_stacked_equals_solo_float32_sgd(key):
    cfg = TrainConfig(**OPTIMIZERS["sgd"], epochs=1, batch_size=1)
    runs = make_runs()
    trainer = stacked(key, runs, cfg, torch.float32, overhead=4.0)
    for k in (0, N_RUNS - 1):
        model, _ = solo(key, runs[k], cfg, torch.float32)
        params = trainer.params(k)
        assert all(v.dtype == torch.float32 for v in params.values())
        assert param_diff(model, params) < 1e-4


def test_inactive_runs_untouched_at_epoch_end():
    # A run with fewer bags must not move while the others finish the epoch: with a run that
    # has a single training bag, it takes exactly one step per epoch.
    ds = musk1()
    runs = make_runs()
    one = RunSpec(runs[0].seed + 7, runs[0].train[:1], runs[0].shift, runs[0].scale)
    cfg = TrainConfig(**OPTIMIZERS["adam"], epochs=2, batch_size=1)
    trainer = stacked("instance-max", [runs[1], one], cfg, torch.float64)
    assert trainer.steps.tolist() == [2 * len(runs[1].train), 2.0]
    model, _ = solo("instance-max", one, cfg, torch.float64)
    assert param_diff(model, trainer.params(1)) < 1e-9
    assert len(ds.bags) == 92


# ----------------------------------------------------------------------------- size_segments
def _cost(groups, sizes, overhead):
    return sum(overhead + len(g) * sizes[g].max() for g in groups)


def _range_partitions(k):
    """Every split of 0..k-1 into contiguous ranges."""
    for cuts in itertools.product([False, True], repeat=max(k - 1, 0)):
        bounds = [0, *(i + 1 for i, c in enumerate(cuts) if c), k]
        yield [list(range(a, b)) for a, b in zip(bounds[:-1], bounds[1:])]


def _check_partition(groups, k):
    assert all(len(g) > 0 for g in groups)
    flat = np.concatenate(groups)
    assert np.array_equal(flat, np.arange(k))  # contiguous ranges, in order


@pytest.mark.parametrize("seed", range(20))
def test_size_segments_partition(seed):
    rng = np.random.default_rng(seed)
    k = int(rng.integers(1, 40))
    sizes = rng.integers(1, 200, size=k)
    for overhead in (0.0, 1.0, 30.0, 1e6):
        groups = size_segments(sizes, overhead)
        _check_partition(groups, k)
    assert len(size_segments(sizes, 1e9)) == 1


@pytest.mark.parametrize("seed", range(12))
def test_size_segments_optimal_brute_force(seed):
    rng = np.random.default_rng(100 + seed)
    k = int(rng.integers(1, 8))
    sizes = rng.integers(1, 12, size=k) * int(rng.choice([1, 10]))  # with ties
    for overhead in (0.0, 0.5, 3.0, 17.0, 100.0):
        groups = size_segments(sizes, overhead)
        _check_partition(groups, k)
        best = min(_cost([np.array(g) for g in p], sizes, overhead) for p in _range_partitions(k))
        assert _cost(groups, sizes, overhead) == pytest.approx(best), (sizes, overhead)


def test_size_segments_small_cases():
    assert [g.tolist() for g in size_segments(np.array([5]), 10.0)] == [[0]]
    # cheap groups: every distinct size alone
    groups = size_segments(np.array([1, 100, 1000]), 0.0)
    assert sorted(g.tolist() for g in groups) == [[0], [1], [2]]
    # expensive groups: one group
    assert [sorted(g.tolist()) for g in size_segments(np.array([1, 100, 1000]), 1e4)] == [[0, 1, 2]]


# ----------------------------------------------------------------------------- determinism
def test_same_seed_same_weights_different_seed_different():
    cfg = TrainConfig(**OPTIMIZERS["sgd"], epochs=1, batch_size=2)
    runs = make_runs()[:2]
    a = stacked("gated", runs, cfg, torch.float32)
    b = stacked("gated", runs, cfg, torch.float32)
    assert all(torch.equal(a.weights[n], b.weights[n]) for n in a.weights)
    other = [RunSpec(r.seed + 1, r.train, r.shift, r.scale) for r in runs]
    c = stacked("gated", other, cfg, torch.float32)
    assert all(not torch.equal(a.params(k)[n], c.params(k)[n]) for k in (0, 1) for n in ('encoder.layers.0.weight',))


@pytest.mark.parametrize("engine", ["stacked", "sequential", "direct"])
def test_run_cv_deterministic(engine):
    ds, sub = musk1(), subset()
    bags, labels = [ds.bags[i] for i in sub], ds.labels[sub]
    cfg = TrainConfig(**OPTIMIZERS["sgd"], epochs=1)

    def go(seed):
        return run_cv(bags, labels, lambda: benchmark_model("gated", IN_DIM), cfg, folds=3, repeats=1, seed=seed,
                      engine=engine)

    r1, r2, r3 = go(0), go(0), go(1)
    assert all(np.array_equal(a, b) for a, b in zip(r1.probs, r2.probs))
    assert all(np.array_equal(a.test, b.test) for a, b in zip(r1.splits, r2.splits))
    assert not any(np.array_equal(a.test, b.test) and np.array_equal(p, q)
                   for a, b, p, q in zip(r1.splits, r3.splits, r1.probs, r3.probs))


# ----------------------------------------------------------------------------- run_cv engines agree
def test_run_cv_engines_agree_musk1():
    ds = musk1()
    cfg = benchmark_config("musk1", "attention", epochs=2)
    done = []

    def go(engine):
        return run_cv(ds.bags, ds.labels, lambda: benchmark_model("attention", IN_DIM), cfg, folds=3, repeats=1,
                      seed=0, engine=engine, progress=lambda d, t: done.append((engine, d, t)))

    st, sq, di, auto = go("stacked"), go("sequential"), go("direct"), go("auto")
    assert len(st.probs) == len(sq.probs) == len(di.probs) == 3
    for s, p, q, r, a in zip(st.splits, st.probs, sq.probs, di.probs, auto.probs):
        assert p.shape == q.shape == r.shape == (len(s.test),)
        assert np.abs(p - q).max() < 1e-4 and np.abs(r - q).max() < 1e-4
        assert np.array_equal(a, r)  # auto picks direct for an MLP attention model at batch size 1
    assert np.array_equal(st.accuracies(ds.labels), sq.accuracies(ds.labels))
    assert np.array_equal(di.accuracies(ds.labels), sq.accuracies(ds.labels))
    assert ("stacked", 2, 2) in done and ("sequential", 3, 3) in done and ("direct", 3, 3) in done
    with pytest.raises(ValueError):
        run_cv(ds.bags, ds.labels, lambda: benchmark_model("attention", IN_DIM), cfg, folds=3, repeats=1,
               engine="parallel")


def test_cv_splits_partition_and_seeds():
    labels = musk1().labels
    splits = cv_splits(labels, folds=5, repeats=2, seed=3)
    assert len(splits) == 10
    assert len({s.seed for s in splits}) == 10
    for r in range(2):
        tests = np.concatenate([s.test for s in splits if s.repeat == r])
        assert np.array_equal(np.sort(tests), np.arange(len(labels)))
    for s in splits:
        assert len(np.intersect1d(s.train, s.test)) == 0
        assert len(s.train) + len(s.test) == len(labels)
    a, b = [s.test for s in splits if s.repeat == 0], [s.test for s in splits if s.repeat == 1]
    assert not all(np.array_equal(x, y) for x, y in zip(a, b))


def test_fold_standardiser_uses_training_bags_only():
    ds = musk1()
    train = np.arange(10)
    mu, sd = fold_standardiser(ds.bags, train)
    x = np.concatenate([ds.bags[i] for i in train]).astype(np.float64)
    assert mu.shape == sd.shape == (IN_DIM,)
    assert np.allclose(mu.numpy(), x.mean(0), atol=1e-4)
    ref_sd = x.std(0)
    ref_sd[ref_sd == 0] = 1.0
    assert np.allclose(sd.numpy(), ref_sd, rtol=1e-5)
    assert (sd > 0).all()


@pytest.mark.parametrize("engine, expected_ticks", [("stacked", [(1, 1)]), ("direct", [(2, 3), (3, 3)])])
def test_run_cv_in_two_worker_processes_gives_the_same_numbers(engine, expected_ticks):
    """n_jobs splits the runs over forked workers; each run is trained exactly as before. Worker 0 reports progress
    (the direct engine: its share of the runs, scaled to all runs)."""
    from abmil.data.benchmarks import load_benchmark
    from abmil.nn.zoo import benchmark_model
    from abmil.train.cv import run_cv
    from abmil.train.presets import benchmark_config

    ds = load_benchmark("musk1")
    cfg = benchmark_config("musk1", "gated", epochs=1)
    one = run_cv(ds.bags, ds.labels, lambda: benchmark_model("gated", 166), cfg, folds=3, repeats=1, n_jobs=1,
                 engine=engine)
    ticks = []
    two = run_cv(ds.bags, ds.labels, lambda: benchmark_model("gated", 166), cfg, folds=3, repeats=1, n_jobs=2,
                 progress=lambda done, total: ticks.append((done, total)), engine=engine)
    assert ticks == expected_ticks
    for a, b in zip(one.probs, two.probs):
        np.testing.assert_allclose(a, b, atol=1e-5)
