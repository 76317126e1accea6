"""Cut an RGB image into patch bags: a regular grid with background dropped, or windows centred on nuclei.

Conventions (both cutters):

* ``image`` is (H, W, 3) uint8, rows first, as Pillow/numpy give it.
* ``patches`` come back as (n, 3, s, s) **uint8**, channels first: the exact pixel values, four times smaller than
  float32 (all 100 colon bags are 49 MB as uint8, 196 MB as float32), and augmentation wants [0, 1] floats made
  after any cropping anyway. :func:`patches_to_tensor` gives the (n, 3, s, s) float32 tensor in [0, 1].
* ``coords`` are (n, 2) int64 **(row, col) of each patch's top-left pixel**, 0-based: the window is
  ``image[row:row + s, col:col + s]``. Top-left, not centre, because a border window is shifted inward and then no
  longer centred on anything; the top-left always says exactly which pixels the patch holds.

The paper's two recipes (docs/protocols.md, section 4 "Histopathology"):

* Breast (UCSB): non-overlapping 32 x 32 tiles (896 x 768 -> 28 x 24 = 672 per image); a tile is dropped as
  background when >= 75 % of its pixels are white. See :func:`grid_patches` for how "white" is judged.
* Colon (Warwick): 27 x 27 windows centred on every annotated nucleus; a window that would cross the image border is
  shifted inward (never padded, never dropped). See :func:`centred_patches`.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from numpy.lib.stride_tricks import sliding_window_view
from torch import Tensor

from abmil.errors import DataError

__all__ = [
    "BREAST_PATCH_SIZE",
    "COLON_PATCH_SIZE",
    "LUMINANCE_WEIGHTS",
    "MAX_WHITE_FRACTION",
    "WHITE_LEVEL",
    "PatchSet",
    "centred_patches",
    "check_image",
    "grid_patches",
    "patches_to_tensor",
    "white_fraction",
]

BREAST_PATCH_SIZE = 32  # docs/protocols.md §4 "Breast Cancer": 32x32 tiles, 672 per 896x768 image (not 27x27)
COLON_PATCH_SIZE = 27   # docs/protocols.md §4 "Colon Cancer": 27x27 windows centred on each nucleus
#: docs/protocols.md §4: a tile is background when >= 75 % of its pixels are white (unconfirmed)
MAX_WHITE_FRACTION = 0.75
# A pixel is "white" when its luminance exceeds 215 on the 0-255 scale. The paper gives no pixel rule; this is the
# white mask of the stain normaliser in gmum's histology loaders (``rgb2gray(img) > 215/255``, docs/protocols.md §4
# "HistoNormalize"), with scikit-image's rgb2gray (ITU-R BT.709) weights.
WHITE_LEVEL = 215.0
LUMINANCE_WEIGHTS = (0.2125, 0.7154, 0.0721)


@dataclass(frozen=True)
class PatchSet:
    """Patches cut from one image: ``patches`` (n, 3, s, s) uint8 and ``coords`` (n, 2) int64 top-left (row, col).

    ``len()`` is the number of patches n.
    """

    patches: np.ndarray
    coords: np.ndarray

    def __len__(self) -> int:
        return int(self.patches.shape[0])


def check_image(image: np.ndarray, patch_size: int, path: str | None = None) -> None:
    """Raise DataError unless ``image`` is (H, W, 3) uint8 with H, W >= ``patch_size``."""
    if patch_size < 1:
        raise ValueError(f"patch_size must be >= 1, got {patch_size}")
    if not isinstance(image, np.ndarray) or image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        got = f"{image.shape} {image.dtype}" if isinstance(image, np.ndarray) else type(image).__name__
        raise DataError(f"expected an (H, W, 3) uint8 RGB image, got {got}", path=path)
    h, w = image.shape[:2]
    if h < patch_size or w < patch_size:
        raise DataError(f"image {h}x{w} (HxW) is smaller than one {patch_size}x{patch_size} patch", path=path)


def white_fraction(tiles: np.ndarray, white_level: float = WHITE_LEVEL) -> np.ndarray:
    """Fraction of white pixels per tile: tiles (n, 3, s, s) uint8 -> (n,) float64.

    A pixel is white when ``0.2125 R + 0.7154 G + 0.0721 B > white_level`` (0-255 scale), computed in float64.
    """
    lum = np.tensordot(np.asarray(LUMINANCE_WEIGHTS), tiles.astype(np.float64), axes=([0], [1]))  # (n, s, s)
    return (lum > white_level).mean(axis=(1, 2))


def grid_patches(
    image: np.ndarray,
    patch_size: int = BREAST_PATCH_SIZE,
    *,
    stride: int | None = None,
    max_white_fraction: float | None = MAX_WHITE_FRACTION,
    white_level: float = WHITE_LEVEL,
    path: str | None = None,
) -> PatchSet:
    """Tile ``image`` (H, W, 3) uint8 on a regular grid and drop background tiles.

    Tiles start at rows 0, stride, 2*stride, ... while they fit (likewise columns); a remainder narrower than a tile
    at the bottom/right is not covered (the paper's images, 896x768 at 32, have none). ``stride`` defaults to
    ``patch_size`` (non-overlapping, the paper's tiling). A tile is dropped when its white fraction
    (:func:`white_fraction`) is ``>= max_white_fraction``; ``None`` keeps every tile. Tiles come in row-major order.

    Returns:
        PatchSet with patches (n, 3, s, s) uint8 and coords (n, 2) int64 top-left (row, col).

    Raises:
        DataError (naming ``path``): not an (H, W, 3) uint8 image, image smaller than one tile, or every tile is
        background.
    """
    check_image(image, patch_size, path)
    stride = patch_size if stride is None else stride
    if stride < 1:
        raise ValueError(f"stride must be >= 1, got {stride}")
    # (H-s+1, W-s+1, 3, s, s) view, no copy; every stride-th window is a tile
    windows = sliding_window_view(image, (patch_size, patch_size), axis=(0, 1))[::stride, ::stride]
    n_rows, n_cols = windows.shape[:2]
    tiles = windows.reshape(n_rows * n_cols, 3, patch_size, patch_size)
    rows, cols = np.meshgrid(np.arange(n_rows) * stride, np.arange(n_cols) * stride, indexing="ij")
    coords = np.stack([rows.ravel(), cols.ravel()], axis=1).astype(np.int64)
    if max_white_fraction is not None:
        keep = white_fraction(tiles, white_level) < max_white_fraction
        if not keep.any():
            raise DataError(f"all {len(tiles)} {patch_size}x{patch_size} tiles are background "
                            f"(>= {max_white_fraction:.0%} of pixels with luminance > {white_level:g})", path=path)
        tiles, coords = tiles[keep], coords[keep]
    return PatchSet(np.ascontiguousarray(tiles), coords)


def centred_patches(
    image: np.ndarray,
    centres: np.ndarray,
    patch_size: int = COLON_PATCH_SIZE,
    *,
    path: str | None = None,
) -> PatchSet:
    """Cut one ``patch_size`` window around each centre pixel; windows at the border are shifted inward.

    ``centres`` is (n, 2) integer (row, col), 0-based pixel indices inside the image. The window's top-left is
    ``clip(centre - patch_size // 2, 0, size - patch_size)`` per axis: the centre pixel sits at index
    ``patch_size // 2`` (13 of 27, the exact middle) unless the window had to move inward to stay inside the image,
    as gmum's colon loader does (docs/protocols.md §4: "shifted inward at the borders"; no padding, no nucleus dropped).
    Order follows ``centres``; n = 0 gives empty arrays.

    Returns:
        PatchSet with patches (n, 3, s, s) uint8 and coords (n, 2) int64 top-left (row, col).

    Raises:
        DataError (naming ``path``): bad image, image smaller than a patch, or a centre outside the image.
    """
    check_image(image, patch_size, path)
    centres = np.asarray(centres)
    if centres.size == 0:
        return PatchSet(np.zeros((0, 3, patch_size, patch_size), np.uint8), np.zeros((0, 2), np.int64))
    if centres.ndim != 2 or centres.shape[1] != 2:
        raise DataError(f"centres must be (n, 2) (row, col), got shape {centres.shape}", path=path)
    if not np.issubdtype(centres.dtype, np.integer):
        if not np.all(np.isfinite(centres)) or not np.all(centres == np.round(centres)):
            raise DataError("centres must be integer pixel indices", path=path)
    centres = centres.astype(np.int64)
    h, w = image.shape[:2]
    outside = (centres[:, 0] < 0) | (centres[:, 0] >= h) | (centres[:, 1] < 0) | (centres[:, 1] >= w)
    if outside.any():
        i = int(np.flatnonzero(outside)[0])
        raise DataError(f"{int(outside.sum())} centre(s) outside the {h}x{w} image, first #{i} at (row, col) "
                        f"{tuple(int(v) for v in centres[i])}", path=path)
    half = patch_size // 2
    top = np.clip(centres - half, 0, np.array([h - patch_size, w - patch_size]))
    offs = np.arange(patch_size)
    r = top[:, 0, None, None] + offs[None, :, None]  # (n, s, 1)
    c = top[:, 1, None, None] + offs[None, None, :]  # (n, 1, s)
    patches = image[r, c].transpose(0, 3, 1, 2)      # (n, s, s, 3) -> (n, 3, s, s)
    return PatchSet(np.ascontiguousarray(patches), top)


def patches_to_tensor(patches: np.ndarray | Tensor) -> Tensor:
    """(n, 3, s, s) uint8 patches -> float32 tensor in [0, 1] (the input range :mod:`abmil.data.augment` expects)."""
    t = torch.as_tensor(patches)
    if t.dtype != torch.uint8:
        raise TypeError(f"patches_to_tensor expects uint8 patches, got {t.dtype}")
    return t.to(torch.float32).div_(255.0)
