"""Whole-slide images through OpenSlide: the pyramid, an overview at a requested size, patches, a tissue outline.

OpenSlide (the ``slides`` extra: openslide-python and the openslide-bin library wheel; ``pip install -e '.[slides]'``
in a clone) reads Aperio
``.svs``, Hamamatsu ``.ndpi``, MIRAX ``.mrxs``, Leica, Philips, Ventana, DICOM and generic tiled TIFF (one tiled
TIFF directory per pyramid level; non-tiled directories are not levels). This module is imported lazily, so the
rest of the package works without OpenSlide.

Coordinates follow CLAM and TRIDENT: a patch is given by its top-left corner ``(x, y)`` in level-0 pixels and its
side in level-0 pixels (:class:`PatchGeometry`); a level ``L`` pixel covers ``level_downsamples[L]`` level-0 pixels.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import DataError, optional_import

#: File suffixes looked for when a slide is found by its id in a folder (``--slides DIR``), in this order.
SLIDE_SUFFIXES = (".svs", ".ndpi", ".mrxs", ".tif", ".tiff", ".scn", ".bif", ".vms", ".vmu", ".svslide", ".czi",
                  ".dcm")
#: An overview is read from one level at once up to this many pixels, else tile by tile.
MAX_READ_PIXELS = 1 << 26
OVERVIEW_TILE = 1024


def _openslide():
    """openslide, or :class:`~abmil.errors.MissingDependency` (the package, or its C library: openslide-bin)."""
    return optional_import("openslide", "slides", "reading whole-slide images")


class Slide:
    """A whole-slide image opened with OpenSlide; :class:`~abmil.errors.DataError` naming the file if it is not one.

    Use as a context manager (or call :meth:`close`)."""

    def __init__(self, path: str | os.PathLike):
        openslide = _openslide()
        self.path = Path(path)
        if not self.path.exists():
            raise DataError("slide image not found", path=str(self.path))
        try:
            self._slide = openslide.OpenSlide(str(self.path))
        except openslide.OpenSlideUnsupportedFormatError:
            raise DataError("not a whole-slide image OpenSlide can read (supported: Aperio .svs, Hamamatsu .ndpi, "
                            "MIRAX .mrxs, generic tiled TIFF, ...)", path=str(self.path)) from None
        except openslide.OpenSlideError as e:
            raise DataError(f"OpenSlide cannot read this slide ({e})", path=str(self.path)) from None
        self.dimensions: tuple[int, int] = tuple(self._slide.dimensions)
        self.level_dimensions: tuple[tuple[int, int], ...] = tuple(tuple(d) for d in self._slide.level_dimensions)
        self.level_downsamples: tuple[float, ...] = tuple(float(d) for d in self._slide.level_downsamples)
        self.properties = dict(self._slide.properties)

    def __enter__(self) -> Slide:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self._slide.close()

    @property
    def level_count(self) -> int:
        return len(self.level_dimensions)

    @property
    def mpp(self) -> float | None:
        """Microns per level-0 pixel along x (OpenSlide's ``openslide.mpp-x``), or None if the slide does not say."""
        try:
            mpp = float(self.properties.get("openslide.mpp-x", "nan"))
        except ValueError:
            return None
        return mpp if math.isfinite(mpp) and mpp > 0 else None

    def error(self, message: str) -> DataError:
        return DataError(message, path=str(self.path))

    def level_for_downsample(self, downsample: float) -> int:
        """The smallest level (fewest pixels) whose downsample is at most ``downsample`` (so reading it and
        shrinking loses nothing); level 0 for ``downsample`` <= 1."""
        best = 0
        for level, d in enumerate(self.level_downsamples):
            if d <= downsample * (1 + 1e-6):
                best = level
        return best

    def read_region(self, x: int, y: int, level: int, width: int, height: int) -> np.ndarray:
        """(height, width, 3) uint8 RGB of ``level`` whose top-left pixel is at level-0 ``(x, y)``; outside the
        slide (transparent in OpenSlide) is white."""
        if not 0 <= level < self.level_count:
            raise ValueError(f"level {level} out of range: the slide has {self.level_count}")
        try:
            rgba = np.asarray(self._slide.read_region((int(x), int(y)), int(level), (int(width), int(height))))
        except Exception as e:  # openslide.OpenSlideError: a corrupt tile
            raise self.error(f"cannot read region ({x}, {y}) level {level} ({e})") from None
        return _on_white(rgba)

    def overview(self, max_size: int) -> tuple[np.ndarray, float]:
        """The whole slide with its longer side ``max_size`` pixels (never enlarged beyond level 0).

        Read from the smallest level at least that large (:meth:`level_for_downsample`) and shrunk with a box
        filter. Returns ``(image (H, W, 3) uint8, downsample)``: level-0 pixels per image pixel along x (the
        y scale differs from it by less than one pixel over the image)."""
        if max_size < 1:
            raise ValueError(f"max size must be >= 1, got {max_size}")
        w0, h0 = self.dimensions
        downsample = max(1.0, max(w0, h0) / max_size)
        out_w, out_h = max(1, round(w0 / downsample)), max(1, round(h0 / downsample))
        level = self.level_for_downsample(downsample)
        lw, lh = self.level_dimensions[level]
        if lw * lh <= MAX_READ_PIXELS:
            image = self.read_region(0, 0, level, lw, lh)
            if (lw, lh) != (out_w, out_h):
                image = _resize(image, out_w, out_h)
        else:
            image = self._overview_tiled(level, out_w, out_h)
        return image, w0 / out_w

    def _overview_tiled(self, level: int, out_w: int, out_h: int) -> np.ndarray:
        """:meth:`overview` of a level too large to read at once: OVERVIEW_TILE-pixel output tiles, each read and
        shrunk on its own (memory O(tile))."""
        w0, h0 = self.dimensions
        sx, sy = w0 / out_w, h0 / out_h  # level-0 pixels per output pixel
        ds = self.level_downsamples[level]
        image = np.empty((out_h, out_w, 3), dtype=np.uint8)
        for oy in range(0, out_h, OVERVIEW_TILE):
            for ox in range(0, out_w, OVERVIEW_TILE):
                tw, th = min(OVERVIEW_TILE, out_w - ox), min(OVERVIEW_TILE, out_h - oy)
                x0, y0 = ox * sx, oy * sy
                lw = max(1, math.ceil(tw * sx / ds))
                lh = max(1, math.ceil(th * sy / ds))
                tile = self.read_region(round(x0), round(y0), level, lw, lh)
                image[oy:oy + th, ox:ox + tw] = _resize(tile, tw, th)
        return image


def _on_white(rgba: np.ndarray) -> np.ndarray:
    """openslide-python's RGBA → RGB over white (transparent = outside the scanned area).

    openslide-python un-premultiplies the C library's ARGB ("Unlike in the C interface, the image data returned by
    this function is not premultiplied", ``OpenSlide.read_region``): straight alpha, so a pixel over white is
    ``c·a + 255·(1 - a)``, rounded to the nearest integer."""
    if rgba.ndim == 3 and rgba.shape[2] == 4:
        alpha = rgba[:, :, 3:4].astype(np.uint32)
        if (alpha == 255).all():
            return np.ascontiguousarray(rgba[:, :, :3])
        rgb = (rgba[:, :, :3].astype(np.uint32) * alpha + 255 * (255 - alpha) + 127) // 255
        return rgb.astype(np.uint8)
    return np.ascontiguousarray(rgba[:, :, :3])


def _resize(image: np.ndarray, width: int, height: int) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.fromarray(image).resize((width, height), Image.Resampling.BOX))


def find_slide(folder: str | os.PathLike, slide_id: str) -> Path | None:
    """``folder/<slide_id><suffix>`` for the first of :data:`SLIDE_SUFFIXES` that exists, or None."""
    folder = Path(folder)
    for suffix in SLIDE_SUFFIXES:
        for candidate in (folder / f"{slide_id}{suffix}", folder / f"{slide_id}{suffix.upper()}"):
            if candidate.is_file():
                return candidate
    return None


# ---------------------------------------------------------------------------------------------- patch geometry
@dataclass(frozen=True)
class PatchGeometry:
    """Where a slide's patches lie and how they were cut.

    ``size0``: the patch side in level-0 pixels (what ``coords`` are in); ``level`` and ``size``: the pyramid
    level the patches were read at and their side there (``size`` = ``size0 / level_downsamples[level]``)."""

    size0: int
    level: int = 0
    size: int | None = None

    @property
    def read_size(self) -> int:
        return self.size if self.size is not None else self.size0


def infer_patch_size(coords: np.ndarray) -> int | None:
    """The patch side in level-0 pixels from a patch grid: the smallest positive step between
    distinct x (or y) corners. None for a single patch. ``coords`` (n, 2)."""
    steps = []
    for axis in (0, 1):
        values = np.unique(coords[:, axis])
        if values.size > 1:
            steps.append(int(np.diff(values).min()))
    return min(steps) if steps else None


def _scalar(value) -> float:
    return float(np.asarray(value).reshape(-1)[0])


def patch_geometry(coords_attrs: dict, coords: np.ndarray, slide: Slide | None = None, *,
                   patch_size: int | None = None) -> PatchGeometry | None:
    """The patches' geometry from the feature file's ``coords`` attributes, in this order:

    1. ``patch_size`` argument (``--patch-size``): level-0 pixels.
    2. TRIDENT: ``patch_size_level0``.
    3. CLAM: ``patch_size`` at ``patch_level``, times that level's downsample (the slide's own, else the file's
       ``downsample`` attribute).
    4. ``patch_size`` alone: level 0.
    5. The step of the coordinate grid (:func:`infer_patch_size`); None if there is a single patch.

    The level tiles are read at: ``patch_level`` if given and the slide has it, else the level of the slide
    closest to (not finer than) ``size0 / patch_size``, else 0."""
    attrs = coords_attrs or {}
    given = int(_scalar(attrs["patch_size"])) if "patch_size" in attrs else None
    level = int(_scalar(attrs["patch_level"])) if "patch_level" in attrs else None
    if slide is not None and level is not None and not 0 <= level < slide.level_count:
        level = None
    if patch_size is not None:
        size0 = int(patch_size)
    elif "patch_size_level0" in attrs:
        size0 = int(_scalar(attrs["patch_size_level0"]))
    elif given is not None and level is not None:
        if slide is not None:
            ds = slide.level_downsamples[level]
        elif "downsample" in attrs:
            ds = _scalar(attrs["downsample"])
        else:
            ds = 1.0 if level == 0 else None
        if ds is None:
            raise ValueError(f"patch_level {level} without the slide or a 'downsample' attribute: give --patch-size")
        size0 = round(given * ds)
    elif given is not None:
        size0 = given
    else:
        inferred = infer_patch_size(np.asarray(coords))
        if inferred is None:
            return None
        size0 = inferred
    if size0 < 1:
        raise ValueError(f"patch size must be >= 1 level-0 pixels, got {size0}")
    if slide is None:
        return PatchGeometry(size0, level or 0, None)
    if level is None:
        level = slide.level_for_downsample(size0 / given) if given else 0
    return PatchGeometry(size0, level, max(1, round(size0 / slide.level_downsamples[level])))


def check_inside(coords: np.ndarray, slide: Slide, where: str) -> None:
    """Raise :class:`DataError` (naming ``where``, the coords' file) if a patch corner lies outside the slide."""
    c = np.asarray(coords)
    if c.size == 0:
        return
    w0, h0 = slide.dimensions
    bad = (c[:, 0] < 0) | (c[:, 1] < 0) | (c[:, 0] >= w0) | (c[:, 1] >= h0)
    if bad.any():
        k = int(np.flatnonzero(bad)[0])
        raise DataError(f"field 'coords': {int(bad.sum())} patch(es) outside the slide {slide.path.name} "
                        f"({w0} x {h0} at level 0), first patch {k} at ({int(c[k, 0])}, {int(c[k, 1])}): "
                        f"features of another slide?", path=where)


# ---------------------------------------------------------------------------------------------- tissue
def otsu_threshold(values: np.ndarray) -> float:
    """Otsu's threshold of uint8 values (the one maximising the between-class variance)."""
    hist = np.bincount(np.asarray(values, dtype=np.uint8).reshape(-1), minlength=256).astype(np.float64)
    total = hist.sum()
    if total == 0:
        return 0.0
    levels = np.arange(256, dtype=np.float64)
    w0 = np.cumsum(hist)
    m0 = np.cumsum(hist * levels)
    w1 = total - w0
    mean_all = m0[-1]
    with np.errstate(divide="ignore", invalid="ignore"):
        between = (mean_all * w0 - m0 * total) ** 2 / (w0 * w1)
    between[~np.isfinite(between)] = -1
    return float(np.argmax(between))


def tissue_mask(image: np.ndarray) -> np.ndarray:
    """(H, W) bool: tissue by Otsu's threshold on the HSV saturation of an RGB overview (glass is grey-white,
    stained tissue saturated), the saturation first averaged over about 1/60 of the image's shorter side (so the
    pale gaps between fibres count as tissue), holes filled, specks removed by a morphological opening."""
    from scipy import ndimage

    rgb = np.asarray(image, dtype=np.int16)
    mx, mn = rgb.max(axis=2), rgb.min(axis=2)
    sat = np.where(mx > 0, (mx - mn) * 255 / np.maximum(mx, 1), 0).astype(np.float32)
    sat = ndimage.uniform_filter(sat, size=max(3, min(sat.shape) // 60))
    sat = np.clip(np.rint(sat), 0, 255).astype(np.uint8)
    mask = ndimage.binary_fill_holes(sat > otsu_threshold(sat))
    r = max(1, min(mask.shape) // 200)
    return ndimage.binary_opening(mask, np.ones((2 * r + 1, 2 * r + 1), dtype=bool))


def outline(mask: np.ndarray, width: int = 1) -> np.ndarray:
    """(H, W) bool: the pixels of ``mask`` within ``width`` pixels of its border (a contour to draw)."""
    from scipy import ndimage

    inner = ndimage.binary_erosion(mask, np.ones((3, 3), dtype=bool), iterations=width, border_value=0)
    return mask & ~inner
