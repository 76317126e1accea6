"""The paper's two histopathology datasets, read from their published folder layouts into patch bags.

UCSB Bio-Segmentation breast cancer (BisQue), one folder of 58 H&E images::

    Bisque/ytma10_010704_benign1_ccd.tif   ytma10_010704_malignant1_ccd.tif   ...   (896x768 RGB, + *.tif.xml)

  bag = one image, label 1 iff ``malignant`` is in the file name (``benign`` -> 0; exactly one must occur);
  instances = 32x32 grid tiles with background dropped (:func:`abmil.data.patches.grid_patches`); no instance labels.

Warwick CRCHistoPhenotypes, the ``Classification`` folder of the 2016 archive, 100 H&E images::

    Classification/img{i}/img{i}.bmp                         500x500 RGB
    Classification/img{i}/img{i}_{epithelial,fibroblast,inflammatory,others}.mat    key ``detection``, (n, 2)

  bag = one image; instances = 27x27 windows centred on every annotated nucleus of the four classes
  (:func:`abmil.data.patches.centred_patches`); instance label 1 = epithelial; bag label = max of instance labels,
  i.e. positive iff the image has at least one epithelial nucleus (docs/protocols.md §4 "Colon Cancer").

  ``detection`` holds MATLAB coordinates: column 0 is x (the image column), column 1 is y (the row), 1-based pixel
  units, float (some files store uint8/uint16; empty ones are (0, 2)). Checked on all 22,444 real nuclei: the mean
  grey level (0-255) at pixel (row y, col x) is 145, against 195 with x and y swapped and 203 over whole images
  (nuclei are dark), and the 5x5-smoothed image averaged over the nuclei is darkest at offset (-1, -1) from
  ``(round(y), round(x))``, i.e. 1-based. So the 0-based centre pixel is ``(round(y) - 1, round(x) - 1)``. This puts
  the nucleus at the exact middle (index 13) of its 27x27 window; gmum's loader slices ``img[y-13:y+14]`` with the
  1-based y and so sits one pixel up-left of centre. Real values reach 0.15 and 500.0, just beyond the image's
  MATLAB extent [0.5, S + 0.5], so coordinates in [0, S + 1] are accepted (centre clipped onto the image) and any
  further out is an error.

Every bad input raises :class:`abmil.errors.DataError` naming the file. Images are read with Pillow; ``.svs`` slides
need the optional ``openslide`` package (imported only when such a file is read).
"""
from __future__ import annotations

import re
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import scipy.io
from PIL import Image

from abmil.data.patches import (
    BREAST_PATCH_SIZE,
    COLON_PATCH_SIZE,
    MAX_WHITE_FRACTION,
    WHITE_LEVEL,
    centred_patches,
    grid_patches,
    patches_to_tensor,
)
from abmil.errors import DataError, optional_import

__all__ = [
    "BREAST_SUFFIXES",
    "COLON_CLASSES",
    "PatchBag",
    "breast_bag",
    "breast_label",
    "colon_bag",
    "load_colon_crc",
    "load_ucsb_breast",
    "read_detections",
    "read_rgb",
]

COLON_CLASSES: tuple[str, ...] = ("epithelial", "fibroblast", "inflammatory", "others")
_POSITIVE_CLASS = "epithelial"
BREAST_SUFFIXES = (".tif", ".tiff")
# Pillow modes that convert to RGB without losing meaning; 16-bit / float modes would need a rescale we can't guess.
_RGB_CONVERTIBLE = {"RGB", "RGBA", "RGBX", "RGBa", "P", "PA", "L", "LA", "La", "1", "CMYK", "YCbCr"}
_COLON_FOLDER = re.compile(r"img(\d+)")


@dataclass
class PatchBag:
    """One image as a bag of patches.

    Attributes:
        patches: (n, 3, s, s) uint8, channels first.
        coords: (n, 2) int64 top-left (row, col) of each patch in the image.
        label: bag label in {0, 1}.
        bag_id: the image's file stem (``"ytma10_010704_benign1_ccd"``, ``"img7"``).
        path: the image file read.
        instance_labels: (n,) int64 in {0, 1} where annotations exist (colon: 1 = epithelial), else None.
        centres: (n, 2) int64 (row, col) of each annotated nucleus (colon), else None.
        nucleus_classes: (n,) int64 index into :data:`COLON_CLASSES` (colon), else None.
    """

    patches: np.ndarray
    coords: np.ndarray
    label: int
    bag_id: str
    path: str
    instance_labels: np.ndarray | None = None
    centres: np.ndarray | None = None
    nucleus_classes: np.ndarray | None = None

    def __len__(self) -> int:
        return int(self.patches.shape[0])

    def as_item(self) -> tuple:
        """``(instances (n, 3, s, s) float32 in [0, 1], label, bag_id, instance_labels)``, the item layout of the
        package's datasets."""
        return patches_to_tensor(self.patches), self.label, self.bag_id, self.instance_labels


# --------------------------------------------------------------------------------------------------- images

def read_rgb(path: str | Path, *, level: int = 0) -> np.ndarray:
    """Read an image file as (H, W, 3) uint8 RGB (alpha dropped, palette/grey expanded).

    ``.svs`` is read with OpenSlide at pyramid ``level`` (whole level in memory: mind level 0 of a real slide);
    everything else with Pillow (first page of a multi-page TIFF).

    Raises:
        DataError (naming the file): missing, unreadable, truncated or undecodable file; a mode with no RGB meaning.
        MissingDependency: ``.svs`` without ``openslide`` installed (the message names the file and the install).
    """
    path = Path(path)
    if not path.is_file():
        raise DataError("image file not found", path=str(path))
    if path.suffix.lower() == ".svs":
        return _read_svs(path, level)
    try:
        # Pillow's warnings about a damaged file (e.g. "Corrupt EXIF data") would only precede our own error
        with warnings.catch_warnings(), Image.open(path) as im:
            warnings.simplefilter("ignore", UserWarning)
            im.load()  # decode now: a truncated file fails here, not later
            if im.mode not in _RGB_CONVERTIBLE:
                raise DataError(f"unsupported image mode {im.mode!r} (want 8-bit RGB)", path=str(path))
            arr = np.array(im.convert("RGB"), dtype=np.uint8)
    except DataError:
        raise
    except Exception as e:  # Pillow raises OSError, SyntaxError, ValueError, struct.error... on bad bytes
        raise DataError(f"cannot read image ({type(e).__name__}: {e})", path=str(path)) from e
    return arr


def _read_svs(path: Path, level: int) -> np.ndarray:
    openslide = optional_import("openslide", "slides", f"reading {path}")  # optional, never a hard dependency
    try:
        slide = openslide.OpenSlide(str(path))
        try:
            region = slide.read_region((0, 0), level, slide.level_dimensions[level])
        finally:
            slide.close()
    except Exception as e:
        raise DataError(f"cannot read slide level {level} ({type(e).__name__}: {e})", path=str(path)) from e
    return np.array(region.convert("RGB"), dtype=np.uint8)


# --------------------------------------------------------------------------------------------------- breast

def breast_label(path: str | Path) -> int:
    """1 if the file name says ``malignant``, 0 if ``benign`` (case-insensitive); DataError if neither or both."""
    name = Path(path).name.lower()
    found = {word for word in ("benign", "malignant") if word in name}
    if len(found) != 1:
        raise DataError("file name must contain exactly one of 'benign' / 'malignant'", path=str(path))
    return int("malignant" in found)


def breast_bag(
    path: str | Path,
    *,
    patch_size: int = BREAST_PATCH_SIZE,
    max_white_fraction: float | None = MAX_WHITE_FRACTION,
    white_level: float = WHITE_LEVEL,
) -> PatchBag:
    """One UCSB image as a bag of grid tiles with background dropped (see :func:`grid_patches`)."""
    path = Path(path)
    label = breast_label(path)
    image = read_rgb(path)
    ps = grid_patches(image, patch_size, max_white_fraction=max_white_fraction, white_level=white_level,
                      path=str(path))
    return PatchBag(ps.patches, ps.coords, label, path.stem, str(path))


def load_ucsb_breast(
    root: str | Path,
    *,
    patch_size: int = BREAST_PATCH_SIZE,
    max_white_fraction: float | None = MAX_WHITE_FRACTION,
    white_level: float = WHITE_LEVEL,
) -> list[PatchBag]:
    """Every ``*.tif`` / ``*.tiff`` in ``root`` (the BisQue folder), sorted by file name, as patch bags.

    Raises:
        DataError: ``root`` missing or holding no TIFF, or any bad image (see :func:`breast_bag`).
    """
    root = Path(root)
    if not root.is_dir():
        raise DataError("UCSB breast folder not found", path=str(root))
    files = sorted(p for p in root.iterdir() if p.is_file() and p.suffix.lower() in BREAST_SUFFIXES)
    if not files:
        raise DataError("no .tif images in the UCSB breast folder (empty folder?)", path=str(root))
    return [breast_bag(p, patch_size=patch_size, max_white_fraction=max_white_fraction, white_level=white_level)
            for p in files]


# --------------------------------------------------------------------------------------------------- colon

def read_detections(path: str | Path, image_shape: tuple[int, int]) -> np.ndarray:
    """Nucleus centres of one ``img{i}_{class}.mat`` as (n, 2) int64 0-based (row, col) pixels of the image.

    ``image_shape`` is (H, W). See the module docstring for the coordinate convention and the accepted range.

    Raises:
        DataError (naming the file): unreadable .mat, no ``detection`` key, not an (n, 2) finite numeric array,
        or a coordinate outside the image.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError("annotation file not found", path=str(path))
    try:
        mat = scipy.io.loadmat(str(path))
    except Exception as e:  # includes v7.3 (HDF5) files, which scipy cannot read
        raise DataError(f"cannot read .mat file ({type(e).__name__}: {e})", path=str(path)) from e
    if "detection" not in mat:
        keys = sorted(k for k in mat if not k.startswith("__"))
        raise DataError(f"no 'detection' array in the .mat file (keys: {keys})", path=str(path))
    det = np.asarray(mat["detection"])
    if det.size == 0:
        return np.zeros((0, 2), np.int64)
    if det.ndim != 2 or det.shape[1] != 2 or not np.issubdtype(det.dtype, np.number):
        raise DataError(f"'detection' must be an (n, 2) numeric array, got {det.shape} {det.dtype}", path=str(path))
    xy = det.astype(np.float64)
    if not np.all(np.isfinite(xy)):
        raise DataError("'detection' holds non-finite coordinates", path=str(path))
    h, w = image_shape
    outside = (xy[:, 0] < 0) | (xy[:, 0] > w + 1) | (xy[:, 1] < 0) | (xy[:, 1] > h + 1)
    if outside.any():
        i = int(np.flatnonzero(outside)[0])
        raise DataError(f"{int(outside.sum())} nucleus coordinate(s) outside the {h}x{w} image, first #{i} at "
                        f"(x, y) = ({xy[i, 0]:g}, {xy[i, 1]:g})", path=str(path))
    # 1-based MATLAB (x, y) -> 0-based (row, col); np.rint rounds half to even, like gmum's np.round
    rows = np.clip(np.rint(xy[:, 1]).astype(np.int64) - 1, 0, h - 1)
    cols = np.clip(np.rint(xy[:, 0]).astype(np.int64) - 1, 0, w - 1)
    return np.stack([rows, cols], axis=1)


def colon_bag(folder: str | Path, *, patch_size: int = COLON_PATCH_SIZE) -> PatchBag:
    """One ``img{i}`` folder as a bag of nucleus-centred patches, classes in :data:`COLON_CLASSES` order.

    Raises:
        DataError (naming the file): missing image or .mat, any bad file (:func:`read_rgb`,
        :func:`read_detections`), image smaller than a patch, or no nucleus annotated at all.
    """
    folder = Path(folder)
    stem = folder.name
    image_path = folder / f"{stem}.bmp"
    if not image_path.is_file():
        raise DataError(f"missing image {image_path.name} in the colon folder", path=str(folder))
    image = read_rgb(image_path)
    per_class = [read_detections(folder / f"{stem}_{c}.mat", image.shape[:2]) for c in COLON_CLASSES]
    centres = np.concatenate(per_class)
    if len(centres) == 0:
        raise DataError("no annotated nucleus in any of the four .mat files: the bag would be empty",
                        path=str(image_path))
    classes = np.repeat(np.arange(len(COLON_CLASSES)), [len(c) for c in per_class]).astype(np.int64)
    instance_labels = (classes == COLON_CLASSES.index(_POSITIVE_CLASS)).astype(np.int64)
    ps = centred_patches(image, centres, patch_size, path=str(image_path))
    return PatchBag(ps.patches, ps.coords, int(instance_labels.max()), stem, str(image_path),
                    instance_labels=instance_labels, centres=centres, nucleus_classes=classes)


def load_colon_crc(root: str | Path, *, patch_size: int = COLON_PATCH_SIZE) -> list[PatchBag]:
    """Every ``img{i}`` folder in ``root`` (the ``Classification`` folder), in numeric order of i, as patch bags.

    Entries not named ``img<digits>`` are ignored.

    Raises:
        DataError: ``root`` missing or holding no ``img{i}`` folder, or any bad folder (see :func:`colon_bag`).
    """
    root = Path(root)
    if not root.is_dir():
        raise DataError("colon Classification folder not found", path=str(root))
    folders = [p for p in root.iterdir() if p.is_dir() and _COLON_FOLDER.fullmatch(p.name)]
    if not folders:
        raise DataError("no img{i} folders in the colon Classification folder (empty folder?)", path=str(root))
    folders.sort(key=lambda p: int(_COLON_FOLDER.fullmatch(p.name).group(1)))
    return [colon_bag(f, patch_size=patch_size) for f in folders]
