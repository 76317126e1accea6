"""Chunked attention pooling of one giant bag equals the plain computation.

``chunked_attention`` (custom autograd, recompute in backward) and ``chunked_attention_pool``
(online softmax, no grad) against ``AttentionPool(encoder(x), zeros)``: values, attention
weights, parameter and input gradients, in float64 (gradcheck) and float32 (several chunk
sizes: 1, not dividing N, N, more than N); dropout masks reproduced in the recompute; the
``ChunkedAttentionMIL`` wrapper loading an ordinary model's weights; and the peak memory,
measured in a subprocess by ``benchmarks/chunked_memory.py``.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from abmil.nn.chunked import OnlineSoftmaxPool, chunked_attention, chunked_attention_pool
from abmil.nn.models import EmbeddingMIL
from abmil.nn.pooling import AttentionPool, MeanPool

REL = 1e-5


def make_parts(in_dim=16, hidden=24, att=12, gated=True, dtype=torch.float32, dropout=0.0, seed=0):
    """A CLAM-like net in miniature: Linear + ReLU (+ dropout) encoder, (gated) attention."""
    torch.manual_seed(seed)
    layers = [nn.Linear(in_dim, hidden), nn.ReLU()] + ([nn.Dropout(dropout)] if dropout else [])
    encoder = nn.Sequential(*layers).to(dtype)
    encoder.out_dim = hidden
    return encoder, AttentionPool(hidden, att, gated=gated).to(dtype)


def plain(x, encoder, pool):
    h = x if encoder is None else encoder(x)
    return pool(h, torch.zeros(x.shape[0], dtype=torch.long), 1)


def params_of(encoder, pool):
    return ([] if encoder is None else list(encoder.parameters())) + list(pool.parameters())


def close(a, b, rel=REL):
    scale = max(b.abs().max().item(), 1e-30)
    return (a - b).abs().max().item() <= rel * scale


def grads_close(ga, gb, rel=REL):
    """Per parameter, relative to its largest entry (floored at a tenth of the largest gradient overall). w's bias has
    an exact gradient of zero (it cancels in the softmax) and gets the rounding noise of a sum over the bag (0.7e-6
    measured at 3000 instances, above that floor's 1e-5 share): a gradient that is negligible in the reference (under
    1e-4 of the largest) must be negligible in the other computation too."""
    largest = max(g.abs().max().item() for g in gb)
    floor, negligible = 0.1 * largest, 1e-4 * largest

    def ok(a, b):
        scale = b.abs().max().item()
        if scale <= negligible:
            return a.abs().max().item() <= negligible
        return (a - b).abs().max().item() <= rel * max(scale, floor)

    return all(ok(a, b) for a, b in zip(ga, gb))


# ----------------------------------------------------------------------------- float64 gradcheck
@pytest.mark.parametrize("gated", [False, True])
@pytest.mark.parametrize("chunk", [1, 3, 7, 10])
def test_gradcheck(gated, chunk):
    """Every input and parameter, against finite differences; fast mode (a random projection
    of the Jacobian) except for one full check."""
    encoder, pool = make_parts(4, 5, 3, gated=gated, dtype=torch.float64)
    x = torch.randn(7, 4, dtype=torch.float64, requires_grad=True)
    ps = params_of(encoder, pool)
    assert torch.autograd.gradcheck(lambda x, *_: chunked_attention(x, encoder, pool, chunk)[0], (x, *ps),
                                    fast_mode=not (gated and chunk == 3))


def test_gradcheck_without_encoder():
    _, pool = make_parts(5, 6, 4, dtype=torch.float64)
    x = torch.randn(9, 6, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x, *_: chunked_attention(x, None, pool, 4)[0],
                                    (x, *pool.parameters()), fast_mode=True)


# ----------------------------------------------------------------------------- float32 vs plain
def grads_after(fn, x, encoder, pool):
    for p in params_of(encoder, pool):
        p.grad = None
    x = x.detach().requires_grad_()
    z, weights = fn(x)
    # a loss mixing all of z's coordinates, as a classifier would
    loss = (z.squeeze(0) * torch.linspace(-1, 1, z.shape[-1])).sum().sin()
    loss.backward()
    return z.detach(), weights.detach(), x.grad, [p.grad.clone() for p in params_of(encoder, pool)]


@pytest.mark.parametrize("gated", [False, True])
@pytest.mark.parametrize("chunk", [1, 7, 256, 777, 3000, 5000])
def test_float32_matches_plain(gated, chunk):
    n = 600 if chunk == 1 else 3000  # chunk 1 is one Python iteration per instance
    encoder, pool = make_parts(gated=gated)
    x = torch.randn(n, 16)
    z0, w0, gx0, gp0 = grads_after(lambda x: plain(x, encoder, pool), x, encoder, pool)
    z1, l1, gx1, gp1 = grads_after(lambda x: chunked_attention(x, encoder, pool, chunk), x, encoder, pool)
    assert z1.shape == z0.shape == (1, 24)
    assert close(z1, z0)
    assert close(torch.softmax(l1, 0), w0)
    assert close(gx1, gx0)
    assert grads_close(gp1, gp0)


def test_parameter_grads_only_and_accumulate():
    """Features that need no grad (the usual case) get none; .grad accumulates across calls."""
    encoder, pool = make_parts()
    x = torch.randn(500, 16)
    ref = grads_after(lambda x: plain(x, encoder, pool), x, encoder, pool)[3]
    for p in params_of(encoder, pool):
        p.grad = None
    for _ in range(2):
        z, _ = chunked_attention(x, encoder, pool, 64)
        (z.squeeze(0) * torch.linspace(-1, 1, 24)).sum().sin().backward()
    assert x.grad is None
    assert grads_close([p.grad for p in params_of(encoder, pool)], [2 * r for r in ref])


def test_frozen_encoder_gets_no_grad():
    encoder, pool = make_parts()
    encoder.requires_grad_(False)
    z, _ = chunked_attention(torch.randn(100, 16), encoder, pool, 30)
    z.sum().backward()
    assert all(p.grad is None for p in encoder.parameters())
    assert all(p.grad is not None for p in pool.parameters())


def test_dropout_masks_are_reproduced_in_backward():
    """Backward recomputes with the RNG state of forward, so the masks (and grads) match."""
    encoder, pool = make_parts(dropout=0.5)
    x = torch.randn(300, 16)
    chunk = 70
    torch.manual_seed(5)
    z1, _, _, g1 = grads_after(lambda x: chunked_attention(x, encoder, pool, chunk), x, encoder, pool)

    def per_chunk(x):  # the same draws, in the same order, with a plain graph
        h = torch.cat([encoder(c) for c in x.split(chunk)])
        return pool(h, torch.zeros(len(x), dtype=torch.long), 1)

    torch.manual_seed(5)
    z0, _, _, g0 = grads_after(per_chunk, x, encoder, pool)
    assert close(z1, z0)
    assert grads_close(g1, g0)


def test_inplace_parameter_change_before_backward_is_refused():
    encoder, pool = make_parts()
    z, _ = chunked_attention(torch.randn(50, 16), encoder, pool, 16)
    with torch.no_grad():
        pool.V.weight.add_(1.0)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        z.sum().backward()


# ----------------------------------------------------------------------------- online softmax
@pytest.mark.parametrize("chunk", [1, 13, 1000])
def test_streamed_pool_matches_plain(chunk):
    encoder, pool = make_parts()
    x = torch.randn(1000, 16)
    with torch.no_grad():
        z0, w0 = plain(x, encoder, pool)
        z1, logits = chunked_attention_pool(encoder, pool, iter(x.split(chunk)), return_logits=True)
        z2, none = chunked_attention_pool(encoder, pool, [(c, None) for c in x.split(chunk)])
    assert close(z1, z0) and close(z2, z1, 0) and none is None
    assert close(torch.softmax(logits, 0), w0)


def test_online_softmax_rescales_when_the_max_grows():
    """Logits of ±1e4, rising chunk after chunk: every chunk moves the running max."""
    torch.manual_seed(0)
    h = torch.randn(400, 8, dtype=torch.float64)
    logits = torch.linspace(-1e4, 1e4, 400, dtype=torch.float64) + torch.randn(400, dtype=torch.float64)
    state = OnlineSoftmaxPool()
    for hc, lc in zip(h.split(37), logits.split(37)):
        state.update(hc, lc)
    ref = (torch.softmax(logits, 0).unsqueeze(1) * h).sum(0)
    assert torch.isfinite(state.result()).all()
    assert close(state.result(), ref, 1e-12)


# ----------------------------------------------------------------------------- giant-bag mode of the model
def test_giant_bag_mode_loads_an_ordinary_model_and_matches_it():
    encoder, pool = make_parts(gated=True)
    model = EmbeddingMIL(encoder, pool)
    enc2, pool2 = make_parts(gated=True, seed=1)
    chunked = EmbeddingMIL(enc2, pool2, chunk_size=64)
    chunked.load_state_dict(model.state_dict())  # strict: the same parameter names
    x = torch.randn(700, 16)
    bag_index = torch.zeros(700, dtype=torch.long)

    out0 = model(x, bag_index)
    out0.prob.sum().backward()
    out1 = chunked(x)  # one bag, no bag_index: pooled in chunks of 64, recomputed in backward
    out1.prob.sum().backward()
    assert out1.prob.shape == (1,) and out1.weights.shape == (700,) and out1.attention_logits.shape == (700,)
    assert close(out1.prob, out0.prob) and close(out1.weights, out0.weights)
    assert grads_close([p.grad for p in chunked.parameters()], [p.grad for p in model.parameters()])
    # packed bags with a bag_index go through the segment pooling even in giant-bag mode
    assert close(chunked(x, bag_index).prob, out0.prob)

    with torch.no_grad():  # inference streams; chunks may come from an iterator
        out2 = chunked.pool_chunks(iter(x.split(100)))
        out3 = chunked(x)
    assert close(out2.prob, out0.prob) and close(torch.softmax(out2.attention_logits, 0), out0.weights)
    assert close(out3.prob, out0.prob)


def test_giant_bag_mode_rejects_what_it_cannot_do():
    encoder, pool = make_parts()
    with pytest.raises(TypeError, match="AttentionPool"):
        EmbeddingMIL(encoder, MeanPool(), chunk_size=8)
    with pytest.raises(ValueError, match="chunk_size"):
        EmbeddingMIL(encoder, pool, chunk_size=0)
    with pytest.raises(TypeError, match="AttentionPool"):
        EmbeddingMIL(encoder, MeanPool()).pool_chunks([torch.randn(4, 16)])
    with pytest.raises(ValueError, match="non-empty bag"):
        EmbeddingMIL(encoder, pool, chunk_size=8)(torch.randn(0, 16))
    with pytest.raises(ValueError, match="chunk_size"):
        chunked_attention(torch.randn(4, 16), encoder, pool, 0)
    with pytest.raises(ValueError, match="non-empty bag"):
        chunked_attention(torch.randn(0, 16), encoder, pool, 4)



# ----------------------------------------------------------------------------- memory
def test_peak_memory_is_bounded_by_the_chunk():
    """A training step on a 60k-instance bag: the plain graph grows the peak RSS by all the
    activations (~200 MiB), the chunked one by a chunk's worth (~10 MiB). Measured in a fresh
    process, chunked first so that each variant's peak is measured from the one before."""
    script = Path(__file__).resolve().parents[1] / "benchmarks" / "chunked_memory.py"
    out = subprocess.run([sys.executable, str(script), "--json", "--one-process", "--n", "60000", "--dim", "32",
                          "--hidden", "128", "--att", "64", "--chunk", "1024",
                          "--variants", "chunked-train,plain-train"],
                         check=True, capture_output=True, text=True, timeout=120)
    rows = {r["variant"]: r for r in map(json.loads, out.stdout.splitlines())}
    plain_mib, chunked_mib = rows["plain-train"]["extra_peak_mib"], rows["chunked-train"]["extra_peak_mib"]
    assert plain_mib > 100, rows  # 60k x 128 activations, several times over
    assert chunked_mib < plain_mib / 5, rows
    assert abs(rows["plain-train"]["prob"] - rows["chunked-train"]["prob"]) < 1e-5


def test_backward_under_bf16_autocast_matches_float32():
    """The recompute in backward runs under the forward's autocast state (bf16 h against bf16 z and g)."""
    from abmil.nn.encoders import MLPEncoder

    torch.manual_seed(0)
    enc, pool = MLPEncoder(64, (32,)), AttentionPool(32, 16, gated=True)
    params = list(enc.parameters()) + list(pool.parameters())
    x = torch.randn(1000, 64)

    def grads(bf16: bool) -> torch.Tensor:
        for p in params:
            p.grad = None
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            z, _ = chunked_attention(x, enc, pool, chunk_size=100)
            loss = z.float().square().sum()
        loss.backward()
        return torch.cat([p.grad.flatten().float() for p in params])

    full, half = grads(False), grads(True)
    assert ((half - full).norm() / full.norm()).item() < 0.05
