"""Atomic file output: a reader never sees a half-written file, a killed writer leaves none."""
from __future__ import annotations

import contextlib
import errno
import json
import os
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from abmil.errors import OutputError

# errno values of an OSError raised inside an atomic_open block (or by closing its file) that mean "this output
# cannot be written"; the block's other OSErrors (e.g. a network read feeding the file) pass through unchanged.
_WRITE_ERRNOS = frozenset(getattr(errno, name) for name in ("ENOSPC", "EDQUOT", "EFBIG", "EROFS", "EACCES", "EPERM",
                                                              "EIO", "ENOTDIR", "EISDIR") if hasattr(errno, name))


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "w", **kwargs: Any) -> Iterator[Any]:
    """Open a temporary file beside ``path``; rename it over ``path`` only if the block succeeds.

    A failure to create, write or rename the file (a full disk, a read-only folder, a file standing where a folder
    should be, ...) raises :class:`abmil.errors.OutputError` naming ``path``; no temporary file is left behind.
    """
    path = Path(path)
    make_dirs(path.parent)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as e:
        raise OutputError.of(path, e) from e
    in_block = False  # the caller's block runs: its OSErrors are its own unless they say the file cannot be written
    try:
        try:
            os.fchmod(fd, 0o666 & ~_umask())  # mkstemp's 0600 would make results unreadable to the user's group
            f = os.fdopen(fd, mode, **kwargs)
        except BaseException:
            os.close(fd)
            raise
        with f:
            in_block = True
            yield f
            in_block = False
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if (isinstance(e, OSError) and not isinstance(e, OutputError)
                and (not in_block or e.errno in _WRITE_ERRNOS)):
            raise OutputError.of(path, e) from e
        raise


def make_dirs(folder: str | os.PathLike) -> Path:
    """``folder`` and its parents, created as needed; :class:`abmil.errors.OutputError` naming it when that fails
    (no permission, a file standing where a folder should be, ...)."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise OutputError.of(folder, e) from e
    return folder


def _umask() -> int:
    """The process's umask, read without changing it where Linux allows (os.umask can only set it)."""
    with contextlib.suppress(OSError, ValueError):
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    with atomic_open(path, "w", encoding="utf-8") as f:
        f.write(text)


def write_json_atomic(path: str | os.PathLike, obj: Any) -> None:
    write_text_atomic(path, json.dumps(obj, indent=2) + "\n")


def write_safetensors_atomic(path: str | os.PathLike, tensors: Mapping[str, Any],
                             metadata: Mapping[str, str] | None = None) -> None:
    """Tensors (e.g. a state dict) as a safetensors file, written atomically; contiguous CPU copies are stored
    (safetensors refuses views that share storage)."""
    from safetensors.torch import save

    data = save({k: v.detach().to("cpu").contiguous().clone() for k, v in tensors.items()},
                metadata=None if metadata is None else dict(metadata))
    with atomic_open(path, "wb") as f:
        f.write(data)
