"""Reading one slide's features: abmil's FeatureBagDataset vs plain h5py, side by side in one run.

Writes one slide (root ``features`` (N, D) float32 and ``coords`` (N, 2)) in three layouts — CLAM's (resizable,
one row per chunk, as its ``save_hdf5`` writes), h5py's automatic chunks, contiguous — and times reading the whole
``features`` dataset with plain h5py and with ``FeatureBagDataset.load`` (which also checks for NaN/Inf), best of
``--repeats``. The page cache holds the file after the
first read, so this measures the decode path, not the disk.

    python benchmarks/feature_loading.py [--n 100000] [--dim 1024] [--repeats 5] [--dir /tmp]

Prints MB/s of each and the ratio abmil / h5py.
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import h5py
import numpy as np

from abmil.slides.features import FeatureBagDataset

LAYOUTS = {  # name: chunk shape of `features` (None: contiguous)
    "CLAM, one row per chunk": lambda d: (1, d),  # CLAM's save_hdf5: chunks = (1,) + shape[1:], resizable
    "h5py automatic chunks": lambda d: True,
    "contiguous": lambda d: None,
}


def write_slide(path: Path, features: np.ndarray, chunks) -> None:
    coords = np.zeros((len(features), 2), np.int64)
    with h5py.File(path, "w") as f:
        if chunks is None:
            f.create_dataset("features", data=features)
            f.create_dataset("coords", data=coords)
        else:
            f.create_dataset("features", data=features, maxshape=(None, features.shape[1]), chunks=chunks)
            f.create_dataset("coords", data=coords, maxshape=(None, 2), chunks=True)


def best_of(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--dim", type=int, default=1024)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--dir", default=None)
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    features = rng.standard_normal((args.n, args.dim), dtype=np.float32)
    mb = features.nbytes / 1e6
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        tmp = Path(tmp)
        for k, (layout, chunks) in enumerate(LAYOUTS.items()):
            path = tmp / f"slide_{k}.h5"
            write_slide(path, features, chunks(args.dim))
            (tmp / "manifest.csv").write_text(f"slide_id,label,path\nS,1,{path.name}\n")
            ds = FeatureBagDataset(tmp / "manifest.csv", tmp)

            def plain(path=path):
                with h5py.File(path, "r") as f:
                    return f["features"][:]

            def ours(ds=ds):
                return ds.load(0).features

            plain(), ours()  # warm the page cache
            t_plain = min(best_of(plain, 1) for _ in range(args.repeats))
            t_ours = min(best_of(ours, 1) for _ in range(args.repeats))
            with h5py.File(path, "r") as f:
                chunks = f["features"].chunks
            print(f"{layout:24s} (chunks {chunks}): h5py {mb / t_plain:7.0f} MB/s   abmil {mb / t_ours:7.0f} MB/s"
                  f"   ratio {t_plain / t_ours:.2f}   ({args.n} x {args.dim} float32, {mb:.0f} MB, "
                  f"best of {args.repeats})")


if __name__ == "__main__":
    main()
