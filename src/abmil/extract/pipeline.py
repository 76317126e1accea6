"""Slides to feature files: tissue, tiles, encoding, one TRIDENT-layout HDF5 per slide, resumable.

For each slide: the tissue mask on an overview (:mod:`.tissue`), the tile grid at the target scale kept where there
is tissue (:mod:`.tiling`), the QC picture and the tissue GeoJSON (:mod:`.qc`), then the tiles read and preprocessed
in worker processes (:mod:`.reader`) while the main process encodes the previous batches, and the features written
atomically (:mod:`.writer`). A slide whose file already holds the same resume key is skipped: the key hashes the
slide's content (its size and sampled blocks), the encoder and its weights, and every setting that changes a
number, so a slide killed half-way (no file, or a temporary one) is redone and a finished one is not.

    OUT/features/<slide_id>.h5    what ``abmil train --features OUT/features`` reads
    OUT/qc/<slide_id>.png         the overview, the tissue outline (green), the tiles (blue)
    OUT/tissue/<slide_id>.geojson the tissue as QuPath annotations
    OUT/summary.csv               slide_id, path, status (done / skipped / no tissue / error), tiles, message
"""
from __future__ import annotations

import contextlib
import csv
import dataclasses
import hashlib
import io
import json
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..errors import DataError
from ..io import write_text_atomic
from .encoders import Encoder
from .settings import ExtractSettings
from .tiling import TileGrid, level0_mpp, on_tissue, plan
from .tissue import tissue_mask
from .writer import KEY_ATTR, stored_key, write_features

#: Bumped when a change alters the numbers written for the same inputs (it is part of the resume key).
FORMAT_VERSION = 1
SUMMARY_COLUMNS = ("slide_id", "path", "status", "tiles", "message")


@dataclass
class SlideResult:
    slide_id: str
    path: str
    status: str
    tiles: int = 0
    message: str = ""
    seconds: float = 0.0


def slide_fingerprint(path: str | os.PathLike, blocks: int = 16, block: int = 1 << 20) -> str:
    """sha256 of the file's size and ``blocks`` evenly spaced ``block``-byte blocks (first and last included):
    a changed slide changes it, without reading gigabytes."""
    size = os.path.getsize(path)
    h = hashlib.sha256(str(size).encode())
    with open(path, "rb") as f:
        for k in range(blocks):
            f.seek(0 if blocks == 1 else (max(0, size - block) * k) // (blocks - 1))
            h.update(f.read(block))
    return h.hexdigest()


def resume_key(path: str | os.PathLike, encoder: Encoder, settings: ExtractSettings) -> str:
    parts = {"slide": slide_fingerprint(path), "encoder": encoder.name, "weights": encoder.weights,
             "preprocess": dataclasses.asdict(encoder.preprocess), "settings": dataclasses.asdict(settings),
             "format": FORMAT_VERSION}
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()


def detect(slide, settings: ExtractSettings) -> tuple[np.ndarray, np.ndarray, float, TileGrid]:
    """``(overview, mask, downsample, grid)``: the tissue mask of the overview and the tiles on it."""
    mpp0 = level0_mpp(slide.properties, settings.mpp_level0)
    if mpp0 is None:
        raise slide.error("no microns per pixel in the slide's properties (openslide.mpp-x): give --mpp-level0")
    overview, downsample = slide.overview(settings.overview)
    grid = plan(slide.dimensions, slide.level_downsamples, mpp0, settings.mpp, settings.patch_size,
                settings.overlap)
    mask = tissue_mask(overview, settings.tissue, (grid.patch_size_level0 / downsample) ** 2)
    return overview, mask, downsample, on_tissue(grid, mask, downsample, settings.min_tissue)


def encode_batch(encoder: Encoder, batch: torch.Tensor, device: torch.device, bf16: bool) -> np.ndarray:
    """(b, 3, s, s) preprocessed tiles → (b, dim) float32 features."""
    with torch.inference_mode():
        x = batch.to(device, non_blocking=True)
        ctx = torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
        with ctx:
            return encoder.model(x).float().cpu().numpy()


def encode_tiles(path: str, grid: TileGrid, encoder: Encoder, *, batch_size: int, workers: int,
                 device: torch.device, bf16: bool = False,
                 progress: Callable[[int], None] | None = None) -> np.ndarray:
    """(n_tiles, dim) float32 features of ``grid``'s tiles, in order; :class:`DataError` naming the slide if a tile
    cannot be read."""
    from torch.utils.data import DataLoader

    from .reader import TileBatches

    batches = TileBatches(path, grid, encoder.preprocess, batch_size)
    loader = DataLoader(batches, batch_size=None, shuffle=False, num_workers=workers,
                        prefetch_factor=2 if workers else None, pin_memory=device.type == "cuda")
    out = np.empty((len(grid.coords), encoder.dim), dtype=np.float32)
    row = 0
    for batch, error in loader:
        if error is not None:
            raise DataError(error)
        feats = encode_batch(encoder, batch, device, bf16)
        out[row:row + len(feats)] = feats
        row += len(feats)
        if progress is not None:
            progress(len(feats))
    return out


def file_attrs(grid: TileGrid, encoder: Encoder, settings: ExtractSettings, slide_id: str, key: str) -> dict:
    return {"patch_size": grid.patch_size, "patch_size_level0": grid.patch_size_level0,
            "target_magnification": round(grid.magnification, 4),
            "level0_magnification": round(10.0 / grid.mpp_level0, 4), "overlap": settings.overlap,
            "name": slide_id, "mpp": grid.mpp, "mpp_level0": grid.mpp_level0, "read_level": grid.level,
            "encoder": encoder.name, "encoder_weights": encoder.weights, KEY_ATTR: key}


def extract_slide(slide_id: str, path: str | os.PathLike, out: Path, encoder: Encoder, settings: ExtractSettings,
                  *, batch_size: int = 32, workers: int = 2, device: str | torch.device = "cpu",
                  bf16: bool = False, progress: Callable[[int], None] | None = None) -> SlideResult:
    """One slide → ``out/features/<slide_id>.h5`` (+ QC PNG, tissue GeoJSON); never raises for the slide's own
    faults (unreadable, no mpp, a corrupt tile): they come back as status "error" with the one-line message."""
    from ..slides.wsi import Slide
    from .qc import draw_tiles, write_png, write_tissue_geojson

    start = time.perf_counter()
    target = out / "features" / f"{slide_id}.h5"
    try:
        for stale in target.parent.glob(f".{target.name}.*.tmp"):  # a run killed while writing this slide's file
            stale.unlink()
        key = resume_key(path, encoder, settings)
        if target.is_file() and stored_key(target) == key:
            with _h5(target) as f:
                n = f["features"].shape[0]
            return SlideResult(slide_id, str(path), "skipped", n, "already extracted with these settings")
        with Slide(path) as slide:
            overview, mask, downsample, grid = detect(slide, settings)
        write_png(out / "qc" / f"{slide_id}.png",
                  draw_tiles(overview, mask, grid.coords, grid.patch_size_level0, downsample))
        write_tissue_geojson(out / "tissue" / f"{slide_id}.geojson", mask, downsample, slide_id)
        if len(grid.coords) == 0:
            return SlideResult(slide_id, str(path), "no tissue", 0, "no tile on tissue",
                               time.perf_counter() - start)
        features = encode_tiles(str(path), grid, encoder, batch_size=batch_size, workers=workers,
                                device=torch.device(device), bf16=bf16, progress=progress)
        write_features(target, features, grid.coords, file_attrs(grid, encoder, settings, slide_id, key))
    except (DataError, OSError) as e:
        message = str(e) if isinstance(e, DataError) else f"file {path}: {e}"
        return SlideResult(slide_id, str(path), "error", 0, message, time.perf_counter() - start)
    return SlideResult(slide_id, str(path), "done", len(grid.coords), "", time.perf_counter() - start)


@contextlib.contextmanager
def _h5(path):
    import h5py

    with h5py.File(path, "r") as f:
        yield f


def shard(items: Sequence, rank: int, world: int) -> list:
    """The ``rank``-th of ``world`` interleaved shares (``torchrun``: one process per device)."""
    return list(items[rank::world])


def write_summary(path: Path, results: Sequence[SlideResult]) -> None:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(SUMMARY_COLUMNS)
    for r in results:
        w.writerow([r.slide_id, r.path, r.status, r.tiles, r.message])
    write_text_atomic(path, buf.getvalue())


def extract_all(slides: Sequence[tuple[str, os.PathLike]], out: str | os.PathLike, encoder: Encoder,
                settings: ExtractSettings, *, batch_size: int = 32, workers: int = 2,
                device: str | torch.device = "cpu", bf16: bool = False, rank: int = 0, world: int = 1,
                log: Callable[[SlideResult], None] | None = None,
                progress: Callable[[int], None] | None = None) -> list[SlideResult]:
    """Every slide of this process's shard (:func:`shard`) through :func:`extract_slide`, in order; the summary
    CSV rewritten after each (``summary.csv``, or ``summary.rank<R>.csv`` under ``torchrun``); ``log`` gets each
    slide's result, ``progress`` the number of tiles of each encoded batch.
    :class:`DataError` with the first slide's message if no slide could be done at all."""
    out = Path(out)
    mine = shard(slides, rank, world)
    summary = out / ("summary.csv" if world == 1 else f"summary.rank{rank}.csv")
    encoder.model.to(torch.device(device))
    results: list[SlideResult] = []
    for slide_id, path in mine:
        result = extract_slide(slide_id, path, out, encoder, settings, batch_size=batch_size, workers=workers,
                               device=device, bf16=bf16, progress=progress)
        results.append(result)
        if any(r.status != "error" for r in results):  # a run that did nothing leaves nothing behind
            write_summary(summary, results)
        if log is not None:
            log(result)
    if results and all(r.status == "error" for r in results):
        raise DataError(results[0].message if len(results) == 1 else
                        f"no slide could be extracted ({len(results)} errors; see {summary}); first: "
                        f"{results[0].message}")
    return results
