"""Whole-slide heatmaps: one score per patch, painted as a square where the patch lies.

The PNG has a fixed, documented layout so that a pixel of the slide image can be found in it:

    +-----------------------------+---------+
    | title band (TITLE_PX high; MARGIN_PX without a title)  |
    +-----------------------------+---------+
    | the image, zoom x zoom PNG  | colour  |
    | pixels per image pixel      | bar     |
    |                             | COLORBAR_PX wide
    +-----------------------------+---------+

so image pixel ``(col, row)`` covers PNG pixels from ``(zoom * col, top + zoom * row)``, with
``top`` the title band and ``zoom`` an integer >= 1 that enlarges small images (a thumbnail of
64 x 40) to about MIN_SIDE_PX (:func:`heatmap_layout`). White space pads the image up to
MIN_WIDTH_PX x MIN_HEIGHT_PX so that the title and the colour bar fit.

Scores are normalised for display (:func:`normalise_scores`): by default to rank percentiles, as
CLAM's heatmaps do, because attention weights of a slide span orders of magnitude (a few patches
take most of the softmax) and a linear scale would show one hot spot on a uniform background.
Where patches overlap, a pixel shows the mean of the normalised scores of the patches covering it.
"""
from __future__ import annotations

import math
import os
from typing import NamedTuple

import numpy as np

from ..io import atomic_open

TITLE_PX = 28
MARGIN_PX = 4
COLORBAR_PX = 90
MIN_WIDTH_PX = 240
MIN_HEIGHT_PX = 160
MIN_SIDE_PX = 400
DPI = 100
MAX_CANVAS_SIDE = 2048
"""Without a background image, the white canvas is shrunk (``downsample`` raised) to at most this."""

NORMALISATIONS = ("rank", "minmax", "none")


def normalise_scores(scores: np.ndarray, method: str = "rank") -> np.ndarray:
    """Map scores ``(n,)`` to ``[0, 1]`` for display, ``(n,)`` float64.

    - ``"rank"``: rank percentile, ``(rank - 1) / (n - 1)`` with tied scores sharing their mean
      rank (CLAM's ``to_percentiles``): the lowest score maps to 0, the highest to 1, and the
      colour says "in the top x % of this slide", whatever the scale of the scores.
    - ``"minmax"``: ``(s - min) / (max - min)``, linear in the score.
    - ``"none"``: the scores as given, clipped to [0, 1] (e.g. probabilities).

    All-equal scores (and a single score) map to 0.5 under ``rank`` and ``minmax``.
    """
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    if s.size and not np.isfinite(s).all():
        raise ValueError("scores hold NaN or Inf")
    if method == "rank":
        from scipy.stats import rankdata

        if s.size <= 1:
            return np.full(s.shape, 0.5)
        return (rankdata(s, method="average") - 1.0) / (s.size - 1.0)
    if method == "minmax":
        lo, hi = (float(s.min()), float(s.max())) if s.size else (0.0, 0.0)
        return np.full(s.shape, 0.5) if hi <= lo else (s - lo) / (hi - lo)
    if method == "none":
        return np.clip(s, 0.0, 1.0)
    raise ValueError(f"unknown normalisation {method!r}: expected one of {', '.join(NORMALISATIONS)}")


class HeatmapLayout(NamedTuple):
    """Where the image lies in the PNG (pixels; see the module docstring)."""

    width: int
    """PNG width: max(zoom * image width, MIN_WIDTH_PX) + COLORBAR_PX."""
    height: int
    """PNG height: top + max(zoom * image height, MIN_HEIGHT_PX)."""
    top: int
    """PNG row of image row 0."""
    image_width: int
    image_height: int
    downsample: float
    """Level-0 pixels per image pixel actually used."""
    zoom: int
    """PNG pixels per image pixel, along each axis."""


def heatmap_layout(coords: np.ndarray, patch_size: int, *, image_shape: tuple[int, int] | None = None,
                   downsample: float = 1.0, title: str = "") -> HeatmapLayout:
    """The PNG geometry :func:`paint_heatmap` will use for these arguments.

    ``coords`` (n, 2) level-0 (x, y); ``image_shape`` (H, W) of the background or None for a
    white canvas just covering the patches (shrunk to at most MAX_CANVAS_SIDE a side)."""
    if image_shape is not None:
        h, w = int(image_shape[0]), int(image_shape[1])
    else:
        coords = np.asarray(coords)
        extent = (coords.max(axis=0) + patch_size) if coords.size else np.array([patch_size, patch_size])
        downsample = max(downsample, float(extent.max()) / MAX_CANVAS_SIDE)
        w, h = (max(1, math.ceil(float(e) / downsample)) for e in extent)
    top = TITLE_PX if title else MARGIN_PX
    zoom = max(1, MIN_SIDE_PX // max(w, h))
    return HeatmapLayout(max(zoom * w, MIN_WIDTH_PX) + COLORBAR_PX, top + max(zoom * h, MIN_HEIGHT_PX), top,
                         w, h, float(downsample), zoom)


def _rgb_image(image: np.ndarray) -> np.ndarray:
    """(H, W), (H, W, 3) or (H, W, 4) uint8 → (H, W, 3) float in [0, 1]."""
    img = np.asarray(image)
    if img.dtype != np.uint8:
        raise ValueError(f"image must be uint8, got {img.dtype}")
    if img.ndim == 2:
        img = np.repeat(img[:, :, None], 3, axis=2)
    if img.ndim != 3 or img.shape[2] not in (3, 4) or 0 in img.shape[:2]:
        raise ValueError(f"image must be (H, W), (H, W, 3) or (H, W, 4), got shape {img.shape}")
    return img[:, :, :3].astype(np.float32) / 255.0


def rasterise(values: np.ndarray, coords: np.ndarray, patch_size: int, shape: tuple[int, int],
              downsample: float) -> np.ndarray:
    """Paint ``values`` (n,) as squares into an (H, W) float array, NaN where no patch lies.

    Patch k covers level-0 ``[x, x + patch_size) × [y, y + patch_size)``, i.e. image pixels
    ``floor(x / downsample)`` to ``ceil((x + patch_size) / downsample)`` (at least one pixel);
    overlapping patches are averaged; parts outside the image are cut off."""
    h, w = shape
    total = np.zeros((h, w), dtype=np.float64)
    count = np.zeros((h, w), dtype=np.int32)
    xy = np.asarray(coords, dtype=np.float64)
    x0 = np.floor(xy[:, 0] / downsample).astype(np.int64)
    y0 = np.floor(xy[:, 1] / downsample).astype(np.int64)
    x1 = np.maximum(np.ceil((xy[:, 0] + patch_size) / downsample).astype(np.int64), x0 + 1)
    y1 = np.maximum(np.ceil((xy[:, 1] + patch_size) / downsample).astype(np.int64), y0 + 1)
    x0, x1 = np.clip(x0, 0, w), np.clip(x1, 0, w)
    y0, y1 = np.clip(y0, 0, h), np.clip(y1, 0, h)
    # one slice assignment per patch: ~1 µs each, a 10⁵-patch slide in a fraction of a second
    for v, a, b, c, d in zip(values, x0, x1, y0, y1):
        total[c:d, a:b] += v
        count[c:d, a:b] += 1
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(count > 0, total / np.maximum(count, 1), np.nan)


def paint_heatmap(scores: np.ndarray, coords: np.ndarray, patch_size: int, out: str | os.PathLike, *,
                  image: np.ndarray | None = None, downsample: float = 1.0, title: str = "",
                  alpha: float = 0.5, cmap: str = "jet", score_label: str = "attention",
                  normalise: str = "rank") -> None:
    """Paint each patch's score over a slide image and save the PNG at ``out`` (atomically).

    Args:
        scores: (n,) one score per patch (e.g. attention weights or logits).
        coords: (n, 2) the patches' top-left corners (x, y) in level-0 pixels, as CLAM and
            TRIDENT write ``coords``.
        patch_size: patch side in level-0 pixels.
        out: the PNG path.
        image: (H, W, 3) uint8 background (a thumbnail, the H&E image), or None for white.
        downsample: level-0 pixels per image pixel (e.g. 64 for a thumbnail at 1/64). Without
            ``image`` it is raised if needed so that the canvas is at most MAX_CANVAS_SIDE a side.
        title: text above the image.
        alpha: opacity of the colours over the image (patches only; the rest shows the image).
        cmap: matplotlib colour map name.
        score_label: the colour bar's label (the normalisation is appended).
        normalise: ``"rank"`` (default), ``"minmax"`` or ``"none"``; see :func:`normalise_scores`.

    The PNG's layout is :func:`heatmap_layout`'s.
    """
    scores = np.asarray(scores, dtype=np.float64)
    coords = np.asarray(coords)
    if scores.ndim != 1 or coords.shape != (scores.shape[0], 2):
        raise ValueError(f"expected scores (n,) and coords (n, 2), got {scores.shape} and {coords.shape}")
    if scores.size == 0:
        raise ValueError("no patches to paint")
    if patch_size < 1 or downsample <= 0 or not 0.0 <= alpha <= 1.0:
        raise ValueError("patch_size must be >= 1, downsample > 0 and alpha in [0, 1]")
    values = normalise_scores(scores, normalise)
    background = _rgb_image(image) if image is not None else None
    layout = heatmap_layout(coords, patch_size, title=title, downsample=downsample,
                            image_shape=None if background is None else background.shape[:2])
    h, w = layout.image_height, layout.image_width
    if background is None:
        background = np.ones((h, w, 3), dtype=np.float32)
    grid = rasterise(values, coords, patch_size, (h, w), layout.downsample)

    plt = _pyplot()
    colour_map = plt.get_cmap(cmap)
    covered = ~np.isnan(grid)
    blended = background.copy()
    colours = colour_map(grid[covered])[:, :3].astype(np.float32)
    blended[covered] = (1.0 - alpha) * background[covered] + alpha * colours

    z = layout.zoom
    if z > 1:
        blended = np.repeat(np.repeat(blended, z, axis=0), z, axis=1)
    fig = plt.figure(figsize=(layout.width / DPI, layout.height / DPI), dpi=DPI)
    try:
        # axes rectangles in figure fractions, from pixel positions (origin bottom-left)
        fw, fh = layout.width, layout.height
        ax = fig.add_axes((0, (fh - layout.top - z * h) / fh, z * w / fw, z * h / fh))
        ax.imshow(blended, interpolation="nearest", aspect="auto")
        ax.set_axis_off()
        bar_h = (fh - layout.top) * 0.9
        cax = fig.add_axes(((fw - COLORBAR_PX + 10) / fw, (fh - layout.top - bar_h) / fh, 14 / fw, bar_h / fh))
        mappable = plt.cm.ScalarMappable(cmap=colour_map, norm=plt.Normalize(0.0, 1.0))
        bar = fig.colorbar(mappable, cax=cax)
        suffix = {"rank": " (percentile)", "minmax": " (min-max)", "none": ""}[normalise]
        bar.set_label(score_label + suffix, fontsize=8)
        bar.ax.tick_params(labelsize=7)
        if title:
            text = fig.text(0.5 * (fw - COLORBAR_PX) / fw, 1 - (TITLE_PX / 2) / fh, title, ha="center",
                            va="center", fontsize=10)
            _fit_title(fig, text, fw)
        with atomic_open(out, "wb") as f:
            fig.savefig(f, format="png", dpi=DPI)  # no bbox_inches="tight": keep the layout exact
    finally:
        plt.close(fig)


def _fit_title(fig, text, width_px: int) -> None:
    """Keep a title wider than the image inside the PNG: centre it on the whole width, else two lines, else smaller."""
    renderer = fig.canvas.get_renderer()
    if text.get_window_extent(renderer).width <= width_px - COLORBAR_PX - 8:
        return
    text.set_x(0.5)
    room = width_px - 8
    if text.get_window_extent(renderer).width > room:  # two lines of 7 pt fit the title band
        title = text.get_text()
        spaces = [i for i, c in enumerate(title) if c == " "]
        if spaces:
            cut = min(spaces, key=lambda i: abs(i - len(title) / 2))
            text.set_text(title[:cut] + "\n" + title[cut + 1:])
        text.set_fontsize(7)
        text.set_linespacing(1.1)
    for _ in range(8):  # text width is not quite proportional to the font size (hinting): shrink until it fits
        extent = text.get_window_extent(renderer).width
        if extent <= room:
            break
        text.set_fontsize(text.get_fontsize() * 0.97 * room / extent)


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt
