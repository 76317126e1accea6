"""One embedding per slide, as slide encoders write them (``slide-embedding``): a bag of one instance.

    <slide>.h5   TRIDENT's slide-feature job: ``features`` (dim,) float32 (the encoder's output squeezed), with
                 ``coords`` (n_patches, 2), the patches the encoder read (not one per row: not used); attributes
                 name, savetodir on ``features``. Written into
                 ``<job_dir>/<mag>x_<px>px_<overlap>px_overlap/slide_features_<encoder>/`` (TRIDENT
                 ``trident/wsi_objects/WSI.py``, ``extract_slide_features``; ``save_h5`` in ``trident/IO.py``).
    <slide>.h5   STAMP's slide or patient encoders: ``feats`` (dim,) with root attribute ``feat_type`` "slide" or
                 "patient" (``_save_features_`` in ``src/stamp/encoding/encoder/__init__.py``), into
                 ``<output_dir>/<encoder>-slide/``.

Both are read as one vector ``(1, dim)``; ``(1, dim)`` as stored is accepted too. The bag has no coords.
"""
from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch
from torch import Tensor

from .base import H5Reader

STAMP_LEVELS = ("slide", "patient")


def _vector_name(f) -> str | None:
    """The dataset holding the one vector, or None if ``f`` is not a slide embedding."""
    if str(f.attrs.get("feat_type", "")) in STAMP_LEVELS and "feats" in f:
        return "feats"
    ds = f.get("features")
    return "features" if getattr(ds, "ndim", None) == 1 else None


class SlideEmbeddingH5(H5Reader):
    name = "slide-embedding"
    layout = "slide embedding: 'features' (dim,) (TRIDENT), or 'feats' with feat_type 'slide'/'patient' (STAMP)"

    @classmethod
    def claims(cls, f) -> bool:
        return _vector_name(f) is not None

    def features_key(self, f) -> str:
        return _vector_name(f) or "features"

    def check_features(self, shape: tuple, dtype) -> None:
        if len(shape) == 2 and shape[0] > 1:
            raise self.error("features", f"a slide embedding is one vector, (dim,) or (1, dim); got shape "
                                                 f"{tuple(shape)}")
        super().check_features((1, shape[0]) if len(shape) == 1 else shape, dtype)
        if shape[-1] == 0:
            raise self.error("features", "empty embedding (dim 0)")

    def coords_dataset(self, f, n: int):
        return None  # TRIDENT's coords are the patches the encoder read, not rows of the bag

    def no_coords_reason(self, f) -> str:
        return "a slide embedding is one vector per slide: it has no patches to place"

    def patch_attrs(self) -> dict:
        return {}

    def shape(self) -> tuple[int, int]:
        with self.open() as f:
            return (1, self.features_dataset(f).shape[-1])

    def read(self, check_finite: bool = False) -> tuple[Tensor, None]:
        with self.open() as f:
            ds = self.features_dataset(f)
            features = torch.from_numpy(np.asarray(ds[...]).reshape(1, -1))
        if check_finite:
            self.check_finite(features)
        return features, None

    def iter_chunks(self, chunk_size: int) -> Iterator[tuple[Tensor, None]]:
        if chunk_size < 1:
            raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
        yield self.read()
