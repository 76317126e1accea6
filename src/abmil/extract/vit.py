"""A Vision Transformer in plain PyTorch with timm's ``VisionTransformer`` parameter names (``patch_embed.proj``,
``blocks.i.attn.qkv``, ``ls1.gamma``, ...), so the pathology foundation models published as timm checkpoints
(UNI, UNI2-h, Virchow2, H-optimus, Prov-GigaPath) load without timm or torchvision. Covers what those models use:
LayerScale, register tokens, position embeddings with or without the prefix tokens (``no_embed_class``) and the
packed SwiGLU MLP (timm's ``SwiGLUPacked``: ``fc1`` to 2h, ``silu(first half) * second half``, ``fc2`` from h).
Inputs must have the checkpoint's image size (no position-embedding resampling)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class Attention(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        b, n, c = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4).unbind(0)
        x = F.scaled_dot_product_attention(q, k, v)
        return self.proj(x.transpose(1, 2).reshape(b, n, c))


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int, swiglu: bool):
        super().__init__()
        self.swiglu = swiglu
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden // 2 if swiglu else hidden, dim)

    def forward(self, x: Tensor) -> Tensor:
        x = self.fc1(x)
        if self.swiglu:
            a, b = x.chunk(2, dim=-1)
            x = F.silu(a) * b
        else:
            x = F.gelu(x)
        return self.fc2(x)


class LayerScale(nn.Module):
    def __init__(self, dim: int, init_values: float):
        super().__init__()
        self.gamma = nn.Parameter(torch.full((dim,), init_values))

    def forward(self, x: Tensor) -> Tensor:
        return x * self.gamma


class Block(nn.Module):
    def __init__(self, dim: int, heads: int, hidden: int, swiglu: bool, init_values: float | None):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, heads)
        self.ls1 = LayerScale(dim, init_values) if init_values else nn.Identity()
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, hidden, swiglu)
        self.ls2 = LayerScale(dim, init_values) if init_values else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.ls1(self.attn(self.norm1(x)))
        return x + self.ls2(self.mlp(self.norm2(x)))


class PatchEmbed(nn.Module):
    def __init__(self, patch_size: int, dim: int):
        super().__init__()
        self.proj = nn.Conv2d(3, dim, patch_size, stride=patch_size)

    def forward(self, x: Tensor) -> Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)  # (n, tokens, dim)


class VisionTransformer(nn.Module):
    """Images (n, 3, img_size, img_size) → features (n, dim), or (n, 2 dim) with ``pool="token+mean"``
    (Virchow's class token beside the mean of the patch tokens).

    ``mlp_ratio``: the MLP's hidden width over ``dim`` (for SwiGLU, that of ``fc1``, both halves)."""

    def __init__(self, *, img_size: int = 224, patch_size: int = 16, dim: int = 768, depth: int = 12,
                 heads: int = 12, mlp_ratio: float = 4.0, swiglu: bool = False, init_values: float | None = None,
                 reg_tokens: int = 0, no_embed_class: bool = False, pool: str = "token"):
        super().__init__()
        if pool not in ("token", "token+mean"):
            raise ValueError(f"unknown pool {pool!r}")
        self.img_size, self.pool, self.no_embed_class = img_size, pool, no_embed_class
        self.prefix = 1 + reg_tokens
        grid = img_size // patch_size
        self.patch_embed = PatchEmbed(patch_size, dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.reg_token = nn.Parameter(torch.zeros(1, reg_tokens, dim)) if reg_tokens else None
        self.pos_embed = nn.Parameter(torch.randn(1, grid * grid + (0 if no_embed_class else self.prefix), dim) * .02)
        hidden = int(dim * mlp_ratio)
        self.blocks = nn.Sequential(*[Block(dim, heads, hidden, swiglu, init_values) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.dim = dim * (2 if pool == "token+mean" else 1)

    def forward(self, x: Tensor) -> Tensor:
        if x.shape[-2:] != (self.img_size, self.img_size):
            raise ValueError(f"expected {self.img_size} x {self.img_size} images, got {tuple(x.shape[-2:])}")
        x = self.patch_embed(x)
        prefix = [self.cls_token.expand(x.shape[0], -1, -1)]
        if self.reg_token is not None:
            prefix.append(self.reg_token.expand(x.shape[0], -1, -1))
        if self.no_embed_class:
            x = torch.cat(prefix + [x + self.pos_embed], dim=1)
        else:
            x = torch.cat(prefix + [x], dim=1) + self.pos_embed
        x = self.norm(self.blocks(x))
        if self.pool == "token":
            return x[:, 0]
        return torch.cat([x[:, 0], x[:, self.prefix:].mean(dim=1)], dim=1)
