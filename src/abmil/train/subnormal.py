"""Flushing subnormal weights to zero between epochs.

Weights whose inputs never fire (a dead ReLU unit upstream) get only the weight-decay part of the gradient; under
Adam's coupled L2 they shrink towards zero and, after some hundred epochs, sit in the subnormal range (below
``torch.finfo(dtype).tiny``, 1.2e-38 in float32). x86 CPUs handle a subnormal operand with a microcode assist, so
every matmul or convolution that reads such a weight slows down: the breast patch CNN under gated attention, after
~100 epochs of the paper's protocol, had a quarter of its first fc layer subnormal and a forward+backward pass
3.5x slower (``benchmarks/subnormal_speed.py``).

The thread-wide "flush denormals" flag (``torch.set_flush_denormal``) is global state, per thread (OpenMP workers
may not inherit it), and flushes activations too. Zeroing the subnormal weights once per epoch is explicit, device
independent and touches nothing else: such a weight changes no forward output (its products vanish in any
normal-sized sum; a test checks the outputs bitwise), and a few steps' worth of new ones (tens of thousands of
a million) cost little.
"""
from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import Tensor

__all__ = ["flush_subnormal_"]


@torch.no_grad()
def flush_subnormal_(tensors: Iterable[Tensor]) -> int:
    """Set every subnormal entry of the floating-point ``tensors`` to zero, in place; returns how many there were.

    Non-floating tensors are left alone. Normal values, zeros, infinities and NaNs are unchanged.
    """
    flushed = 0
    for t in tensors:
        if not t.is_floating_point():
            continue
        tiny = torch.finfo(t.dtype).tiny
        mask = (t != 0) & (t.abs() < tiny)
        n = int(mask.sum())
        if n:
            t.masked_fill_(mask, 0.0)
            flushed += n
    return flushed
