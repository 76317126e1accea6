"""TransMIL (Shao et al. 2021, *TransMIL: Transformer based correlated multiple instance learning for whole slide
image classification*): self-attention between the instances of a bag, read out through a class token.

    h = f(x) (n, dim) → squared: h padded with its first rows to H² = ceil(√n)² rows → [cls; h] (1 + H², dim)
      → TransLayer → PPEG (depthwise 7/5/3 convolutions over the H x H grid) → TransLayer → LayerNorm
      → Linear(dim, n_out) of the class token

A TransLayer is ``x + NystromAttention(LayerNorm(x))`` (Xiong et al. 2021): softmax attention approximated through
``landmarks`` segment means of the queries and keys, its middle matrix inverted by ``pinv_iterations`` Newton-Schulz
(Moore-Penrose) steps; the sequence is zero-padded at the front to a multiple of ``landmarks``. The per-instance
scores (``MILOutput.weights``) are the class token's row of the last layer's attention matrix, averaged over the
heads (as torchmil reports it): a score per patch, not a convex weighting (Nyström rows need not sum to 1).

TransMIL needs each bag as one dense sequence: packed bags are forwarded one after another (the loop does not pack
them: :attr:`~abmil.nn.zoo.ModelSpec.packed`), and a slide is forwarded whole (no chunked pooling).

Our design follows torchmil's ``TransMIL`` (1.0.2; tested equal to it, ``tests/test_clam_transmil.py``), which
follows the paper's code except in two places, which we share: no residual depthwise convolution on the values inside
the Nyström attention, and no output projection after it. The encoder f (Linear + ReLU) is torchmil's ``feat_ext``.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from .models import MILOutput


def newton_schulz_pinv(a: Tensor, iterations: int = 6) -> Tensor:
    """Moore-Penrose pseudo-inverse of each ``a`` (..., m, m) by Newton-Schulz iterations, started from
    ``aᵀ / (max column sum · max row sum)`` (the maxima over the whole tensor, as the Nyströmformer code does)."""
    z = a.transpose(-1, -2) / (a.abs().sum(-1).max() * a.abs().sum(-2).max())
    eye = torch.eye(a.shape[-1], dtype=a.dtype, device=a.device)
    for _ in range(iterations):
        az = a @ z
        z = 0.25 * z @ (13 * eye - az @ (15 * eye - az @ (7 * eye - az)))
    return z


class NystromAttention(nn.Module):
    """Multi-head Nyström self-attention over one sequence ``(n, dim)`` → ``(n, dim)``, no biases on q, k, v."""

    def __init__(self, dim: int, heads: int = 8, landmarks: int = 256, pinv_iterations: int = 6):
        super().__init__()
        if dim % heads:
            raise ValueError(f"dim {dim} is not divisible by {heads} heads")
        self.heads, self.landmarks, self.pinv_iterations = heads, landmarks, pinv_iterations
        self.qkv = nn.Linear(dim, 3 * dim, bias=False)

    def forward(self, x: Tensor, query_row: int | None = None) -> tuple[Tensor, Tensor | None]:
        """The attended sequence (n, dim), and with ``query_row`` that row of the attention matrix averaged over
        the heads, (n,)."""
        n, dim = x.shape
        m = self.landmarks
        pad = (m - n % m) % m
        x = torch.cat([x.new_zeros(pad, dim), x])                       # (N, dim), N = m · l
        q, k, v = (t.reshape(x.shape[0], self.heads, -1).transpose(0, 1) for t in self.qkv(x).chunk(3, -1))
        q = q * (dim // self.heads) ** -0.5                               # (heads, N, d)
        group = math.ceil(n / m)
        q_land = q.reshape(self.heads, m, group, -1).sum(2) / group      # (heads, m, d)
        k_land = k.reshape(self.heads, m, group, -1).sum(2) / group
        attn1 = torch.softmax(q @ k_land.transpose(-1, -2), -1)          # (heads, N, m)
        inv = newton_schulz_pinv(torch.softmax(q_land @ k_land.transpose(-1, -2), -1), self.pinv_iterations)
        attn3 = torch.softmax(q_land @ k.transpose(-1, -2), -1)          # (heads, m, N)
        out = (attn1 @ inv) @ (attn3 @ v)                                # (heads, N, d)
        out = out.transpose(0, 1).reshape(x.shape[0], dim)[pad:]
        if query_row is None:
            return out, None
        row = (attn1[:, pad + query_row].unsqueeze(1) @ inv @ attn3)[:, 0, pad:]   # (heads, n)
        return out, row.mean(0)


class TransLayer(nn.Module):
    """``x + NystromAttention(LayerNorm(x))``."""

    def __init__(self, dim: int, heads: int, landmarks: int, pinv_iterations: int = 6):
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.attention = NystromAttention(dim, heads, landmarks, pinv_iterations)

    def forward(self, x: Tensor, query_row: int | None = None) -> tuple[Tensor, Tensor | None]:
        out, row = self.attention(self.norm(x), query_row)
        return x + out, row


class PPEG(nn.Module):
    """TransMIL's pyramid position encoding: ``x + conv7(x) + conv5(x) + conv3(x)`` (depthwise) over the H x W grid
    of the instance tokens; the class token passes through."""

    def __init__(self, dim: int):
        super().__init__()
        self.proj7 = nn.Conv2d(dim, dim, 7, 1, 3, groups=dim)
        self.proj5 = nn.Conv2d(dim, dim, 5, 1, 2, groups=dim)
        self.proj3 = nn.Conv2d(dim, dim, 3, 1, 1, groups=dim)

    def forward(self, x: Tensor, side: int) -> Tensor:
        """``x`` (1 + side², dim) → the same shape."""
        grid = x[1:].transpose(0, 1).reshape(1, x.shape[1], side, side)
        grid = grid + self.proj7(grid) + self.proj5(grid) + self.proj3(grid)
        return torch.cat([x[:1], grid.flatten(2)[0].transpose(0, 1)])


class TransMIL(nn.Module):
    """TransMIL over ``encoder``'s embeddings (``dim = encoder.out_dim``).

    Args:
        encoder: instance encoder with ``out_dim`` (the slides' Linear + ReLU + dropout).
        n_out: logits per bag.
        heads: attention heads (the paper: 8).
        landmarks: Nyström landmarks (default ``dim // 2``, the paper's).
        pinv_iterations: Newton-Schulz steps (6).
    """

    def __init__(self, encoder: nn.Module, n_out: int = 1, *, heads: int = 8, landmarks: int | None = None,
                 pinv_iterations: int = 6):
        super().__init__()
        dim = encoder.out_dim
        landmarks = max(dim // 2, 1) if landmarks is None else landmarks
        self.encoder = encoder
        self.cls_token = nn.Parameter(torch.randn(1, dim))
        self.layer1 = TransLayer(dim, heads, landmarks, pinv_iterations)
        self.ppeg = PPEG(dim)
        self.layer2 = TransLayer(dim, heads, landmarks, pinv_iterations)
        self.norm = nn.LayerNorm(dim)
        self.classifier = nn.Linear(dim, n_out)

    @property
    def n_out(self) -> int:
        return self.classifier.out_features

    def forward(self, x: Tensor, bag_index: Tensor | None = None, n_bags: int | None = None) -> MILOutput:
        """``x`` (n_instances, in_dim), one bag or bags packed with ``bag_index`` (sorted; each bag forwarded as
        its own sequence) → logits (n_bags, n_out), ``weights`` (n_instances,) the class token's attention."""
        if bag_index is None:
            parts = [x]
        else:
            n = int(bag_index.max()) + 1 if n_bags is None else n_bags
            parts = x.split(torch.bincount(bag_index, minlength=n).tolist())
        logits, scores = zip(*(self._bag(p) for p in parts))
        return MILOutput(torch.cat(logits), torch.cat(scores))

    def _bag(self, x: Tensor) -> tuple[Tensor, Tensor]:
        h = self.encoder(x)
        n = h.shape[0]
        side = math.ceil(math.sqrt(n))
        h = torch.cat([self.cls_token.to(h.dtype), h, h[:side * side - n]])   # (1 + side², dim)
        h, _ = self.layer1(h)
        h = self.ppeg(h, side)
        h, row = self.layer2(h, query_row=0)
        z = self.norm(h)[:1]
        return self.classifier(z), row[1:n + 1].detach()
