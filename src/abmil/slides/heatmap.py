"""Attention heatmaps of slides under a trained run (``abmil heatmap``): one slide, or every slide of a manifest.

For each slide, from its feature file (``coords``) and, optionally, the slide image itself (read with OpenSlide,
:mod:`abmil.slides.wsi`):

    OUT/<slide>.png            the attention over an overview of the slide (``--max-size`` pixels on its longer
                               side, read from the pyramid level just above that size), or beside it
                               (``--layout side-by-side``); multi-class models add one map per class: each patch's
                               share ``a_k · (W_c h_k)`` of the class logit ``Σ_k a_k W_c h_k + b_c``; survival and
                               regression models each patch's signed share of the risk or prediction
    OUT/<slide>_topk.png       the K highest- and K lowest-attention patches, read from the slide at the patches'
    OUT/<slide>_tiles/         own level and size, as a captioned grid and as tiles ``top001_x<X>_y<Y>.png``
                               with ``index.csv`` (``--top-k K``)
    OUT/<slide>.geojson        the patches as QuPath detections with their attention as measurements (``--geojson``)

Everything of a slide is checked before anything of it is written, and every file is written atomically, the
heatmap PNG last: a slide whose PNG (and requested extras) exist is done, and a rerun skips it.
"""
from __future__ import annotations

import contextlib
import csv
import dataclasses
import io
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import DataError
from ..explain.heatmap import LAYOUTS, MAX_CANVAS_SIDE, paint_heatmap, paint_panels
from ..io import atomic_open, write_text_atomic
from .feature_files import FeatureFile
from .wsi import PatchGeometry, infer_patch_size, patch_geometry

__all__ = ["HeatmapOptions", "infer_patch_size", "manifest_heatmaps", "patch_size_of", "read_thumbnail",
           "render_slide", "slide_heatmap"]

#: Without a thumbnail, each patch is drawn this many pixels wide (the canvas is still bounded).
PATCH_PIXELS = 8
#: Tiles in the top-k grid are shown at most this many pixels wide.
GRID_TILE_PX = 160


@dataclass(frozen=True)
class HeatmapOptions:
    """What to draw for each slide (the ``abmil heatmap`` flags)."""

    max_size: int = 2048
    """Longer side of the slide overview, pixels."""
    layout: str = "overlay"
    """``overlay`` (colours over the slide) or ``side-by-side`` (the slide, then the map)."""
    tissue: bool = False
    """Draw the tissue outline (Otsu on the overview's saturation)."""
    top_k: int = 0
    """Save the K highest- and K lowest-attention patches (needs the slide image)."""
    geojson: bool = False
    """Write the patches as a QuPath GeoJSON."""
    normalise: str = "attention"
    """Colour scale (:func:`~abmil.explain.heatmap.normalise_scores`): ``attention`` (linear from 0: the raw weights),
    ``rank`` (percentile in the slide: half the patches always look hot) or ``minmax``."""
    cmap: str = "viridis"
    """matplotlib colour map: perceptually uniform by default (brightness follows the score)."""
    alpha: float = 0.5
    patch_size: int | None = None
    """Patch side in level-0 pixels, overriding the feature file's attributes."""
    mpp: float | None = None
    """The slide's microns per level-0 pixel, for feature files with coordinates in micrometres (STAMP) that record
    none; default: the slide image's (OpenSlide ``openslide.mpp-x``)."""

    def __post_init__(self):
        if self.layout not in LAYOUTS:
            raise ValueError(f"unknown layout {self.layout!r}: expected one of {', '.join(LAYOUTS)}")
        if self.max_size < 16:
            raise ValueError(f"--max-size must be >= 16 pixels, got {self.max_size}")
        if self.top_k < 0:
            raise ValueError(f"--top-k must be >= 0, got {self.top_k}")
        if self.patch_size is not None and self.patch_size < 1:
            raise ValueError(f"--patch-size must be >= 1, got {self.patch_size}")
        if self.mpp is not None and not (np.isfinite(self.mpp) and self.mpp > 0):
            raise ValueError(f"--mpp must be > 0 microns per pixel, got {self.mpp}")


def outputs(out: str | os.PathLike) -> dict[str, Path]:
    """The files of one slide's heatmap ``out`` (PNG): the PNG, the top-k grid and tiles folder, the GeoJSON."""
    out = Path(out)
    return {"png": out, "topk": out.with_name(out.stem + "_topk.png"), "tiles": out.with_name(out.stem + "_tiles"),
            "geojson": out.with_suffix(".geojson")}


def is_complete(out: str | os.PathLike, options: HeatmapOptions) -> bool:
    """Whether a slide's outputs are all there: the PNG a whole PNG, and the extras ``options`` ask for."""
    from PIL import Image

    files = outputs(out)
    try:
        with Image.open(files["png"]) as im:
            im.verify()
    except Exception:  # missing, truncated, not a PNG
        return False
    if options.top_k and not (files["topk"].is_file() and (files["tiles"] / "index.csv").is_file()):
        return False
    return not (options.geojson and not files["geojson"].is_file())


def patch_size_of(file: FeatureFile, coords: np.ndarray) -> int:
    """The patch side in level-0 pixels from the file's ``coords`` attributes (TRIDENT's ``patch_size_level0``,
    CLAM's ``patch_size`` at ``patch_level`` with its ``downsample``), else inferred from the grid."""
    geometry = patch_geometry(file.patch_attrs(), coords)
    if geometry is None:
        raise file.error("coords", "cannot infer the patch size from a single patch; give --patch-size")
    return geometry.size0


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


# ---------------------------------------------------------------------------------------------- checks
def read_coords(file: FeatureFile) -> np.ndarray:
    """A feature file's coords (n, 2) in level-0 pixels and nothing else; DataError naming why if it has none."""
    return file.coords()


@dataclass
class _Job:
    """One slide to paint: its features, its image (or None), where its PNG goes, its label if known."""

    file: FeatureFile
    image: Path | None
    out: Path
    label: int | None = None


def _models(run) -> list:
    """A loaded run, or a cross-validation run's fold models (:func:`abmil.slides.predict.load_models`), as a list."""
    return list(run) if isinstance(run, (list, tuple)) else [run]


def _check(job: _Job, run, options: HeatmapOptions) -> None:
    """Everything about a slide that can fail, from metadata and coordinates only, before anything is written."""
    from .predict import check_dim
    from .wsi import Slide, check_inside

    spec = _models(run)[0].spec
    if spec.instance_scores is None:
        pooling = _models(run)[0].info.get("config", {}).get("pooling")
        from ..nn.zoo import SLIDE_KEYS, model_spec

        scored = ", ".join(k for k in SLIDE_KEYS if model_spec(k).instance_scores)
        raise ValueError(f"the run was trained with --pooling {pooling}, which gives no per-patch scores to paint: "
                         f"heatmaps need a pooling with instance scores ({scored})")
    check_dim(_models(run)[0], job.file)
    job.file = job.file.with_mpp(options.mpp)  # coordinates in micrometres (STAMP): placed with the slide's mpp
    if job.image is None:
        coords = read_coords(job.file)
        if options.top_k:
            raise ValueError("--top-k reads the patches from the slide image: give --wsi (or --slides with "
                             "--manifest)")
        if patch_geometry(job.file.patch_attrs(), coords, patch_size=options.patch_size) is None:
            raise job.file.error("coords", "cannot infer the patch size from a single patch; give --patch-size")
        return
    with Slide(job.image) as slide:
        job.file = job.file.with_mpp(options.mpp or slide.mpp)
        coords = read_coords(job.file)
        check_inside(coords, slide, str(job.file.path))
        if patch_geometry(job.file.patch_attrs(), coords, slide, patch_size=options.patch_size) is None:
            raise job.file.error("coords", "cannot infer the patch size from a single patch; give --patch-size")


# ---------------------------------------------------------------------------------------------- scores
#: The first map's name for each kind of instance scores (:attr:`abmil.nn.zoo.ModelSpec.instance_scores`).
SCORE_NAMES = {"attention": "attention", "probability": "instance probability",
               "cls-attention": "class-token attention"}


def class_contributions(run, file: FeatureFile, attention: np.ndarray) -> np.ndarray:
    """(n, n_out): patch k's share ``a_k · W_c h_k`` of each class logit (``h_k`` the encoded patch, ``W`` the
    classifier): the logits are ``Σ_k`` of these plus the classifier's bias, exactly (the classifier is linear in
    the attention-pooled ``z = Σ_k a_k h_k``). One more streamed pass over the features."""
    import torch

    model = run.model
    weight = model.classifier.weight.detach()
    parts = []
    with torch.no_grad():
        for features, _ in file.iter_chunks(model.chunk_size or 65536):
            h = model.encoder(features.float().to(run.device))
            parts.append((h.to(weight.dtype) @ weight.T).double().cpu().numpy())
    return np.asarray(attention, dtype=np.float64)[:, None] * np.concatenate(parts)


def head_contributions(run, file: FeatureFile, attention: np.ndarray) -> tuple[str, np.ndarray]:
    """A survival or regression model's signed patch contributions, (n,), from :func:`class_contributions`:
    Cox: ``a_k · w h_k``, the patch's share of the log hazard ratio (the risk is their sum plus the bias);
    regression: ``sd · a_k · w h_k``, its share of the prediction in target units (the prediction is their sum plus
    ``mean + sd · bias``); discrete-time survival: the mean over the bins of ``a_k · W_b h_k``, its share of the mean
    hazard logit (higher: more hazard)."""
    return run.head.contributions(class_contributions(run, file, attention))


def _maps(run, file: FeatureFile, pred) -> list[tuple[str, np.ndarray]]:
    """The attention, and for one multi-class model each class's share of the logits, for one survival or regression
    model each patch's signed contribution (:func:`head_contributions`) (the fold models of an ensemble each attend
    differently: their mean attention alone)."""
    models = _models(run)
    kind = models[0].spec.instance_scores
    maps = [(SCORE_NAMES[kind], pred.instance_scores.astype(np.float64))]
    if kind != "attention":  # the shares of the task's maps split an attention-pooled z = Σ a_k h_k
        return maps
    if len(models) == 1:
        m = models[0]
        maps += m.head.patch_maps(lambda: class_contributions(m, file, pred.attention), m.classes)
    return maps


# ---------------------------------------------------------------------------------------------- one slide
def render_slide(run, features: str | os.PathLike | FeatureFile, out: str | os.PathLike, *,
                 wsi: str | os.PathLike | None = None, options: HeatmapOptions | None = None,
                 label: int | None = None) -> str:
    """One slide's heatmap PNG ``out`` (and the extras of ``options``) under a loaded run
    (:func:`abmil.slides.predict.load_run`, or a list of fold models: :func:`abmil.slides.predict.load_models`);
    ``wsi``: the slide image (OpenSlide) or None for a white canvas.
    Checked before anything is written; returns a one-line summary."""
    if not isinstance(features, FeatureFile):
        features = FeatureFile(Path(features), Path(features).stem)
    job = _Job(features, Path(wsi) if wsi is not None else None, Path(out), label)
    options = options or HeatmapOptions()
    _check(job, run, options)
    return _render(run, job, options)


def _render(run, job: _Job, options: HeatmapOptions, *, thumbnail: np.ndarray | None = None,
            downsample: float | tuple[float, float] | None = None) -> str:
    from .predict import ensemble_head, predict_file
    from .wsi import Slide, outline, tissue_mask

    pred = predict_file(_models(run), job.file, job.label)
    classes = _models(run)[0].classes
    head = ensemble_head(_models(run))
    coords = np.asarray(pred.coords)
    attrs = job.file.patch_attrs()
    title = f"{job.file.slide_id}: {head.summary(pred.probabilities, classes)}"
    title += head.title_label(job.label, classes)
    maps = _maps(run, job.file, pred)
    files = outputs(job.out)

    mpp = None
    with (Slide(job.image) if job.image is not None else contextlib.nullcontext()) as slide:
        geometry = patch_geometry(attrs, coords, slide, patch_size=options.patch_size)
        size0 = geometry.size0
        if slide is not None:
            image, _ = slide.overview(options.max_size)
            mpp = _mpp(slide.properties)
            # each axis rounded to whole pixels on its own: the y scale is not the x scale
            downsample = (slide.dimensions[0] / image.shape[1], slide.dimensions[1] / image.shape[0])
        elif thumbnail is not None:
            image = thumbnail
        else:
            image = None
        if options.top_k and slide is not None:
            write_top_k(slide, coords, pred.instance_scores, geometry, options.top_k, files["tiles"], files["topk"],
                        title=job.file.slide_id)
    if options.geojson:
        write_patches_geojson(files["geojson"], coords, size0, maps, name=job.file.slide_id,
                              logits=pred.attention_logits)

    if job.image is None and len(maps) == 1 and options.layout == "overlay" and not options.tissue:
        # a thumbnail or a white canvas, one map: the single-panel layout of paint_heatmap
        paint_heatmap(pred.instance_scores, coords, size0, job.out, image=image,
                      downsample=downsample if downsample is not None else max(size0 / PATCH_PIXELS, 1e-9),
                      title=title, normalise=options.normalise, alpha=options.alpha, cmap=options.cmap)
    else:
        shape = None
        if image is None:  # white canvas just covering the patches
            extent = coords.max(axis=0) + size0
            downsample = max(size0 / PATCH_PIXELS, float(extent.max()) / min(options.max_size, MAX_CANVAS_SIDE))
            shape = (max(1, int(np.ceil(extent[1] / downsample))), max(1, int(np.ceil(extent[0] / downsample))))
        contour = None
        if options.tissue and image is not None:
            contour = outline(tissue_mask(image), width=max(1, max(image.shape[:2]) // 500))
        paint_panels(maps, coords, size0, job.out, image=image, shape=shape, downsample=downsample,
                     layout=options.layout, title=title, alpha=options.alpha, normalise=options.normalise,
                     score_label="score", outline=contour, cmap=options.cmap, mpp=mpp)
    return f"{title}; {len(coords)} patches of {size0} px"


def _mpp(properties: dict) -> float | None:
    """µm per level-0 pixel along x (``openslide.mpp-x``), None where the slide does not say."""
    try:
        mpp = float(properties.get("openslide.mpp-x", "nan"))
    except ValueError:
        return None
    return mpp if mpp > 0 and np.isfinite(mpp) else None


def slide_heatmap(run_dir: str | os.PathLike, slide_file: str | os.PathLike, out: str | os.PathLike, *,
                  thumbnail: str | os.PathLike | None = None, downsample: float | None = None,
                  patch_size: int | None = None, device: str = "cpu", normalise: str = "attention",
                  wsi: str | os.PathLike | None = None, options: HeatmapOptions | None = None) -> str:
    """Paint the attention of ``run_dir``'s model on one slide's patches; returns a one-line summary.

    Args:
        run_dir: an ``abmil train`` run (a cross-validation run: the mean attention of its fold models).
        slide_file: the slide's ``.h5`` features with ``coords``.
        out: PNG path (extras beside it: see :func:`outputs`).
        thumbnail: background image of the slide; needs ``downsample``.
        downsample: level-0 pixels per thumbnail pixel; default without thumbnail: patch_size / 8.
        patch_size: patch side in level-0 pixels; default: from the file (see :func:`abmil.slides.wsi.patch_geometry`).
        normalise: colour scale of :func:`abmil.explain.heatmap.normalise_scores`.
        wsi: the slide image itself (OpenSlide), instead of a thumbnail.
        options: layout, size, top-k, GeoJSON... (:class:`HeatmapOptions`); ``patch_size`` and ``normalise``
            override its fields.
    """
    from .predict import load_models

    if thumbnail is not None and wsi is not None:
        raise ValueError("give either --thumbnail or --wsi, not both")
    if thumbnail is not None and downsample is None:
        raise ValueError("--thumbnail needs --downsample (level-0 pixels per thumbnail pixel)")
    if downsample is not None and downsample <= 0:
        raise ValueError(f"--downsample must be > 0, got {downsample}")
    options = options or HeatmapOptions()
    options = dataclasses.replace(options, normalise=normalise,
                                  patch_size=patch_size if patch_size is not None else options.patch_size)
    path = Path(slide_file)
    file = FeatureFile(path, path.stem)
    job = _Job(file, Path(wsi) if wsi is not None else None, Path(out))
    image = read_thumbnail(thumbnail) if thumbnail is not None else None
    run = load_models(run_dir, device)
    _check(job, run, options)
    summary = _render(run, job, options, thumbnail=image, downsample=downsample)
    return f"wrote {out} ({summary})"


# ---------------------------------------------------------------------------------------------- a manifest
def manifest_heatmaps(run_dir: str | os.PathLike, manifest: str | os.PathLike, out_dir: str | os.PathLike, *,
                      features_dir: str | os.PathLike | None = None, slides_dir: str | os.PathLike | None = None,
                      options: HeatmapOptions | None = None, device: str = "cpu", progress: bool = True,
                      skip_unreadable: bool = False) -> str:
    """A heatmap (and the extras ``options`` ask for) for every slide of ``manifest``, into ``out_dir``.

    Feature files are found as ``abmil predict`` finds them (``features_dir``, default the manifest's folder, or the
    ``path`` column); slide images as ``slides_dir/<slide_id>.svs`` (or another OpenSlide suffix,
    :data:`abmil.slides.wsi.SLIDE_SUFFIXES`). Every slide is checked first (files present, images readable,
    coordinates inside the image); slides already done (:func:`is_complete`) are skipped.

    ``skip_unreadable``: a slide that fails (its image missing or unreadable, a corrupt tile, coordinates outside
    it, a bad feature file: any :class:`~abmil.errors.DataError` of that slide, in the checks or while painting)
    is left out, named in the returned text with its reason, and the others are painted; a rerun retries it. Else
    the first failure stops the batch (one error; nothing is written when a check finds it)."""
    from tqdm.auto import tqdm

    from .features import FeatureBagDataset
    from .predict import load_models
    from .wsi import SLIDE_SUFFIXES, find_slide

    options = options or HeatmapOptions()
    if options.top_k and slides_dir is None:
        raise ValueError("--top-k reads the patches from the slide images: give --slides DIR")
    run = load_models(run_dir, device)
    dataset = FeatureBagDataset(manifest, features_dir, classes=run[0].classes, require_labels=False,
                                task=type(run[0].head))
    out_dir = Path(out_dir)
    jobs, failed = [], {}

    def skip(job: _Job, error: DataError) -> bool:
        if not skip_unreadable:
            raise error
        failed[job.file.slide_id] = " ".join(str(error).split())
        return False

    def attempt(job: _Job, step: Callable[[_Job], object]) -> bool:
        try:
            step(job)
            return True
        except DataError as e:
            return skip(job, e)

    for file, label, outcome in zip(dataset.files, dataset.labels, dataset.outcomes):
        label = run[0].head.truth(label, outcome)  # the title's truth: the class, or the task's outcome
        job = _Job(file, None, out_dir / f"{file.slide_id}.png", label)
        if slides_dir is not None:
            job.image = find_slide(slides_dir, file.slide_id)
            if job.image is None:
                skip(job, DataError(f"no slide image {file.slide_id}{{{','.join(SLIDE_SUFFIXES)}}} in {slides_dir}",
                                    path=os.fspath(manifest), bag=file.slide_id))
                continue
        jobs.append(job)
    pending = [job for job in jobs if not is_complete(job.out, options)]
    done = len(jobs) - len(pending)
    # no progress bar: an error must stay the one line on stderr
    todo = [job for job in pending if attempt(job, lambda j: _check(j, run, options))]
    painted = [job for job in tqdm(todo, desc="heatmaps", unit="slide", disable=not progress)
               if attempt(job, lambda j: _render(run, j, options))]
    text = f"wrote {len(painted)} heatmap(s) to {out_dir}" + (f" ({done} already there)" if done else "")
    if failed:
        text += (f"; skipped {len(failed)} slide(s) that failed (rerun to retry them): "
                 + "; ".join(f"{sid}: {why}" for sid, why in failed.items()))
    return text


# ---------------------------------------------------------------------------------------------- extras
def write_patches_geojson(path: Path, coords: np.ndarray, size0: int, maps: list[tuple[str, np.ndarray]], *,
                          name: str, logits: np.ndarray | None = None) -> None:
    """The patches as QuPath detections, measurements: the attention, its rank percentile, its logit and each
    class's share of its logit (multi-class)."""
    from ..explain.geojson import patch_feature_collection, write_geojson
    from ..explain.heatmap import normalise_scores

    attention = maps[0][1]
    measurements = {"attention": attention, "attention percentile": normalise_scores(attention, "rank")}
    if logits is not None:
        measurements["attention logit"] = logits
    for label, values in maps[1:]:
        measurements[label] = values
    write_geojson(path, patch_feature_collection(coords, size0, measurements, name=name))


def _tile_name(kind: str, rank: int, x: int, y: int) -> str:
    return f"{kind}{rank:03d}_x{x}_y{y}.png"


def write_top_k(slide, coords: np.ndarray, attention: np.ndarray, geometry: PatchGeometry, k: int,
                tiles_dir: Path, grid_png: Path, *, title: str = "") -> list[dict]:
    """The ``k`` highest- and ``k`` lowest-attention patches, read from ``slide`` at ``geometry.level`` and
    ``geometry.read_size`` (the level and size they were cut at): one PNG each in ``tiles_dir``
    (``top001_x<X>_y<Y>.png``, level-0 corner in the name; ``bottom001`` the lowest), ``tiles_dir/index.csv``
    (kind, rank, patch row, x, y, level, size, attention, percentile, file), and a captioned grid at ``grid_png``.
    The folder is filled under a temporary name and renamed when complete. Returns the index rows."""
    from PIL import Image

    from ..explain.heatmap import normalise_scores

    attention = np.asarray(attention, dtype=np.float64)
    k = min(k, attention.size)
    percentile = normalise_scores(attention, "rank")
    order = np.argsort(-attention, kind="stable")
    picks = [("top", order[:k]), ("bottom", np.argsort(attention, kind="stable")[:k])]
    tmp = tiles_dir.with_name(f".{tiles_dir.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    rows, tiles = [], []
    try:
        for kind, indices in picks:
            for rank, i in enumerate(indices, start=1):
                x, y = int(coords[i, 0]), int(coords[i, 1])
                tile = slide.read_region(x, y, geometry.level, geometry.read_size, geometry.read_size)
                name = _tile_name(kind, rank, x, y)
                Image.fromarray(tile).save(tmp / name)
                tiles.append((kind, rank, tile, float(attention[i]), x, y))
                rows.append({"kind": kind, "rank": rank, "patch": int(i), "x": x, "y": y, "level": geometry.level,
                             "size": geometry.read_size, "size_level0": geometry.size0,
                             "attention": f"{attention[i]:.6g}", "percentile": f"{percentile[i]:.6f}", "file": name})
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=list(rows[0]), lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
        write_text_atomic(tmp / "index.csv", buf.getvalue())
        if tiles_dir.exists():
            shutil.rmtree(tiles_dir)
        os.replace(tmp, tiles_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _tile_grid(tiles, k, grid_png, title)
    return rows


def _tile_grid(tiles: list[tuple], k: int, out: Path, title: str) -> None:
    """Two rows (top k, bottom k) of tiles with their attention and coordinates as captions."""
    from ..explain.heatmap import _pyplot

    plt = _pyplot()
    cell = GRID_TILE_PX / 100 + 0.1
    fig, axes = plt.subplots(2, k, figsize=(max(k * cell, 3.0), 2 * (cell + 0.45) + 0.3), dpi=100, squeeze=False)
    try:
        for ax in axes.ravel():
            ax.set_axis_off()
        for kind, rank, tile, value, x, y in tiles:
            ax = axes[0 if kind == "top" else 1, rank - 1]
            ax.imshow(tile, interpolation="lanczos" if tile.shape[0] > GRID_TILE_PX else "nearest")
            ax.set_title(f"{'top' if kind == 'top' else 'low'} {rank}: a={value:.3g}\n({x}, {y})", fontsize=7)
        fig.suptitle(f"{title}: top {k} and bottom {k} patches by attention" if title else "", fontsize=9)
        fig.tight_layout()
        with atomic_open(out, "wb") as f:
            fig.savefig(f, format="png", dpi=100)
    finally:
        plt.close(fig)
