"""Feature-file formats: one reader class per layout, chosen from the file's content by :func:`open_feature_file`.

    clam_h5.py          CLAM / TRIDENT patch features: 'features' (n, dim), 'coords' in level-0 pixels
    clam_pt.py          CLAM / TRIDENT .pt: a tensor or float array (n, dim), no coords
    stamp.py            STAMP tile features: 'feats' (n, dim), 'coords' in micrometres (placed with the slide's mpp)
    slide_embedding.py  one vector per slide (TRIDENT slide encoders, STAMP slide/patient encoders): a bag of one

A file is HDF5 if it starts with HDF5's signature (or is named ``.h5``/``.hdf5``); the first reader of
:data:`READERS` for its container (``hdf5``, or ``file`` for any other) that :meth:`~.base.FeatureReader.claims` it
reads it: HDF5 readers by the file's datasets and attributes, the others by name or content. A new format is one
module with one :class:`~.base.FeatureReader` subclass, listed in :data:`READERS` (or added at run time with
:func:`register`).
"""
from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from ...errors import DataError
from .base import FeatureReader, H5Reader, feature_error
from .clam_h5 import ClamH5
from .clam_pt import ClamPt
from .slide_embedding import SlideEmbeddingH5
from .stamp import StampH5

__all__ = ["READERS", "SUFFIXES", "FeatureReader", "H5Reader", "find_feature_file", "find_feature_folder",
           "open_feature_file", "register", "suffixes"]

#: The readers, asked in this order: the first that claims a file reads it (the most specific first; CLAM's
#: ``features`` last among HDF5 layouts, so that a malformed ``features`` dataset is reported by its shape).
READERS: list[type[FeatureReader]] = [SlideEmbeddingH5, StampH5, ClamH5, ClamPt]

_HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"


def suffixes() -> tuple[str, ...]:
    """The file names looked for when a slide's file is found by its id (:func:`find_feature_file`): every
    reader's :attr:`~.base.FeatureReader.suffixes`, in reader order."""
    return tuple(dict.fromkeys(s for r in READERS for s in r.suffixes))


SUFFIXES = suffixes()


def register(reader: type[FeatureReader]) -> type[FeatureReader]:
    """Add a reader ahead of the built-in ones (usable as a class decorator); registering it again moves it."""
    if reader in READERS:
        READERS.remove(reader)
    READERS.insert(0, reader)
    return reader


def container_of(path: Path) -> str:
    """``"hdf5"`` if the file starts with HDF5's signature or is named ``.h5``/``.hdf5``, else ``"file"``."""
    try:
        with open(path, "rb") as f:
            head = f.read(len(_HDF5_SIGNATURE))
    except OSError:
        head = b""
    return "hdf5" if head == _HDF5_SIGNATURE or path.suffix.lower() in H5Reader.suffixes else "file"


def open_feature_file(path: str | os.PathLike, slide_id: str | None = None, *,
                      mpp: float | None = None) -> FeatureReader:
    """The reader of one slide's feature file, chosen from its content.

    Args:
        path: the file.
        slide_id: the slide, for messages (default: the file's stem).
        mpp: the slide's microns per level-0 pixel, for layouts with coordinates in micrometres (STAMP) whose file
            records none.

    Raises:
        DataError: the file is missing, unreadable, or in no layout of :data:`READERS` (one line naming the file).
    """
    path = Path(path)
    slide_id = path.stem if slide_id is None else slide_id
    if not path.is_file():
        raise feature_error(path, slide_id, "path", "slide file not found")
    container = container_of(path)
    readers = [r for r in READERS if r.container == container]
    if container == "hdf5":
        probe = H5Reader(path, slide_id)
        with probe.open() as f:
            reader = next((r for r in readers if r.claims(f)), None)
            found = ", ".join(f.keys()) or "nothing"
        if reader is None:
            raise feature_error(path, slide_id, "features",
                                f"unknown feature-file layout: no 'features' dataset nor another layout abmil reads "
                                f"(found: {found}; known: {'; '.join(r.layout for r in readers)})")
    else:
        reader = next((r for r in readers if r.claims(path)), None)
        if reader is None:
            raise feature_error(path, slide_id, "path", f"unknown feature-file type {path.suffix!r}: not HDF5, and "
                                                        f"no reader claims it ({'; '.join(r.layout for r in readers)})")
    return reader(path, slide_id, mpp)


def find_feature_file(folder: Path, slide_id: str) -> Path | None:
    """``folder/<slide_id>.h5`` (or .hdf5, .pt, .pth, in that order), or None."""
    for suffix in suffixes():
        p = folder / f"{slide_id}{suffix}"
        if p.is_file():
            return p
    return None


def _stems(folder: Path) -> set[str]:
    try:
        with os.scandir(folder) as entries:
            known = suffixes()
            return {Path(e.name).stem for e in entries if Path(e.name).suffix.lower() in known and e.is_file()}
    except OSError:
        return set()


def _subfolders(folder: Path, depth: int) -> list[Path]:
    out = []
    try:
        children = sorted(e.path for e in os.scandir(folder) if e.is_dir() and not e.name.startswith("."))
    except OSError:
        return out
    for child in map(Path, children):
        out.append(child)
        if depth > 1:
            out += _subfolders(child, depth - 1)
    return out


def find_feature_folder(folder: str | os.PathLike, slide_ids: Iterable[str], depth: int = 2) -> Path:
    """The folder that holds the slides' feature files: ``folder`` itself if it holds one of them, else the one folder
    up to ``depth`` levels below it that does, as the extraction tools lay them out:

        CLAM     <feat_dir>/h5_files/ (chosen over its twin pt_files/: the same features, without coords)
        TRIDENT  <job_dir>/<mag>x_<px>px_<overlap>px_overlap/features_<encoder>/ (slide_features_<encoder>/)
        STAMP    <output_dir>/<extractor>[-<hash>]/ (<encoder>-slide/)

    ``folder`` itself if none does (its files are then reported missing by name). DataError listing them if
    several folders hold the slides' files (several encoders, patch and slide features side by side).
    """
    folder = Path(folder)
    wanted = set(slide_ids)
    if not wanted or _stems(folder) & wanted or not folder.is_dir():
        return folder
    found = [d for d in _subfolders(folder, depth) if _stems(d) & wanted]
    found = [d for d in found if not (d.name == "pt_files" and d.with_name("h5_files") in found)]
    if len(found) > 1:
        names = ", ".join(str(d.relative_to(folder)) for d in found)
        raise DataError(f"several folders hold these slides' feature files: {names}; give one of them as --features",
                        path=str(folder))
    return found[0] if found else folder
