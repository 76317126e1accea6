"""Keeping float32 subnormals out of CPU training: they cost x86 CPUs a microcode assist per operand.

Two sources, two remedies, both applied by every training loop:

* Weights whose inputs never fire (a dead ReLU unit upstream) get only the weight-decay part of the gradient; under
  Adam's coupled L2 they shrink towards zero and, after some hundred epochs, sit in the subnormal range (below
  ``torch.finfo(dtype).tiny``, 1.2e-38 in float32), so every matmul or convolution that reads them slows down (the
  breast patch CNN under gated attention: a quarter of its first fc layer, a pass 3.9x slower).
  :func:`flush_subnormal_` zeroes them at each epoch's end: explicit, device independent, and no forward output
  changes (their products vanish in any normal-sized sum; a test checks the outputs bitwise).
* Gradients: once attention is peaked, the instances it ignores get gradients near 1e-36, and the backward pass
  through V, U and the encoder's layers multiplies them down into the subnormal range (a tenth of the activation
  gradients of a late breast fold). :func:`subnormals_as_zero` runs the training call with the CPU's
  flush-to-zero and denormals-are-zero modes on (``torch.set_flush_denormal``) and restores the previous mode
  after. The mode is per thread, and a new thread copies its creator's: it covers the training thread (all of a
  one-thread worker's arithmetic), not the intra-op threads torch has already started. The ``abmil`` command
  enters it before torch starts them, so there every thread has it; a script gets the same by calling
  ``torch.set_flush_denormal(True)`` before its first torch operation.
"""
from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager

import torch
from torch import Tensor

__all__ = ["flush_subnormal_", "subnormals_as_zero", "subnormals_flushed"]

_PROBE = 1e-39  # a float32 subnormal


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


def subnormals_flushed() -> bool:
    """Whether the calling thread's CPU flushes float32 subnormals to zero now (a one-element probe, not a flag)."""
    return bool((torch.tensor([_PROBE], dtype=torch.float32) * 2.0).item() == 0.0)


@contextmanager
def subnormals_as_zero() -> Iterator[bool]:
    """Within the block (or the decorated function), the calling thread treats float subnormals as zero.

    Sets the CPU's flush-to-zero and denormals-are-zero modes (``torch.set_flush_denormal(True)``) and, on exit,
    turns them off again unless they were on when the block began. Yields whether the CPU supports them (x86 with
    SSE3; elsewhere the block runs unchanged). Values below 1.2e-38 become 0 in the block's CPU arithmetic: a
    training step's result moves by no more than such a value would have moved it.
    """
    was_on = subnormals_flushed()
    supported = torch.set_flush_denormal(True)
    try:
        yield supported
    finally:
        if supported and not was_on:
            torch.set_flush_denormal(False)
