"""The four MNIST idx files: read them from a directory, check them, and download them.

The files are the LeCun/Cortes/Burges originals under their usual names (as torchvision keeps them), gzipped or not:

    train-images-idx3-ubyte[.gz]   magic 2051, 60000 x 28 x 28 uint8
    train-labels-idx1-ubyte[.gz]   magic 2049, 60000 uint8 digits
    t10k-images-idx3-ubyte[.gz]    magic 2051, 10000 x 28 x 28 uint8
    t10k-labels-idx1-ubyte[.gz]    magic 2049, 10000 uint8 digits

A file is the official one when the SHA-256 of its *decompressed* bytes matches :data:`MNIST_FILES`. The content is
checked, not the ``.gz`` bytes, because a re-compressed copy (another gzip level or header time stamp) holds the same
data under another ``.gz`` checksum. Every problem (missing, truncated, corrupt, wrong magic, wrong count, checksum)
raises :class:`abmil.errors.DataError` naming the file.
"""
from __future__ import annotations

import gzip
import hashlib
import http.client
import os
import urllib.error
import urllib.request
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from abmil.errors import DataError
from abmil.io import atomic_open

_GZIP_MAGIC = b"\x1f\x8b"
_IDX_UBYTE = 0x08  # idx type code of unsigned bytes, the only one MNIST uses
_CHUNK = 1 << 16


@dataclass(frozen=True)
class MNISTFile:
    """One official MNIST file. Checksums are of the decompressed content except ``gz_md5``."""

    name: str
    """File name without ``.gz``."""
    magic: int
    """2051 for images (idx3 uint8), 2049 for labels (idx1 uint8)."""
    shape: tuple[int, ...]
    """Array shape the file holds: ``(n, 28, 28)`` or ``(n,)``."""
    sha256: str
    md5: str
    gz_md5: str
    """MD5 of the official ``.gz`` as torchvision lists it; informative only (see the module docstring)."""

    @property
    def size(self) -> int:
        """Decompressed size in bytes: the header (4 + 4 per dimension) plus one byte per value."""
        return 4 + 4 * len(self.shape) + int(np.prod(self.shape))


# sha256: computed from the decompressed files of /work/shared/data/mnist, and equal to the sums published for the
# official files by many independent projects. md5: the official decompressed sums (the shared data README lists them,
# and they match the files). gz_md5: torchvision's ``MNIST.resources``.
MNIST_FILES: dict[str, MNISTFile] = {f.name: f for f in (
    MNISTFile("train-images-idx3-ubyte", 2051, (60000, 28, 28),
              "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
              "6bbc9ace898e44ae57da46a324031adb", "f68b3c2dcbeaaa9fbdd348bbdeb94873"),
    MNISTFile("train-labels-idx1-ubyte", 2049, (60000,),
              "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
              "a25bea736e30d166cdddb491f175f624", "d53e105ee54ea40749a09fcbcd1e9432"),
    MNISTFile("t10k-images-idx3-ubyte", 2051, (10000, 28, 28),
              "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
              "2646ac647ad5339dbf082846283269ea", "9fb629c4189551a2d022fa330f9573f3"),
    MNISTFile("t10k-labels-idx1-ubyte", 2049, (10000,),
              "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
              "27ae3e4e09519cfbb04c329615203637", "ec29112dd5afa0611ce80d1b7f02629c"),
)}

# split: (images file, labels file)
SPLITS: dict[str, tuple[str, str]] = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}

# Tried in order; each serves the four ``.gz`` files under their usual names. The S3 copy is torchvision's first
# choice; LeCun's page is the original but often refuses automated downloads.
DEFAULT_MIRRORS: tuple[str, ...] = (
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "https://storage.googleapis.com/cvdf-datasets/mnist/",
    "http://yann.lecun.com/exdb/mnist/",
)


# ---------------------------------------------------------------------------------------------------------------------
# Reading.


def find_mnist_file(root: str | os.PathLike, name: str) -> Path:
    """The path of MNIST file ``name`` (no ``.gz``) in ``root``: ``name.gz`` if present, else ``name``.

    The ``.gz`` wins because :func:`download_mnist` writes that one, so a stale uncompressed copy cannot shadow it.
    """
    root = Path(root)
    for candidate in (root / f"{name}.gz", root / name):
        if candidate.is_file():
            return candidate
    raise DataError(f"MNIST file missing (looked for {name}.gz and {name} in {root})", path=str(root / f"{name}.gz"))


def _read_content(path: Path) -> bytes:
    """The file's bytes, decompressed if it is gzipped."""
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise DataError(f"cannot read: {e}", path=str(path)) from e
    if raw[:2] != _GZIP_MAGIC:
        return raw
    try:
        return gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as e:  # BadGzipFile is an OSError; a cut-off stream is an EOFError
        raise DataError(f"corrupt or truncated gzip data: {e}", path=str(path)) from e


def parse_idx(content: bytes, *, source: str) -> np.ndarray:
    """Parse an idx file of unsigned bytes (the MNIST format) into a read-only uint8 array of its declared shape.

    Layout: two zero bytes, the type code 0x08, the number of dimensions d, then d big-endian uint32 sizes, then the
    values in C order. ``source`` names the file in errors.
    """
    if len(content) < 4:
        raise DataError(f"truncated: {len(content)} bytes, too short for an idx header", path=source)
    if content[:2] != b"\0\0" or content[2] != _IDX_UBYTE or content[3] == 0:
        magic = int.from_bytes(content[:4], "big")
        raise DataError(f"wrong magic number {magic} (0x{magic:08x}): not an idx file of unsigned bytes", path=source)
    ndim = content[3]
    header = 4 + 4 * ndim
    if len(content) < header:
        raise DataError(f"truncated inside the header ({len(content)} of {header} bytes)", path=source)
    shape = tuple(int.from_bytes(content[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim))
    expected = header + int(np.prod(shape))
    if len(content) != expected:
        what = "truncated" if len(content) < expected else "trailing bytes"
        raise DataError(f"{what}: {len(content)} bytes, but the header declares shape {shape} = {expected} bytes",
                        path=source)
    return np.frombuffer(content, dtype=np.uint8, offset=header).reshape(shape)


def read_mnist_file(path: str | os.PathLike, spec: MNISTFile | str, *, verify: bool = True) -> np.ndarray:
    """Read one MNIST idx file (gzipped or not) and check it against ``spec`` (an entry of :data:`MNIST_FILES`).

    Returns a uint8 array of shape ``spec.shape``: ``(n, 28, 28)`` images or ``(n,)`` digits in 0..9.
    ``verify=False`` skips only the checksum (for a same-format set such as Fashion-MNIST); the magic number, the
    shape and the digit range are always checked.
    """
    spec = MNIST_FILES[spec] if isinstance(spec, str) else spec
    path = Path(path)
    source = str(path)
    content = _read_content(path)
    magic = int.from_bytes(content[:4], "big") if len(content) >= 4 else None
    if magic is not None and magic != spec.magic:
        raise DataError(f"wrong magic number {magic}, expected {spec.magic} for {spec.name}", path=source)
    array = parse_idx(content, source=source)
    if array.shape != spec.shape:
        raise DataError(f"holds {array.shape[0]} items of shape {array.shape[1:]}, expected "
                        f"{spec.shape[0]} of shape {spec.shape[1:]} for {spec.name}", path=source)
    if verify:
        digest = hashlib.sha256(content).hexdigest()
        if digest != spec.sha256:
            raise DataError(f"checksum mismatch: sha256 of the content is {digest}, the official {spec.name} has "
                            f"{spec.sha256}", path=source)
    if array.ndim == 1 and array.size and int(array.max()) > 9:
        raise DataError(f"label {int(array.max())} out of range 0..9", path=source)
    return array.copy()


def read_mnist(root: str | os.PathLike, split: str = "train", *,
               verify: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Read one split of MNIST from directory ``root``.

    Returns ``(images, digits)``: uint8 ``(n, 28, 28)`` and uint8 ``(n,)``, n = 60000 for ``"train"`` and 10000 for
    ``"test"``, in the official order.
    """
    if split not in SPLITS:
        raise ValueError(f"unknown MNIST split {split!r}: expected 'train' or 'test'")
    image_name, label_name = SPLITS[split]
    images = read_mnist_file(find_mnist_file(root, image_name), image_name, verify=verify)
    digits = read_mnist_file(find_mnist_file(root, label_name), label_name, verify=verify)
    return images, digits


def check_mnist_file(path: str | os.PathLike, spec: MNISTFile | str) -> None:
    """Raise :class:`DataError` unless ``path`` holds the official content of ``spec``."""
    read_mnist_file(path, spec, verify=True)


# ---------------------------------------------------------------------------------------------------------------------
# Downloading.


class _BadDownload(Exception):
    """A mirror answered, but not with the official file."""


def download_mnist(dest_dir: str | os.PathLike, mirrors: Sequence[str] = DEFAULT_MIRRORS, timeout: float = 60.0,
                   ) -> dict[str, Path]:
    """Download the four MNIST ``.gz`` files into ``dest_dir``; return ``{name: path}`` of all four.

    A file already in ``dest_dir`` (gzipped or not) whose content checks out is kept and not fetched. Otherwise the
    mirrors (URL prefixes, ``file:`` URLs work too) are tried in order until one serves the official content. Each
    file is streamed into a temporary file that replaces ``dest_dir/<name>.gz`` only once the checksum matches, so a
    failed or interrupted download never leaves a partial file. Raises :class:`DataError` naming the file and every
    mirror's error when no mirror serves it. Uses only ``urllib``.
    """
    dest = Path(dest_dir)
    if not mirrors:
        raise ValueError("download_mnist: no mirrors given")
    paths = {}
    for name, spec in MNIST_FILES.items():
        paths[name] = _present_and_valid(dest, spec) or _download_one(dest, spec, mirrors, timeout)
    return paths


#: Where MNIST is kept when no folder is given: a per-user cache, as torchvision's and Keras's datasets are.
DEFAULT_MNIST_DIR = "~/.cache/abmil/mnist"


def mnist_dir(root: str | os.PathLike | None = None, *, download: bool = False) -> Path:
    """The MNIST folder to read: ``root``, or :data:`DEFAULT_MNIST_DIR`; with ``download``, missing files are
    fetched into it first (:func:`download_mnist`), so that a first run needs no separate step."""
    folder = Path(root) if root is not None else Path(DEFAULT_MNIST_DIR).expanduser()
    if download:
        download_mnist(folder)
    return folder


def _present_and_valid(dest: Path, spec: MNISTFile) -> Path | None:
    for candidate in (dest / f"{spec.name}.gz", dest / spec.name):
        if candidate.is_file():
            try:
                check_mnist_file(candidate, spec)
                return candidate
            except DataError:
                pass  # replaced below by a fresh .gz (which find_mnist_file prefers)
    return None


def _download_one(dest: Path, spec: MNISTFile, mirrors: Sequence[str], timeout: float) -> Path:
    target = dest / f"{spec.name}.gz"
    errors = []
    for mirror in mirrors:
        url = mirror if mirror.endswith("/") else mirror + "/"
        url += f"{spec.name}.gz"
        try:
            _fetch(url, target, spec, timeout)
            return target
        except (_BadDownload, OSError, http.client.HTTPException, ValueError) as e:
            # URLError/HTTPError and socket timeouts are OSErrors; IncompleteRead is an HTTPException
            errors.append(f"{url}: {e}")
    raise DataError(f"could not download {spec.name}.gz from any mirror:\n  " + "\n  ".join(errors), path=str(target))


def _fetch(url: str, target: Path, spec: MNISTFile, timeout: float) -> None:
    """Stream ``url`` into ``target`` through ``atomic_open``, checking the decompressed content on the way."""
    with urllib.request.urlopen(url, timeout=timeout) as response, atomic_open(target, "wb") as out:
        inflate = zlib.decompressobj(16 + zlib.MAX_WBITS)  # gzip wrapper
        digest, size = hashlib.sha256(), 0
        while chunk := response.read(_CHUNK):
            out.write(chunk)
            try:
                data = inflate.decompress(chunk)
            except zlib.error as e:
                raise _BadDownload(f"corrupt gzip data: {e}") from e
            size += len(data)
            if size > spec.size:  # stop early on a wrong or hostile file
                raise _BadDownload(f"decompresses to more than the {spec.size} bytes of {spec.name}")
            digest.update(data)
        if not inflate.eof:
            raise _BadDownload("truncated gzip stream")
        if inflate.unused_data:  # the reader would reject these bytes, so do not keep the file
            raise _BadDownload("trailing bytes after the gzip stream")
        if digest.hexdigest() != spec.sha256:
            raise _BadDownload(f"checksum mismatch: sha256 of the content is {digest.hexdigest()}, "
                               f"expected {spec.sha256}")
