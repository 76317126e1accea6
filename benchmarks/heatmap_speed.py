"""Heatmap of a 100k-patch slide: the vectorised painting against the per-patch loop it replaced.

    python benchmarks/heatmap_speed.py [--patches 100000] [--max-size 2048] [--repeats 3]

A grid of patches (256 level-0 pixels, 400 columns: a 102,400 x 64,000 slide) with random attention, painted over a
grey overview of ``--max-size`` pixels. Timed, best of ``--repeats`` after one warm-up call (imports, colour maps):

- rasterise: the squares into the canvas (vectorised difference arrays, :func:`abmil.explain.heatmap.rasterise`,
  against the loop of one slice assignment per patch, :func:`abmil.explain.heatmap.rasterise_loop`);
- rank: the rank percentiles (numpy sort against scipy.stats.rankdata, as before);
- PNG: the whole heatmap written (:func:`paint_panels`, one panel), and the previous pipeline rebuilt from its parts
  (scipy ranks, the loop, matplotlib colour map on floats, imshow, savefig);
- GeoJSON: the QuPath file of all patches.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from abmil.explain.geojson import patch_feature_collection, write_geojson  # noqa: E402
from abmil.explain.heatmap import (  # noqa: E402
    _pyplot,
    average_ranks,
    paint_panels,
    rasterise,
    rasterise_loop,
)


def best(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def previous_png(scores, coords, size, image, down, out) -> None:
    """The pipeline before: scipy ranks, one slice per patch, float colour map, imshow into axes, savefig."""
    from scipy.stats import rankdata

    plt = _pyplot()
    values = (rankdata(scores) - 1) / (len(scores) - 1)
    h, w = image.shape[:2]
    grid = rasterise_loop(values, coords, size, (h, w), down)
    background = image.astype(np.float32) / 255
    covered = ~np.isnan(grid)
    blended = background.copy()
    blended[covered] = 0.5 * background[covered] + 0.5 * plt.get_cmap("jet")(grid[covered])[:, :3]
    fig = plt.figure(figsize=((w + 90) / 100, (h + 28) / 100), dpi=100)
    ax = fig.add_axes((0, 0, w / (w + 90), h / (h + 28)))
    ax.imshow(blended, interpolation="nearest", aspect="auto")
    ax.set_axis_off()
    fig.colorbar(plt.cm.ScalarMappable(cmap="jet"), cax=fig.add_axes((0.95, 0.05, 0.01, 0.8)))
    fig.savefig(out, format="png", dpi=100)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--patches", type=int, default=100_000)
    parser.add_argument("--max-size", type=int, default=2048)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    n, cols, size = args.patches, 400, 256
    k = np.arange(n)
    coords = np.stack([(k % cols) * size, (k // cols) * size], 1)
    scores = np.random.default_rng(0).dirichlet(np.ones(n))  # attention weights, summing to 1
    extent = coords.max(axis=0) + size
    down = float(extent.max()) / args.max_size
    h, w = int(np.ceil(extent[1] / down)), int(np.ceil(extent[0] / down))
    image = np.full((h, w, 3), 200, np.uint8)
    values = average_ranks(scores) / n
    print(f"{n} patches of {size} px, slide {extent[0]} x {extent[1]}, canvas {w} x {h} (downsample {down:.1f}); "
          f"best of {args.repeats}, {os.cpu_count()} CPUs")

    with tempfile.TemporaryDirectory() as tmp:
        png, old_png, gj = Path(tmp) / "new.png", Path(tmp) / "old.png", Path(tmp) / "p.geojson"
        rows = [
            ("rasterise", lambda: rasterise(values, coords, size, (h, w), down),
             lambda: rasterise_loop(values, coords, size, (h, w), down)),
            ("rank", lambda: average_ranks(scores), lambda: __import__("scipy.stats").stats.rankdata(scores)),
            ("PNG (whole heatmap)", lambda: paint_panels([("attention", scores)], coords, size, png, image=image,
                                                          downsample=down),
             lambda: previous_png(scores, coords, size, image, down, old_png)),
            ("GeoJSON", lambda: write_geojson(gj, patch_feature_collection(coords, size, {"attention": scores})),
             None),
        ]
        print(f"{'step':<22}{'now (s)':>10}{'before (s)':>12}{'speed-up':>10}")
        for name, new, old in rows:
            t_new = best(new, args.repeats)
            if old is None:
                print(f"{name:<22}{t_new:>10.3f}{'-':>12}{'-':>10}")
                continue
            t_old = best(old, args.repeats)
            print(f"{name:<22}{t_new:>10.3f}{t_old:>12.3f}{t_old / t_new:>9.1f}x")
        print(f"GeoJSON size {gj.stat().st_size / 1e6:.1f} MB")


if __name__ == "__main__":
    main()
