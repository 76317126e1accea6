"""``abmil demo histology``: one real H&E image → bags of patches → a few epochs of attention MIL → a heatmap PNG.

A demonstration of the pipeline, **not a result**: the image is one skin section (CMU-1-Small-Region, OpenSlide test
data, CC0; shipped in ``abmil/data/files``, see its README) and the labels are made by a colour rule, not by a
pathologist:

* instances: 32x32 tiles of the image (halved from the scanner's 20x, so ~1 µm per pixel), background dropped as in
  the breast protocol (:func:`abmil.data.patches.grid_patches`);
* instance label: 1 when the tile's mean haematoxylin optical density (colour deconvolution,
  :func:`abmil.data.augment.rgb_to_he`) is >= :data:`DENSE_HEMATOXYLIN` — nucleus-dense tissue (on this section:
  the epidermis and cell-rich dermis);
* bag: the tiles of one :data:`REGION` x :data:`REGION` px square of the image; bag label 1 when it holds a dense
  tile (the MIL assumption, as in the colon task);
* model: attention MIL with the paper's patch CNN, trained with the histology settings on 80 % of the bags, scored
  on the other 20 %; then the whole image is fed as one bag and its attention is painted.

So a good heatmap here means "attention found the haematoxylin-dense tiles", which is what the labels ask for.
"""
from __future__ import annotations

import contextlib
import tempfile
import time
from importlib import resources
from pathlib import Path

import numpy as np
import torch
from sklearn.metrics import roc_auc_score

from abmil.data.augment import rgb_to_he
from abmil.data.histology import PatchBag, read_rgb
from abmil.data.histology_training import BagAugmenter, FloatBags
from abmil.data.patches import BREAST_PATCH_SIZE, grid_patches, patches_to_tensor
from abmil.explain.heatmap import paint_heatmap
from abmil.explain.histology import heatmap_for_image
from abmil.io import make_dirs
from abmil.nn.zoo import create_model
from abmil.report.metrics import bag_metrics
from abmil.train.fit import fit, predict, validation_split
from abmil.train.presets import histology_config

__all__ = ["DEMO_IMAGE", "DENSE_HEMATOXYLIN", "REGION", "demo_bags", "demo_histology", "dense_tiles"]

DEMO_IMAGE = "cmu1_small_region_he.jpg"
DENSE_HEMATOXYLIN = 1.0  # mean H optical density; the 85th percentile of this image's tissue tiles is 0.99
REGION = 128  # px: a bag is a 4 x 4 block of 32 px tiles (tissue tiles only)


def demo_image_path() -> Path:
    """The shipped H&E image (a real file inside the installed package)."""
    return Path(str(resources.files("abmil.data") / "files" / DEMO_IMAGE))


def dense_tiles(patches: np.ndarray, threshold: float = DENSE_HEMATOXYLIN) -> tuple[np.ndarray, np.ndarray]:
    """The colour rule: patches (n, 3, s, s) uint8 → (mean haematoxylin OD (n,), label (n,) int64 = OD >= threshold)."""
    h = rgb_to_he(patches_to_tensor(patches))[:, 0].mean(dim=(1, 2)).double().numpy()
    return h, (h >= threshold).astype(np.int64)


def demo_bags(image_path: str | Path, *, region: int = REGION, patch_size: int = BREAST_PATCH_SIZE) -> list[PatchBag]:
    """The image's tissue tiles grouped by ``region`` x ``region`` squares into bags, labelled by the colour rule.

    Bags come in row-major order of their squares; ``bag_id`` is ``"r{row}c{col}"`` of the square's top-left.
    """
    image = read_rgb(image_path)
    tiles = grid_patches(image, patch_size, path=str(image_path))
    _, inst = dense_tiles(tiles.patches)
    square = tiles.coords // region  # (n, 2) square index of each tile
    bags = []
    for r, c in sorted({(int(a), int(b)) for a, b in square}):
        keep = (square[:, 0] == r) & (square[:, 1] == c)
        bags.append(PatchBag(tiles.patches[keep], tiles.coords[keep], int(inst[keep].max()),
                             f"r{r * region}c{c * region}", str(image_path), instance_labels=inst[keep]))
    return bags


def demo_histology(out_dir: str | Path | None = None, *, epochs: int = 15, seed: int = 0) -> str:
    """Run the demo; return the text to print. PNGs (and nothing else) go to ``out_dir`` (default: a temporary
    folder, deleted afterwards — then only the printout remains).

    Writes ``heatmap.png`` (attention over the whole image, as one bag) and ``rule.png`` (the colour rule's
    haematoxylin density per tile, the thing the labels were made from), to be compared side by side.
    """
    from abmil.experiments.runner import check_out_dir

    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
        raise ValueError(f"epochs must be an integer >= 1, got {epochs!r}")
    if out_dir is not None:
        check_out_dir(out_dir)  # before training, not when the PNGs are due
    start = time.perf_counter()
    path = demo_image_path()
    bags = demo_bags(path)
    labels = np.array([b.label for b in bags])
    train_pos, test_pos = validation_split(labels, 0.2, seed)
    train = [bags[i] for i in train_pos]
    torch.manual_seed(seed)
    model = create_model("attention", family="histology", patch_size=BREAST_PATCH_SIZE)
    fit(model, FloatBags(train), labels[train_pos], histology_config(epochs=epochs), seed=seed,
                       augment=BagAugmenter(train))
    probs, weights = predict(model, FloatBags([bags[i] for i in test_pos]), batch_size=1)
    m = bag_metrics(labels[test_pos], probs.double().numpy())
    inst_y = np.concatenate([bags[i].instance_labels for i in test_pos])
    inst_s = np.concatenate([w.double().numpy() * len(w) for w in weights])
    inst_auc = roc_auc_score(inst_y, inst_s) if 0 < inst_y.sum() < inst_y.size else float("nan")

    with contextlib.ExitStack() as stack:
        out = Path(out_dir) if out_dir is not None else Path(stack.enter_context(
            tempfile.TemporaryDirectory(prefix="abmil-demo-histology-")))
        make_dirs(out)
        heat = heatmap_for_image(model, path, out / "heatmap.png", mode="grid", title=(
            "DEMO, not a result: attention of a model trained to find haematoxylin-dense tiles"))
        h, _ = dense_tiles(heat.bag.patches)
        paint_heatmap(h, heat.coords[:, ::-1], BREAST_PATCH_SIZE, out / "rule.png", image=read_rgb(path),
                      title=f"the labelling rule: mean haematoxylin OD per tile (dense: >= {DENSE_HEMATOXYLIN:g})",
                      score_label="haematoxylin OD", normalise="minmax")
        seconds = time.perf_counter() - start
        n_pos = int(labels.sum())
        lines = [
            "abmil demo histology - a DEMONSTRATION of the pipeline, NOT A RESULT.",
            "",
            f"Image: {DEMO_IMAGE} ({heat.bag.path}), one H&E skin section (CMU-1-Small-Region, OpenSlide test data, "
            "CC0), halved to ~1 um/px.",
            f"Instances: {sum(len(b) for b in bags)} tissue tiles of 32x32 px (background dropped).",
            f"Labels are a COLOUR RULE, not a diagnosis: a tile is 'dense' when its mean haematoxylin optical "
            f"density is >= {DENSE_HEMATOXYLIN:g};",
            f"a bag = the tiles of one {REGION}x{REGION} px square, positive when it holds a dense tile: "
            f"{len(bags)} bags, {n_pos} positive.",
            f"Model: attention MIL, the paper's patch CNN, Adam lr 1e-4, {epochs} epochs with H&E/flip augmentation, "
            f"on {len(train_pos)} bags.",
            f"Held-out {len(test_pos)} bags (one split, tiny, noisy): accuracy {m['accuracy']:.2f}, "
            f"AUC {m['auc']:.2f}; attention x bag size vs the dense-tile labels: AUC {inst_auc:.2f}.",
            f"Whole image as one bag: P(positive) = {heat.prob:.3f}.",
            "",
            f"Heatmap (attention, min-max scaled): {out / 'heatmap.png'}" if out_dir is not None else
            "Heatmap: pass --out DIR to keep heatmap.png (attention) and rule.png (the labelling rule).",
        ]
        if out_dir is not None:
            lines.append(f"The labelling rule, for comparison: {out / 'rule.png'}")
        lines.append(f"({seconds:.0f} s)")
    return "\n".join(lines)
