"""Patch features saved with ``torch.save`` (``clam-pt``).

    <slide>.pt   a tensor (n_instances, dim) (CLAM's ``pt_files/``, TRIDENT ``saveas='pt'``), or a float numpy
                 array (TRIDENT ``saveas='pt'`` saves the array itself). No coords.

Read only with ``torch.load(weights_only=True)``: the restricted unpickler, never arbitrary code; a zip-format file
is memory-mapped, so that :meth:`~ClamPt.shape` and :meth:`~ClamPt.iter_chunks` read only what they need.
"""
from __future__ import annotations

import zipfile
from collections.abc import Iterator

import numpy as np
import torch
from torch import Tensor

from .base import FeatureReader


def _numpy_safe_globals() -> list:
    """What ``torch.save(ndarray)`` of a float array pickles, allowlisted for the restricted
    unpickler as torch's docs advise. Float dtypes only: any other array still fails to load."""
    try:
        from numpy._core.multiarray import _reconstruct
    except ImportError:  # numpy < 2
        from numpy.core.multiarray import _reconstruct
    return [_reconstruct, np.ndarray, np.dtype] + [type(np.dtype(t)) for t in ("f2", "f4", "f8")]


class ClamPt(FeatureReader):
    name = "clam-pt"
    container = "file"
    suffixes = (".pt", ".pth")
    layout = "CLAM/TRIDENT .pt: a tensor or float array (n_instances, dim) saved with torch.save"

    @classmethod
    def claims(cls, path) -> bool:
        """A ``.pt``/``.pth`` name, or torch.save's content (a zip archive holding ``data.pkl``, or a pickle);
        what it holds is checked, with its own message, when it is loaded."""
        if path.suffix.lower() in cls.suffixes:
            return True
        try:
            with open(path, "rb") as f:
                head = f.read(2)
            if head == b"PK":
                with zipfile.ZipFile(path) as z:
                    return any(name.endswith("/data.pkl") for name in z.namelist())
        except (OSError, ValueError, zipfile.BadZipFile):
            return False
        return head[:1] == b"\x80"  # a pickle: torch.save before torch 1.6

    def shape(self) -> tuple[int, int]:
        return tuple(self._load().shape)

    def read(self, check_finite: bool = False) -> tuple[Tensor, None]:
        features = self._load().clone()  # clone: detach from the memory map
        if check_finite:
            self.check_finite(features)
        return features, None

    def iter_chunks(self, chunk_size: int) -> Iterator[tuple[Tensor, None]]:
        if chunk_size < 1:
            raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
        data = self._load()  # memory-mapped: slicing reads only those rows
        for start in range(0, data.shape[0], chunk_size):
            yield data[start:start + chunk_size].clone(), None

    def coords(self):
        raise self.error("coords", "a heatmap needs patch coordinates: give the slide's .h5 file")

    def _load(self) -> Tensor:
        if not self.path.is_file():
            raise self.error("path", "slide file not found")
        with torch.serialization.safe_globals(_numpy_safe_globals()):
            try:
                obj = torch.load(self.path, map_location="cpu", weights_only=True, mmap=True)
            except RuntimeError:
                # mmap needs the zip format (torch >= 1.6); an old-format file is read whole
                try:
                    obj = torch.load(self.path, map_location="cpu", weights_only=True)
                except Exception as e:
                    raise self.error("features", f"cannot load with torch.load(weights_only=True): {e}") from None
            except Exception as e:  # UnpicklingError (a pickled object other than a tensor), EOFError...
                raise self.error("features", f"cannot load with torch.load(weights_only=True): {e}") from None
        if isinstance(obj, np.ndarray):
            if obj.dtype.kind != "f":
                raise self.error("features", f"expected a float array, got dtype {obj.dtype}")
            obj = torch.from_numpy(obj)
        if not isinstance(obj, Tensor):
            raise self.error("features", f"expected a tensor (n_instances, dim), got {type(obj).__name__}")
        self.check_features(tuple(obj.shape), obj.dtype)
        return obj
