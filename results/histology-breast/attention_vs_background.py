"""Does a breast model's attention follow how much of a patch is background?

The UCSB images have no annotations to score attention against, so this measures the one thing a heatmap of them
suggests: high-attention patches sit at the edge of the tissue. For each test image of each kept fold model it prints
the Spearman correlation between a patch's attention weight and its white fraction (the measure the grid uses to drop
background tiles, abmil.data.patches.white_fraction), and the mean white fraction of the top 10% of patches by
attention against that of all patches. First it prints how well the background alone tells the classes apart: the
AUC, over every image, of minus the image's mean white fraction (benign tissue has more white space) and of its number
of tissue tiles — no model involved; then, over the test predictions of every finished fold of the model, the Spearman
correlation between P(positive) and minus the mean white fraction, overall and within each class.

    python results/histology-breast/attention_vs_background.py --run results/histology-breast \
        --data-dir DIR/ucsb_breast_images --folds 0:0,0:8 [--model attention]

(--folds: repeat:fold pairs whose models the run kept; fold 0 of repeat 0 always, the others with --keep-models.)
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from scipy.stats import spearmanr
from sklearn.metrics import roc_auc_score

from abmil.data.patches import MAX_WHITE_FRACTION, white_fraction
from abmil.experiments.histology import load_histology, load_unit_model
from abmil.explain.histology import patch_scores


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", required=True)
    parser.add_argument("--data-dir", required=True, help="the UCSB Bisque folder, or the folder holding it")
    parser.add_argument("--folds", required=True, help="repeat:fold pairs, comma-separated")
    parser.add_argument("--model", default="attention")
    args = parser.parse_args()
    unit_files = sorted((Path(args.run) / "units").glob(f"{args.model}__rep*.json"))
    units = [json.loads(path.read_text()) for path in unit_files]
    by_fold = {(u["settings"]["repeat"], u["settings"]["fold"]): u for u in units}
    if not units:
        raise SystemExit(f"no finished {args.model} folds in {args.run}/units")
    rule = units[0]["settings"].get("max_white_fraction", MAX_WHITE_FRACTION)  # cut the images as the run did
    data = load_histology("breast", args.data_dir, max_white_fraction=rule)
    bags = {b.bag_id: b for b in data.bags}
    mean_white = np.array([white_fraction(b.patches).mean() for b in data.bags])
    tiles = np.array([len(b) for b in data.bags])
    print(f"{len(data.bags)} images, no model: AUC of -(mean white fraction) "
          f"{roc_auc_score(data.labels, -mean_white):.3f}, of the number of tissue tiles "
          f"{roc_auc_score(data.labels, tiles):.3f}; mean white fraction benign "
          f"{mean_white[data.labels == 0].mean():.2f}, malignant {mean_white[data.labels == 1].mean():.2f}")
    white_of = dict(zip(bags, mean_white))
    y = np.array([label for u in units for label in u["test_labels"]])
    probs = np.array([q for u in units for q in u["test_probs"]])
    density = -np.array([white_of[name] for u in units for name in u["test"]])
    within = ", ".join(f"{kind} {spearmanr(probs[y == c], density[y == c])[0]:+.2f}"
                       for c, kind in ((0, "benign"), (1, "malignant")) if (y == c).sum() > 2)
    print(f"{len(units)} finished folds of {args.model}, {len(y)} test predictions: rho(P(positive), "
          f"-(mean white fraction)) {spearmanr(probs, density)[0]:+.2f}; within a class: {within or 'too few'}")
    rhos, top_white, all_white = [], [], []
    for pair in args.folds.split(","):
        repeat, fold = (int(v) for v in pair.split(":"))
        model, _ = load_unit_model(args.run, args.model, repeat=repeat, fold=fold)
        unit = by_fold[(repeat, fold)]
        print(f"repeat {repeat} fold {fold}: test AUC {unit['metrics']['auc']:.3f}")
        for name, label in zip(unit["test"], unit["test_labels"]):
            bag = bags[name]
            prob, attention, _ = patch_scores(model, bag.patches)
            white = white_fraction(bag.patches)
            top = np.argsort(-attention)[:max(1, len(attention) // 10)]
            rho = float(spearmanr(attention, white)[0])
            rhos.append(rho)
            top_white.append(white[top].mean())
            all_white.append(white.mean())
            print(f"  {name} label {label} P(positive) {prob:.3f} patches {len(attention)}: rho {rho:+.2f}, "
                  f"white fraction of the top 10% {white[top].mean():.2f} vs all {white.mean():.2f}")
    print(f"{len(rhos)} images: median rho {np.median(rhos):+.2f} (range {min(rhos):+.2f} to {max(rhos):+.2f}); "
          f"white fraction of the top 10% {np.mean(top_white):.2f} vs all {np.mean(all_white):.2f} on average")


if __name__ == "__main__":
    main()
