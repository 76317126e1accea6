"""segment_softmax at a million instances: a packed bag that large is normalised in float64 (its weights within 1e-5
of the float64 softmax, against ~5e-4 for the float32 running sum), while the small bags packed beside it keep the
float32 bits they have alone."""
from __future__ import annotations

import torch

from abmil.nn.segment import FLOAT32_SOFTMAX_MAX, _softmax, segment_softmax


def _packed(sizes, seed=0):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(sum(sizes), generator=g) * 5  # peaked, as trained attention is
    index = torch.repeat_interleave(torch.arange(len(sizes)), torch.tensor(sizes))
    return logits, index


def test_a_million_instance_bag_is_within_1e5_of_the_float64_softmax():
    sizes = [7, 10 ** 6, 300, FLOAT32_SOFTMAX_MAX, FLOAT32_SOFTMAX_MAX + 1]
    logits, index = _packed(sizes)
    weights = segment_softmax(logits, index, len(sizes))
    assert weights.dtype == torch.float32
    start = 0
    for size in sizes:
        w, l = weights[start:start + size].double(), logits[start:start + size]
        ref = torch.softmax(l.double(), 0)
        if size > FLOAT32_SOFTMAX_MAX:
            assert abs(w.sum().item() - 1) < 1e-5 and ((w - ref).abs() / ref).max().item() < 1e-5, size
            assert (w - ref).abs().max() <= (torch.softmax(l, 0).double() - ref).abs().max()  # no worse than torch
        start += size


def test_small_bags_keep_their_float32_bits_beside_a_large_one():
    sizes = [5, 40, 1044, FLOAT32_SOFTMAX_MAX]
    logits, index = _packed(sizes, seed=1)
    alone = _softmax(logits, index, len(sizes))  # the float32 formula, no large bag in the batch
    big = torch.randn(50_000, generator=torch.Generator().manual_seed(2))
    packed = segment_softmax(torch.cat([logits, big]), torch.cat([index, torch.full((50_000,), len(sizes))]),
                             len(sizes) + 1)
    assert torch.equal(packed[:logits.shape[0]], alone)
    assert torch.equal(segment_softmax(logits, index, len(sizes)), alone)


def test_the_large_bags_gradient_is_the_float64_one():
    sizes = [3, 200_000]
    logits, index = _packed(sizes, seed=3)
    c = torch.randn(logits.shape[0], generator=torch.Generator().manual_seed(4))
    l32 = logits.clone().requires_grad_()
    (segment_softmax(l32, index, 2) * c).sum().backward()
    l64 = logits.double().requires_grad_()
    (torch.softmax(l64[3:], 0) * c[3:].double()).sum().backward()
    g, ref = l32.grad[3:].double(), l64.grad[3:]
    assert (g - ref).abs().max() <= 1e-5 * ref.abs().max()
