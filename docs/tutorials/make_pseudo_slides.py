"""Pseudo-slides for the slides-to-heatmaps tutorial, from the H&E image that ships with abmil.

Writes ``--n`` tiled pyramidal TIFFs (OpenSlide opens them; the level-0 µm/px in the resolution tags) cut from
windows of ``abmil/data/files/cmu1_small_region_he.jpg`` (CMU-1, an Aperio scan, here at about 1 µm/px), and a
``manifest.csv``. Every other slide gets a planted *lesion*: a disc of tissue whose colour is shifted towards a dark,
blue-purple (hyperchromatic) tone; its label is ``lesion``, the others' ``clear``; ``lesions.csv`` gives each disc's
centre and radius in level-0 pixels, the truth a heatmap should find. The windows overlap (the image is small):
the slides are a demonstration, not a cohort.

    python docs/tutorials/make_pseudo_slides.py --out tutorial/slides [--n 24] [--size 768] [--seed 0]

Needs tifffile (``pip install tifffile``).
"""
from __future__ import annotations

import argparse
from importlib import resources
from pathlib import Path

import numpy as np

MPP = 1.0  # the shipped JPEG is the 0.499 µm/px scan at half size
TILE = 256  # the TIFF's own tiles


def shipped_he() -> np.ndarray:
    from PIL import Image

    with resources.as_file(resources.files("abmil.data") / "files" / "cmu1_small_region_he.jpg") as p:
        with Image.open(p) as im:
            return np.asarray(im.convert("RGB"))


def plant_lesion(image: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, tuple[int, int, int]]:
    """The image with a hyperchromatic disc on tissue (saturated pixels), and the disc (x, y, r)."""
    h, w = image.shape[:2]
    r = min(h, w) // 4
    saturation = image.max(2).astype(int) - image.min(2)
    for _ in range(100):  # a centre on tissue
        x, y = int(rng.integers(r, w - r)), int(rng.integers(r, h - r))
        if saturation[y, x] > 40:
            break
    yy, xx = np.mgrid[:h, :w]
    disc = (xx - x) ** 2 + (yy - y) ** 2 <= r * r
    out = image.astype(np.float32)
    out[disc] = out[disc] * np.array([0.55, 0.45, 0.85], dtype=np.float32)  # darker, bluer: hyperchromatic nuclei
    return np.clip(out, 0, 255).astype(np.uint8), (x, y, r)


def write_tiff(path: Path, image: np.ndarray, mpp: float = MPP, levels: int = 3) -> None:
    """A lossless tiled TIFF pyramid (each level half the one above, 2x2 box mean), ``mpp`` in the resolution tags."""
    import tifffile

    with tifffile.TiffWriter(path) as tiff:
        level = image
        for i in range(levels):
            tiff.write(level, tile=(TILE, TILE), photometric="rgb", compression="zlib",
                       subfiletype=0 if i == 0 else 1, metadata=None,
                       resolution=(1e4 / (mpp * 2 ** i),) * 2, resolutionunit="CENTIMETER")
            h, w = level.shape[0] // 2 * 2, level.shape[1] // 2 * 2
            level = level[:h, :w].reshape(h // 2, 2, w // 2, 2, 3).mean((1, 3)).astype(np.uint8)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True)
    p.add_argument("--n", type=int, default=24)
    p.add_argument("--size", type=int, default=768, help="window side, level-0 pixels")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    he, rng = shipped_he(), np.random.default_rng(args.seed)
    manifest, truth = ["slide_id,label"], ["slide_id,x,y,radius"]
    for i in range(args.n):
        y0 = int(rng.integers(0, he.shape[0] - args.size))
        x0 = int(rng.integers(0, he.shape[1] - args.size))
        window = he[y0:y0 + args.size, x0:x0 + args.size]
        slide_id = f"pseudo{i:02d}"
        if i % 2:
            window, (x, y, r) = plant_lesion(window, rng)
            truth.append(f"{slide_id},{x},{y},{r}")
        write_tiff(out / f"{slide_id}.tif", window)
        manifest.append(f"{slide_id},{'lesion' if i % 2 else 'clear'}")
    (out / "manifest.csv").write_text("\n".join(manifest) + "\n")
    (out / "lesions.csv").write_text("\n".join(truth) + "\n")
    print(f"wrote {args.n} slides, manifest.csv and lesions.csv to {out}")


if __name__ == "__main__":
    main()
