"""Tissue detection on a slide overview: CLAM's HSV-saturation threshold with morphology.

CLAM (Lu et al. 2021, ``WholeSlideImage.segmentTissue``) thresholds the median-blurred HSV saturation of a low-
resolution level (glass is grey-white, stained tissue is saturated), closes small gaps, then drops tissue fragments
and holes below an area. The same steps here with :mod:`scipy.ndimage` (already a dependency) instead of OpenCV:
saturation ``(max - min) / max`` as OpenCV computes it on uint8, ``median_filter`` for ``medianBlur``,
``binary_closing`` for ``morphologyEx(MORPH_CLOSE)``, connected components for the contour area filters. The fixed
threshold (CLAM's default, 8 of 255) keeps an all-white slide empty, where Otsu's would split its noise in two.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class TissueParams:
    """CLAM's segmentation settings (``seg_params`` / ``filter_params``), areas in overview pixels.

    ``threshold``: saturation (0-255) above which a pixel is tissue, or None for Otsu's threshold;
    ``median``: the median filter's side; ``close``: the closing's square side (0: none);
    ``min_area`` / ``min_hole``: fragments / holes smaller than this many tiles (CLAM: reference patches) are
    removed / filled."""

    threshold: float | None = 8
    median: int = 7
    close: int = 4
    min_area: float = 0.25
    min_hole: float = 1.0


def saturation(image: np.ndarray) -> np.ndarray:
    """(H, W) uint8 HSV saturation of an RGB (H, W, 3) uint8 image, rounded as OpenCV's ``COLOR_RGB2HSV``."""
    rgb = np.asarray(image, dtype=np.int32)
    mx, mn = rgb.max(axis=2), rgb.min(axis=2)
    sat = np.where(mx > 0, (255 * (mx - mn) + mx // 2) // np.maximum(mx, 1), 0)
    return sat.astype(np.uint8)


def tissue_mask(image: np.ndarray, params: TissueParams = TissueParams(), tile_area: float = 1.0) -> np.ndarray:
    """(H, W) bool tissue mask of an RGB overview (H, W, 3) uint8; ``tile_area``: a tile's area in overview
    pixels (the unit of ``params.min_area`` / ``min_hole``)."""
    from scipy import ndimage

    from ..slides.wsi import otsu_threshold

    sat = saturation(image)
    if params.median > 1:
        sat = ndimage.median_filter(sat, size=params.median, mode="nearest")
    threshold = otsu_threshold(sat) if params.threshold is None else params.threshold
    mask = sat > threshold
    if params.close > 1:
        mask = ndimage.binary_closing(mask, np.ones((params.close, params.close), dtype=bool), border_value=0)
    mask = remove_small(mask, round(params.min_area * tile_area))
    holes = ndimage.binary_fill_holes(mask) & ~mask
    return mask | remove_small_holes(holes, round(params.min_hole * tile_area))  # large holes (lumens) kept


def remove_small(mask: np.ndarray, min_area: int) -> np.ndarray:
    """``mask`` less its 8-connected components of fewer than ``min_area`` pixels."""
    from scipy import ndimage

    if min_area <= 1 or not mask.any():
        return mask
    labels, n = ndimage.label(mask, structure=np.ones((3, 3), dtype=bool))
    sizes = np.bincount(labels.reshape(-1), minlength=n + 1)
    keep = sizes >= min_area
    keep[0] = False
    return keep[labels]


def remove_small_holes(holes: np.ndarray, min_hole: int) -> np.ndarray:
    """The holes (4-connected background components enclosed by tissue) of fewer than ``min_hole`` pixels."""
    from scipy import ndimage

    if min_hole <= 1 or not holes.any():
        return np.zeros_like(holes)
    labels, n = ndimage.label(holes)
    sizes = np.bincount(labels.reshape(-1), minlength=n + 1)
    small = sizes < min_hole
    small[0] = False
    return small[labels]
