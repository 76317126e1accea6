"""Whole-slide training: the model, the schedule, checkpoints, and resuming a killed run bit for bit.

The resume test really kills a training subprocess (SIGKILL, from inside, after k optimizer
steps: once before the first checkpoint, once in the middle of an epoch), resumes it, and
compares the final weights with an uninterrupted run's at zero tolerance.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from abmil.nn.models import MILOutput
from abmil.nn.zoo import slide_model
from abmil.slides.features import FeatureBagDataset
from abmil.slides.manifest import train_val_split
from abmil.slides.train import WSIConfig, slide_loss, train_feature_model
from abmil.train.checkpoint import (
    load_optimizer_state,
    optimizer_from_safetensors,
    optimizer_to_safetensors,
    read_checkpoint,
)
from abmil.train.schedule import epoch_steps
from wsi_helpers import DIM, load_weights, make_dataset


def SlideMIL(in_dim, n_classes, **kwargs):  # noqa: N802 - the slide model, gated attention
    return slide_model("gated", in_dim, n_classes, **kwargs)

SMALL = dict(hidden=32, att_dim=16, chunk_size=32, lr=1e-3)


# ----------------------------------------------------------------------------- model
def test_slide_model_chunked_equals_whole_bag_in_value_and_gradient():
    torch.manual_seed(0)
    whole = SlideMIL(DIM, 3, hidden=24, att_dim=8, dropout=0.0, chunk_size=10_000).double()
    chunked = SlideMIL(DIM, 3, hidden=24, att_dim=8, dropout=0.0, chunk_size=7).double()
    chunked.load_state_dict(whole.state_dict())
    x = torch.randn(50, DIM, dtype=torch.float64)
    outs = []
    for m in (whole, chunked):
        out = m(x)
        slide_loss(out, 2).backward()
        outs.append((out, {n: p.grad.clone() for n, p in m.named_parameters()}))
    (a, ga), (b, gb) = outs
    torch.testing.assert_close(a.logits, b.logits)
    torch.testing.assert_close(a.attention_logits, b.attention_logits)
    for n in ga:
        torch.testing.assert_close(ga[n], gb[n], msg=n)
    with torch.no_grad():  # and streamed from chunks, without gradients
        s = chunked.pool_chunks(x.split(11))
    torch.testing.assert_close(s.logits, a.logits)


def test_binary_is_one_sigmoid_logit_multiclass_softmax():
    binary, multi = SlideMIL(DIM, 2, hidden=8, att_dim=4), SlideMIL(DIM, 4, hidden=8, att_dim=4)
    x = torch.randn(5, DIM)
    assert binary(x).logits.shape == (1, 1) and multi(x).logits.shape == (1, 4)
    logit = MILOutput(torch.tensor([[0.3]]))
    torch.testing.assert_close(logit.probabilities(), torch.tensor([[1 - torch.sigmoid(torch.tensor(0.3)),
                                                                     torch.sigmoid(torch.tensor(0.3))]]))
    # binary: the package's Bernoulli NLL of the sigmoid; multi-class: cross-entropy
    torch.testing.assert_close(slide_loss(logit, 1), -torch.log(torch.sigmoid(torch.tensor(0.3))))
    logits = torch.tensor([[0.1, 2.0, -1.0, 0.0]])
    torch.testing.assert_close(slide_loss(MILOutput(logits), 1), -torch.log_softmax(logits[0], 0)[1])


# ----------------------------------------------------------------------------- schedule
def test_val_split_from_column_and_stratified_fraction():
    labels = [0, 1, 0, 1, 0, 1, 0, 1]
    splits = ["train", "train", "val", "test", "train", "train", None, "validation"]
    assert train_val_split(labels, splits, None, 0) == ([0, 1, 4, 5], [2, 7])
    with pytest.raises(ValueError, match="already names validation"):
        train_val_split(labels, splits, 0.25, 0)
    train, val = train_val_split(labels, [None] * 8, 0.25, seed=3)
    assert sorted(train + val) == list(range(8)) and len(val) == 2
    assert sorted(labels[i] for i in val) == [0, 1]  # one per class
    assert train_val_split(labels, [None] * 8, 0.25, seed=3) == (train, val)  # deterministic


def test_ranks_deal_the_single_process_batches():
    """K ranks with batch b see exactly the bags of one process with batch K*b, each once."""
    sizes = [5, 40, 7, 12, 30, 3, 9, 22, 16]
    for kw in (dict(batch_size=2), dict(batch_instances=30)):
        single = epoch_steps(9, seed=1, epoch=4, world_size=1, bag_sizes=sizes,
                             **{k: v * 3 for k, v in kw.items()})
        ranks = [epoch_steps(9, seed=1, epoch=4, rank=r, world_size=3, bag_sizes=sizes, **kw) for r in range(3)]
        assert all(len(r) == len(single) for r in ranks)
        for t, s in enumerate(single):
            dealt = sorted(b for r in ranks for b in r[t].bags)
            assert dealt == sorted(s.bags)
            # the loss weights make DDP's mean of rank gradients the mean over the global batch
            assert all(r[t].weight == 3 / len(s.bags) for r in ranks)
            assert sorted(v for r in ranks for v in r[t].keys) == sorted(s.keys)


# ----------------------------------------------------------------------------- checkpoints
def test_optimizer_state_round_trips_through_safetensors():
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    model(torch.randn(4, 3)).sum().backward()
    opt.step()
    tensors, meta = optimizer_to_safetensors(opt.state_dict())
    import json

    state = optimizer_from_safetensors(tensors, json.loads(json.dumps(meta)))
    fresh = torch.optim.Adam(model.parameters(), lr=0.5)
    fresh.load_state_dict(state)
    for a, b in zip(opt.state_dict()["state"].values(), fresh.state_dict()["state"].values()):
        for k in a:
            torch.testing.assert_close(a[k], b[k], rtol=0, atol=0)
    assert fresh.param_groups[0]["lr"] == 0.01 and fresh.param_groups[0]["betas"] == (0.9, 0.999)


def test_train_writes_checkpoint_and_refuses_to_overwrite(tmp_path):
    manifest, features = make_dataset(tmp_path, 6, classes=("a", "b", "c"), big=70)
    ds = FeatureBagDataset(manifest, features)
    records = []
    info = train_feature_model(ds, tmp_path / "run", WSIConfig(epochs=2, val_split=0.5, **SMALL),
                               on_epoch=records.append)
    assert [r["epoch"] for r in records] == [1, 2] and {"val_loss", "val_accuracy", "val_auc"} <= set(records[0])
    assert info["classes"] == ["a", "b", "c"] and info["in_dim"] == DIM and info["epoch"] == 2
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == [
        "checkpoint.json", "optimizer-e0002.safetensors", "weights-e0002.safetensors"]
    assert load_weights(tmp_path / "run")["classifier.weight"].shape == (3, 32)  # softmax head
    assert load_optimizer_state(tmp_path / "run", info)["state"]
    with pytest.raises(ValueError, match="--resume"):
        train_feature_model(ds, tmp_path / "run", WSIConfig(epochs=2, val_split=0.5, **SMALL))
    with pytest.raises(ValueError, match="'lr'"):
        train_feature_model(ds, tmp_path / "run", WSIConfig(epochs=3, val_split=0.5, **{**SMALL, "lr": 0.1}),
                            resume=True)


# ----------------------------------------------------------------------------- resume
def _train_cli(manifest: Path, features: Path, run: Path, *, kill_after: int | None = None,
               resume: bool = False) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    killer = Path(__file__).with_name("kill_after.py")
    launcher = ["-m", "abmil"] if kill_after is None else [str(killer), str(kill_after)]
    args = [sys.executable, *launcher, "train", "--manifest", str(manifest), "--features", str(features),
            "--out", str(run), *RESUME_ARGS] + (["--resume"] if resume else [])
    return subprocess.run(args, env=env, capture_output=True, text=True, timeout=120)


# 9 slides, 3 held out: 6 train in 3 steps of 2 an epoch; dropout on; one slide (80 patches) chunked
RESUME_ARGS = ["--epochs", "3", "--batch-size", "2", "--hidden", "32", "--att-dim", "16", "--chunk-size", "32",
               "--lr", "1e-3", "--seed", "5", "--val-split", "0.3"]


def test_killed_mid_epoch_and_resumed_ends_with_identical_weights(tmp_path):
    manifest, features = make_dataset(tmp_path, 9, big=80)
    run = tmp_path / "run"
    # killed in epoch 0 (no checkpoint yet), then again in the middle of epoch 1 (after step 5 of 3+3)
    first = _train_cli(manifest, features, run, kill_after=2)
    assert first.returncode == -signal.SIGKILL, first.stderr
    assert read_checkpoint(run) is None
    second = _train_cli(manifest, features, run, kill_after=5, resume=True)
    assert second.returncode == -signal.SIGKILL, second.stderr
    assert read_checkpoint(run)["epoch"] == 1 and read_checkpoint(run)["step"] == 3
    # the last leg and the uninterrupted reference run in this process: same thread count (1)
    from abmil.cli import main

    argv = ["train", "--manifest", str(manifest), "--features", str(features), *RESUME_ARGS]
    assert main(argv + ["--out", str(run), "--resume"]) == 0
    assert main(argv + ["--out", str(tmp_path / "reference")]) == 0
    resumed, reference = load_weights(run), load_weights(tmp_path / "reference")
    assert resumed.keys() == reference.keys()
    for k in reference:
        assert torch.equal(resumed[k], reference[k]), k
    resumed_history = read_checkpoint(run)["history"]
    assert resumed_history["records"] == read_checkpoint(tmp_path / "reference")["history"]["records"]
    assert resumed_history["resumed_at"] == [1]
    assert not np.allclose(resumed["classifier.weight"].numpy(), 0)


def test_instance_budget_steps_and_bf16(tmp_path):
    """--batch-instances groups slides per step up to the budget; bf16 autocast trains (the
    chunked slide in float32), and the loss stays finite."""
    manifest, features = make_dataset(tmp_path, 5, big=70)
    ds = FeatureBagDataset(manifest, features)
    info = train_feature_model(ds, tmp_path / "run", WSIConfig(epochs=1, batch_instances=100, bf16=True, **SMALL))
    expected = epoch_steps(5, 0, 0, batch_instances=100, bag_sizes=ds.bag_sizes())
    assert info["step"] == len(expected) < 5  # some steps hold several slides
    assert np.isfinite(info["history"]["records"][0]["train_loss"])


# ----------------------------------------------------------------------------- packed steps
def test_pack_groups_consecutive_within_the_limit():
    from abmil.train.loop import pack_groups

    assert pack_groups([5, 5, 5, 20, 3, 3, 30, 9], 15) == [[0, 1, 2], [3], [4, 5], [6], [7]]
    assert pack_groups([], 15) == []


@pytest.mark.parametrize("n_classes", [2, 3])
def test_packed_forward_equals_slides_one_at_a_time(n_classes):
    """Packed bags with per-bag dropout keys: the same logits and the same summed gradient as each bag
    forwarded alone with its own key (float64, dropout on)."""
    from abmil.nn.dropout import set_dropout_key
    from abmil.train.loss import bag_losses

    torch.manual_seed(0)
    model = SlideMIL(DIM, n_classes, hidden=24, att_dim=8, dropout=0.4).double().train()
    sizes, visits, labels = [7, 1, 12, 5], [30, 31, 35, 40], [1, 0, n_classes - 1, 0]
    bags = [torch.randn(n, DIM, dtype=torch.float64) for n in sizes]

    alone_logits = []
    for x, v, y in zip(bags, visits, labels):
        set_dropout_key(model, 3, v)
        out = model(x)
        alone_logits.append(out.logits.detach())
        slide_loss(out, y).backward()
    alone = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()

    set_dropout_key(model, 3, visits, rows=sizes)
    bag_index = torch.repeat_interleave(torch.arange(4), torch.tensor(sizes))
    out = model(torch.cat(bags), bag_index, 4)
    bag_losses(out, torch.tensor(labels)).sum().backward()
    torch.testing.assert_close(out.logits.detach(), torch.cat(alone_logits))
    for n, p in model.named_parameters():
        torch.testing.assert_close(p.grad, alone[n], msg=n)
    # a mask keyed for other row counts is refused, not silently misapplied
    set_dropout_key(model, 3, visits, rows=[1, 1, 1, 1])
    with pytest.raises(ValueError, match="keyed for 4 rows"):
        model(torch.cat(bags), bag_index, 4)


def test_training_packs_steps_that_fit_and_matches_accumulation(tmp_path, monkeypatch):
    """Steps of 3 slides: packed when they fit in the pack limit (one pass per step), else one slide
    at a time; both end with the same weights."""
    import abmil.train.loop as loop

    manifest, features = make_dataset(tmp_path, 7, sizes=(20, 40))
    calls = []
    real = loop._pass
    monkeypatch.setattr(loop, "_pass", lambda *a, **k: (calls.append(1) if len(a[2]) > 1 else None) or real(*a, **k))
    weights = {}
    for name, chunk in (("packed", 1000), ("alone", 39)):  # sizes 20-39: no bag is chunked, no 2 bags fit together
        calls.clear()
        ds = FeatureBagDataset(manifest, features)
        cfg = WSIConfig(epochs=2, batch_size=3, hidden=32, att_dim=16, chunk_size=chunk, lr=1e-3)
        info = train_feature_model(ds, tmp_path / name, cfg)
        assert len(calls) == (2 * 2 if name == "packed" else 0)  # 2 epochs x 2 steps of 3 slides (+ 1 alone)
        assert info["step"] == 6
        weights[name] = load_weights(tmp_path / name)
    for k in weights["packed"]:
        torch.testing.assert_close(weights["packed"][k], weights["alone"][k], rtol=0, atol=1e-6, msg=k)


@pytest.mark.parametrize("chunk_size", [10_000, 9])
def test_blocked_and_chunked_forward_equal_the_whole_bag_with_keyed_dropout(monkeypatch, chunk_size):
    """A bag encoded in cache-sized blocks (here 4 rows), or chunked with recompute (chunks of 9), gives the
    whole bag's logits, attention and gradients, keyed dropout masks included (float64)."""
    import abmil.nn.chunked as chunked
    from abmil.nn.dropout import set_dropout_key

    torch.manual_seed(0)
    whole = SlideMIL(DIM, 2, hidden=24, att_dim=8, dropout=0.5).double().train()
    x = torch.randn(30, DIM, dtype=torch.float64)
    results = []
    for block, chunk in ((10_000, 10_000), (4, chunk_size)):
        monkeypatch.setattr(chunked, "ENCODE_BLOCK", block)
        model = SlideMIL(DIM, 2, hidden=24, att_dim=8, dropout=0.5, chunk_size=chunk).double().train()
        model.load_state_dict(whole.state_dict())
        set_dropout_key(model, 7, 123)
        out = model(x)
        slide_loss(out, 1).backward()
        results.append((out, {n: p.grad for n, p in model.named_parameters()}))
    (a, ga), (b, gb) = results
    torch.testing.assert_close(b.logits, a.logits)
    torch.testing.assert_close(b.attention_logits, a.attention_logits)
    for n in ga:
        torch.testing.assert_close(gb[n], ga[n], msg=n)
    assert ga["encoder.layers.0.weight"].abs().sum() > 0


def test_resumes_a_slide_run_checkpointed_before_the_one_loop(tmp_path):
    """A checkpoint whose history is the old list of epoch records resumes, and the run ends as one never stopped."""
    import json

    manifest, features = make_dataset(tmp_path, 6)
    cfg = dict(val_split=0.5, **SMALL)
    train_feature_model(FeatureBagDataset(manifest, features), tmp_path / "ref", WSIConfig(epochs=2, **cfg))
    run = tmp_path / "run"
    train_feature_model(FeatureBagDataset(manifest, features), run, WSIConfig(epochs=1, **cfg))
    info = json.loads((run / "checkpoint.json").read_text())
    for key in ("kind", "key", "waited", "best"):
        info.pop(key)
    info["history"] = info["history"]["records"]
    (run / "checkpoint.json").write_text(json.dumps(info))
    resumed = train_feature_model(FeatureBagDataset(manifest, features), run, WSIConfig(epochs=2, **cfg), resume=True)
    assert resumed["epoch"] == 2 and len(resumed["history"]["records"]) == 2
    ref, ours = load_weights(tmp_path / "ref"), load_weights(run)
    assert all(torch.equal(ref[k], ours[k]) for k in ref)
