"""One slide's features as TRIDENT writes them, byte for byte the same on every run.

    <slide>.h5   ``features`` (n_instances, dim) float32, ``coords`` (n_instances, 2) int64: the tiles' top-left
                 corners in level-0 pixels; on both datasets the attributes TRIDENT writes on ``coords``
                 (``patch_size``, ``patch_size_level0``, ``target_magnification``, ``level0_magnification``,
                 ``overlap``, ``name``) and abmil's own (``mpp``, ``mpp_level0``, ``read_level``: the pyramid
                 level read, named so that no CLAM reader takes ``patch_size`` to be at it, ``encoder``,
                 ``encoder_weights``, ``extract_key``: the resume key).

:func:`abmil.slides.feature_files.FeatureFile` reads it, as do CLAM's and TRIDENT's loaders (the datasets are the
same two at the file root). Deterministic bytes: no object timestamps (``track_times=False``), the earliest file
format (h5py's default ``libver``), whole datasets written at once; the file is written beside its place and renamed
over it, so a killed run leaves no half file.
"""
from __future__ import annotations

import os
from collections.abc import Mapping

import numpy as np

from ..io import atomic_open

KEY_ATTR = "extract_key"


def write_features(path: str | os.PathLike, features: np.ndarray, coords: np.ndarray,
                   attrs: Mapping[str, object]) -> None:
    """Write ``features`` (n, dim) and ``coords`` (n, 2) with ``attrs`` (str, int or float values) atomically."""
    import h5py

    features = np.ascontiguousarray(features, dtype=np.float32)
    coords = np.ascontiguousarray(coords, dtype=np.int64)
    if features.ndim != 2 or coords.shape != (features.shape[0], 2):
        raise ValueError(f"features (n, dim) and coords (n, 2) expected, got {features.shape} and {coords.shape}")
    with atomic_open(path, "wb") as f:
        with h5py.File(f, "w", track_order=False) as h5:
            for name, data in (("features", features), ("coords", coords)):
                ds = h5.create_dataset(name, data=data, track_times=False)
                for key in sorted(attrs):
                    ds.attrs[key] = attrs[key]


def stored_key(path: str | os.PathLike) -> str | None:
    """The resume key of a finished feature file, or None (absent, unreadable, or written by another tool)."""
    import h5py

    try:
        with h5py.File(path, "r") as h5:
            value = h5["features"].attrs.get(KEY_ATTR)
    except (OSError, KeyError):
        return None
    if isinstance(value, bytes):
        value = value.decode()
    return value if isinstance(value, str) else None
