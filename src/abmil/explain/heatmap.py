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
CLAM's heatmaps do (from 0, where CLAM's start at 1/n), because attention weights of a slide span
orders of magnitude (a few patches take most of the softmax) and a linear scale would show one hot
spot on a uniform background.
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
LABEL_PX = 18
"""The band of per-panel labels above the panels of :func:`paint_panels`."""
GAP_PX = 8
"""Columns between two panels of :func:`paint_panels`."""
DPI = 100
MAX_CANVAS_SIDE = 2048
"""Without a background image, the white canvas is shrunk (``downsample`` raised) to at most this."""

NORMALISATIONS = ("rank", "attention", "minmax", "none")


def normalise_scores(scores: np.ndarray, method: str = "rank") -> np.ndarray:
    """Map scores ``(n,)`` to ``[0, 1]`` for display, ``(n,)`` float64.

    - ``"rank"``: rank percentile, ``(rank - 1) / (n - 1)`` with tied scores sharing their mean
      rank: the lowest score maps to 0, the highest to 1, and the colour says "in the top x % of
      this slide", whatever the scale of the scores. (CLAM's ``to_percentiles``,
      ``rankdata(scores, "average") / n``, maps the lowest to 1/n instead, so it never uses the
      bottom of the colour map; the two differ by less than 1/n.)
    - ``"attention"``: ``s / max(s)``, linear in the score from 0 (raw attention weights: a patch twice as bright
      holds twice the weight, and three patches holding most of the softmax are the only bright ones; negative
      scores show as 0).
    - ``"minmax"``: ``(s - min) / (max - min)``, linear in the score.
    - ``"none"``: the scores as given, clipped to [0, 1] (e.g. probabilities).

    All-equal scores (and a single score) map to 0.5 under ``rank`` and ``minmax``.
    """
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    if s.size and not np.isfinite(s).all():
        raise ValueError("scores hold NaN or Inf")
    if method == "rank":
        if s.size <= 1:
            return np.full(s.shape, 0.5)
        return (average_ranks(s) - 1.0) / (s.size - 1.0)
    if method == "attention":
        hi = float(s.max()) if s.size else 0.0
        return np.full(s.shape, 0.5) if hi <= 0 else np.clip(s / hi, 0.0, 1.0)
    if method == "minmax":
        lo, hi = (float(s.min()), float(s.max())) if s.size else (0.0, 0.0)
        return np.full(s.shape, 0.5) if hi <= lo else (s - lo) / (hi - lo)
    if method == "none":
        return np.clip(s, 0.0, 1.0)
    raise ValueError(f"unknown normalisation {method!r}: expected one of {', '.join(NORMALISATIONS)}")


def average_ranks(values: np.ndarray) -> np.ndarray:
    """Ranks 1..n of ``values`` (n,), tied values sharing their mean rank (scipy's ``rankdata(method="average")``,
    in numpy: one sort, no scipy.stats import, which costs more than ranking 10⁵ scores)."""
    v = np.asarray(values).reshape(-1)
    order = np.argsort(v, kind="stable")
    sorted_v = v[order]
    starts = np.flatnonzero(np.r_[True, sorted_v[1:] != sorted_v[:-1]])  # first index of each run of ties
    ends = np.r_[starts[1:], v.size]
    mean_rank = (starts + ends + 1) / 2.0  # ranks starts+1 .. ends, averaged
    ranks = np.empty(v.size, dtype=np.float64)
    ranks[order] = np.repeat(mean_rank, ends - starts)
    return ranks


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


Downsample = float | tuple[float, float]
"""Level-0 pixels per image pixel: one number, or ``(along x, along y)`` (a slide's overview is rounded to whole
pixels on each axis, so its two scales differ by up to a pixel over the image)."""


def scales(downsample: Downsample) -> tuple[float, float]:
    """``(along x, along y)`` of a :data:`Downsample`."""
    if isinstance(downsample, (tuple, list)):
        dx, dy = downsample
        return float(dx), float(dy)
    return float(downsample), float(downsample)


def patch_boxes(coords: np.ndarray, patch_size: float, shape: tuple[int, int], downsample: Downsample
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Image-pixel boxes ``[x0, x1) × [y0, y1)`` of patches (level-0 corners ``coords`` (n, 2), side ``patch_size``)
    in an image of ``shape`` (H, W) at ``downsample`` (dx, dy): ``floor(x / dx)`` to ``ceil((x + patch_size) / dx)``,
    ``floor(y / dy)`` to ``ceil((y + patch_size) / dy)``, at least one pixel, clipped to the image."""
    h, w = shape
    dx, dy = scales(downsample)
    xy = np.asarray(coords, dtype=np.float64).reshape(-1, 2)
    x0 = np.floor(xy[:, 0] / dx).astype(np.int64)
    y0 = np.floor(xy[:, 1] / dy).astype(np.int64)
    x1 = np.maximum(np.ceil((xy[:, 0] + patch_size) / dx).astype(np.int64), x0 + 1)
    y1 = np.maximum(np.ceil((xy[:, 1] + patch_size) / dy).astype(np.int64), y0 + 1)
    return np.clip(x0, 0, w), np.clip(x1, 0, w), np.clip(y0, 0, h), np.clip(y1, 0, h)


def rasterise(values: np.ndarray, coords: np.ndarray, patch_size: float, shape: tuple[int, int],
              downsample: Downsample) -> np.ndarray:
    """Paint ``values`` (n,) as squares into an (H, W) float array, NaN where no patch lies.

    Patch k covers level-0 ``[x, x + patch_size) × [y, y + patch_size)``, i.e. the image pixels of
    :func:`patch_boxes`; overlapping patches are averaged; parts outside the image are cut off.

    Vectorised, with no loop over patches: each box adds ``+v`` at its top-left and bottom-right corners and ``-v``
    at the other two of an (H+1, W+1) difference array (``np.bincount``), and two cumulative sums turn it into the
    painted sums; the same with ones counts the patches over each pixel. O(n + H·W): a 10⁵-patch slide on a
    2048-pixel canvas in a few tens of milliseconds."""
    h, w = shape
    values = np.asarray(values, dtype=np.float64).reshape(-1)
    x0, x1, y0, y1 = patch_boxes(coords, patch_size, shape, downsample)
    keep = (x1 > x0) & (y1 > y0)  # boxes cut away entirely by the clipping paint nothing
    x0, x1, y0, y1, values = x0[keep], x1[keep], y0[keep], y1[keep], values[keep]
    stride = w + 1
    index = np.concatenate([y0 * stride + x0, y0 * stride + x1, y1 * stride + x0, y1 * stride + x1])
    size = (h + 1) * stride
    ones = np.ones_like(values)
    total = np.bincount(index, np.concatenate([values, -values, -values, values]), minlength=size)
    count = np.bincount(index, np.concatenate([ones, -ones, -ones, ones]), minlength=size)
    total = total.reshape(h + 1, stride).cumsum(0).cumsum(1)[:h, :w]
    count = np.rint(count.reshape(h + 1, stride).cumsum(0).cumsum(1)[:h, :w])
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(count > 0, total / np.maximum(count, 1), np.nan)


def rasterise_loop(values: np.ndarray, coords: np.ndarray, patch_size: float, shape: tuple[int, int],
                   downsample: Downsample) -> np.ndarray:
    """:func:`rasterise` as one slice assignment per patch (the implementation before the vectorised one; the
    reference of its tests and of ``benchmarks/heatmap_speed.py``)."""
    h, w = shape
    total = np.zeros((h, w), dtype=np.float64)
    count = np.zeros((h, w), dtype=np.int32)
    for v, a, b, c, d in zip(values, *patch_boxes(coords, patch_size, shape, downsample)):
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
        normalise: ``"rank"`` (default), ``"attention"``, ``"minmax"`` or ``"none"``; see :func:`normalise_scores`
            (named under the colour bar, :func:`bar_scale`).

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

    blended = colourise(grid, background, alpha=alpha, cmap=cmap)
    z = layout.zoom
    if z > 1:
        blended = np.repeat(np.repeat(blended, z, axis=0), z, axis=1)
    bar_label, lo, hi = bar_scale(normalise, [(score_label, scores)], score_label)
    _render(layout.width, layout.height, [(blended, layout.top, 0)], out, title=title, top=layout.top,
            title_width=layout.width, bar_label=bar_label, cmap=cmap, bar_range=(lo, hi))


SCALE_NAMES = {"rank": "rank percentile in the slide", "attention": "linear from 0 to the slide's largest",
               "minmax": "linear, min to max", "none": "as given, clipped to [0, 1]"}
"""How each normalisation is named under the colour bar."""


def bar_scale(normalise: str, maps: list[tuple[str, np.ndarray]], score_label: str) -> tuple[str, float, float]:
    """The colour bar's label and its value range: under ``"attention"`` with one map, the map's own units (0 to its
    largest score, e.g. the attention weight itself); otherwise 0 to 1 of the normalised scores."""
    if normalise == "attention" and len(maps) == 1:
        label, scores = maps[0]
        hi = float(np.max(scores))
        if hi > 0:
            return f"{label if score_label == 'score' else score_label} (linear from 0)", 0.0, hi
    return f"{score_label}: {SCALE_NAMES[normalise]}", 0.0, 1.0


def nice_length(target: float) -> float:
    """The 1-2-5 number at most ``target`` (> 0): the length of a scale bar."""
    power = 10.0 ** math.floor(math.log10(target))
    return max(m * power for m in (1.0, 2.0, 5.0) if m * power <= target)


def scale_bar(mpp: float, downsample: Downsample, panel_width: int) -> tuple[int, str]:
    """A scale bar for an image at ``downsample`` level-0 pixels per pixel of a slide of ``mpp`` µm per level-0
    pixel: ``(length in image pixels, label)``, a round length of about a fifth of ``panel_width``."""
    um_per_px = float(mpp) * scales(downsample)[0]
    um = nice_length(max(panel_width / 5.0, 1.0) * um_per_px)
    label = f"{um / 1000:g} mm" if um >= 1000 else f"{um:g} µm"
    return max(1, round(um / um_per_px)), label
LAYOUTS = ("overlay", "side-by-side")


class PanelLayout(NamedTuple):
    """Where the panels of :func:`paint_panels` lie in its PNG (pixels)."""

    width: int
    height: int
    top: int
    """PNG row of image row 0 (every panel): the title band, then the label band."""
    lefts: tuple[int, ...]
    """PNG column of image column 0 of each panel."""
    image_width: int
    image_height: int


def panel_layout(n_panels: int, image_shape: tuple[int, int]) -> PanelLayout:
    """The PNG geometry of ``n_panels`` images of ``image_shape`` (H, W) side by side, GAP_PX apart, under a
    title band (TITLE_PX) and a label band (LABEL_PX), with the colour bar on the right (COLORBAR_PX)."""
    h, w = int(image_shape[0]), int(image_shape[1])
    lefts = tuple(i * (w + GAP_PX) for i in range(n_panels))
    top = TITLE_PX + LABEL_PX
    width = max(n_panels * w + (n_panels - 1) * GAP_PX, MIN_WIDTH_PX) + COLORBAR_PX
    return PanelLayout(width, top + max(h, MIN_HEIGHT_PX) + MARGIN_PX, top, lefts, w, h)


def paint_panels(maps: list[tuple[str, np.ndarray]], coords: np.ndarray, patch_size: float,
                 out: str | os.PathLike, *, image: np.ndarray | None = None, shape: tuple[int, int] | None = None,
                 downsample: Downsample = 1.0, layout: str = "overlay", title: str = "", alpha: float = 0.5,
                 cmap: str = "jet", normalise: str = "rank", score_label: str = "score",
                 outline: np.ndarray | None = None, mpp: float | None = None) -> PanelLayout:
    """One or several score maps of the same patches in one PNG, at ``out`` (atomically).

    Args:
        maps: ``(label, scores (n,))`` per map, e.g. the attention and each class's share of its logit.
        coords: (n, 2) level-0 top-left corners; ``patch_size`` their side in level-0 pixels.
        image: (H, W, 3) uint8 overview of the slide at ``downsample`` level-0 pixels per pixel (one number, or
            (along x, along y)), or None (white, of ``shape`` (H, W)).
        layout: ``"overlay"``: one panel per map, its colours blended with ``alpha`` over the image;
            ``"side-by-side"``: the image alone, then one panel per map in opaque colours on white.
        normalise: each map is scaled on its own (:func:`normalise_scores`).
        outline: (H, W) bool pixels drawn as a contour (the tissue outline) on every panel.
        mpp: µm per level-0 pixel (the slide's ``openslide.mpp-x``): a scale bar at the bottom left of each panel.

    Image pixel ``(col, row)`` of panel ``i`` is PNG pixel ``(lefts[i] + col, top + row)`` of the returned
    :class:`PanelLayout`: patch ``(x, y)`` covers image pixels ``floor(x / downsample)`` to
    ``ceil((x + patch_size) / downsample)`` (:func:`patch_boxes`)."""
    if layout not in LAYOUTS:
        raise ValueError(f"unknown layout {layout!r}: expected one of {', '.join(LAYOUTS)}")
    if not maps:
        raise ValueError("no maps to paint")
    coords = np.asarray(coords)
    n = coords.shape[0]
    for label, scores in maps:
        if np.asarray(scores).shape != (n,) or coords.shape != (n, 2):
            raise ValueError(f"map {label!r}: expected scores (n,) and coords (n, 2), got "
                             f"{np.asarray(scores).shape} and {coords.shape}")
    if n == 0:
        raise ValueError("no patches to paint")
    if patch_size <= 0 or min(scales(downsample)) <= 0 or not 0.0 <= alpha <= 1.0:
        raise ValueError("patch_size must be > 0, downsample > 0 and alpha in [0, 1]")
    if image is not None:
        background = np.asarray(image)
        if background.dtype != np.uint8 or background.ndim != 3 or background.shape[2] < 3:
            raise ValueError(f"image must be (H, W, 3) uint8, got {background.dtype} {background.shape}")
        background = background[:, :, :3]
    elif shape is None:
        raise ValueError("give the image or its shape")
    else:
        background = None
    h, w = (background.shape[:2] if background is not None else (int(shape[0]), int(shape[1])))
    panels: list[tuple[str, np.ndarray]] = []
    if layout == "side-by-side":
        plain = background.copy() if background is not None else np.full((h, w, 3), 255, np.uint8)
        if outline is not None:
            plain[outline] = (0, 160, 0)
        panels.append(("slide", plain))
    for label, scores in maps:
        grid = rasterise(normalise_scores(scores, normalise), coords, patch_size, (h, w), downsample)
        if layout == "overlay":
            panels.append((label, colourise(grid, background, alpha=alpha, cmap=cmap, outline=outline)))
        else:
            panels.append((label, colourise(grid, None, alpha=1.0, cmap=cmap, outline=outline)))
    geometry = panel_layout(len(panels), (h, w))
    bar_label, lo, hi = bar_scale(normalise, maps, score_label)
    bars = []
    if mpp is not None and mpp > 0:
        length, text = scale_bar(mpp, downsample, w)
        bars = [(left, geometry.top + h, length, text) for left in geometry.lefts]
    _render(geometry.width, geometry.height, [(p, geometry.top, left) for (_, p), left in zip(panels, geometry.lefts)],
            out, title=title, top=geometry.top, title_width=geometry.width, bar_label=bar_label, cmap=cmap,
            labels=[(label, left, w) for (label, _), left in zip(panels, geometry.lefts)], bar_range=(lo, hi),
            scale_bars=bars)
    return geometry


def colourise(grid: np.ndarray, background: np.ndarray | None, *, alpha: float = 0.5, cmap: str = "jet",
              outline: np.ndarray | None = None, outline_rgb: tuple[int, int, int] = (0, 160, 0)) -> np.ndarray:
    """(H, W, 3) uint8: ``grid`` (H, W) of values in [0, 1] (NaN: no patch) in colour map ``cmap`` blended with
    ``alpha`` over ``background`` ((H, W, 3), uint8 or float in [0, 1]; None: white). Pixels where ``outline``
    (H, W) bool is set are drawn in ``outline_rgb`` (the tissue contour). A 256-entry lookup table: the colour of
    value v is the map's at ``round(v * 255)``, as matplotlib's own 256-colour maps quantise."""
    h, w = grid.shape
    if background is None:
        base = np.full((h, w, 3), 255.0, dtype=np.float32)
    else:
        base = np.asarray(background)
        base = base.astype(np.float32) * (255.0 if base.dtype != np.uint8 else 1.0)
    lut = (_pyplot().get_cmap(cmap)(np.linspace(0.0, 1.0, 256))[:, :3] * 255.0).astype(np.float32)
    covered = ~np.isnan(grid)
    index = np.rint(np.clip(grid[covered], 0.0, 1.0) * 255.0).astype(np.intp)
    out = base.copy()
    out[covered] = (1.0 - alpha) * base[covered] + alpha * lut[index]
    out = np.rint(out).astype(np.uint8)
    if outline is not None:
        out[outline] = outline_rgb
    return out


def _render(width: int, height: int, images: list[tuple[np.ndarray, int, int]], out: str | os.PathLike, *,
            title: str, top: int, title_width: int, bar_label: str, cmap: str,
            labels: list[tuple[str, int, int]] = (), bar_range: tuple[float, float] = (0.0, 1.0),
            scale_bars: list[tuple[int, int, int, str]] = ()) -> None:
    """Save a ``width`` x ``height`` PNG at ``out`` (atomically): each ``(image (h, w, 3) uint8, row, col)`` pasted
    pixel for pixel at that PNG position, a colour bar in the right COLORBAR_PX columns, ``title`` centred over the
    first ``title_width`` columns, each ``(text, col, width)`` label centred in the band just above the images; the
    colour bar's ticks run over ``bar_range``. Each ``(col, bottom, length, text)`` of ``scale_bars`` is a black bar
    ``length`` pixels long with ``text`` above it, drawn over the image from PNG column ``col`` up from row ``bottom``.

    Text and colour bar are drawn by matplotlib (Agg) on a white canvas; the images are pasted into its pixels
    afterwards: no resampling, so image pixel (r, c) is PNG pixel (row + r, col + c) exactly, and fast (imshow
    resampled a 2048² image in about a second)."""
    from PIL import Image

    plt = _pyplot()
    fig = plt.figure(figsize=(width / DPI, height / DPI), dpi=DPI)
    try:
        fw, fh = width, height
        bar_h = (fh - top) * 0.9
        cax = fig.add_axes(((fw - COLORBAR_PX + 10) / fw, (fh - top - bar_h) / fh, 14 / fw, bar_h / fh))
        mappable = plt.cm.ScalarMappable(cmap=plt.get_cmap(cmap), norm=plt.Normalize(*bar_range))
        bar = fig.colorbar(mappable, cax=cax)
        bar.set_label(bar_label, fontsize=8)
        bar.ax.tick_params(labelsize=7)
        if title:
            text = fig.text(0.5 * (title_width - COLORBAR_PX) / fw, 1 - (TITLE_PX / 2) / fh, title, ha="center",
                            va="center", fontsize=10)
            _fit_title(fig, text, title_width)
        for label, col, w in labels:
            _fit_label(fig, fig.text((col + w / 2) / fw, 1 - (top - LABEL_PX / 2) / fh, label, ha="center",
                                     va="center", fontsize=9), w)
        fig.canvas.draw()
        canvas = np.array(fig.canvas.buffer_rgba())[:, :, :3]
    finally:
        plt.close(fig)
    if canvas.shape[:2] != (height, width):  # a figure size that is not a whole number of pixels at DPI
        canvas = np.asarray(Image.fromarray(canvas).resize((width, height)))
        canvas = canvas.copy()
    for image, row, col in images:
        ih, iw = image.shape[:2]
        canvas[row:row + ih, col:col + iw] = image[:, :, :3]
    picture = Image.fromarray(canvas)
    if scale_bars:
        _draw_scale_bars(picture, scale_bars)
    with atomic_open(out, "wb") as f:
        picture.save(f, format="PNG", compress_level=1)


def _draw_scale_bars(picture, bars: list[tuple[int, int, int, str]]) -> None:
    """Black bars with their length above them, on a white box, at the bottom left of each image (Pillow)."""
    from matplotlib import font_manager
    from PIL import ImageDraw, ImageFont

    draw = ImageDraw.Draw(picture)
    font = ImageFont.truetype(font_manager.findfont("DejaVu Sans"), 11)  # matplotlib's own font: it has µ
    for col, bottom, length, text in bars:
        x0, y1 = col + 6, bottom - 6
        tw = draw.textlength(text, font=font)
        draw.rectangle((x0 - 3, y1 - 22, x0 + max(length, tw) + 3, y1 + 2), fill=(255, 255, 255))
        draw.rectangle((x0, y1 - 4, x0 + length - 1, y1), fill=(0, 0, 0))
        draw.text((x0, y1 - 20), text, fill=(0, 0, 0), font=font)


def _fit_title(fig, text, width_px: int) -> None:
    """Keep a title wider than the image inside the PNG: centre it on the whole width, else two lines, else smaller."""
    renderer = fig.canvas.get_renderer()
    if text.get_window_extent(renderer).width <= width_px - COLORBAR_PX - 8:
        return
    text.set_x(0.5)
    room = width_px - 8
    if text.get_window_extent(renderer).width > room:  # two lines of 7 pt fit the title band
        text.set_text(_two_lines(text.get_text()))
        text.set_fontsize(7)
        text.set_linespacing(1.1)
    for _ in range(8):  # text width is not quite proportional to the font size (hinting): shrink until it fits
        extent = text.get_window_extent(renderer).width
        if extent <= room:
            break
        text.set_fontsize(text.get_fontsize() * 0.97 * room / extent)


def _fit_label(fig, text, width_px: int) -> None:
    """Keep a panel's label within its panel: two lines of 7 pt where it is wider, then smaller until it fits."""
    renderer = fig.canvas.get_renderer()
    if text.get_window_extent(renderer).width <= width_px:
        return
    text.set_text(_two_lines(text.get_text()))
    text.set_fontsize(7)
    text.set_linespacing(1.0)
    for _ in range(8):
        extent = text.get_window_extent(renderer).width
        if extent <= width_px or text.get_fontsize() <= 4:
            break
        text.set_fontsize(max(4.0, text.get_fontsize() * 0.97 * width_px / extent))


def _two_lines(text: str) -> str:
    """``text`` cut in two lines at the space nearest its middle (as it is without a space)."""
    spaces = [i for i, c in enumerate(text) if c == " "]
    if not spaces:
        return text
    cut = min(spaces, key=lambda i: abs(i - len(text) / 2))
    return text[:cut] + "\n" + text[cut + 1:]


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt
