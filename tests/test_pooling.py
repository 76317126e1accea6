"""Segment pooling over packed bags: a packed batch behaves exactly like its bags pooled alone.

Covers MeanPool, MaxPool and AttentionPool (plain and gated): values, attention weights,
gradients, permutation invariance, numerical stability of the segment softmax, and the
pack/unpack/collate helpers of ``abmil.data.bags``.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from abmil.data.bags import bag_offsets, pack, unpack
from abmil.nn.pooling import AttentionPool, MaxPool, MeanPool
from abmil.nn.segment import num_bags, segment_count, segment_max, segment_mean, segment_softmax, segment_sum

DIM = 16
SIZES = (1, 2, 7, 300, 1000, 1, 3)  # one-instance bags and very different sizes in one batch
TOL = 1e-5

POOLS = {
    "mean": lambda: MeanPool(),
    "max": lambda: MaxPool(),
    "attention": lambda: AttentionPool(DIM, att_dim=8, gated=False),
    "gated": lambda: AttentionPool(DIM, att_dim=8, gated=True),
}
ATTENTION = ("attention", "gated")


def make_pool(kind: str, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return POOLS[kind]()


def make_bags(sizes=SIZES, dim=DIM, seed=0, dtype=torch.float32) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(n, dim, generator=g, dtype=dtype) for n in sizes]


def alone_index(n: int) -> torch.Tensor:
    return torch.zeros(n, dtype=torch.long)


def maxdiff(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a - b).abs().max().item() if a.numel() else 0.0


# ----------------------------------------------------------------------------- packed == alone
@pytest.mark.parametrize("kind", list(POOLS))
def test_packed_equals_alone(kind):
    pool = make_pool(kind)
    bags = make_bags()
    x, bag_index = pack(bags)
    z, w = pool(x, bag_index, len(bags))
    assert z.shape == (len(bags), DIM)
    assert z.dtype == torch.float32
    if kind in ATTENTION:
        assert w is not None and w.shape == (x.shape[0],)
    else:
        assert w is None
    w_parts = unpack(w, bag_index, len(bags)) if w is not None else [None] * len(bags)
    for i, b in enumerate(bags):
        zi, wi = pool(b, alone_index(b.shape[0]), 1)
        assert zi.shape == (1, DIM)
        assert maxdiff(z[i], zi[0]) < TOL, (kind, i, b.shape[0])
        if kind in ATTENTION:
            assert maxdiff(w_parts[i], wi) < TOL, (kind, i)
        else:
            assert wi is None


@pytest.mark.parametrize("kind", list(POOLS))
def test_n_bags_inferred_equals_given(kind):
    pool = make_pool(kind)
    bags = make_bags()
    x, bag_index = pack(bags)
    z1, w1 = pool(x, bag_index)
    z2, w2 = pool(x, bag_index, len(bags))
    assert torch.equal(z1, z2)
    if w1 is not None:
        assert torch.equal(w1, w2)


@pytest.mark.parametrize("kind", list(POOLS))
def test_single_instance_bag_is_identity_for_mean_max_attention(kind):
    # A bag of one instance pools to that instance, whatever the pooling (attention weight = 1).
    pool = make_pool(kind)
    bags = make_bags(sizes=(1, 1, 1, 5))
    x, bag_index = pack(bags)
    z, w = pool(x, bag_index, len(bags))
    for i in range(3):
        assert maxdiff(z[i], bags[i][0]) < TOL
    if w is not None:
        assert maxdiff(w[:3], torch.ones(3)) < 1e-6


def test_mean_and_max_values():
    bags = make_bags()
    x, bag_index = pack(bags)
    zm, _ = MeanPool()(x, bag_index, len(bags))
    zx, _ = MaxPool()(x, bag_index, len(bags))
    for i, b in enumerate(bags):
        assert maxdiff(zm[i], b.mean(0)) < TOL
        assert torch.equal(zx[i], b.max(0).values)


def test_max_pool_all_negative_bag():
    # scatter_reduce must not mix in the zeros of the output buffer (include_self=False).
    bags = [-(torch.rand(4, 3) + 1.0), -(torch.rand(1, 3) + 5.0)]
    x, bag_index = pack(bags)
    z, _ = MaxPool()(x, bag_index, 2)
    assert torch.equal(z[0], bags[0].max(0).values)
    assert torch.equal(z[1], bags[1][0])
    assert (z < 0).all()


# ----------------------------------------------------------------------------- gradients
@pytest.mark.parametrize("kind", list(POOLS))
def test_gradients_equal_sum_of_per_bag_gradients(kind):
    pool = make_pool(kind)
    bags = make_bags(seed=1)
    g = torch.Generator().manual_seed(2)
    proj = torch.randn(len(bags), DIM, generator=g)
    params = list(pool.parameters())

    # packed: loss = sum_b proj_b . z_b
    x, bag_index = pack(bags)
    x = x.clone().requires_grad_(True)
    z, _ = pool(x, bag_index, len(bags))
    loss = (z * proj).sum()
    grads = torch.autograd.grad(loss, [x, *params])
    gx_packed, gp_packed = grads[0], grads[1:]

    # alone: the same loss, bag by bag
    gx_alone, gp_alone = [], [torch.zeros_like(p) for p in params]
    for i, b in enumerate(bags):
        xi = b.clone().requires_grad_(True)
        zi, _ = pool(xi, alone_index(b.shape[0]), 1)
        gi = torch.autograd.grad((zi[0] * proj[i]).sum(), [xi, *params])
        gx_alone.append(gi[0])
        for acc, gp in zip(gp_alone, gi[1:]):
            acc += gp
    assert maxdiff(gx_packed, torch.cat(gx_alone)) < TOL
    assert len(gp_packed) == (0 if kind in ("mean", "max") else len(params))
    for name_p, a, b in zip([n for n, _ in pool.named_parameters()], gp_packed, gp_alone):
        assert maxdiff(a, b) < TOL, (kind, name_p, maxdiff(a, b))


# ----------------------------------------------------------------------------- permutation
@pytest.mark.parametrize("kind", list(POOLS))
def test_permutation_invariance(kind):
    pool = make_pool(kind)
    bags = make_bags(seed=3)
    x, bag_index = pack(bags)
    z, w = pool(x, bag_index, len(bags))
    g = torch.Generator().manual_seed(4)
    offsets = bag_offsets(bag_index, len(bags))
    perm = torch.cat([offsets[i] + torch.randperm(b.shape[0], generator=g) for i, b in enumerate(bags)])
    assert not torch.equal(perm, torch.arange(x.shape[0]))
    zp, wp = pool(x[perm], bag_index, len(bags))  # bag_index unchanged: perms stay inside each bag
    assert torch.equal(bag_index[perm], bag_index)
    assert maxdiff(z, zp) < TOL
    if w is not None:
        assert maxdiff(wp, w[perm]) < 1e-6


def test_bag_order_does_not_matter():
    pool = make_pool("gated")
    bags = make_bags(seed=5)
    x, bi = pack(bags)
    z, _ = pool(x, bi, len(bags))
    order = list(reversed(range(len(bags))))
    xr, bir = pack([bags[i] for i in order])
    zr, _ = pool(xr, bir, len(bags))
    assert maxdiff(zr, z[order]) < TOL


# ----------------------------------------------------------------------------- attention weights
@pytest.mark.parametrize("kind", ATTENTION)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_attention_weights_sum_to_one(kind, seed):
    pool = make_pool(kind, seed)
    bags = make_bags(seed=seed)
    x, bag_index = pack(bags)
    _, w = pool(x, bag_index, len(bags))
    assert (w > 0).all() and (w <= 1).all()
    sums = segment_sum(w, bag_index, len(bags))
    assert maxdiff(sums, torch.ones(len(bags))) < 1e-6


@pytest.mark.parametrize("kind", ATTENTION)
def test_attention_is_weighted_sum(kind):
    pool = make_pool(kind)
    bags = make_bags(seed=6)
    x, bag_index = pack(bags)
    z, w = pool(x, bag_index, len(bags))
    for i, (b, wi) in enumerate(zip(bags, unpack(w, bag_index, len(bags)))):
        assert maxdiff(z[i], (wi[:, None] * b).sum(0)) < TOL
        ref = torch.softmax(pool.scores(b), 0)
        assert maxdiff(wi, ref) < 1e-6


def test_attention_gated_has_gate_and_ungated_not():
    assert make_pool("attention").U is None
    assert isinstance(make_pool("gated").U, torch.nn.Linear)


# ----------------------------------------------------------------------------- segment softmax
@pytest.mark.parametrize("scale", [1.0, 1e2, 1e4])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_segment_softmax_matches_torch_softmax(scale, dtype):
    g = torch.Generator().manual_seed(7)
    sizes = (1, 2, 7, 300, 1000)
    logits = [torch.randn(n, generator=g, dtype=dtype) * scale for n in sizes]
    x, bag_index = pack(logits)
    s = segment_softmax(x, bag_index, len(sizes))
    assert torch.isfinite(s).all()
    for part, ref in zip(unpack(s, bag_index, len(sizes)), logits):
        assert maxdiff(part, torch.softmax(ref, 0)) < 1e-6
    assert maxdiff(segment_sum(s, bag_index, len(sizes)), torch.ones(len(sizes), dtype=dtype)) < 1e-6


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_segment_softmax_extreme_logits(dtype):
    bags = [
        torch.tensor([1e4, -1e4]),           # one dominates
        torch.tensor([-1e4, -1e4, -1e4]),    # all very negative: uniform, not 0/0
        torch.tensor([1e4, 1e4]),            # all very positive: uniform, not inf/inf
        torch.tensor([1e4]),                 # single instance
        torch.tensor([-1e4]),
        torch.tensor([1e4, 1e4 - 1.0, -1e4, 0.0]),
    ]
    bags = [b.to(dtype) for b in bags]
    x, bag_index = pack(bags)
    s = segment_softmax(x, bag_index, len(bags))
    assert torch.isfinite(s).all()
    for part, ref in zip(unpack(s, bag_index, len(bags)), bags):
        assert maxdiff(part, torch.softmax(ref, 0)) < 1e-6
    assert maxdiff(segment_sum(s, bag_index, len(bags)), torch.ones(len(bags), dtype=dtype)) < 1e-6


def test_segment_softmax_gradient_finite_and_correct_extreme():
    bags = [torch.tensor([1e4, -1e4, 3.0], dtype=torch.float64), torch.tensor([-1e4, -1e4 + 0.5], dtype=torch.float64)]
    x, bag_index = pack(bags)
    x.requires_grad_(True)
    proj = torch.tensor([0.3, -1.2, 2.0, 0.7, -0.4], dtype=torch.float64)
    (gx,) = torch.autograd.grad((segment_softmax(x, bag_index, 2) * proj).sum(), x)
    parts = []
    for i, b in enumerate(bags):
        bi = b.clone().requires_grad_(True)
        p = proj[bag_index == i]
        parts.append(torch.autograd.grad((torch.softmax(bi, 0) * p).sum(), bi)[0])
    assert torch.isfinite(gx).all()
    assert maxdiff(gx, torch.cat(parts)) < 1e-9


@pytest.mark.parametrize("kind", ATTENTION)
def test_attention_pool_finite_with_huge_scores(kind):
    # Blow up the attention logits (w scaled to 1e4): weights must stay finite and sum to 1.
    pool = make_pool(kind)
    with torch.no_grad():
        pool.w.weight.mul_(1e4)
    bags = make_bags(seed=8)
    x, bag_index = pack(bags)
    z, w = pool(x, bag_index, len(bags))
    assert torch.isfinite(z).all() and torch.isfinite(w).all()
    assert maxdiff(segment_sum(w, bag_index, len(bags)), torch.ones(len(bags))) < 1e-6
    for b, wi in zip(bags, unpack(w, bag_index, len(bags))):
        assert maxdiff(wi, torch.softmax(pool.scores(b), 0)) < 1e-6


# ----------------------------------------------------------------------------- segment helpers
def test_segment_helpers():
    bags = make_bags(sizes=(3, 1, 4))
    x, bag_index = pack(bags)
    assert num_bags(bag_index) == 3
    assert num_bags(bag_index, 5) == 5
    assert num_bags(torch.zeros(0, dtype=torch.long)) == 0
    assert segment_count(bag_index, 4).tolist() == [3, 1, 4, 0]
    s = segment_sum(x, bag_index, 4)
    m = segment_mean(x, bag_index, 4)
    mx = segment_max(x, bag_index, 4)
    for i, b in enumerate(bags):
        assert maxdiff(s[i], b.sum(0)) < TOL
        assert maxdiff(m[i], b.mean(0)) < TOL
        assert torch.equal(mx[i], b.max(0).values)
    # an empty trailing bag reduces to zeros, not NaN
    assert torch.equal(s[3], torch.zeros(DIM))
    assert torch.equal(m[3], torch.zeros(DIM))
    assert torch.equal(mx[3], torch.zeros(DIM))


# ----------------------------------------------------------------------------- pack / unpack / collate
def test_pack_unpack_round_trip():
    bags = make_bags()
    x, bag_index = pack(bags)
    assert x.shape == (sum(SIZES), DIM)
    assert bag_index.dtype == torch.long and bag_index.shape == (sum(SIZES),)
    assert torch.equal(bag_index, torch.repeat_interleave(torch.arange(len(SIZES)), torch.tensor(SIZES)))
    assert (bag_index[1:] >= bag_index[:-1]).all()  # sorted
    back = unpack(x, bag_index, len(bags))
    assert len(back) == len(bags)
    for a, b in zip(back, bags):
        assert torch.equal(a, b)
    offs = bag_offsets(bag_index, len(bags))
    assert offs.tolist() == [0, *np.cumsum(SIZES).tolist()]


def test_pack_numpy_and_higher_rank():
    rng = np.random.default_rng(0)
    bags = [rng.normal(size=(n, 2, 3)).astype(np.float32) for n in (2, 1, 5)]
    x, bag_index = pack(bags)
    assert x.shape == (8, 2, 3) and x.dtype == torch.float32
    for a, b in zip(unpack(x, bag_index, 3), bags):
        assert np.array_equal(a.numpy(), b)
    # unpack per-instance scalars too
    vals = torch.arange(8.0)
    assert [v.tolist() for v in unpack(vals, bag_index, 3)] == [[0.0, 1.0], [2.0], [3.0, 4.0, 5.0, 6.0, 7.0]]


def test_pack_empty_bag_raises():
    with pytest.raises(ValueError, match="empty"):
        pack([torch.zeros(2, 3), torch.zeros(0, 3), torch.zeros(1, 3)])
    with pytest.raises(ValueError):
        pack([])


def test_pack_unpack_numpy_round_trip():
    rng = np.random.default_rng(1)
    bags = [rng.normal(size=(n, 4)).astype(np.float32) for n in (3, 1, 6)]
    instances, bag_index = pack(bags)
    assert bag_index.tolist() == [0] * 3 + [1] + [2] * 6
    for a, b in zip(unpack(instances, bag_index, 3), bags):
        assert np.array_equal(a.numpy(), b)


def test_pack_then_pool_equals_alone():
    pool = make_pool("gated")
    bags = make_bags(sizes=(1, 9, 2), seed=9)
    instances, bag_index = pack(bags)
    z, w = pool(instances, bag_index, len(bags))
    for i, b in enumerate(bags):
        zi, _ = pool(b, alone_index(b.shape[0]), 1)
        assert maxdiff(z[i], zi[0]) < TOL


def test_attention_pool_under_bf16_autocast_keeps_float32_sums():
    """Segment sums and the segment softmax accumulate in float32 for bf16 inputs: summed in bf16, a
    1000-instance bag's gradients were off by more than their own norm."""
    from abmil.nn.encoders import MLPEncoder

    torch.manual_seed(0)
    enc, pool = MLPEncoder(64, (32,)), AttentionPool(32, 16, gated=True)
    params = list(enc.parameters()) + list(pool.parameters())
    x, bag_index = torch.randn(1000, 64), torch.zeros(1000, dtype=torch.long)

    def grads(bf16: bool) -> torch.Tensor:
        for p in params:
            p.grad = None
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            z, weights = pool(enc(x), bag_index, 1)
            z.float().square().sum().backward()
        assert abs(weights.float().sum().item() - 1.0) < 1e-2
        return torch.cat([p.grad.flatten().float() for p in params])

    full, half = grads(False), grads(True)
    assert ((half - full).norm() / full.norm()).item() < 0.05
