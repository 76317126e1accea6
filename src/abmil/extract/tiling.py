"""Tiles at a physical scale: which pyramid level to read, how large, and where the tiles on tissue lie.

A tile is ``patch_size`` pixels a side at the target resolution (``mpp`` µm per pixel; 0.5 µm/px is "20x").
On a slide whose level 0 has ``mpp0`` µm/px it covers ``patch_size_level0 = round(patch_size * mpp / mpp0)``
level-0 pixels; it is read from the coarsest level no coarser than the target (nothing is lost) and resized to
``patch_size``. Corners are stored in level-0 pixels, as CLAM and TRIDENT store them.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

#: The µm per pixel a magnification stands for, by the usual convention (40x = 0.25 µm/px, 20x = 0.5, 10x = 1).
MPP_AT_1X = 10.0


def mpp_of_magnification(magnification: float) -> float:
    return MPP_AT_1X / magnification


def level0_mpp(properties: dict, given: float | None = None) -> float | None:
    """The slide's level-0 µm per pixel: ``given`` (``--mpp-level0``) if set, else OpenSlide's ``openslide.mpp-x``
    (the scanner's, or a TIFF's resolution tags), else None."""
    if given is not None:
        return float(given)
    for key in ("openslide.mpp-x", "openslide.mpp-y"):
        try:
            value = float(properties[key])
        except (KeyError, ValueError):
            continue
        if value > 0:
            return value
    return None


@dataclass(frozen=True)
class TileGrid:
    """How one slide is tiled. ``coords`` (n, 2) int64: the tiles' top-left corners at level 0, row-major."""

    patch_size: int          # tile side at the target scale (what the encoder gets, before its own resize)
    patch_size_level0: int   # tile side in level-0 pixels
    step_level0: int         # distance between neighbouring tiles' corners, level-0 pixels
    level: int               # the pyramid level read
    read_size: int           # tile side read at that level
    mpp: float               # target µm per pixel
    mpp_level0: float
    coords: np.ndarray

    @property
    def magnification(self) -> float:
        return MPP_AT_1X / self.mpp


def plan(dimensions: tuple[int, int], level_downsamples: tuple[float, ...], mpp_level0: float, mpp: float,
         patch_size: int, overlap: int = 0) -> TileGrid:
    """The level, sizes and the full grid of tiles lying wholly inside a slide of level-0 ``dimensions`` (w, h)."""
    if patch_size < 1:
        raise ValueError(f"--patch-size must be >= 1, got {patch_size}")
    if not 0 <= overlap < patch_size:
        raise ValueError(f"--overlap must be in [0, patch size {patch_size}), got {overlap}")
    scale = mpp / mpp_level0  # level-0 pixels per target pixel
    size0 = max(1, round(patch_size * scale))
    step0 = max(1, round((patch_size - overlap) * scale))
    level = 0
    for i, d in enumerate(level_downsamples):
        if d <= scale * (1 + 1e-6):
            level = i
    read_size = max(1, round(size0 / level_downsamples[level]))
    w0, h0 = dimensions
    xs = np.arange(0, w0 - size0 + 1, step0, dtype=np.int64)
    ys = np.arange(0, h0 - size0 + 1, step0, dtype=np.int64)
    yy, xx = np.meshgrid(ys, xs, indexing="ij")
    coords = np.stack([xx.reshape(-1), yy.reshape(-1)], axis=1)
    return TileGrid(patch_size, size0, step0, level, read_size, mpp, mpp_level0, coords)


def tissue_fraction(coords: np.ndarray, size0: int, mask: np.ndarray, downsample: float) -> np.ndarray:
    """(n,) fraction of each tile's footprint that is tissue in ``mask`` (an overview mask whose pixel covers
    ``downsample`` level-0 pixels), from a summed-area table: O(1) per tile."""
    h, w = mask.shape
    sat = np.zeros((h + 1, w + 1), dtype=np.int64)
    sat[1:, 1:] = np.cumsum(np.cumsum(mask, axis=0, dtype=np.int64), axis=1)
    c = np.asarray(coords, dtype=np.float64)
    x0 = np.clip(np.floor(c[:, 0] / downsample), 0, w).astype(np.int64)
    y0 = np.clip(np.floor(c[:, 1] / downsample), 0, h).astype(np.int64)
    x1 = np.clip(np.ceil((c[:, 0] + size0) / downsample), 0, w).astype(np.int64)
    y1 = np.clip(np.ceil((c[:, 1] + size0) / downsample), 0, h).astype(np.int64)
    inside = sat[y1, x1] - sat[y0, x1] - sat[y1, x0] + sat[y0, x0]
    area = np.maximum((x1 - x0) * (y1 - y0), 1)
    return inside / area


def on_tissue(grid: TileGrid, mask: np.ndarray, downsample: float, min_tissue: float) -> TileGrid:
    """``grid`` with only the tiles whose tissue fraction is at least ``min_tissue`` (and above 0)."""
    frac = tissue_fraction(grid.coords, grid.patch_size_level0, mask, downsample)
    keep = (frac >= min_tissue) & (frac > 0)
    return TileGrid(**{**grid.__dict__, "coords": np.ascontiguousarray(grid.coords[keep])})
