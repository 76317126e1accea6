"""An H&E image → patches → a trained patch-CNN model → a heatmap PNG of attention or instance probabilities.

Patches are cut the way the model was trained: a 32x32 (or the model's size) grid with background dropped
(:func:`abmil.data.patches.grid_patches`), or, for a Warwick colon image whose four ``img{i}_{class}.mat`` files lie
beside it, windows centred on every annotated nucleus (:func:`abmil.data.histology.colon_bag`). Attention models
are painted by their attention weights, Instance+ models by their instance probabilities (Embedding+max/mean have
no per-patch score and are refused). Painting is :func:`abmil.explain.heatmap.paint_heatmap`; with ``markers``, the
epithelial nuclei of a colon image are drawn on top as small circles, so one can see whether high attention sits on
them (the colon task's positive instances).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from abmil.data.histology import COLON_CLASSES, PatchBag, breast_label, colon_bag, read_rgb
from abmil.data.patches import BREAST_PATCH_SIZE, MAX_WHITE_FRACTION, grid_patches, patches_to_tensor
from abmil.errors import DataError
from abmil.explain.heatmap import heatmap_layout, paint_heatmap
from abmil.io import atomic_open
from abmil.nn.models import MILOutput

__all__ = ["ImageHeatmap", "PATCH_MODES", "annotated_folder", "heatmap_for_image", "image_bag", "patch_scores"]

PATCH_MODES = ("auto", "grid", "nuclei")
MARKER_RADIUS = 3  # PNG pixels; a 27x27 colon patch is 27 px wide at downsample 1
_EPITHELIAL = COLON_CLASSES.index("epithelial")


@dataclass
class ImageHeatmap:
    """What :func:`heatmap_for_image` computed and painted.

    Attributes:
        prob: the model's P(positive) for the whole image as one bag.
        scores: (n,) per-patch scores painted (attention weights sum to 1; or instance probabilities).
        score_kind: "attention" or "instance probability".
        coords: (n, 2) int64 top-left (row, col) of each patch.
        patch_size: side of the patches.
        bag: the image's :class:`PatchBag` (instance labels and nucleus centres for an annotated colon image).
        out: the PNG written.
    """

    prob: float
    scores: np.ndarray
    score_kind: str
    coords: np.ndarray
    patch_size: int
    bag: PatchBag
    out: Path


def annotated_folder(image_path: str | Path) -> bool:
    """Does ``image_path`` sit in a Warwick ``img{i}`` folder with all four ``img{i}_{class}.mat`` files?"""
    p = Path(image_path)
    stem = p.parent.name
    return p.stem == stem and all((p.parent / f"{stem}_{c}.mat").is_file() for c in COLON_CLASSES)


def image_bag(image_path: str | Path, patch_size: int, mode: str = "auto", *,
              max_white_fraction: float | None = MAX_WHITE_FRACTION) -> PatchBag:
    """Cut one image into the bag a model sees: nucleus-centred windows or a background-filtered grid.

    ``mode``: "nuclei" (needs :func:`annotated_folder`), "grid", or "auto" (nuclei when annotated, else grid).
    A grid bag's label is read from a UCSB file name (benign / malignant), else -1 (unknown).

    Raises:
        DataError (naming the file): unreadable image, smaller than a patch, no annotations for "nuclei", ...
    """
    if mode not in PATCH_MODES:
        raise ValueError(f"mode must be one of {', '.join(PATCH_MODES)}, got {mode!r}")
    path = Path(image_path)
    if mode == "nuclei" or (mode == "auto" and annotated_folder(path)):
        if not annotated_folder(path):
            raise DataError("nucleus patches need the img{i}_{class}.mat files beside the image "
                            "(Warwick Classification layout)", path=str(path))
        return colon_bag(path.parent, patch_size=patch_size)
    ps = grid_patches(read_rgb(path), patch_size, max_white_fraction=max_white_fraction, path=str(path))
    try:
        label = breast_label(path)  # a UCSB file name says benign / malignant
    except DataError:
        label = -1
    return PatchBag(ps.patches, ps.coords, label, path.stem, str(path))


@torch.no_grad()
def patch_scores(model: nn.Module, patches: np.ndarray) -> tuple[float, np.ndarray, str]:
    """Run ``model`` on one bag of uint8 patches (n, 3, s, s): (P(positive), (n,) scores, score kind), the scores
    being attention weights (kind "attention", summing to 1) or instance probabilities ("instance probability")."""
    model.eval()
    x = patches_to_tensor(patches)
    out: MILOutput = model(x, torch.zeros(x.shape[0], dtype=torch.long), 1)
    if out.weights is not None:
        return float(out.prob[0]), out.weights.double().numpy(), "attention"
    if out.instance_prob is not None:
        return float(out.prob[0]), out.instance_prob.double().numpy(), "instance probability"
    raise ValueError(f"{type(model).__name__} with {type(getattr(model, 'pool', None)).__name__} gives no "
                     "per-patch score to paint (use an attention or Instance+ model)")


def _draw_markers(png_path: Path, centres: np.ndarray, layout, downsample: float) -> None:
    """Circle each (row, col) image pixel in ``centres`` on the PNG painted by paint_heatmap, found through its
    documented layout (image pixel (col, row) starts at PNG pixel (zoom * col, top + zoom * row))."""
    from PIL import Image, ImageDraw

    with Image.open(png_path) as im:
        canvas = im.convert("RGB")
    draw = ImageDraw.Draw(canvas)
    zoom = getattr(layout, "zoom", 1)
    r = MARKER_RADIUS * zoom
    for row, col in np.asarray(centres, dtype=np.float64):
        x = int((col + 0.5) / downsample * zoom)
        y = layout.top + int((row + 0.5) / downsample * zoom)
        draw.ellipse((x - r, y - r, x + r, y + r), outline=(255, 255, 255), width=1)
        draw.point((x, y), fill=(0, 0, 0))
    with atomic_open(png_path, "wb") as f:
        canvas.save(f, format="PNG")


def heatmap_for_image(
    model: nn.Module,
    image_path: str | Path,
    out: str | Path,
    *,
    patch_size: int | None = None,
    mode: str = "auto",
    markers: bool = True,
    downsample: float = 1.0,
    title: str | None = None,
    model_name: str | None = None,
    normalise: str | None = None,
    alpha: float = 0.5,
    max_white_fraction: float | None = MAX_WHITE_FRACTION,
) -> ImageHeatmap:
    """Cut ``image_path`` into patches, run ``model`` on them as one bag, and paint the per-patch scores.

    Args:
        model: a trained histology model (:func:`abmil.nn.zoo.histology_model`): attention/gated or Instance+.
        image_path: an RGB image (UCSB ``.tif``, Warwick ``img{i}.bmp``, any Pillow-readable file).
        out: the PNG to write (atomically).
        patch_size: default the model's (``model.encoder.patch_size``), else 32.
        mode: how to cut (:func:`image_bag`).
        markers: circle the epithelial nuclei (annotated colon images only; ignored otherwise).
        downsample: image pixels per PNG pixel (2 halves the PNG's size).
        title: default says the model's P(positive) and, when known, the image's label.
        model_name: named in the default title ("gated: img67: P(positive) = ...").
        normalise: colour scale (:func:`abmil.explain.heatmap.normalise_scores`); default "minmax" for attention
            (the paper rescales a_k to [0, 1] for its Fig. 5; min-max is the common reading) and "none" for
            instance probabilities (already in [0, 1]).
        alpha: opacity of the colours.
        max_white_fraction: grid cuts only: the background rule the model was trained with (:func:`image_bag`).
    """
    if isinstance(downsample, bool) or not isinstance(downsample, (int, float)) or not math.isfinite(downsample) \
            or downsample <= 0:
        raise ValueError(f"downsample must be a finite number > 0, got {downsample!r}")
    if patch_size is None:
        patch_size = int(getattr(getattr(model, "encoder", None), "patch_size", BREAST_PATCH_SIZE))
    bag = image_bag(image_path, patch_size, mode, max_white_fraction=max_white_fraction)
    prob, scores, kind = patch_scores(model, bag.patches)
    if normalise is None:
        normalise = "minmax" if kind == "attention" else "none"
    if title is None:
        label = {0: "negative", 1: "positive"}.get(bag.label)
        title = f"{bag.bag_id}: P(positive) = {prob:.3f}" + (f", label {label}" if label else "")
        if model_name:
            title = f"{model_name}: {title}"
        if markers and bag.nucleus_classes is not None:
            title += "; circles = epithelial nuclei"
    out = Path(out)
    image = read_rgb(bag.path)
    if downsample != 1.0:
        from PIL import Image

        size = (max(1, round(image.shape[1] / downsample)), max(1, round(image.shape[0] / downsample)))
        image = np.asarray(Image.fromarray(image).resize(size, Image.BILINEAR))
    xy = bag.coords[:, ::-1]  # (row, col) -> paint_heatmap's (x, y)
    paint_heatmap(scores, xy, patch_size, out, image=image, downsample=downsample, title=title, alpha=alpha,
                  score_label=kind, normalise=normalise)
    if markers and bag.nucleus_classes is not None:
        layout = heatmap_layout(xy, patch_size, image_shape=image.shape[:2], downsample=downsample, title=title)
        _draw_markers(out, bag.centres[bag.nucleus_classes == _EPITHELIAL], layout, downsample)
    return ImageHeatmap(prob, scores, kind, bag.coords, patch_size, bag, out)
