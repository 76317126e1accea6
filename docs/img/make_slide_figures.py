"""The README's slide heatmap figures, from the shipped H&E image (abmil/data/files/cmu1_small_region_he.jpg).

    python docs/img/make_slide_figures.py        # needs the slides extra and tifffile (both in the test extra)

The image is written as a 3-level tiled pyramidal TIFF (as tests/slide_image_helpers.py does) and opened by OpenSlide;
tissue patches of 64 level-0 pixels (CLAM attributes: patch_size 32 at patch_level 1) get a 16-number "feature":
feature 0 is the patch's fraction of dark, haematoxylin-blue pixels (nuclei), the rest zero. A tiny run is trained
on random bags only to have a checkpoint, and its weights are then set so that the attention logit is 6 tanh(feature 0):
attention on nucleus-dense patches. A demonstration of the drawing, not of a trained model."""
from __future__ import annotations

import shutil
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path[:0] = [str(ROOT / "src"), str(ROOT / "tests")]

import abmil  # noqa: E402, F401 - before torch: it sets OMP_WAIT_POLICY=PASSIVE while that still counts

# isort: split
import h5py  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from abmil.cli import main  # noqa: E402
from abmil.errors import MissingDependency, optional_import  # noqa: E402

try:  # before any work: a missing package is one line naming the install, not a traceback halfway
    optional_import("openslide", "slides", "reading the pyramidal TIFF")
    optional_import("tifffile", "test", "writing the pyramidal TIFF", package="tifffile")
except MissingDependency as e:
    print(f"make_slide_figures.py: error: {e}", file=sys.stderr)
    sys.exit(2)
from abmil.slides.heatmap import HeatmapOptions, render_slide  # noqa: E402
from abmil.slides.predict import load_run  # noqa: E402
from abmil.slides.wsi import tissue_mask  # noqa: E402
from slide_image_helpers import he_image, write_pyramidal_tiff  # noqa: E402

DIM, P0 = 16, 64


def patch_features(image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    h, w = image.shape[:2]
    tissue = tissue_mask(image)
    rgb = image.astype(np.int16)
    nuclei = (rgb.sum(axis=2) < 330) & (rgb[:, :, 2] > rgb[:, :, 0] - 20)
    coords, feats = [], []
    for y in range(0, h - P0 + 1, P0):
        for x in range(0, w - P0 + 1, P0):
            if tissue[y:y + P0, x:x + P0].mean() < 0.3:
                continue
            f = np.zeros(DIM, np.float32)
            f[0] = 4.0 * nuclei[y:y + P0, x:x + P0].mean()
            coords.append((x, y))
            feats.append(f)
    return np.asarray(coords, np.int64), np.asarray(feats)


def main_() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        write_pyramidal_tiff(tmp / "CMU-1-small.tif")
        coords, feats = patch_features(he_image())
        with h5py.File(tmp / "CMU-1-small.h5", "w") as f:
            f.create_dataset("features", data=feats)
            d = f.create_dataset("coords", data=coords)
            d.attrs["patch_size"], d.attrs["patch_level"] = 32, 1
        rng = np.random.default_rng(0)
        lines = ["slide_id,label"]
        for i in range(4):
            with h5py.File(tmp / f"b{i}.h5", "w") as f:
                f.create_dataset("features", data=rng.standard_normal((20, DIM)).astype(np.float32))
            lines.append(f"b{i},{i % 2}")
        (tmp / "m.csv").write_text("\n".join(lines) + "\n")
        assert main(["train", "--manifest", str(tmp / "m.csv"), "--out", str(tmp / "run"), "--epochs", "1",
                     "--hidden", str(DIM), "--att-dim", "8"]) == 0
        run = load_run(tmp / "run")
        with torch.no_grad():
            first = next(m for m in run.model.encoder.modules() if isinstance(m, torch.nn.Linear))
            first.weight.copy_(torch.eye(DIM))
            first.bias.zero_()
            pool = run.model.pool
            for layer in (pool.V, pool.U, pool.w):
                if layer is not None:
                    layer.weight.zero_()
                    layer.bias.zero_()
            pool.V.weight[0, 0] = 1.0
            pool.w.weight[0, 0] = 12.0  # gate 1/2: logit 6 tanh(feature 0)
        out = tmp / "out" / "CMU-1-small.png"
        print(render_slide(run, tmp / "CMU-1-small.h5", out, wsi=tmp / "CMU-1-small.tif",
                           options=HeatmapOptions(max_size=700, tissue=True, top_k=6, geojson=True)))
        shutil.copy(out, HERE / "slide_heatmap.png")
        shutil.copy(out.with_name("CMU-1-small_topk.png"), HERE / "slide_topk.png")
        print(f"wrote {HERE / 'slide_heatmap.png'}, {HERE / 'slide_topk.png'} ({len(coords)} patches)")


if __name__ == "__main__":
    main_()
