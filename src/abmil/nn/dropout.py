"""Dropout whose mask is a pure function of (seed, step, position).

A run trained alone and the same run trained stacked beside others (``abmil.train.stacked``)
must draw identical masks, whatever else shares the random stream. So the mask is a counter-based
hash of the run's seed, the step and each element's position in its bag — not a draw from a global
generator. Until a trainer calls :func:`set_dropout_key`, it behaves as ``torch.nn.Dropout``.
"""
from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

import numpy as np
import torch
from torch import Tensor, nn

_M32 = 0xFFFFFFFF


def _mix32(x: Tensor) -> Tensor:
    """A 32-bit integer finaliser (lowbias32), computed in int64 and kept to 32 bits."""
    x = x & _M32
    x = x ^ (x >> 16)
    x = (x * 0x7FEB352D) & _M32
    x = x ^ (x >> 15)
    x = (x * 0x846CA68B) & _M32
    return x ^ (x >> 16)


def hash_uniform(keys: Tensor, salt: int, n: int, offset: int = 0) -> Tensor:
    """Uniform [0, 1) numbers, ``(n_keys, n)``, from ``keys`` (n_keys, 2) int64 = (seed, step).

    Element ``i`` of key row r gets ``hash(seed_r, step_r, salt, offset + i)``: with one bag per step,
    element i belongs to the same instance and unit whether the run trains alone or stacked, and a
    block of a bag starting at element ``offset`` gets the numbers of those elements of the whole bag.
    """
    idx = torch.arange(offset, offset + n, dtype=torch.int64, device=keys.device)
    h = _mix32(keys[:, :1] * 0x9E3779B1 + salt)
    h = _mix32(h ^ (keys[:, 1:] * 0x85EBCA77))
    h = _mix32(h ^ idx)
    return h.to(torch.float32) / 4294967296.0


def _mix32_int(x: int) -> int:
    """:func:`_mix32` of one Python integer."""
    x &= _M32
    x ^= x >> 16
    x = (x * 0x7FEB352D) & _M32
    x ^= x >> 15
    x = (x * 0x846CA68B) & _M32
    return x ^ (x >> 16)


def hash_keep_masks(seed: int, steps: Sequence[int], salt: int, sizes: Sequence[int], p: float) -> np.ndarray:
    """Keep masks of many steps of one run at once: ``hash_uniform(tensor([[seed, step]]), salt, size) >= p`` for
    each ``(step, size)`` pair, concatenated into one flat bool array of ``sum(sizes)`` elements.

    The same numbers with far fewer calls: the key part of the hash is two Python-integer mixes per step, and the
    per-element part runs once over all steps on uint32, where multiplication wraps and shifts are logical without
    masking. Used where a single run takes many small steps (:mod:`abmil.train.direct`); tests check the equality.
    """
    sizes = np.asarray(sizes, dtype=np.int64)
    keys = [_mix32_int(_mix32_int(seed * 0x9E3779B1 + salt) ^ (int(step) * 0x85EBCA77)) for step in steps]
    starts = np.repeat(np.cumsum(sizes) - sizes, sizes)
    x = (np.arange(int(sizes.sum()), dtype=np.int64) - starts).astype(np.uint32)  # position within its step
    x ^= np.repeat(np.asarray(keys, dtype=np.uint32), sizes)
    x ^= x >> np.uint32(16)
    x *= np.uint32(0x7FEB352D)
    x ^= x >> np.uint32(15)
    x *= np.uint32(0x846CA68B)
    x ^= x >> np.uint32(16)
    # float32 as hash_uniform rounds it; p compared in float32 as torch compares a float32 tensor with a scalar
    return x.astype(np.float32) / np.float32(4294967296.0) >= np.float32(p)


class KeyedDropout(nn.Module):
    """Inverted dropout with a reproducible, position-keyed mask.

    Args:
        p: probability of zeroing an element.
        salt: distinguishes the dropout layers of one model.
    """

    def __init__(self, p: float = 0.5, salt: int = 0):
        super().__init__()
        if not 0.0 <= p < 1.0:
            raise ValueError(f"dropout p must be in [0, 1), got {p}")
        self.p, self.salt = p, salt
        # (seed, step), set by a trainer through set_dropout_key; until then torch's generator.
        # A stacked trainer sets (K, 2): one key per run, x holding the K runs' rows in order.
        self.keyed = False
        self.register_buffer("key", torch.tensor([0, 0], dtype=torch.int64), persistent=False)
        # Packed bags of different sizes (set_dropout_key with several steps): rows of x per key, in order.
        self.rows: tuple[int, ...] | None = None
        # A block of one bag forwarded on its own (see dropout_row_offset): the bag's row at which x starts.
        self.row_offset = 0

    def forward(self, x: Tensor) -> Tensor:
        """``x`` (n_rows, dim) → same shape."""
        if not self.training or self.p == 0.0:
            return x
        if not self.keyed:
            return nn.functional.dropout(x, self.p, True)
        keys = self.key.view(-1, 2)
        width = x.numel() // max(x.shape[0], 1)
        if self.rows is None:
            u = hash_uniform(keys, self.salt, x.numel() // keys.shape[0], offset=self.row_offset * width)
        else:  # each bag's mask from its own key and its own positions: as if it were forwarded alone
            if sum(self.rows) != x.shape[0]:
                raise ValueError(f"dropout keyed for {sum(self.rows)} rows, got {x.shape[0]}")
            u = torch.cat([hash_uniform(keys[i:i + 1], self.salt, r * width).view(-1)
                           for i, r in enumerate(self.rows)])
        keep = u.view_as(x) >= self.p
        return x * keep.to(x.dtype) * (1.0 / (1.0 - self.p))

    def extra_repr(self) -> str:
        return f"p={self.p}, salt={self.salt}"


@contextlib.contextmanager
def dropout_row_offset(model: nn.Module, row: int) -> Iterator[None]:
    """While inside, every keyed :class:`KeyedDropout` of ``model`` treats its input as rows ``row, row + 1, ...``
    of the bag: a bag forwarded block by block draws the masks of the whole bag forwarded at once."""
    layers = [m for m in model.modules() if isinstance(m, KeyedDropout)]
    for m in layers:
        m.row_offset = row
    try:
        yield
    finally:
        for m in layers:
            m.row_offset = 0


def set_dropout_key(model: nn.Module, seed: int, step: int | Sequence[int],
                    rows: Sequence[int] | None = None) -> None:
    """Key every :class:`KeyedDropout` of ``model`` with the run's seed and the current step.

    Packed bags: ``step`` one number per bag and ``rows`` each bag's instance count (its rows, in the
    packed order); each bag then gets the mask it would get forwarded alone with its own step.
    """
    packed = rows is not None
    steps = list(step) if packed else [step]
    if packed and len(steps) != len(rows):
        raise ValueError(f"{len(steps)} steps for {len(rows)} bags")
    for m in model.modules():
        if isinstance(m, KeyedDropout):
            m.keyed = True
            m.key = torch.tensor([[seed, s] for s in steps] if packed else [seed, step], dtype=torch.int64,
                                 device=m.key.device)
            m.rows = tuple(int(r) for r in rows) if packed else None
