"""What a pathologist checks after extraction: the overview with the tissue outline and the tiles drawn (PNG), and
the tissue as QuPath annotations (GeoJSON polygons with their holes, level-0 pixels)."""
from __future__ import annotations

import os
import uuid

import numpy as np

from ..explain.geojson import _NAMESPACE, write_geojson
from ..io import atomic_open


def draw_tiles(overview: np.ndarray, mask: np.ndarray, coords: np.ndarray, size0: int,
               downsample: float, max_size: int = 1024) -> np.ndarray:
    """(h, w, 3) uint8: ``overview`` shrunk to at most ``max_size`` a side, the tissue outline in green and each
    tile's square in blue."""
    from PIL import Image, ImageDraw

    from ..slides.wsi import outline

    image = overview.copy()
    image[outline(mask, max(1, min(mask.shape) // 300))] = (0, 160, 0)
    pil = Image.fromarray(image)
    shrink = max(1.0, max(pil.size) / max_size)
    if shrink > 1:
        pil = pil.resize((max(1, round(pil.width / shrink)), max(1, round(pil.height / shrink))),
                         Image.Resampling.BOX)
        downsample *= overview.shape[1] / pil.width
    draw = ImageDraw.Draw(pil)
    s = size0 / downsample
    for x, y in np.asarray(coords, dtype=np.float64) / downsample:
        draw.rectangle([x, y, x + s - 1, y + s - 1], outline=(30, 60, 220))
    return np.asarray(pil)


def write_png(path: str | os.PathLike, image: np.ndarray) -> None:
    from PIL import Image

    with atomic_open(path, "wb") as f:
        Image.fromarray(image).save(f, format="PNG")


def tissue_polygons(mask: np.ndarray, downsample: float) -> list[list[list[list[float]]]]:
    """The mask's regions as GeoJSON polygon coordinates (outer ring, then holes; closed rings) in level-0 pixels:
    contourpy's filled contour between 0.5 and 1.5 of the mask (matplotlib's contouring library)."""
    import contourpy

    z = np.pad(np.asarray(mask, dtype=np.float64), 1)
    points, offsets = contourpy.contour_generator(z=z, fill_type="OuterOffset").filled(0.5, 1.5)
    polygons = []
    for pts, offs in zip(points, offsets):
        xy = (pts - 1 + 0.5) * downsample  # padded pixel index → level-0 pixels at the pixel's centre
        rings = []
        for a, b in zip(offs[:-1], offs[1:]):
            ring = np.round(xy[a:b], 1).tolist()
            if ring[0] != ring[-1]:
                ring.append(ring[0])
            rings.append(ring)
        polygons.append(rings)
    return polygons


def write_tissue_geojson(path: str | os.PathLike, mask: np.ndarray, downsample: float, name: str) -> int:
    """Write the tissue as QuPath annotations classified "Tissue"; returns the number of regions."""
    features = []
    for k, rings in enumerate(tissue_polygons(mask, downsample)):
        features.append({"type": "Feature", "id": str(uuid.uuid5(_NAMESPACE, f"{name}/tissue/{k}")),
                         "geometry": {"type": "Polygon", "coordinates": rings},
                         "properties": {"objectType": "annotation", "classification": {"name": "Tissue"}}})
    write_geojson(path, {"type": "FeatureCollection", "name": name, "features": features})
    return len(features)
