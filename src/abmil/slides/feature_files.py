"""One slide's feature file, whatever its format: a lazy handle over the reader :mod:`abmil.slides.formats` picks.

A :class:`FeatureFile` is named by its path and slide; its format is found from the file's content on first use (so
that a dataset of many slides is built without opening any), and every read goes through that reader
(:class:`~abmil.slides.formats.base.FeatureReader`). It holds no file handle, so it is safe to copy into DataLoader
worker processes. Features are ``(n_instances, dim)``; coords ``(n_instances, 2)`` int64 patch corners in level-0
pixels, or None where the format has none.
"""
from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from torch import Tensor

from ..errors import DataError
from .formats import SUFFIXES, FeatureReader, find_feature_file, open_feature_file
from .formats.base import check_finite, feature_error

__all__ = ["SUFFIXES", "FeatureFile", "find_feature_file"]


class FeatureFile:
    """Lazy access to one slide's features (and coords).

    Args:
        path: the slide's feature file, in any format of :data:`abmil.slides.formats.READERS`.
        slide_id: the slide, for error messages.
        mpp: the slide's microns per level-0 pixel, for formats with coordinates in micrometres (STAMP) whose file
            records none.
    """

    def __init__(self, path: str | os.PathLike, slide_id: str, *, mpp: float | None = None):
        self.path, self.slide_id, self.mpp = Path(path), slide_id, mpp
        self._reader: FeatureReader | None = None

    @property
    def reader(self) -> FeatureReader:
        """The format's reader, chosen from the file's content on first use."""
        if self._reader is None:
            self._reader = open_feature_file(self.path, self.slide_id, mpp=self.mpp)
        return self._reader

    @property
    def format(self) -> str:
        """The format's name (``clam-h5``, ``clam-pt``, ``stamp-h5``, ``slide-embedding``...)."""
        return self.reader.name

    def with_mpp(self, mpp: float | None) -> FeatureFile:
        """This file with ``mpp`` as the slide's microns per pixel where the file records none (itself if None)."""
        return self if mpp is None or mpp == self.mpp else FeatureFile(self.path, self.slide_id, mpp=mpp)

    def error(self, field: str, message: str) -> DataError:
        return feature_error(self.path, self.slide_id, field, message)

    # ------------------------------------------------------------------ metadata, no data read
    def shape(self) -> tuple[int, int]:
        """``(n_instances, dim)`` from the file's metadata, after checking its layout."""
        return self.reader.shape()

    def attrs(self) -> dict:
        """The file's own metadata by dataset name (TRIDENT's encoder on ``features``, patch size on ``coords``)."""
        return self.reader.attrs()

    def patch_attrs(self) -> dict:
        """How the patches were cut, for :func:`abmil.slides.wsi.patch_geometry` ({} if the file does not say)."""
        return self.reader.patch_attrs()

    # ------------------------------------------------------------------ data
    def read(self, check_finite: bool = False) -> tuple[Tensor, Tensor | None]:
        """All features ``(n_instances, dim)`` in the stored dtype, and coords ``(n_instances, 2)`` or None;
        ``check_finite``: DataError naming the first instance holding NaN or ±Inf."""
        return self.reader.read(check_finite=check_finite)

    def iter_chunks(self, chunk_size: int) -> Iterator[tuple[Tensor, Tensor | None]]:
        """Consecutive ``(features (n_chunk, dim), coords (n_chunk, 2) or None)``, at most ``chunk_size`` rows
        each. Memory is O(chunk_size · dim) where the format streams: a bag larger than RAM."""
        return self.reader.iter_chunks(chunk_size)

    def coords(self) -> np.ndarray:
        """The coords ``(n_instances, 2)`` in level-0 pixels alone; DataError naming why if the file has none."""
        return self.reader.coords()

    def check_finite(self, features: Tensor, first_row: int = 0) -> None:
        """Raise if ``features`` holds NaN or ±Inf, naming the first bad instance."""
        check_finite(features, self.error, first_row)

    def __repr__(self) -> str:
        return f"FeatureFile({str(self.path)!r}, {self.slide_id!r})"
