"""The direct engine: one run, backward passes written out, the same weights as :func:`abmil.train.fit.fit`.

In float64 the weights after training must match ``fit``'s to 1e-9 (only summation order may differ), for SGD
(Nesterov, L2 on weights only, Keras lr decay) and Adam (coupled L2), with keyed dropout in the encoder and on the
bag embedding, for every pooling the engine takes.
"""
from __future__ import annotations

import dataclasses
from functools import cache

import numpy as np
import pytest
import torch

from abmil.data.benchmarks import load_benchmark
from abmil.nn import AttentionPool, EmbeddingMIL, MLPEncoder
from abmil.nn.dropout import hash_keep_masks, hash_uniform
from abmil.nn.zoo import benchmark_model, mnist_bags_model
from abmil.train import engines
from abmil.train.config import TrainConfig
from abmil.train.direct import DirectTrainer, supports
from abmil.train.fit import fit

OPTIMIZERS = {
    "sgd": dict(optimizer="sgd", lr=5e-3, weight_decay=1e-2, decay_biases=False, momentum=0.9, nesterov=True,
                lr_decay=1e-2),
    "adam": dict(optimizer="adam", lr=1e-3, weight_decay=5e-3),
}
DIRECT_KEYS = ("attention", "gated", "embedding-max", "embedding-mean", "instance-max", "instance-mean")


@cache
def musk1_subset():
    """24 Musk1 bags (both classes, the largest bag included), float64, standardised."""
    ds = load_benchmark("musk1")
    sizes = np.array([len(b) for b in ds.bags])
    pick = np.unique(np.concatenate([np.arange(0, 92, 4), [sizes.argmax()]]))
    x = np.concatenate([ds.bags[i] for i in pick]).astype(np.float64)
    mu, sd = x.mean(0), x.std(0) + 1e-6
    return [torch.as_tensor((ds.bags[i] - mu) / sd) for i in pick], torch.as_tensor(ds.labels[pick]).double()


def train_both(build, cfg, seed=7):
    bags, labels = musk1_subset()
    torch.manual_seed(1)
    ref = build().double()
    torch.manual_seed(1)
    ours = build().double()
    start = {n: p.detach().clone() for n, p in ref.named_parameters()}
    fit(ref, bags, labels, cfg, seed=seed)
    DirectTrainer(ours, cfg, seed=seed).fit(bags, labels)
    return ref, ours, start


@pytest.mark.parametrize("opt", sorted(OPTIMIZERS))
@pytest.mark.parametrize("key", DIRECT_KEYS)
def test_direct_equals_fit_float64(key, opt):
    cfg = TrainConfig(**OPTIMIZERS[opt], epochs=3)
    ref, ours, start = train_both(lambda: benchmark_model(key, 166), cfg)
    moved = max((p - start[n]).abs().max().item() for n, p in ref.named_parameters())
    assert moved > 1e-3  # the run trained: equality is not two untouched models
    for (name, a), b in zip(ref.named_parameters(), ours.parameters()):
        assert torch.allclose(a, b, rtol=0, atol=1e-9), name


def test_direct_equals_fit_with_bag_embedding_dropout():
    """EmbeddingMIL's optional dropout on the pooled vector (salt 101) is reproduced too."""
    def build():
        return EmbeddingMIL(MLPEncoder(166, (32, 16), dropout=0.3), AttentionPool(16, 8, gated=True), dropout=0.5)

    ref, ours, _ = train_both(build, TrainConfig(**OPTIMIZERS["sgd"], epochs=2))
    for a, b in zip(ref.parameters(), ours.parameters()):
        assert torch.allclose(a, b, rtol=0, atol=1e-9)


def test_direct_float32_close_to_fit_and_deterministic():
    bags, labels = musk1_subset()
    bags = [b.float() for b in bags]
    cfg = TrainConfig(**OPTIMIZERS["sgd"], epochs=2)
    models = []
    for _ in range(2):
        torch.manual_seed(3)
        m = benchmark_model("gated", 166)
        DirectTrainer(m, cfg, seed=3).fit(bags, labels.float())
        models.append(m)
    torch.manual_seed(3)
    ref = benchmark_model("gated", 166)
    fit(ref, bags, labels.float(), cfg, seed=3)
    for a, b, r in zip(models[0].parameters(), models[1].parameters(), ref.parameters()):
        assert torch.equal(a, b)  # same seed, same numbers
        assert torch.allclose(a, r, rtol=0, atol=1e-4)


@pytest.mark.parametrize("seed, salt, p", [(0, 0, 0.2), (123456, 2, 0.5), (2**31 - 1, 101, 0.2), (7, 1, 0.9)])
def test_hash_keep_masks_equal_hash_uniform(seed, salt, p):
    """Many steps at once, of sizes 1 to 40 x 256 elements, from step 0 and from a large step."""
    sizes = np.array([5 * 256, 1, 40 * 128, 64, 3 * 256])
    for first in (0, 2**30):
        steps = range(first, first + len(sizes))
        flat = hash_keep_masks(seed, steps, salt, sizes, p)
        assert flat.dtype == np.bool_ and flat.shape == (sizes.sum(),)
        for part, step, n in zip(np.split(flat, np.cumsum(sizes)[:-1]), steps, sizes):
            ref = hash_uniform(torch.tensor([[seed, step]]), salt, int(n))[0] >= p
            assert np.array_equal(part, ref.numpy())


def test_supports_and_refuses():
    sgd = TrainConfig(**OPTIMIZERS["sgd"])
    assert all(supports(benchmark_model(k, 166), sgd) for k in DIRECT_KEYS)
    assert not supports(benchmark_model("gated", 166), TrainConfig(**OPTIMIZERS["sgd"], batch_size=2))
    for model in (benchmark_model("mi-net-ds", 166), benchmark_model("mi-net-rc", 166), mnist_bags_model("gated")):
        assert not supports(model, sgd)
        with pytest.raises(ValueError, match="direct engine"):
            DirectTrainer(model, sgd, seed=0)


def test_fit_auto_takes_the_direct_engine_where_it_applies_and_fit_elsewhere(monkeypatch):
    bags, labels = musk1_subset()
    cfg = TrainConfig(**OPTIMIZERS["sgd"], epochs=1)
    used = []
    monkeypatch.setattr(engines, "fit", lambda *a, **k: used.append("fit") or fit(*a, **k))
    for key in ("gated", "mi-net-ds"):
        torch.manual_seed(0)
        ours = engines.fit_auto(benchmark_model(key, 166).double(), bags, labels, cfg, seed=1)
        torch.manual_seed(0)
        ref = benchmark_model(key, 166).double()
        fit(ref, bags, labels, cfg, seed=1)
        assert all(torch.allclose(a, b, rtol=0, atol=1e-9) for a, b in zip(ours.parameters(), ref.parameters()))
    assert used == ["fit"]  # only mi-net-ds went through fit


def test_one_engine_rule_for_cv_and_single_runs():
    sgd = TrainConfig(**OPTIMIZERS["sgd"], epochs=1)
    gated, ds = benchmark_model("gated", 166), benchmark_model("mi-net-ds", 166)
    assert engines.resolve_engine("auto", gated, sgd, n_runs=50) == "direct"
    assert engines.resolve_engine("auto", gated, sgd) == "direct"
    assert engines.resolve_engine("auto", ds, sgd, n_runs=50) == "stacked"  # several runs: stacked pays off
    assert engines.resolve_engine("auto", ds, sgd) == "sequential"  # one run: fit itself
    assert engines.resolve_engine("stacked", gated, sgd) == "stacked"
    with pytest.raises(ValueError, match="engine must be one of"):
        engines.resolve_engine("fast", gated, sgd)


def test_model_selection_on_validation_is_the_same_epoch_and_weights_in_both_engines():
    """The supplement preset's engines: direct with per-epoch validation = fit with EarlyStopping(patience=None)."""
    from abmil.train.loop import EarlyStopping
    from abmil.train.presets import benchmark_config

    bags, labels = musk1_subset()
    tr, va = list(range(0, 24, 5)) + list(range(1, 24, 5)), None
    va = [i for i in range(len(bags)) if i not in tr]
    train_bags, val_bags = [bags[i] for i in tr], [bags[i] for i in va]
    cfg = benchmark_config("musk1", "gated", epochs=6, preset="supplement")
    stopping = EarlyStopping(patience=None)
    kept, models = [], []
    for engine in ("sequential", "direct"):
        torch.manual_seed(3)
        model = benchmark_model("gated", 166).double()
        kept.append(engines.train_run(engine, model, train_bags, labels[tr], cfg, seed=5, val_bags=val_bags,
                                      val_labels=labels[va].numpy(), stopping=stopping))
        models.append(model)
    assert kept[0] == kept[1] and 0 <= kept[0] < 5  # not the last epoch: selection did something
    for a, b in zip(*(m.parameters() for m in models)):
        assert torch.allclose(a, b, rtol=0, atol=1e-9)
    # The kept weights are those of the kept epoch, not the last: retrain without selection for kept + 1 epochs.
    torch.manual_seed(3)
    ref = benchmark_model("gated", 166).double()
    engines.train_run("direct", ref, train_bags, labels[tr], dataclasses.replace(cfg, epochs=kept[0] + 1), seed=5)
    assert all(torch.allclose(a, b, rtol=0, atol=1e-9) for a, b in zip(ref.parameters(), models[1].parameters()))


def test_validating_runs_never_take_the_stacked_engine():
    sgd = TrainConfig(**OPTIMIZERS["sgd"], epochs=1)
    ds = benchmark_model("mi-net-ds", 166)
    assert engines.resolve_engine("auto", ds, sgd, n_runs=50, validates=True) == "sequential"
    with pytest.raises(ValueError, match="stacked engine does not validate"):
        engines.resolve_engine("stacked", ds, sgd, n_runs=50, validates=True)
