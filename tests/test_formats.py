"""Feature-file formats behind one factory (abmil.slides.formats): STAMP's tile features and slide embeddings, written
as those tools write them, read as bags; STAMP's micrometre coordinates placed at level 0; the folders the tools lay
out found under --features; ``abmil train`` on each; an unknown layout refused in one line naming the file.

The writers below follow the tools' own code (commits fetched for this test):
  STAMP KatherLab/STAMP@c54ce06, src/stamp/preprocessing/__init__.py lines 342-359 (``coords`` float32 µm,
    ``feats`` float16, root attrs stamp_version, extractor, unit, tile_size_um, tile_size_px, code_hash, feat_type);
    coordinates = level-0 pixels x slide mpp (src/stamp/preprocessing/tiling.py lines 311, 336-337), tiles within
    a supertile at tile_size_um steps (lines 243-244); slide embeddings src/stamp/encoding/encoder/__init__.py
    lines 203-220 (``feats`` (dim,) and attrs version, encoder, precision, stamp_version, code_hash, feat_type);
    folders ``<output_dir>/<extractor>`` (preprocessing/__init__.py lines 254-258).
  TRIDENT mahmoodlab/TRIDENT@a91fa84, trident/wsi_objects/WSI.py lines 1155-1172 (slide features: ``features`` the
    encoder's output squeezed to (dim,) float32, ``coords`` the patches' int64 (n, 2) with their attrs) through
    ``save_h5`` (trident/IO.py lines 490-508: chunks (1,) + shape[1:], maxshape (None,) + shape[1:]); folders
    ``<job_dir>/<mag>x_<px>px_<overlap>px_overlap/slide_features_<encoder>/`` (trident/Processor.py line 942).
  CLAM mahmoodlab/CLAM, extract_features_fp.py lines 73-74: ``h5_files/`` and ``pt_files/`` side by side.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from abmil.cli import main
from abmil.errors import DataError
from abmil.slides.feature_files import FeatureFile
from abmil.slides.features import FeatureBagDataset
from abmil.slides.formats import find_feature_folder, open_feature_file
from cli_helpers import assert_refused

h5py = pytest.importorskip("h5py")

DIM = 8
SMALL = ["--epochs", "1", "--hidden", "8", "--att-dim", "4", "--val-split", "0"]


def write_stamp(path: Path, feats: np.ndarray, coords_px: np.ndarray, mpp: float, tile_size_um: float = 256.0,
                tile_size_px: int = 224) -> None:
    """As ``stamp preprocess`` writes a slide: µm coordinates (level-0 pixels times the slide's mpp, float32)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    coords_um = torch.stack([torch.from_numpy(coords_px[:, 0] * mpp).float(),
                             torch.from_numpy(coords_px[:, 1] * mpp).float()], dim=1).numpy()
    with h5py.File(path, "w") as h5_fp:
        h5_fp["coords"] = coords_um
        h5_fp["feats"] = torch.from_numpy(feats).half().numpy()
        h5_fp.attrs["stamp_version"] = "2.3.0"
        h5_fp.attrs["extractor"] = "ctranspath"
        h5_fp.attrs["unit"] = "um"
        h5_fp.attrs["tile_size_um"] = tile_size_um
        h5_fp.attrs["tile_size_px"] = tile_size_px
        h5_fp.attrs["code_hash"] = "0123abcd"
        h5_fp.attrs["feat_type"] = "tile"


def save_h5(save_path: Path, assets: dict, attributes: dict) -> None:
    """TRIDENT's save_h5 (mode 'w'): each asset chunked by its first axis and resizable along it."""
    with h5py.File(save_path, "w") as file:
        for key, val in assets.items():
            dset = file.create_dataset(key, shape=val.shape, maxshape=(None,) + val.shape[1:],
                                       chunks=(1,) + val.shape[1:], dtype=val.dtype)
            dset[:] = val
            for attr_key, attr_val in attributes.get(key, {}).items():
                dset.attrs[attr_key] = attr_val


def write_trident_slide(path: Path, embedding: np.ndarray, n_patches: int = 5) -> None:
    """As TRIDENT's extract_slide_features: the squeezed (dim,) embedding beside the patches' coords."""
    path.parent.mkdir(parents=True, exist_ok=True)
    coords = np.stack([np.arange(n_patches) * 512, np.zeros(n_patches)], 1).astype(np.int64)
    save_h5(path, {"features": embedding.astype(np.float32).squeeze(), "coords": coords},
            {"features": {"name": path.stem, "savetodir": str(path.parent)},
             "coords": {"patch_size": 256, "patch_size_level0": 512, "level0_magnification": 40,
                        "target_magnification": 20, "overlap": 0}})


def write_stamp_slide(path: Path, embedding: np.ndarray, feat_type: str = "slide") -> None:
    """As STAMP's slide/patient encoders' _save_features_."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w") as f:
        f["feats"] = embedding
        f.attrs["version"] = "2.3.0"
        f.attrs["encoder"] = "titan"
        f.attrs["precision"] = "torch.float32"
        f.attrs["stamp_version"] = "2.3.0"
        f.attrs["code_hash"] = "0123abcd"
        f.attrs["feat_type"] = feat_type


def feats(n: int, seed: int, dim: int = DIM) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, dim)).astype(np.float32)


def manifest(path: Path, ids: list[str]) -> Path:
    path.write_text("slide_id,label\n" + "".join(f"{s},{'tumor' if i % 2 else 'normal'}\n" for i, s in enumerate(ids)))
    return path


# ----------------------------------------------------------------------------- STAMP
def test_stamp_coordinates_placed_at_level0(tmp_path):
    """STAMP µm → level-0 pixels, by hand: at 0.5 µm/px a 256 µm tile is 512 px and (256 µm, 768 µm) is
    (512, 1536); at 0.2527 µm/px tiles 256 µm apart in one supertile lie 256 / 0.2527 = 1013.059 px apart, so the
    third is at round(3039.18) = 3039 px, 512 µm down is round(2026.12) = 2026 px, and a tile is ceil(1013.059) =
    1014 px (as STAMP reads it)."""
    px = np.array([[0, 0], [512, 0], [1024, 1536], [99840, 50176]], dtype=np.int64)
    x = feats(4, 0)
    write_stamp(tmp_path / "a.h5", x, px, mpp=0.5)
    reader = open_feature_file(tmp_path / "a.h5")
    assert reader.name == "stamp-h5" and reader.shape() == (4, DIM)
    features, coords = reader.read()
    assert features.dtype == torch.float16 and torch.equal(features, torch.from_numpy(x).half())
    assert coords is None  # µm without the slide's mpp cannot be placed: features only
    with pytest.raises(DataError, match=r"file .*a\.h5, bag a: field 'coords': .*micrometres.*--mpp"):
        reader.coords()

    placed = FeatureFile(tmp_path / "a.h5", "a", mpp=0.5)
    assert placed.coords().tolist() == [[0, 0], [512, 0], [1024, 1536], [99840, 50176]]
    assert placed.read()[1].dtype == torch.int64
    assert placed.patch_attrs() == {"patch_size_level0": 512, "patch_size": 224}
    chunks = list(placed.iter_chunks(3))
    assert [len(f) for f, _ in chunks] == [3, 1]
    assert torch.equal(torch.cat([c for _, c in chunks]), placed.read()[1])

    # tiles of one supertile at tile_size_um steps, as STAMP's _tiles records them
    with h5py.File(tmp_path / "b.h5", "w") as f:
        f["coords"] = np.array([[0.0, 0.0], [256.0, 0.0], [768.0, 512.0]], dtype=np.float32)
        f["feats"] = feats(3, 1).astype(np.float16)
        f.attrs.update({"unit": "um", "tile_size_um": 256.0, "tile_size_px": 224, "feat_type": "tile"})
    b = FeatureFile(tmp_path / "b.h5", "b", mpp=0.2527)
    assert b.coords().tolist() == [[0, 0], [1013, 0], [3039, 2026]]
    assert b.patch_attrs()["patch_size_level0"] == 1014

    # an mpp the file records wins over the one given
    with h5py.File(tmp_path / "b.h5", "a") as f:
        f.attrs["slide_mpp"] = 0.5
    assert FeatureFile(tmp_path / "b.h5", "b", mpp=0.2527).coords().tolist() == [[0, 0], [512, 0], [1536, 1024]]


def test_stamp_folder_trains_and_paints(tmp_path):
    """``abmil train --features OUT`` finds STAMP's <extractor> folder under OUT, and a heatmap places the µm
    coordinates with --mpp."""
    ids = [f"s{i}" for i in range(6)]
    grid = np.stack(np.meshgrid(np.arange(3), np.arange(3)), -1).reshape(-1, 2) * 512
    for i, s in enumerate(ids):
        write_stamp(tmp_path / "stamp" / "ctranspath-0123abcd" / f"{s}.h5", feats(9, i), grid, mpp=0.5)
    m = manifest(tmp_path / "m.csv", ids)
    ds = FeatureBagDataset(m, tmp_path / "stamp")
    assert ds.files_dir == tmp_path / "stamp" / "ctranspath-0123abcd"
    with pytest.MonkeyPatch.context() as mp:  # sizes from metadata: no features read
        mp.setattr(FeatureFile, "read", lambda self, **kw: pytest.fail("validate read the data"))
        assert ds.validate() == DIM and ds.bag_sizes() == [9] * 6
    assert main(["train", "--manifest", str(m), "--features", str(tmp_path / "stamp"), "--out",
                 str(tmp_path / "run"), *SMALL]) == 0
    assert (tmp_path / "run" / "checkpoint.json").is_file()

    from abmil.slides.heatmap import HeatmapOptions, render_slide
    from abmil.slides.predict import load_run

    out = tmp_path / "s0.png"
    with pytest.raises(DataError, match="micrometres"):
        render_slide(load_run(tmp_path / "run"), ds.files[0], out)
    assert not out.exists()
    summary = render_slide(load_run(tmp_path / "run"), ds.files[0], out, options=HeatmapOptions(mpp=0.5))
    assert summary.endswith("9 patches of 512 px") and out.stat().st_size > 0

    pytest.importorskip("openslide")
    from abmil.slides.wsi import Slide
    from slide_image_helpers import write_pyramidal_tiff

    write_pyramidal_tiff(tmp_path / "s0.tif", mpp=0.5)  # 1104 x 1472 at level 0: the 3 x 3 grid of 512 px lies on it
    with Slide(tmp_path / "s0.tif") as slide:
        assert slide.mpp == 0.5
    on_slide = render_slide(load_run(tmp_path / "run"), ds.files[0], tmp_path / "wsi.png", wsi=tmp_path / "s0.tif")
    assert on_slide.endswith("9 patches of 512 px")  # the slide image's own mpp placed the µm


# ----------------------------------------------------------------------------- slide embeddings
def test_slide_embeddings_are_bags_of_one(tmp_path):
    e = feats(1, 0)[0]
    write_trident_slide(tmp_path / "t.h5", e)
    write_stamp_slide(tmp_path / "s.h5", e)
    write_stamp_slide(tmp_path / "p.h5", e[None], feat_type="patient")  # (1, dim) as stored: accepted too
    for name in ("t", "s", "p"):
        f = FeatureFile(tmp_path / f"{name}.h5", name)
        assert f.format == "slide-embedding" and f.shape() == (1, DIM)
        x, coords = f.read()
        assert coords is None and torch.equal(x, torch.from_numpy(e)[None])
        assert [c.shape for c, _ in f.iter_chunks(4)] == [(1, DIM)]
        with pytest.raises(DataError, match=rf"bag {name}: field 'coords': a slide embedding"):
            f.coords()
    save_h5(tmp_path / "empty.h5", {"features": np.empty((0,), np.float32)}, {})  # TRIDENT's empty slide
    with pytest.raises(DataError, match=r"bag empty: field 'features': empty"):
        FeatureFile(tmp_path / "empty.h5", "empty").shape()


def test_trident_slide_features_train(tmp_path):
    """``abmil train`` on TRIDENT's slide_features_<encoder>/ two levels under --features, each slide one instance."""
    job = tmp_path / "job" / "20x_256px_0px_overlap"
    ids = [f"s{i}" for i in range(6)]
    for i, s in enumerate(ids):
        write_trident_slide(job / "slide_features_titan" / f"{s}.h5", feats(1, i)[0] + (i % 2))
    m = manifest(tmp_path / "m.csv", ids)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(FeatureFile, "read", lambda self, **kw: pytest.fail("bag_sizes read the data"))
        assert FeatureBagDataset(m, tmp_path / "job").bag_sizes() == [1] * 6
    assert main(["train", "--manifest", str(m), "--features", str(tmp_path / "job"), "--out", str(tmp_path / "run"),
                 *SMALL]) == 0
    assert (tmp_path / "run" / "checkpoint.json").is_file()


# ----------------------------------------------------------------------------- folders, bad input
def test_feature_folder_found_or_ambiguous(tmp_path):
    ids = ["a", "b"]
    for folder in ("h5_files", "pt_files"):
        (tmp_path / "clam" / folder).mkdir(parents=True)
    for s in ids:
        save_h5(tmp_path / "clam" / "h5_files" / f"{s}.h5", {"features": feats(3, 0)}, {})
        torch.save(torch.from_numpy(feats(3, 0)), tmp_path / "clam" / "pt_files" / f"{s}.pt")
    assert find_feature_folder(tmp_path / "clam", ids) == tmp_path / "clam" / "h5_files"  # not its .pt twin
    assert find_feature_folder(tmp_path / "clam" / "pt_files", ids) == tmp_path / "clam" / "pt_files"
    job = tmp_path / "job" / "20x_256px_0px_overlap"
    for enc in ("uni_v1", "conch_v15"):
        (job / f"features_{enc}").mkdir(parents=True)
        save_h5(job / f"features_{enc}" / "a.h5", {"features": feats(3, 0)}, {})
    with pytest.raises(DataError, match=r"several folders .*20x_256px_0px_overlap/features_conch_v15, "
                                        r"20x_256px_0px_overlap/features_uni_v1; give one of them as --features"):
        find_feature_folder(tmp_path / "job", ids)
    assert find_feature_folder(job / "features_uni_v1", ids) == job / "features_uni_v1"


def test_unknown_layout_refused(tmp_path):
    """A file no reader claims: one line naming the file, from the factory and through ``python -m abmil train``
    (exit 2, nothing written)."""
    (tmp_path / "features").mkdir()
    for s in ("a", "b"):
        save_h5(tmp_path / "features" / f"{s}.h5", {"features": feats(3, 0)}, {})
    with h5py.File(tmp_path / "features" / "c.h5", "w") as f:
        f["embeddings"] = feats(3, 0)  # a layout nobody registered
    with pytest.raises(DataError, match=r"file .*c\.h5, bag c: field 'features': unknown feature-file layout.*"
                                        r"found: embeddings; known: .*STAMP"):
        open_feature_file(tmp_path / "features" / "c.h5", "c")
    (tmp_path / "features" / "d.bin").write_bytes(b"neither hdf5 nor torch")
    with pytest.raises(DataError, match=r"d\.bin.*unknown feature-file type '\.bin'"):
        open_feature_file(tmp_path / "features" / "d.bin")
    manifest(tmp_path / "m.csv", ["a", "b", "c"])
    assert_refused(tmp_path, ["train", "--manifest", "{ws}/m.csv", "--features", "{ws}/features", "--out",
                              "{ws}/run", *SMALL], "{ws}/features/c.h5")
