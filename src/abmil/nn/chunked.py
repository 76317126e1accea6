"""Attention pooling of one giant bag (a whole slide) in memory bounded by a chunk, not the bag.

Plain attention pooling keeps every instance's activations: for a slide of 10⁶ patches, a
1024→512 encoder and a 512→256 gated attention net, several GB. Here the bag is processed
chunk by chunk:

- inference (:func:`chunked_attention_pool`): an online softmax, as flash attention does — a
  running max ``m``, running ``s = Σ exp(l_k - m)`` and running ``acc = Σ exp(l_k - m) h_k``,
  rescaled when ``m`` grows. The chunks may come straight from disk; memory is O(chunk).
- training (:func:`chunked_attention`): a custom autograd function. Forward keeps only the
  logits (n_instances,) and ``m``, ``s``, ``z``; backward recomputes each chunk's activations
  and pulls the parameter (and input) gradients through them. Extra memory is O(chunk) plus
  O(n_instances) scalars.

Both give the values and gradients of ``AttentionPool(encoder(x), zeros)`` to float rounding
(``tests/test_chunked.py``). On CPU both compute in blocks of :data:`ENCODE_BLOCK` rows, whose activations
stay in the CPU's cache from the first layer to the attention logits (:func:`encode_blocks`; keyed dropout
draws the whole bag's masks in any block).
"""
from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence

import torch
from torch import Tensor, nn
from torch.autograd.function import once_differentiable

from .dropout import dropout_row_offset
from .pooling import AttentionPool

#: Bags above this many instances are pooled in chunks, recomputed in the backward pass. The recompute costs training
#: throughput (the forward pass again: 43% more arithmetic for the CLAM-sized net), so only bags whose activations
#: are large are chunked: at D=1024 and 512 hidden units a chunk's activations are about 1.3 GiB, and a 1M-instance bag
#: trains at 1.17x its own bytes (benchmarks/wsi_speed.py).
DEFAULT_CHUNK_SIZE = 131072


#: Rows per block where a large bag is encoded block by block (:func:`encode_blocks`): a block's activations
#: (2048 x 512 float32 = 4 MiB) stay in the CPU's cache from the first layer to the attention logits. Measured on the
#: CLAM-sized net, 2 threads, a training step, alternating runs: 100k instances 122 GFLOP/s as one block, 158-164
#: in blocks of 8192, 164-165 of 4096, 170-171 of 2048; 10k instances 156 vs 160-163 (2048). Peak memory within 3%.
ENCODE_BLOCK = 2048


def _embed(encoder: nn.Module | None, pool: AttentionPool, x: Tensor, first_row: int = 0) -> tuple[Tensor, Tensor]:
    """``x`` (n, in_dim), rows ``first_row ...`` of a bag → ``h`` (n, dim), attention logits (n,)."""
    if encoder is None:
        h = x
    else:
        with dropout_row_offset(encoder, first_row):  # keyed dropout draws the whole bag's masks for these rows
            h = encoder(x)
    return h, pool.scores(h)


def encode_blocks(encoder: nn.Module | None, pool: AttentionPool, x: Tensor,
                  block: int | None = None) -> Iterator[tuple[int, Tensor, Tensor]]:
    """``(start, h, logits)`` for consecutive blocks of ``block`` (default :data:`ENCODE_BLOCK`) rows of ``x``
    (n, in_dim): ``h`` (n_block, dim) and logits (n_block,) as :func:`_embed` gives them for the whole of ``x``
    (keyed dropout included)."""
    block = ENCODE_BLOCK if block is None else block
    for start in range(0, x.shape[0], block):
        h, logits = _embed(encoder, pool, x[start:start + block], start)
        yield start, h, logits


class OnlineSoftmaxPool:
    """Running state of ``z = Σ softmax(l)_k h_k`` over chunks seen one at a time.

    Accumulates in float32 at least, whatever the chunks' dtype: over 10⁶ instances the
    rounding of a float16 running sum would dominate.
    """

    def __init__(self):
        self.max: Tensor | None = None  # () running max of the logits
        self.sumexp: Tensor | None = None  # () Σ exp(l_k - max)
        self.acc: Tensor | None = None  # (dim,) Σ exp(l_k - max) h_k

    def update(self, h: Tensor, logits: Tensor) -> None:
        """Add a chunk: ``h`` (n_chunk, dim), ``logits`` (n_chunk,)."""
        dtype = torch.promote_types(h.dtype, torch.float32)
        h, logits = h.to(dtype), logits.to(dtype)
        m = logits.max()
        if self.max is None:
            self.max, self.sumexp, self.acc = m, logits.new_zeros(()), h.new_zeros(h.shape[1])
        elif m > self.max:
            scale = torch.exp(self.max - m)  # rescale what was summed under the old max
            self.sumexp, self.acc, self.max = self.sumexp * scale, self.acc * scale, m
        e = torch.exp(logits - self.max)
        self.sumexp = self.sumexp + e.sum()
        self.acc = self.acc + e @ h

    def result(self) -> Tensor:
        """``z`` (dim,)."""
        if self.max is None:
            raise ValueError("attention pooling of an empty bag")
        return self.acc / self.sumexp


class _LogitBuffer:
    """Collects per-chunk logits in few large blocks.

    Appending one small tensor per chunk would leave small live allocations between the
    chunks' large freed ones, and glibc's heap, unable to shrink past them, would grow by a
    chunk's activations per chunk: resident memory O(n_instances) while live memory is O(chunk).
    """

    BLOCK = 1 << 20

    def __init__(self):
        self.blocks: list[Tensor] = []
        self.used = 0  # filled entries of the last block

    def append(self, logits: Tensor) -> None:
        while logits.numel():
            if not self.blocks or self.used == self.blocks[-1].numel():
                self.blocks.append(logits.new_empty(max(self.BLOCK, logits.numel())))
                self.used = 0
            take = min(logits.numel(), self.blocks[-1].numel() - self.used)
            self.blocks[-1][self.used:self.used + take] = logits[:take]
            self.used, logits = self.used + take, logits[take:]

    def result(self) -> Tensor:
        """All logits, (n_instances,)."""
        if not self.blocks:
            return torch.empty(0)
        self.blocks[-1] = self.blocks[-1][:self.used]
        return self.blocks[0] if len(self.blocks) == 1 else torch.cat(self.blocks)


def _as_tensor(chunk: Tensor | Sequence) -> Tensor:
    # FeatureBagDataset.iter_chunks yields (features, coords); accept it as it comes
    return chunk if isinstance(chunk, Tensor) else chunk[0]


@torch.no_grad()
def chunked_attention_pool(encoder: nn.Module | None, pool: AttentionPool,
                           chunks: Iterable[Tensor | Sequence], *, return_logits: bool = False,
                           device: torch.device | str | None = None) -> tuple[Tensor, Tensor | None]:
    """Attention-pool one bag given as a stream of chunks, without gradients.

    Args:
        encoder: instance encoder f applied to each chunk, or None for features used as h.
        pool: the attention pooling whose ``scores`` give the logits.
        chunks: the bag's instances, ``(n_chunk, in_dim)`` tensors (or ``(features, coords)``
            pairs, as :meth:`abmil.slides.features.FeatureBagDataset.iter_chunks` yields).
        return_logits: also return every instance's logit, (n_instances,) — O(n) scalars —
            from which the attention weights are ``torch.softmax(logits, 0)``.
        device: move each chunk here before encoding (e.g. the GPU for chunks read on CPU).

    Returns:
        ``z`` (1, dim) — the pooled bag, as ``AttentionPool`` returns for one bag — and the
        logits (n_instances,) or None.
    """
    state, logits_all = OnlineSoftmaxPool(), _LogitBuffer()
    for chunk in chunks:
        x = _as_tensor(chunk)
        if device is not None:
            x = x.to(device, non_blocking=True)
        for _, h, logits in encode_blocks(encoder, pool, x, None if x.device.type == "cpu" else max(len(x), 1)):
            state.update(h, logits)
            if return_logits:
                logits_all.append(logits)
    z = state.result().unsqueeze(0)
    return z, logits_all.result() if return_logits else None


class _ChunkedAttention(torch.autograd.Function):
    """``z = Σ_k softmax(l)_k h_k`` with ``h = f(x)``, ``l = scores(h)``, in chunks.

    With ``a = softmax(l)`` and upstream gradient ``g = dL/dz``:
        dL/dh_k (direct) = a_k g,        dL/dl_k = a_k (h_k·g − z·g).
    Backward recomputes each chunk's graph and hands these two upstream gradients to
    ``torch.autograd.grad``, which returns that chunk's share of the parameter (and input)
    gradients; the shares are summed and returned for the parameter inputs, so the engine
    accumulates them into ``.grad`` as for any op (DDP hooks and grad accumulation work).
    """

    @staticmethod
    def forward(ctx, x: Tensor, chunk_size: int, encoder: nn.Module | None, pool: AttentionPool,
                *params: Tensor) -> tuple[Tensor, Tensor]:
        # the RNG state, so that dropout inside f draws the same masks when backward recomputes
        ctx.cpu_rng = torch.get_rng_state()
        ctx.cuda_rng = torch.cuda.get_rng_state(x.device) if x.is_cuda else None
        # ... and the autocast state: backward runs outside autocast unless told, and its recompute must make the
        # same dtypes as forward did (bf16 h against bf16 z and g)
        device = x.device.type
        ctx.autocast = (device, torch.is_autocast_enabled(device), torch.get_autocast_dtype(device))
        state = OnlineSoftmaxPool()
        logits = None  # (n,) allocated once: see _LogitBuffer for why not a list of chunks
        for start, h, l in encode_blocks(encoder, pool, x, _block(chunk_size, x.device)):
            state.update(h, l)
            if logits is None:
                logits = l.new_empty(x.shape[0])
            logits[start:start + l.shape[0]] = l
        z = state.result().to(logits.dtype)
        # params are saved only so that autograd refuses a backward after they changed in place
        ctx.save_for_backward(x, logits, state.max, state.sumexp, z, *params)
        ctx.chunk_size, ctx.encoder, ctx.pool = chunk_size, encoder, pool
        ctx.mark_non_differentiable(logits)
        return z.unsqueeze(0), logits

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_z: Tensor, _grad_logits: Tensor | None):
        x, logits, m, s, z = ctx.saved_tensors[:5]
        params = ctx.needs_input_grad[4:]
        param_tensors = [p for p, need in zip(_params(ctx.encoder, ctx.pool), params) if need]
        need_x = ctx.needs_input_grad[0]
        g = grad_z.reshape(-1).to(z.dtype)
        weights = (torch.exp(logits - m) / s).to(z.dtype)  # (n,) the attention weights a_k
        zg = z @ g
        grads = [torch.zeros_like(p) for p in param_tensors]
        grad_x = torch.empty_like(x) if need_x else None
        devices = [x.device] if x.is_cuda else []
        device, autocast_on, autocast_dtype = ctx.autocast
        with torch.random.fork_rng(devices=devices), torch.enable_grad(), \
                torch.autocast(device, dtype=autocast_dtype, enabled=autocast_on):
            torch.set_rng_state(ctx.cpu_rng)
            if ctx.cuda_rng is not None:
                torch.cuda.set_rng_state(ctx.cuda_rng, x.device)
            # the forward's blocks, in its order: unkeyed dropout redraws the same masks
            block = _block(ctx.chunk_size, x.device)
            for start in range(0, x.shape[0], block):
                stop = min(start + block, x.shape[0])
                xc = x[start:stop].detach().requires_grad_(need_x)
                h, l = _embed(ctx.encoder, ctx.pool, xc, start)
                a = weights[start:stop]
                outputs, upstream = [l], [a * (h.detach() @ g - zg)]
                if h.requires_grad:  # False only for an identity encoder and x without grad
                    outputs.append(h)
                    upstream.append(a.unsqueeze(1) * g)
                inputs = param_tensors + ([xc] if need_x else [])
                shares = torch.autograd.grad(outputs, inputs, upstream, allow_unused=True)
                for acc, share in zip(grads, shares):
                    if share is not None:
                        acc += share
                if need_x:
                    grad_x[start:stop] = shares[-1] if shares[-1] is not None else 0
        it = iter(grads)
        return (grad_x, None, None, None, *[next(it) if need else None for need in params])


def _block(chunk_size: int, device: torch.device) -> int:
    """Rows computed at a time by the chunked autograd function: a chunk bounds the memory; on CPU a cache-sized
    block (no larger) is faster (a GPU wants large kernels)."""
    return min(chunk_size, ENCODE_BLOCK) if device.type == "cpu" else chunk_size


def _params(encoder: nn.Module | None, pool: AttentionPool) -> list[Tensor]:
    return ([] if encoder is None else list(encoder.parameters())) + list(pool.parameters())


def chunked_attention(x: Tensor, encoder: nn.Module | None, pool: AttentionPool,
                      chunk_size: int = DEFAULT_CHUNK_SIZE) -> tuple[Tensor, Tensor]:
    """Differentiable attention pooling of one bag in memory O(chunk_size).

    Equals ``pool(encoder(x), zeros)`` in value and in the gradients of ``x`` and of every
    parameter of ``encoder`` and ``pool``, without keeping the activations of all instances.

    Args:
        x: the bag, (n_instances, in_dim), held in memory (on CPU or GPU).
        encoder: instance encoder f, or None for features used as h directly.
        pool: the attention pooling (plain or gated).
        chunk_size: instances per chunk.

    Returns:
        ``z`` (1, dim), differentiable, and the attention logits (n_instances,), not
        differentiable; the weights are ``torch.softmax(logits, 0)``.

    Layers that change state on each call (BatchNorm's running statistics) see each instance
    twice, as under ``torch.utils.checkpoint``; dropout draws the same masks in the recompute.
    First-order gradients only (no double backward).
    """
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    if x.dim() != 2 or x.shape[0] == 0:
        raise ValueError(f"expected one non-empty bag (n_instances, in_dim), got shape {tuple(x.shape)}")
    return _ChunkedAttention.apply(x, chunk_size, encoder, pool, *_params(encoder, pool))


def attention_pool_bag(encoder: nn.Module | None, pool: AttentionPool, x: Tensor,
                       chunk_size: int = DEFAULT_CHUNK_SIZE) -> tuple[Tensor, Tensor]:
    """Attention pooling of one bag ``x`` (n_instances, in_dim) held in memory, as its size asks.

    Above ``chunk_size`` instances: :func:`chunked_attention` while gradients are on (in the weights' dtype even
    under autocast: its recomputing backward mixes dtypes otherwise), else streamed by :func:`chunked_attention_pool`.
    On CPU above :data:`ENCODE_BLOCK` instances: encoded in cache-sized blocks kept for autograd (the same values,
    faster). Otherwise in one piece. The single-bag ``softmax(l) @ h`` is a matmul, faster than the segment sum.

    Returns:
        ``z`` (1, dim) and the attention logits (n_instances,).
    """
    if x.dim() != 2 or x.shape[0] == 0:
        raise ValueError(f"expected one non-empty bag (n_instances, in_dim), got shape {tuple(x.shape)}")
    if x.shape[0] > chunk_size:
        if torch.is_grad_enabled():
            with torch.autocast(x.device.type, enabled=False):
                return chunked_attention(x.to(pool.V.weight.dtype), encoder, pool, chunk_size)
        return chunked_attention_pool(encoder, pool, x.split(chunk_size), return_logits=True)
    if x.device.type == "cpu" and x.shape[0] > ENCODE_BLOCK:
        blocks = [(h, l) for _, h, l in encode_blocks(encoder, pool, x)]
        logits = torch.cat([l for _, l in blocks])
        weights = torch.softmax(logits, 0).split([len(l) for _, l in blocks])
        z = sum((a.unsqueeze(0) @ h).to(h.dtype) for a, (h, _) in zip(weights, blocks))
        return z, logits
    h, logits = _embed(encoder, pool, x)
    return (torch.softmax(logits, 0).unsqueeze(0) @ h).to(h.dtype), logits
