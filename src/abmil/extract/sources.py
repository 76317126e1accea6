"""Which slides to extract: every slide file in a folder, or a manifest's slides."""
from __future__ import annotations

import os
from pathlib import Path

from ..errors import DataError


def slides_in_folder(folder: str | os.PathLike) -> list[tuple[str, Path]]:
    """``(slide_id, path)`` of each file in ``folder`` with a slide suffix, sorted by name; the id is the file name
    without its suffix. :class:`DataError` naming the folder if it is missing or holds none."""
    from ..slides.wsi import SLIDE_SUFFIXES

    folder = Path(folder)
    if not folder.is_dir():
        raise DataError("not a folder (--slides)", path=str(folder))
    found = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in SLIDE_SUFFIXES)
    if not found:
        raise DataError(f"no slides in this folder (--slides; looked for {', '.join(SLIDE_SUFFIXES)})",
                        path=str(folder))
    ids = [p.stem for p in found]
    dup = sorted({i for i in ids if ids.count(i) > 1})
    if dup:
        raise DataError(f"two slide files share the id {dup[0]!r} (--slides)", path=str(folder))
    return list(zip(ids, found))


def slides_of_manifest(manifest: str | os.PathLike, folder: str | os.PathLike | None) -> list[tuple[str, Path]]:
    """``(slide_id, path)`` of each manifest row: its ``path`` cell (relative to the manifest's folder) if it names
    a slide image, else ``<folder>/<slide_id>.<suffix>`` (``--slides``, default the manifest's folder)."""
    from ..slides.manifest import read_manifest
    from ..slides.wsi import SLIDE_SUFFIXES, find_slide

    rows = read_manifest(manifest, require_labels=False)
    base = Path(manifest).parent
    folder = Path(folder) if folder is not None else base
    out = []
    for row in rows:
        path = None
        if row.path and Path(row.path).suffix.lower() in SLIDE_SUFFIXES:
            path = Path(row.path) if Path(row.path).is_absolute() else base / row.path
        path = path or find_slide(folder, row.slide_id)
        if path is None:
            raise DataError(f"no slide image for slide {row.slide_id!r} in {folder}", path=str(manifest))
        out.append((row.slide_id, path))
    return out
