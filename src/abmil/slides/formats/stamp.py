"""STAMP's tile features in HDF5 (``stamp-h5``).

    <slide>.h5   at the file root: ``feats`` (n_instances, dim) float16 and ``coords`` (n_instances, 2) float32,
                 the tiles' top-left corners in micrometres from the slide's level-0 origin (level-0 pixels times
                 the slide's microns per pixel); root attributes ``unit`` = "um", ``tile_size_um``,
                 ``tile_size_px``, ``extractor``, ``feat_type`` = "tile", ``stamp_version``, ``code_hash``.

As ``stamp preprocess`` writes it (STAMP ``src/stamp/preprocessing/__init__.py``, the block writing ``feats`` and
``coords``) into ``<output_dir>/<extractor>[-<hash>]/``; read as STAMP's own loader reads it (``get_coords`` in
``src/stamp/modeling/data.py``: micrometres where ``unit`` is "um" or ``tile_size_um`` is given, STAMP 2's
``tile_size`` beside ``unit``).

Coordinates become level-0 pixels with the slide's microns per pixel: ``round(coords / mpp)``, the patch side
``ceil(tile_size_um / mpp)`` (the level-0 pixels STAMP reads per tile, ``_supertiles`` in
``src/stamp/preprocessing/tiling.py``). STAMP does not store that mpp; it is taken from the file's ``slide_mpp`` or
``mpp`` attribute where a tool wrote one, else from the reader's ``mpp`` (``--mpp``, or the slide image's OpenSlide
``openslide.mpp-x`` for heatmaps). Without it the features train and predict as usual, with no coords (a heatmap
then asks for it); files without a unit (STAMP 1) have coordinates of unknown scale and likewise none.
"""
from __future__ import annotations

import math

import numpy as np

from .base import H5Reader

#: Root attributes read as the slide's microns per level-0 pixel, in this order (STAMP itself writes none).
MPP_ATTRS = ("slide_mpp", "mpp")


def _attr(f, name: str):
    value = f.attrs.get(name)
    return None if value is None else np.asarray(value).reshape(-1)[0]


class StampH5(H5Reader):
    name = "stamp-h5"
    layout = "STAMP: 'feats' (n_instances, dim), 'coords' (n_instances, 2) in micrometres, attrs unit, tile_size_um"
    features_name = "feats"

    @classmethod
    def claims(cls, f) -> bool:
        return "feats" in f and str(f.attrs.get("feat_type", "tile")) == "tile"

    def tile_size_um(self, f) -> float | None:
        """The tile side in micrometres, where the coordinates are in micrometres (else None)."""
        if "tile_size_um" in f.attrs:
            return float(_attr(f, "tile_size_um"))
        if str(f.attrs.get("unit", "")) == "um" and "tile_size" in f.attrs:
            return float(_attr(f, "tile_size"))
        return None

    def slide_mpp(self, f) -> float | None:
        for name in MPP_ATTRS:
            if name in f.attrs:
                mpp = float(_attr(f, name))
                if not (math.isfinite(mpp) and mpp > 0):
                    raise self.error(name, f"the slide's microns per pixel must be a number > 0, got {mpp}")
                return mpp
        return self.mpp

    def to_level0(self, f):
        mpp = self.slide_mpp(f)
        if self.tile_size_um(f) is None or mpp is None:
            return None
        return lambda coords: np.rint(np.asarray(coords, dtype=np.float64) / mpp).astype(np.int64)

    def no_coords_reason(self, f) -> str:
        if "coords" not in f:
            return super().no_coords_reason(f)
        if self.tile_size_um(f) is None:
            return "coordinates of unknown unit (no 'unit' = 'um' and 'tile_size_um' attributes: re-extract them " \
                   "with a current `stamp preprocess`)"
        return "STAMP coordinates are in micrometres: placing them at level 0 needs the slide's microns per " \
               "pixel (give --mpp, or the slide image)"

    def patch_attrs(self) -> dict:
        with self.open() as f:
            tile_um, mpp = self.tile_size_um(f), self.slide_mpp(f)
            if tile_um is None or mpp is None:
                return {}
            attrs = {"patch_size_level0": math.ceil(tile_um / mpp - 1e-6)}
            if "tile_size_px" in f.attrs:  # the side the tile was read at: the level top-k tiles are read from
                attrs["patch_size"] = int(_attr(f, "tile_size_px"))
            return attrs
