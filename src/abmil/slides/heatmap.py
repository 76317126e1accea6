"""The attention heatmap of one slide under a trained run (``abmil heatmap``)."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ..errors import DataError
from ..explain.heatmap import paint_heatmap
from .feature_files import FeatureFile

#: Without a thumbnail, each patch is drawn this many pixels wide (the canvas is still bounded).
PATCH_PIXELS = 8


def infer_patch_size(coords: np.ndarray) -> int | None:
    """The patch side in level-0 pixels from a patch grid: the smallest positive step between
    distinct x (or y) corners. None for a single patch. ``coords`` (n, 2)."""
    steps = []
    for axis in (0, 1):
        values = np.unique(coords[:, axis])
        if values.size > 1:
            steps.append(int(np.diff(values).min()))
    return min(steps) if steps else None


def patch_size_of(file: FeatureFile, coords: np.ndarray) -> int:
    """TRIDENT's ``coords.attrs['patch_size_level0']`` if written, else inferred from the grid."""
    attrs = file.attrs().get("coords", {})
    if "patch_size_level0" in attrs:
        return int(attrs["patch_size_level0"])
    size = infer_patch_size(coords)
    if size is None:
        raise file.error("coords", "cannot infer the patch size from a single patch; give --patch-size")
    return size


def read_thumbnail(path: str | os.PathLike) -> np.ndarray:
    """An image file as (H, W, 3) uint8."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            return np.asarray(im.convert("RGB"))
    except FileNotFoundError:
        raise DataError("thumbnail not found", path=os.fspath(path)) from None
    except (UnidentifiedImageError, OSError) as e:
        raise DataError(f"not a readable image ({e})", path=os.fspath(path)) from None


def slide_heatmap(run_dir: str | os.PathLike, slide_file: str | os.PathLike, out: str | os.PathLike, *,
                  thumbnail: str | os.PathLike | None = None, downsample: float | None = None,
                  patch_size: int | None = None, device: str = "cpu", normalise: str = "rank") -> str:
    """Paint the attention of ``run_dir``'s model on one slide's patches; returns a one-line summary.

    Args:
        run_dir: an ``abmil train`` run (a cross-validation run: the mean attention of its fold models).
        slide_file: the slide's ``.h5`` features with ``coords``.
        out: PNG path.
        thumbnail: background image of the slide; needs ``downsample``.
        downsample: level-0 pixels per thumbnail pixel; default without thumbnail: patch_size / 8.
        patch_size: patch side in level-0 pixels; default: from the file (see :func:`patch_size_of`).
        normalise: colour scale of :func:`abmil.explain.heatmap.normalise_scores`.
    """
    from .predict import load_models, predict_file

    if thumbnail is not None and downsample is None:
        raise ValueError("--thumbnail needs --downsample (level-0 pixels per thumbnail pixel)")
    if downsample is not None and downsample <= 0:
        raise ValueError(f"--downsample must be > 0, got {downsample}")
    path = Path(slide_file)
    file = FeatureFile(path, path.stem)
    if not file.is_h5:
        raise file.error("coords", "a heatmap needs patch coordinates: give the slide's .h5 file")
    image = read_thumbnail(thumbnail) if thumbnail is not None else None
    runs = load_models(run_dir, device)
    run = runs[0]
    pred = predict_file(runs, file)
    if pred.coords is None:
        raise file.error("coords", "no 'coords' dataset: a heatmap needs patch coordinates")
    size = patch_size or patch_size_of(file, pred.coords)
    k = int(np.argmax(pred.probabilities))
    title = f"{file.slide_id}: {run.classes[k]} ({pred.probabilities[k]:.2f})"
    paint_heatmap(pred.attention, pred.coords, size, out, image=image,
                  downsample=downsample if downsample is not None else max(size / PATCH_PIXELS, 1e-9),
                  title=title, normalise=normalise)
    return f"wrote {out} ({title}; {len(pred.attention)} patches of {size} px)"
