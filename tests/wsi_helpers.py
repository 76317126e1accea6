"""Tiny whole-slide feature datasets on disk, CLAM layout, for the WSI training / CLI / DDP tests."""
from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import torch

DIM = 16
PATCH = 256


def write_slide(path: Path, features: np.ndarray, coords: np.ndarray | None = None) -> None:
    """As CLAM's save_hdf5: root ``features`` (n, D) and ``coords`` (n, 2), row-chunked, resizable."""
    with h5py.File(path, "w") as f:
        f.create_dataset("features", data=features, chunks=(1, features.shape[1]),
                         maxshape=(None, features.shape[1]))
        if coords is not None:
            f.create_dataset("coords", data=coords, chunks=(1, 2), maxshape=(None, 2))


def grid(n: int, cols: int = 8) -> np.ndarray:
    """(n, 2) level-0 corners of a patch grid, row-major."""
    k = np.arange(n)
    return np.stack([(k % cols) * PATCH, (k // cols) * PATCH], 1).astype(np.int64)


def slide_features(n: int, label: int, rng: np.random.Generator, dim: int = DIM) -> np.ndarray:
    """Noise, plus for class c > 0 a few instances shifted along feature c (the evidence)."""
    x = rng.standard_normal((n, dim)).astype(np.float32)
    if label > 0:
        hot = rng.choice(n, size=max(1, n // 8), replace=False)
        x[hot, label] += 3.0
    return x


def make_dataset(root: Path, n_slides: int = 8, *, classes: tuple[str, ...] = ("normal", "tumor"),
                 sizes: tuple[int, int] = (20, 60), split: list[str] | None = None, seed: int = 0,
                 big: int | None = None, dim: int = DIM) -> tuple[Path, Path]:
    """Write ``n_slides`` CLAM HDF5 slides under ``root/features`` and ``root/manifest.csv``.

    Labels cycle through ``classes``; ``big``: the first slide gets this many instances
    (to exercise chunked pooling). Returns (manifest, features_dir)."""
    rng = np.random.default_rng(seed)
    features = root / "features"
    features.mkdir(parents=True, exist_ok=True)
    lines = ["slide_id,label" + (",split" if split else "")]
    for i in range(n_slides):
        label = i % len(classes)
        n = big if (big and i == 0) else int(rng.integers(*sizes))
        write_slide(features / f"s{i:02d}.h5", slide_features(n, label, rng, dim), grid(n))
        lines.append(f"s{i:02d},{classes[label]}" + (f",{split[i]}" if split else ""))
    manifest = root / "manifest.csv"
    manifest.write_text("\n".join(lines) + "\n")
    return manifest, features


def load_weights(run: Path) -> dict[str, torch.Tensor]:
    """The model weights of a run's last checkpoint."""
    from abmil.train.checkpoint import load_weights as _load
    from abmil.train.checkpoint import read_checkpoint

    return _load(run, read_checkpoint(run))


def make_case_dataset(root: Path, n_cases: int = 12, *, classes: tuple[str, ...] = ("normal", "tumor"),
                      sizes: tuple[int, int] = (10, 30), seed: int = 0, max_slides: int = 3,
                      extra: dict[str, str] | None = None) -> tuple[Path, Path, list[tuple[str, str, str]]]:
    """Write ``n_cases`` patients of 1..``max_slides`` slides each (labels cycling through ``classes``) under
    ``root/features`` and ``root/manifest.csv`` with a ``case_id`` column; every third case's first slide leaves its
    case_id cell empty only when it is the case's one slide (its own case). ``extra``: manifest rows
    ``{slide_id: "label,case_id"}`` appended (to break things). Returns (manifest, features_dir,
    [(slide_id, label, case) ...])."""
    rng = np.random.default_rng(seed)
    features = root / "features"
    features.mkdir(parents=True, exist_ok=True)
    lines, rows = ["slide_id,label,case_id"], []
    for k in range(n_cases):
        label = k % len(classes)
        n_slides = int(rng.integers(1, max_slides + 1))
        case = f"P{k:02d}"
        for j in range(n_slides):
            sid = f"{case}-s{j}"
            n = int(rng.integers(*sizes))
            write_slide(features / f"{sid}.h5", slide_features(n, label, rng), grid(n))
            own = n_slides == 1 and k % 3 == 0
            lines.append(f"{sid},{classes[label]},{'' if own else case}")
            rows.append((sid, classes[label], sid if own else case))
    for sid, cells in (extra or {}).items():
        n = int(rng.integers(*sizes))
        write_slide(features / f"{sid}.h5", slide_features(n, 0, rng), grid(n))
        lines.append(f"{sid},{cells}")
    manifest = root / "manifest.csv"
    manifest.write_text("\n".join(lines) + "\n")
    return manifest, features, rows


def fail(capsys, argv: list[str], *fragments: str) -> str:
    """Run the CLI in-process expecting exit 2 and a one-line ``abmil: error:`` holding every fragment."""
    from abmil.cli import main

    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("abmil: error: ") and err.count("\n") == 1, err
    for fragment in fragments:
        assert fragment in err, (fragment, err)
    return err
