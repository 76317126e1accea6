"""Feature-bag datasets on disk (CLAM / TRIDENT HDF5, .pt) and the instance-budget sampler.

Real files written in tmp_path: both HDF5 layouts (row-chunked, resizable datasets, TRIDENT's
attributes, float16), .pt tensors and TRIDENT's .pt numpy arrays. Checks the values read, lazy
opening, the byte-budget cache, chunked reading, the class mapping, every bad input raising a
DataError that names the slide and the field, and the sampler's budget and determinism.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from abmil.data.bags import pack
from abmil.data.samplers import InstanceBudgetSampler
from abmil.errors import DataError
from abmil.slides.feature_files import FeatureFile
from abmil.slides.features import ByteBudgetCache, FeatureBagDataset

h5py = pytest.importorskip("h5py")  # an optional dependency: only HDF5 feature files need it

DIM = 8


# ----------------------------------------------------------------------------- writers
def write_clam(path: Path, features: np.ndarray, coords: np.ndarray | None = None) -> None:
    """As CLAM's save_hdf5: root datasets, chunked by row, resizable along the instances."""
    with h5py.File(path, "w") as f:
        f.create_dataset("features", data=features, chunks=(1, features.shape[1]),
                         maxshape=(None, features.shape[1]))
        if coords is not None:
            f.create_dataset("coords", data=coords, chunks=(1, 2), maxshape=(None, 2))


def write_trident(path: Path, features: np.ndarray, coords: np.ndarray) -> None:
    """As TRIDENT's save_h5: the same two datasets, plus attributes on each."""
    with h5py.File(path, "w") as f:
        ds = f.create_dataset("features", shape=features.shape, maxshape=(None, features.shape[1]),
                              chunks=(1, features.shape[1]), dtype=features.dtype)
        ds[:] = features
        ds.attrs.update({"name": path.stem, "savetodir": str(path.parent), "encoder": "uni_v1"})
        cs = f.create_dataset("coords", data=coords, chunks=(1, 2), maxshape=(None, 2))
        cs.attrs.update({"patch_size": 256, "level0_magnification": 40, "target_magnification": 20})


def write_manifest(path: Path, rows: list[tuple], header: str = "slide_id,label") -> Path:
    path.write_text("\n".join([header] + [",".join(map(str, r)) for r in rows]) + "\n")
    return path


def feats(n: int, seed: int, dim: int = DIM, dtype=np.float32) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, dim)).astype(dtype)


def coords_for(n: int) -> np.ndarray:
    return np.stack([np.arange(n) * 256, np.arange(n) * 512], 1).astype(np.int64)


@pytest.fixture
def slides(tmp_path):
    """Four slides, one of each kind, and their manifest."""
    d = tmp_path / "features"
    d.mkdir()
    data = {"clam": feats(30, 0), "trident": feats(45, 1, dtype=np.float16),
            "pt": feats(12, 2), "ptnumpy": feats(7, 3)}
    write_clam(d / "clam.h5", data["clam"], coords_for(30))
    write_trident(d / "trident.h5", data["trident"], coords_for(45))
    torch.save(torch.from_numpy(data["pt"]), d / "pt.pt")
    torch.save(data["ptnumpy"], d / "ptnumpy.pt")  # TRIDENT saveas='pt' saves the array itself
    manifest = write_manifest(tmp_path / "manifest.csv",
                              [("clam", "tumor"), ("trident", "normal"), ("pt", "tumor"), ("ptnumpy", "normal")])
    return manifest, d, data


def raises_for(slide: str, field: str):
    """pytest.raises for a DataError naming this slide and field."""
    return pytest.raises(DataError, match=rf"bag {slide}\b.*'{field}'")


# ----------------------------------------------------------------------------- reading
def test_reads_every_layout(slides):
    manifest, d, data = slides
    ds = FeatureBagDataset(manifest, d)
    assert len(ds) == 4 and ds.slide_ids == ["clam", "trident", "pt", "ptnumpy"]
    for i, sid in enumerate(ds.slide_ids):
        x, label, slide_id = ds[i]
        assert slide_id == sid and x.dtype == torch.float32 and x.shape == data[sid].shape
        assert torch.equal(x, torch.from_numpy(data[sid].astype(np.float32)))
    assert torch.equal(ds.coords("clam"), torch.from_numpy(coords_for(30)))
    assert torch.equal(ds.load("trident").coords, torch.from_numpy(coords_for(45)))
    assert ds.coords("pt") is None
    assert ds.files[1].attrs()["features"]["encoder"] == "uni_v1"
    assert ds.files[1].attrs()["coords"]["patch_size"] == 256
    assert ds.dim == DIM


def test_keeps_stored_dtype_when_asked(slides):
    manifest, d, _ = slides
    ds = FeatureBagDataset(manifest, d, dtype=None)
    assert ds.load("trident").features.dtype == torch.float16


def test_features_are_read_in_one_call(slides, monkeypatch):
    """A whole-slide read is one read_direct per dataset, not one read per row."""
    calls = []
    original = h5py.Dataset.read_direct
    monkeypatch.setattr(h5py.Dataset, "read_direct",
                        lambda self, *a, **k: (calls.append(self.name), original(self, *a, **k))[1])
    ds = FeatureBagDataset(*slides[:2])
    ds.load("trident")
    assert calls.count("/features") == 1


def test_opens_files_lazily(slides, monkeypatch):
    manifest, d, _ = slides
    reads = []
    original = FeatureFile.read
    monkeypatch.setattr(FeatureFile, "read", lambda self, **kw: (reads.append(self.slide_id), original(self, **kw))[1])
    _three_d(d / "clam.h5")  # broken, but not read until asked for
    ds = FeatureBagDataset(manifest, d)
    assert reads == [] and ds.dim is None
    ds[1]
    assert reads == ["trident"]
    with raises_for("clam", "features"):
        ds[0]


def test_relative_and_absolute_paths(tmp_path):
    sub = tmp_path / "feats" / "batch1"
    sub.mkdir(parents=True)
    write_clam(sub / "a.h5", feats(5, 0))
    write_clam(tmp_path / "b_elsewhere.h5", feats(6, 1))
    manifest = write_manifest(tmp_path / "m.csv", [("a", 0, "batch1/a.h5"), ("b", 1, tmp_path / "b_elsewhere.h5")],
                              header="slide_id,label,path")
    ds = FeatureBagDataset(manifest, tmp_path / "feats")
    assert [ds[i][0].shape[0] for i in range(2)] == [5, 6]


def test_split_selects_rows(tmp_path):
    for s in "abc":
        write_clam(tmp_path / f"{s}.h5", feats(3, 0))
    manifest = write_manifest(tmp_path / "m.csv", [("a", 0, "train"), ("b", 1, "test"), ("c", 1, "train")],
                              header="slide_id,label,split")
    assert FeatureBagDataset(manifest, split="train").slide_ids == ["a", "c"]
    with pytest.raises(DataError, match="no slides in split 'val'"):
        FeatureBagDataset(manifest, split="val")
    plain = write_manifest(tmp_path / "p.csv", [("a", 0)])
    with pytest.raises(DataError, match="no 'split' column"):
        FeatureBagDataset(plain, split="train")


# ----------------------------------------------------------------------------- cache
def test_cache_hits_and_byte_budget(slides, monkeypatch):
    manifest, d, _ = slides
    reads = []
    original = FeatureFile.read
    monkeypatch.setattr(FeatureFile, "read", lambda self, **kw: (reads.append(self.slide_id), original(self, **kw))[1])
    clam_bytes = 30 * DIM * 4 + 30 * 2 * 8  # features float32 + coords int64
    ds = FeatureBagDataset(manifest, d, cache_bytes=clam_bytes + 12 * DIM * 4)
    a = ds[0][0]
    assert ds[0][0] is a and reads == ["clam"] and ds.cache.hits == 1
    ds[2]  # pt fits beside clam
    assert len(ds.cache) == 2 and ds.cache.nbytes == clam_bytes + 12 * DIM * 4
    ds[3]  # ptnumpy does not: the least recently used (clam) goes
    assert 0 not in ds.cache and 2 in ds.cache and 3 in ds.cache
    held = ds.cache.nbytes
    ds[1]  # trident (45 x 8 x 4 + coords) exceeds the whole budget: read, never cached, evicts nothing
    assert 1 not in ds.cache and 2 in ds.cache and 3 in ds.cache and ds.cache.nbytes == held
    assert reads[-1] == "trident"

    off = FeatureBagDataset(manifest, d)  # cache_bytes=0: every access reads
    reads.clear()
    off[0], off[0]
    assert reads == ["clam", "clam"] and len(off.cache) == 0


def test_cache_is_lru():
    c = ByteBudgetCache(3 * 4)
    for k in "abc":
        c.put(k, (torch.zeros(1),))
    c.get("a")
    c.put("d", (torch.zeros(1),))
    assert "b" not in c and all(k in c for k in "acd")


# ----------------------------------------------------------------------------- chunks
@pytest.mark.parametrize("chunk", [1, 7, 45, 100])
def test_iter_chunks(slides, chunk):
    manifest, d, data = slides
    ds = FeatureBagDataset(manifest, d)
    parts = list(ds.iter_chunks("trident", chunk))
    assert all(f.shape[0] <= chunk and c.shape == (f.shape[0], 2) for f, c in parts)
    assert torch.equal(torch.cat([f for f, _ in parts]), torch.from_numpy(data["trident"]).float())
    assert torch.equal(torch.cat([c for _, c in parts]), torch.from_numpy(coords_for(45)))
    pt = list(ds.iter_chunks(2, chunk))
    assert torch.equal(torch.cat([f for f, _ in pt]), torch.from_numpy(data["pt"]))
    assert all(c is None for _, c in pt)


def test_iter_chunks_from_cache(slides):
    ds = FeatureBagDataset(*slides[:2], cache_bytes=10**6)
    full = ds.load(0).features
    assert torch.equal(torch.cat([f for f, _ in ds.iter_chunks(0, 8)]), full)


def test_non_finite_found_in_a_later_chunk(tmp_path):
    x = feats(20, 0)
    x[13, 2] = np.inf
    write_clam(tmp_path / "s.h5", x)
    ds = FeatureBagDataset(write_manifest(tmp_path / "m.csv", [("s", 1)]))
    chunks = ds.iter_chunks("s", 5)
    next(chunks), next(chunks)
    with pytest.raises(DataError, match=r"bag s\b.*'features'.*first at instance 13"):
        next(chunks)


def test_whole_slide_read_in_blocks_checks_each_block(tmp_path, monkeypatch):
    """load() reads HDF5 in blocks (here 3 rows) and checks each as it comes: the same array as one plain read, and a
    NaN in a later block is reported at its row of the slide."""
    import abmil.slides.formats.base as feature_files  # the HDF5 block sizes live with the HDF5 readers

    monkeypatch.setattr(feature_files, "READ_BLOCK_BYTES", 3 * DIM * 4)
    x = feats(20, 0)
    write_clam(tmp_path / "s.h5", x)
    ds = FeatureBagDataset(write_manifest(tmp_path / "m.csv", [("s", 1)]))
    assert np.array_equal(ds.load("s").features.numpy(), x)
    x[16, 1] = np.nan
    write_clam(tmp_path / "t.h5", x)
    ds = FeatureBagDataset(write_manifest(tmp_path / "n.csv", [("t", 1)]))
    with pytest.raises(DataError, match=r"bag t\b.*'features'.*first at instance 16"):
        ds.load("t")
    # contiguous (its own block size), float16, bad values in two blocks: the first one is named
    monkeypatch.setattr(feature_files, "CONTIGUOUS_READ_BLOCK_BYTES", 4 * DIM * 2)
    x = feats(20, 0).astype(np.float16)
    with h5py.File(tmp_path / "u.h5", "w") as f:
        f.create_dataset("features", data=x)
    ds = FeatureBagDataset(write_manifest(tmp_path / "o.csv", [("u", 1)]))
    assert np.array_equal(ds.load("u").features.numpy(), x)
    x[17, 0], x[9, 3] = np.nan, np.inf
    with h5py.File(tmp_path / "v.h5", "w") as f:
        f.create_dataset("features", data=x)
    ds = FeatureBagDataset(write_manifest(tmp_path / "p.csv", [("v", 1)]))
    with pytest.raises(DataError, match=r"bag v\b.*'features'.*first at instance 9"):
        ds.load("v")


# ----------------------------------------------------------------------------- labels
def test_class_names_sorted_and_given(slides):
    manifest, d, _ = slides
    ds = FeatureBagDataset(manifest, d)
    assert ds.classes == ["normal", "tumor"] and ds.labels == [1, 0, 1, 0]
    given = FeatureBagDataset(manifest, d, classes=["tumor", "normal"])
    assert given.classes == ["tumor", "normal"] and given.labels == [0, 1, 0, 1]
    with raises_for("trident", "label"):
        FeatureBagDataset(manifest, d, classes=["tumor", "other"])


def test_integer_labels(tmp_path):
    for s in "ab":
        write_clam(tmp_path / f"{s}.h5", feats(3, 0))
    ds = FeatureBagDataset(write_manifest(tmp_path / "m.csv", [("a", 2), ("b", 0)]))
    assert ds.classes is None and ds.labels == [2, 0] and ds[0][1] == 2
    assert FeatureBagDataset(tmp_path / "m.csv", classes=[0, 1, 2]).labels == [2, 0]
    with raises_for("a", "label"):
        FeatureBagDataset(write_manifest(tmp_path / "n.csv", [("a", -1), ("b", 0)]))


# ----------------------------------------------------------------------------- bad inputs
def test_manifest_errors(tmp_path):
    write_clam(tmp_path / "a.h5", feats(3, 0))
    with pytest.raises(DataError, match="missing column.*label"):
        FeatureBagDataset(write_manifest(tmp_path / "m.csv", [("a",)], header="slide_id"))
    with pytest.raises(DataError, match="empty"):
        FeatureBagDataset(write_manifest(tmp_path / "e.csv", []))
    with raises_for("a", "slide_id"):
        FeatureBagDataset(write_manifest(tmp_path / "d.csv", [("a", 0), ("a", 1)]))
    with raises_for("a", "label"):
        FeatureBagDataset(write_manifest(tmp_path / "l.csv", [("a", "")]))
    with pytest.raises(DataError, match="manifest not found"):
        FeatureBagDataset(tmp_path / "nope.csv")


def test_missing_slide_file(tmp_path):
    write_clam(tmp_path / "a.h5", feats(3, 0))
    with raises_for("ghost", "path"):
        FeatureBagDataset(write_manifest(tmp_path / "m.csv", [("a", 0), ("ghost", 1)]))
    with raises_for("a", "path"):
        FeatureBagDataset(write_manifest(tmp_path / "p.csv", [("a", 0, "gone.h5")], header="slide_id,label,path"))


def bad_file(tmp_path: Path, name: str, writer) -> FeatureBagDataset:
    write_clam(tmp_path / "good.h5", feats(4, 0))
    writer(tmp_path / name)
    return FeatureBagDataset(write_manifest(tmp_path / "m.csv", [("good", 0), (Path(name).stem, 1)]))


def _no_features(p):
    with h5py.File(p, "w") as f:
        f["coords"] = coords_for(4)


def _three_d(p):
    with h5py.File(p, "w") as f:
        f["features"] = np.zeros((4, 2, 3), np.float32)


def _int_features(p):
    with h5py.File(p, "w") as f:
        f["features"] = np.zeros((4, DIM), np.int32)


def _empty(p):
    with h5py.File(p, "w") as f:
        f.create_dataset("features", shape=(0, DIM), maxshape=(None, DIM), dtype=np.float32)


def _bad_coords(p):
    write_clam(p, feats(4, 0), coords_for(5))


def _nan(p):
    x = feats(4, 0)
    x[2, 0] = np.nan
    write_clam(p, x)


def _other_dim(p):
    write_clam(p, feats(4, 0, dim=DIM + 1))


def _not_hdf5(p):
    p.write_bytes(b"this is not an HDF5 file")


@pytest.mark.parametrize("writer, field, match", [
    (_no_features, "features", "no 'features' dataset"),
    (_three_d, "features", r"2-D.*\(4, 2, 3\)"),
    (_int_features, "features", "float"),
    (_empty, "features", "empty bag"),
    (_bad_coords, "coords", r"\(4, 2\)"),
    (_nan, "features", "non-finite.*instance 2"),
    (_other_dim, "features", f"dimension {DIM + 1} differs from the {DIM} of slide good"),
    (_not_hdf5, "path", "not a readable HDF5"),
])
def test_bad_h5_files(tmp_path, writer, field, match):
    ds = bad_file(tmp_path, "bad.h5", writer)
    ds[0]
    with pytest.raises(DataError, match=rf"bag bad\b.*'{field}'.*{match}") as err:
        ds[1]
    assert err.value.bag == "bad" and err.value.path.endswith("bad.h5")


@pytest.mark.parametrize("writer, field", [
    (_no_features, "features"), (_three_d, "features"), (_bad_coords, "coords"), (_other_dim, "features"),
])
def test_validate_checks_metadata_without_reading(tmp_path, writer, field, monkeypatch):
    ds = bad_file(tmp_path, "bad.h5", writer)
    monkeypatch.setattr(FeatureFile, "read", lambda self: pytest.fail("validate read the data"))
    with raises_for("bad", field):
        ds.validate()


def test_validate_returns_dim_and_sizes(slides, monkeypatch):
    ds = FeatureBagDataset(*slides[:2])
    monkeypatch.setattr(FeatureFile, "read", lambda self: pytest.fail("validate read the data"))
    assert ds.validate() == DIM and ds.bag_sizes() == [30, 45, 12, 7]


def test_bad_pt_files(tmp_path):
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):  # unpickling this would create the marker file
            return (open, (str(marker), "w"))

    def evil(p):
        torch.save(Evil(), p)

    with raises_for("bad", "features"):
        bad_file(tmp_path, "bad.pt", evil)[1]
    assert not marker.exists()
    with pytest.raises(DataError, match=r"bag bad\b.*'features'.*got dict"):
        bad_file(tmp_path, "bad.pt", lambda p: torch.save({"features": torch.zeros(2, DIM)}, p))[1]
    with pytest.raises(DataError, match=r"bag bad\b.*'features'.*2-D"):
        bad_file(tmp_path, "bad.pt", lambda p: torch.save(torch.zeros(DIM), p))[1]
    with pytest.raises(DataError, match=r"bag bad\b.*'features'.*float"):
        bad_file(tmp_path, "bad.pt", lambda p: torch.save(torch.zeros(2, DIM, dtype=torch.int64), p))[1]
    with raises_for("bad", "features"):  # a non-float numpy array is refused by the unpickler itself
        bad_file(tmp_path, "bad.pt", lambda p: torch.save(np.zeros((2, DIM), np.int64), p))[1]


# ----------------------------------------------------------------------------- sampler
SIZES = [5, 120, 30, 1, 60, 60, 7, 300, 2, 45]


def test_budget_sampler_covers_each_bag_once_within_budget():
    s = InstanceBudgetSampler(SIZES, max_instances=100, seed=3)
    for _ in range(3):
        batches = list(s)
        assert sorted(i for b in batches for i in b) == list(range(len(SIZES)))
        for b in batches:
            total = sum(SIZES[i] for i in b)
            assert total <= 100 or len(b) == 1  # a bag over the budget goes alone
        assert any(len(b) > 1 for b in batches)


def test_budget_sampler_is_deterministic_and_reshuffles():
    a = InstanceBudgetSampler(SIZES, 100, seed=7)
    b = InstanceBudgetSampler(SIZES, 100, seed=7)
    epochs_a, epochs_b = [list(a) for _ in range(3)], [list(b) for _ in range(3)]
    assert epochs_a == epochs_b
    assert epochs_a[0] != epochs_a[1]
    assert list(InstanceBudgetSampler(SIZES, 100, seed=8)) != epochs_a[0]
    b.set_epoch(1)
    assert len(b) == len(epochs_a[1]) and list(b) == epochs_a[1]


def test_batch_size_one_and_no_shuffle():
    one = InstanceBudgetSampler.one_bag_per_batch(len(SIZES), seed=1)
    batches = list(one)
    assert all(len(b) == 1 for b in batches) and sorted(b[0] for b in batches) == list(range(len(SIZES)))
    assert list(InstanceBudgetSampler(SIZES, max_bags=1, shuffle=False)) == [[i] for i in range(len(SIZES))]
    capped = list(InstanceBudgetSampler(SIZES, max_instances=1000, max_bags=3, shuffle=False))
    assert capped == [[0, 1, 2], [3, 4, 5], [6, 7, 8], [9]]
    with pytest.raises(ValueError):
        InstanceBudgetSampler(SIZES)


def test_sampler_with_dataloader(slides):
    ds = FeatureBagDataset(*slides[:2])
    sampler = InstanceBudgetSampler(ds.bag_sizes(), max_instances=50, seed=0)
    batches = list(DataLoader(ds, batch_sampler=sampler, collate_fn=lambda items: pack([it[0] for it in items])))
    assert sum(int(bag_index.max()) + 1 for _, bag_index in batches) == 4
    for instances, bag_index in batches:
        assert instances.shape == (bag_index.shape[0], DIM)
        assert instances.shape[0] <= 50 or int(bag_index.max()) == 0
