"""Write the shipped UCSB breast feature set (58 images, 708-d patch features; abmil.data.benchmarks 'ucsb_breast') as
a slide study's inputs: one CLAM-style HDF5 file per image (dataset ``features``) and a manifest
``slide_id,label,case_id``, so that the whole-slide commands (``abmil train --folds``, ``predict``, ``evaluate``) run
on real data.

Each image is its own case: the published set gives no patient ids. The features span five orders of magnitude
(per-feature SDs from 0 to 2400), so they are written as ``sign(x) * log1p(|x|)``, a fixed transform with no statistics
of the data (no fold leaks into another). No ``coords``: the set gives no patch positions.

    python results/ucsb-breast-study/make_slides.py OUT_DIR
"""
from __future__ import annotations

import csv
import sys
from pathlib import Path

import h5py
import numpy as np

from abmil.data.benchmarks import load_benchmark


def main(out: Path) -> None:
    data = load_benchmark("ucsb_breast")
    features = out / "features"
    features.mkdir(parents=True, exist_ok=True)
    rows = []
    for bag_id, bag, label in zip(data.bag_ids, data.bags, data.labels):
        slide_id = f"ucsb{int(bag_id):02d}"
        x = np.sign(bag) * np.log1p(np.abs(bag))
        with h5py.File(features / f"{slide_id}.h5", "w") as f:
            f.create_dataset("features", data=x.astype(np.float32))
        rows.append((slide_id, "malignant" if label == 1 else "benign", slide_id))
    with open(out / "manifest.csv", "w", newline="") as f:
        csv.writer(f).writerows([("slide_id", "label", "case_id"), *rows])
    print(f"wrote {len(rows)} slides to {features} and {out / 'manifest.csv'}")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
