"""Subnormal weights are flushed to zero at every epoch's end, by every training loop, and that changes no output;
every training loop runs its arithmetic with subnormals treated as zero, and leaves the thread's mode as it was.

The training tests give the first layer an input feature that is always 0 and set that feature's weights to a
float32 subnormal: with no weight decay their gradient and every optimizer update are exactly 0, so only the flush
can zero them (without it they would end the run as they began).
"""
from __future__ import annotations

import math
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

from abmil.data.benchmarks import load_benchmark
from abmil.nn.zoo import benchmark_model, histology_model
from abmil.train.config import TrainConfig
from abmil.train.direct import DirectTrainer
from abmil.train.fit import fit
from abmil.train.loop import EarlyStopping
from abmil.train.stacked import RunSpec, StackedTrainer
from abmil.train.subnormal import flush_subnormal_, subnormals_as_zero, subnormals_flushed

SUB32 = 1e-40  # below torch.finfo(torch.float32).tiny (1.18e-38), above 0
IN_DIM = 166


def test_flush_subnormal_zeroes_subnormals_only():
    tiny32, tiny64 = torch.finfo(torch.float32).tiny, torch.finfo(torch.float64).tiny
    a = torch.tensor([SUB32, -SUB32, tiny32, -tiny32, 1.0, 0.0, math.inf, -math.inf, math.nan], dtype=torch.float32)
    b = torch.tensor([1e-310, tiny64, 1e-40], dtype=torch.float64)  # 1e-40 is a normal float64
    ints = torch.tensor([0, 1, 2])
    assert flush_subnormal_([a, b, ints]) == 3
    assert a[:2].eq(0).all() and a[2] == tiny32 and a[3] == -tiny32 and a[4] == 1.0
    assert a[6] == math.inf and a[7] == -math.inf and a[8].isnan()
    assert b.tolist() == [0.0, tiny64, 1e-40]
    assert flush_subnormal_([a, b]) == 0


def test_flushing_subnormal_weights_changes_no_output_bitwise():
    torch.manual_seed(0)
    model = histology_model("gated", 27).eval()
    fc = model.encoder.fc[0].weight
    with torch.no_grad():
        keep = torch.rand(fc.shape, generator=torch.Generator().manual_seed(1)) < 0.25  # a quarter, as seen
        fc[keep] = torch.sign(fc[keep]) * SUB32
    x = torch.rand(40, 3, 27, 27, generator=torch.Generator().manual_seed(2))
    index = torch.zeros(40, dtype=torch.long)
    with torch.no_grad():
        before = model(x, index, 1)
        assert flush_subnormal_(model.parameters()) == int(keep.sum())
        after = model(x, index, 1)
    assert torch.equal(before.prob, after.prob) and torch.equal(before.weights, after.weights)


@pytest.fixture
def mode_off():
    torch.set_flush_denormal(False)
    yield
    torch.set_flush_denormal(False)


def test_subnormals_as_zero_sets_the_mode_in_the_block_and_restores_it(mode_off):
    sub = torch.tensor([SUB32])
    assert not subnormals_flushed() and (sub * 2).item() != 0
    with subnormals_as_zero() as supported:
        if not supported:
            pytest.skip("this CPU has no flush-to-zero mode")
        assert subnormals_flushed() and (sub * 2).item() == 0 and (sub * 1e30).item() == 0
        with subnormals_as_zero():
            assert subnormals_flushed()
        assert subnormals_flushed()  # the inner block found it on and left it on
    assert not subnormals_flushed() and (sub * 2).item() == pytest.approx(2 * SUB32, rel=1e-5)
    torch.set_flush_denormal(True)  # a user's own setting survives a block
    with subnormals_as_zero():
        pass
    assert subnormals_flushed()


def dead_feature_bags() -> tuple[list[torch.Tensor], torch.Tensor]:
    """20 Musk1 bags, standardised, with feature 0 set to 0 everywhere."""
    ds = load_benchmark("musk1")
    pick = np.arange(0, 92, 92 // 20)[:20]
    x = np.concatenate([ds.bags[i] for i in pick])
    mu, sd = x.mean(0), x.std(0) + 1e-6
    bags = [torch.as_tensor((ds.bags[i] - mu) / sd, dtype=torch.float32) for i in pick]
    for b in bags:
        b[:, 0] = 0.0
    return bags, torch.as_tensor(ds.labels[pick], dtype=torch.float32)


def with_subnormal_column(model: torch.nn.Module) -> torch.nn.Module:
    first = model.encoder.layers[0]
    with torch.no_grad():
        first.weight[:, 0] = SUB32
    return model


CONFIG = dict(optimizer="adam", lr=1e-3, weight_decay=0.0, epochs=2)


def first_column_and_moved(model: torch.nn.Module, start: torch.Tensor) -> tuple[torch.Tensor, float]:
    w = model.encoder.layers[0].weight.detach()
    return w[:, 0], (w[:, 1:] - start[:, 1:]).abs().max().item()


@pytest.mark.parametrize("loop", ["fit", "fit-validated", "direct"])
def test_training_loops_flush_at_epoch_end(loop, mode_off):
    bags, labels = dead_feature_bags()
    torch.manual_seed(0)
    model = with_subnormal_column(benchmark_model("gated", IN_DIM))
    start = model.encoder.layers[0].weight.detach().clone()
    cfg = TrainConfig(**CONFIG)
    modes = []
    record = lambda *_: modes.append(subnormals_flushed())  # noqa: E731
    if loop == "fit":
        fit(model, bags, labels, cfg, seed=3, on_epoch_end=record)
    elif loop == "fit-validated":
        fit(model, bags[:15], labels[:15], cfg, seed=3, val_bags=bags[15:], val_labels=labels[15:],
            stopping=EarlyStopping(patience=5), on_epoch_end=record)
    else:
        DirectTrainer(model, cfg, seed=3).fit(bags, labels, on_epoch_end=record)
    column, moved = first_column_and_moved(model, start)
    assert moved > 1e-4  # the run trained
    assert column.eq(0).all()
    assert modes == [True, True] and not subnormals_flushed()  # on while training, off again after


def test_stacked_engine_flushes_every_run(mode_off):
    bags, labels = dead_feature_bags()
    runs = [RunSpec(seed=s, train=np.arange(s, s + 15)) for s in range(3)]
    trainer = StackedTrainer(lambda: with_subnormal_column(benchmark_model("gated", IN_DIM)), bags, labels, runs,
                             TrainConfig(**CONFIG), dtype=torch.float32)
    start = [trainer.params(k) for k in range(len(runs))]
    name = next(n for n in start[0] if n.endswith("weight") and start[0][n].shape[-1] == IN_DIM)
    assert all(p[name][:, 0].eq(SUB32).all() for p in start)
    modes = []
    trainer.fit(progress=lambda _: modes.append(subnormals_flushed()))
    assert modes == [True, True] and not subnormals_flushed()
    for k in range(len(runs)):
        w = trainer.params(k)[name]
        assert (w[:, 1:] - start[k][name][:, 1:]).abs().max() > 1e-4
        assert w[:, 0].eq(0).all()


def test_whole_slide_training_flushes(tmp_path, monkeypatch, mode_off):
    import h5py

    import abmil.slides.train as wsi
    from abmil.slides.features import FeatureBagDataset
    from wsi_helpers import DIM, load_weights, make_dataset

    manifest, features = make_dataset(tmp_path, 6)
    for path in features.glob("*.h5"):
        with h5py.File(path, "r+") as f:
            f["features"][:, 0] = 0.0
    build = wsi.build_model
    monkeypatch.setattr(wsi, "build_model", lambda *a, **k: with_subnormal_column(build(*a, **k)))
    config = wsi.WSIConfig(epochs=1, hidden=32, att_dim=16, chunk_size=32, lr=1e-3, weight_decay=0.0)
    modes = []
    wsi.train_feature_model(FeatureBagDataset(manifest, features), tmp_path / "run", config,
                            on_epoch=lambda _: modes.append(subnormals_flushed()))
    assert modes == [True] and not subnormals_flushed()
    start = with_subnormal_column(build(DIM, 2, config))
    w = load_weights(tmp_path / "run")["encoder.layers.0.weight"]
    assert (w[:, 1:] - start.encoder.layers[0].weight.detach()[:, 1:]).abs().max() > 1e-5
    assert w[:, 0].eq(0).all()


def test_commands_run_with_the_mode_and_restore_it(monkeypatch, mode_off):
    import abmil.cli as cli

    seen = []
    monkeypatch.setattr(cli, "_demo", lambda args: seen.append(subnormals_flushed()) or 0)
    assert cli.main(["demo"]) == 0
    assert seen == [True] and not subnormals_flushed()


def test_a_command_flushes_in_every_intra_op_thread():
    """The mode is on before torch starts its worker threads, so they have it too (a fresh process, 2 threads)."""
    code = textwrap.dedent("""
        import torch
        import abmil.cli as cli

        torch.set_num_threads(2)

        def probe(args):
            y = torch.full((1_000_000,), 1e-39) * 3.0  # split over both threads
            print("nonzero", int((y != 0).sum()))
            return 0

        cli._demo = probe
        raise SystemExit(cli.main(["demo"]))
    """)
    with subnormals_as_zero() as supported:
        if not supported:
            pytest.skip("this CPU has no flush-to-zero mode")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.split() == ["nonzero", "0"]
