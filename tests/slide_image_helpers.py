"""A real pyramidal slide for the OpenSlide tests: the shipped H&E image written as a tiled, multi-level TIFF.

OpenSlide's generic tiled TIFF reader takes every *tiled* TIFF directory of a file as a pyramid level (found out here:
tifffile ``subifds`` levels are not seen, one page per level is; OpenSlide 4.0.1), so the levels are written as
separate tiled pages, the reduced ones marked reduced-resolution (``subfiletype=1``)."""
from __future__ import annotations

from importlib import resources
from pathlib import Path

import numpy as np

TILE = 128
LEVELS = 3
#: The shipped image (1110 x 1483) cropped to a multiple of 2^(LEVELS - 1) * 8 a side, so that every level's
#: downsample is exactly a power of two.
CROP = (1104, 1472)  # width, height


def he_image() -> np.ndarray:
    """The shipped H&E image (abmil/data/files/cmu1_small_region_he.jpg), cropped to CROP, (H, W, 3) uint8."""
    from PIL import Image

    with resources.as_file(resources.files("abmil.data") / "files" / "cmu1_small_region_he.jpg") as p:
        with Image.open(p) as im:
            rgb = np.asarray(im.convert("RGB"))
    return np.ascontiguousarray(rgb[:CROP[1], :CROP[0]])


def pyramid(image: np.ndarray, levels: int = LEVELS) -> list[np.ndarray]:
    """Level 0 and each half-size level below it (2x2 box mean, as a scanner's pyramid)."""
    out = [image]
    for _ in range(levels - 1):
        a = out[-1].astype(np.uint16)
        h, w = a.shape[0] // 2 * 2, a.shape[1] // 2 * 2
        a = a[:h, :w]
        out.append(((a[0::2, 0::2] + a[1::2, 0::2] + a[0::2, 1::2] + a[1::2, 1::2] + 2) // 4).astype(np.uint8))
    return out


def write_pyramidal_tiff(path: Path, image: np.ndarray | None = None, levels: int = LEVELS,
                         mpp: float | None = None) -> list[np.ndarray]:
    """Write a generic tiled pyramidal TIFF OpenSlide opens (lossless, so read pixels equal written ones);
    returns the levels written. ``mpp``: level 0's microns per pixel, as the TIFF resolution OpenSlide reports as
    ``openslide.mpp-x``."""
    import tifffile

    image = he_image() if image is None else image
    levels_px = pyramid(image, levels)
    with tifffile.TiffWriter(path) as tiff:
        for i, level in enumerate(levels_px):
            resolution = {} if mpp is None else {"resolution": (1e4 / (mpp * 2 ** i),) * 2,
                                                 "resolutionunit": "CENTIMETER"}
            tiff.write(level, tile=(TILE, TILE), photometric="rgb", compression="zlib",
                       subfiletype=0 if i == 0 else 1, metadata=None, **resolution)
    return levels_px
