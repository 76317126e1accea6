"""Patches as a GeoJSON FeatureCollection that QuPath imports (File > Import objects, or drag and drop).

Each patch is a Feature whose geometry is its square as a closed Polygon ring in level-0 pixel coordinates (QuPath's
image coordinates: x right, y down, origin at the top-left of the full-resolution image), and whose properties are
QuPath's: ``objectType`` (``"detection"`` by default: thousands of small objects QuPath draws, colours and measures
quickly; ``"annotation"`` for few objects to edit), ``measurements`` (name → number; QuPath shows them in the
measurement table and can colour detections by them: Measure > Show measurement maps), and optionally a
``classification`` (name, RGB colour). Every Feature has a UUID ``id`` (QuPath keeps object ids as UUIDs), derived
from the slide and the patch's row, so the same input writes the same file.
"""
from __future__ import annotations

import json
import math
import os
import uuid
from collections.abc import Mapping

import numpy as np

from ..io import atomic_open

OBJECT_TYPES = ("detection", "annotation", "tile")
_NAMESPACE = uuid.UUID("6f1c2b1e-4d0a-4a55-9a57-0b5e1f0c2a11")


def patch_feature_collection(coords: np.ndarray, patch_size: float, measurements: Mapping[str, np.ndarray], *,
                             object_type: str = "detection", name: str = "",
                             classification: str | None = None,
                             classification_color: tuple[int, int, int] | None = None) -> dict:
    """The FeatureCollection of the patches (level-0 corners ``coords`` (n, 2), side ``patch_size`` level-0 px),
    with ``measurements``: name → (n,) values, one per patch (non-finite values are left out: JSON has no NaN).

    ``name``: the slide, seeding the Features' UUIDs and kept as the collection's ``name``. ``classification``: every
    patch's class, as QuPath reads it: the name alone (a string; QuPath gives the class its colour), or with
    ``classification_color`` (r, g, b) ``{"name": ..., "color": [r, g, b]}`` as QuPath writes it (a name without a
    colour is not a class QuPath's reader accepts)."""
    if object_type not in OBJECT_TYPES:
        raise ValueError(f"unknown QuPath object type {object_type!r}: expected one of {', '.join(OBJECT_TYPES)}")
    xy = np.asarray(coords, dtype=np.float64)
    if xy.ndim != 2 or xy.shape[1] != 2:
        raise ValueError(f"coords must be (n, 2), got {xy.shape}")
    n = xy.shape[0]
    color = None
    if classification_color is not None:
        color = [int(c) for c in classification_color]
        if len(color) != 3 or not all(0 <= c <= 255 for c in color):
            raise ValueError(f"classification_color must be (r, g, b) in 0..255, got {classification_color!r}")
    columns = {}
    for key, values in measurements.items():
        v = np.asarray(values, dtype=np.float64).reshape(-1)
        if v.shape != (n,):
            raise ValueError(f"measurement {key!r}: expected {n} values, got {v.shape[0]}")
        columns[key] = v.tolist()
    s = float(patch_size)
    corners = xy.tolist()
    if np.issubdtype(np.asarray(coords).dtype, np.integer) and s.is_integer():  # whole pixels written as integers
        s, corners = int(s), np.asarray(coords, dtype=np.int64).tolist()
    features = []
    for k in range(n):
        x, y = corners[k]
        ring = [[x, y], [x + s, y], [x + s, y + s], [x, y + s], [x, y]]  # closed, clockwise on screen (y down)
        props: dict = {"objectType": object_type,
                       "measurements": {key: col[k] for key, col in columns.items() if math.isfinite(col[k])}}
        if classification is not None:
            props["classification"] = classification if color is None else {"name": classification, "color": color}
        features.append({"type": "Feature", "id": str(uuid.uuid5(_NAMESPACE, f"{name}/{k}")),
                         "geometry": {"type": "Polygon", "coordinates": [ring]}, "properties": props})
    collection = {"type": "FeatureCollection", "features": features}
    if name:
        collection["name"] = name
    return collection


def write_geojson(path: str | os.PathLike, collection: dict) -> None:
    """Write ``collection`` atomically (compact JSON: a 10⁵-patch slide is tens of MB indented)."""
    with atomic_open(path, "w", encoding="utf-8") as f:
        f.write(json.dumps(collection, separators=(",", ":")))  # dumps runs the C encoder; dump does not
        f.write("\n")


def read_patch_geojson(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
    """The squares of a file :func:`write_geojson` wrote (or QuPath exported): ``(corners (n, 2), sides (n,),
    measurements name → (n,) with NaN where a Feature lacks one)``."""
    with open(path, encoding="utf-8") as f:
        data = json.load(f)
    features = data["features"] if data.get("type") == "FeatureCollection" else data
    corners, sides, rows = [], [], []
    for feature in features:
        ring = np.asarray(feature["geometry"]["coordinates"][0], dtype=np.float64)
        lo, hi = ring.min(axis=0), ring.max(axis=0)
        corners.append(lo)
        sides.append(hi[0] - lo[0])
        m = feature.get("properties", {}).get("measurements", {})
        if isinstance(m, list):  # QuPath <= 0.3: [{"name": ..., "value": ...}]
            m = {e["name"]: e["value"] for e in m}
        rows.append(m)
    names = sorted({k for m in rows for k in m})
    measurements = {k: np.array([m.get(k, np.nan) for m in rows], dtype=np.float64) for k in names}
    return np.asarray(corners).reshape(-1, 2), np.asarray(sides), measurements
