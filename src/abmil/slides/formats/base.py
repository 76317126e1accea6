"""What every feature-file reader shares: the reader interface, the checks, and HDF5 reading in blocks and chunks.

A reader (:class:`FeatureReader`) serves one slide's file in one layout, as the bag abmil trains on: features
``(n_instances, dim)`` float, and coordinates ``(n_instances, 2)`` int64 patch corners in level-0 pixels, or None
where the file has none (or none that can be placed at level 0). Every check raises
:class:`~abmil.errors.DataError` naming the file, the slide and the field. A reader opens its file on each call and
holds no handle, so it is safe to copy into DataLoader worker processes.
"""
from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch
from torch import Tensor

from ...errors import DataError

#: Bytes per ``read_direct`` call in :meth:`H5Reader.read`, for chunked and for contiguous datasets. Each call
#: costs ~0.1 ms of h5py's Python-side selection work, and a block should still sit in the CPU's last-level cache when
#: the helper thread checks it. Measured on a 100k x 1024 slide (page cache warm), read throughput vs h5py's ``[:]``:
#: contiguous 0.54 / 0.78 / 0.83 at 1 / 4 / 16 MiB blocks; CLAM's one-row chunks 1.56 / 1.27 / 1.11 / 0.90 at
#: 2 / 4 / 8 / 16 MiB (HDF5's cost per chunk grows with the selection).
READ_BLOCK_BYTES = 4 << 20
CONTIGUOUS_READ_BLOCK_BYTES = 16 << 20


def h5py_module():
    try:
        import h5py
    except ImportError as e:  # optional: only HDF5 feature bags need it
        raise ImportError("reading .h5 feature files needs h5py: pip install h5py") from e
    return h5py


def feature_error(path: Path, slide_id: str, field: str, message: str) -> DataError:
    return DataError(f"field '{field}': {message}", path=str(path), bag=slide_id)


def check_finite(features: Tensor, error: Callable[[str, str], DataError], first_row: int = 0) -> None:
    """Raise ``error("features", ...)`` if ``features`` holds NaN or ±Inf, naming the first bad instance."""
    # A NaN or Inf anywhere makes the sum non-finite: one vectorised pass, no (n, dim) bool mask. Only a
    # non-finite sum (bad values, or an overflow of huge ones) pays for the exact check. numpy's sum where it
    # can: single-threaded, so it neither waits on busy cores (torch's 2-thread sum ran 10x slower on a loaded
    # machine) nor holds the GIL.
    if features.dtype != torch.bfloat16 and features.device.type == "cpu":
        total = np.add.reduce(features.numpy().reshape(-1), dtype=np.float32)
    else:
        total = features.sum(dtype=torch.float32)
    if np.isfinite(float(total)):
        return
    finite = torch.isfinite(features)
    if not bool(finite.all()):
        row = int((~finite).any(dim=1).nonzero()[0, 0]) + first_row
        raise error("features", f"non-finite values (NaN or Inf), first at instance {row}")


class FeatureReader:
    """One slide's feature file in one layout (subclass per format; the factory
    :func:`abmil.slides.formats.open_feature_file` picks the class from the file's content).

    Args:
        path: the file.
        slide_id: the slide, for error messages.
        mpp: the slide's microns per level-0 pixel, for layouts whose coordinates are in microns (used only where
            the file records none).

    A subclass sets :attr:`name`, :attr:`container` and :attr:`layout`, answers :meth:`claims`, and implements
    :meth:`shape`, :meth:`read` and :meth:`iter_chunks` (and, if the layout has them, :meth:`coords`,
    :meth:`patch_attrs`, :meth:`attrs`).
    """

    name: ClassVar[str]
    """Short name of the format (``clam-h5``), shown in messages and docs."""
    container: ClassVar[str]
    """What the factory hands :meth:`claims`: ``"hdf5"``, the open ``h5py.File`` of an HDF5 file; ``"file"``, the
    path of any other file."""
    suffixes: ClassVar[tuple[str, ...]] = ()
    """File names looked for when a slide's file is found by its id in a folder, in this order."""
    layout: ClassVar[str]
    """One line on what the reader expects, listed when no reader claims a file."""

    def __init__(self, path: str | Path, slide_id: str, mpp: float | None = None):
        self.path, self.slide_id, self.mpp = Path(path), slide_id, mpp

    @classmethod
    def claims(cls, probe) -> bool:
        """Whether this reader reads the file: ``probe`` is the open ``h5py.File`` (``container == "hdf5"``) or the
        file's path (``"file"``). Cheap: look at names, shapes and attributes, not at the data."""
        raise NotImplementedError

    def error(self, field: str, message: str) -> DataError:
        return feature_error(self.path, self.slide_id, field, message)

    def check_features(self, shape: tuple, dtype) -> None:
        """The features of a bag: 2-D ``(n_instances, dim)``, float, at least one instance."""
        if len(shape) != 2:
            raise self.error("features", f"expected a 2-D array (n_instances, dim), got shape {tuple(shape)}")
        floating = dtype.is_floating_point if isinstance(dtype, torch.dtype) else np.dtype(dtype).kind == "f"
        if not floating:
            raise self.error("features", f"expected float features, got dtype {dtype}")
        if shape[0] == 0:
            raise self.error("features", "empty bag (0 instances)")

    def check_finite(self, features: Tensor, first_row: int = 0) -> None:
        check_finite(features, self.error, first_row)

    # ------------------------------------------------------------------ the interface
    def shape(self) -> tuple[int, int]:
        """``(n_instances, dim)`` from metadata only, after checking the layout (features, coords)."""
        raise NotImplementedError

    def read(self, check_finite: bool = False) -> tuple[Tensor, Tensor | None]:
        """All features ``(n_instances, dim)`` in their stored dtype, and coords ``(n_instances, 2)`` int64 in level-0
        pixels or None."""
        raise NotImplementedError

    def iter_chunks(self, chunk_size: int) -> Iterator[tuple[Tensor, Tensor | None]]:
        """Consecutive ``(features (n_chunk, dim), coords (n_chunk, 2) or None)``, at most ``chunk_size`` rows each."""
        raise NotImplementedError

    def coords(self) -> np.ndarray:
        """The coords ``(n_instances, 2)`` in level-0 pixels alone (a heatmap's patches); DataError naming why where
        the file has none."""
        raise self.error("coords", f"a {self.name} file has no patch coordinates")

    def patch_attrs(self) -> dict:
        """How the patches were cut, in the vocabulary of :func:`abmil.slides.wsi.patch_geometry`
        (``patch_size_level0``; CLAM's ``patch_size``, ``patch_level``, ``downsample``); {} if unknown."""
        return {}

    def attrs(self) -> dict:
        """The file's own metadata, by dataset name (``"/"``: the file's root)."""
        return {}


def _level0(coords: np.ndarray) -> np.ndarray:
    return coords


class H5Reader(FeatureReader):
    """An HDF5 layout with one 2-D features dataset and, optionally, a ``coords`` dataset of matching rows.

    Subclasses set :attr:`features_name` (and :attr:`coords_name`) and, where coordinates are not stored in level-0
    pixels, override
    :meth:`to_level0`. Whole slides are read with ``read_direct`` into a preallocated array, in blocks of about
    :data:`READ_BLOCK_BYTES` (:data:`CONTIGUOUS_READ_BLOCK_BYTES` for a contiguous dataset): HDF5 walks the chunks
    in C, and with ``check_finite`` each block is checked for NaN/Inf by a helper thread while the next block is read,
    and while it is still in the CPU cache (checked after the whole read, the check cost about a third of the read
    itself on a contiguous file).
    """

    container = "hdf5"
    suffixes = (".h5", ".hdf5")
    features_name: ClassVar[str] = "features"
    coords_name: ClassVar[str] = "coords"

    @contextlib.contextmanager
    def open(self):
        """The file, open for reading; DataError if it is missing or not HDF5."""
        h5py = h5py_module()
        if not self.path.is_file():
            raise self.error("path", "slide file not found")
        try:
            f = h5py.File(self.path, "r")
        except OSError as e:
            raise self.error("path", f"not a readable HDF5 file ({e})") from None
        with f:
            yield f

    def features_key(self, f) -> str:
        """The name of the features dataset in the open file ``f``."""
        return self.features_name

    def features_dataset(self, f):
        """The checked features dataset of the open file ``f``."""
        name = self.features_key(f)
        if name not in f:
            raise self.error("features", f"no '{name}' dataset (found: {', '.join(f.keys()) or 'nothing'})")
        ds = f[name]
        if not isinstance(ds, h5py_module().Dataset):
            raise self.error("features", f"'{name}' is a group, not a dataset")
        self.check_features(ds.shape, ds.dtype)
        return ds

    def coords_dataset(self, f, n: int):
        """The coords dataset, checked to have ``n`` rows, or None."""
        if self.coords_name not in f:
            return None
        ds = f[self.coords_name]
        if getattr(ds, "shape", None) != (n, 2):
            raise self.error("coords", f"expected shape ({n}, 2) to match features, got {getattr(ds, 'shape', None)}")
        return ds

    def to_level0(self, f) -> Callable[[np.ndarray], np.ndarray] | None:
        """How the stored coords become level-0 pixels (here: they are), or None where they cannot (and then
        :meth:`no_coords_reason` says why)."""
        return _level0

    def no_coords_reason(self, f) -> str:
        return f"no '{self.coords_name}' dataset: a heatmap needs patch coordinates"

    def _coords(self, f, n: int):
        ds = self.coords_dataset(f, n)
        convert = self.to_level0(f) if ds is not None else None
        return (ds, convert) if convert is not None else None

    # ------------------------------------------------------------------ the interface
    def shape(self) -> tuple[int, int]:
        with self.open() as f:
            ds = self.features_dataset(f)
            self.coords_dataset(f, ds.shape[0])
            return ds.shape

    def attrs(self) -> dict:
        with self.open() as f:
            out = {name: dict(f[name].attrs) for name in (self.features_key(f), self.coords_name) if name in f}
            if len(f.attrs):
                out["/"] = dict(f.attrs)
            return out

    def patch_attrs(self) -> dict:
        with self.open() as f:
            return dict(f[self.coords_name].attrs) if self.coords_name in f else {}

    def coords(self) -> np.ndarray:
        with self.open() as f:
            ds = self.features_dataset(f)
            found = self._coords(f, ds.shape[0])
            if found is None:
                raise self.error("coords", self.no_coords_reason(f))
            cds, convert = found
            return convert(np.asarray(cds[...]))

    def read(self, check_finite: bool = False) -> tuple[Tensor, Tensor | None]:
        with self.open() as f:
            ds = self.features_dataset(f)
            features = np.empty(ds.shape, dtype=ds.dtype)
            block_bytes = CONTIGUOUS_READ_BLOCK_BYTES if ds.chunks is None else READ_BLOCK_BYTES
            rows = max(1, block_bytes // max(1, features[:1].nbytes))
            out = torch.from_numpy(features)
            blocks = [np.s_[start:min(start + rows, ds.shape[0])] for start in range(0, ds.shape[0], rows)]
            with _checker(check_finite and len(blocks) > 1) as pool:
                checks = []
                for block in blocks:
                    ds.read_direct(features, source_sel=block, dest_sel=block)
                    if pool is not None:  # numpy's sum runs without the GIL, beside the next read
                        checks.append(pool.submit(self.check_finite, out[block], block.start))
                    elif check_finite:
                        self.check_finite(out[block], block.start)
                for check in checks:  # in row order: the first bad block's error is raised
                    check.result()
            found = self._coords(f, ds.shape[0])
            coords = None if found is None else found[1](found[0][...])
        return out, None if coords is None else torch.from_numpy(coords)

    def iter_chunks(self, chunk_size: int) -> Iterator[tuple[Tensor, Tensor | None]]:
        if chunk_size < 1:
            raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
        with self.open() as f:
            ds = self.features_dataset(f)
            found = self._coords(f, ds.shape[0])
            n = ds.shape[0]
            for start in range(0, n, chunk_size):
                stop = min(start + chunk_size, n)
                # a fresh array per chunk: the caller may keep earlier chunks
                buf = np.empty((stop - start, ds.shape[1]), dtype=ds.dtype)
                ds.read_direct(buf, source_sel=np.s_[start:stop])
                coords = None
                if found is not None:
                    cds, convert = found
                    coords = np.empty((stop - start, 2), dtype=cds.dtype)
                    cds.read_direct(coords, source_sel=np.s_[start:stop])
                    coords = torch.from_numpy(convert(coords))
                yield torch.from_numpy(buf), coords


@contextlib.contextmanager
def _checker(enabled: bool):
    """A one-thread pool for :meth:`H5Reader.read`'s block checks, or None."""
    if not enabled:
        yield None
        return
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(1, thread_name_prefix="abmil-check") as pool:
        yield pool
