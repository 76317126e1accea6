"""The shipped classic MIL benchmarks (real data) and the loaders' handling of bad input files."""
from __future__ import annotations

import functools
import gzip
import hashlib
from importlib import resources
from pathlib import Path

import numpy as np
import pytest
import scipy.io
import scipy.sparse

from abmil.data import benchmarks
from abmil.data.benchmarks import (
    BENCHMARKS,
    MILDataset,
    load_benchmark,
    load_dataset,
    load_mil_csv,
    load_mil_mat,
    validate_bags,
)
from abmil.errors import DataError

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"

# name: (bags, positive bags, negative bags, instances, features) - the counts of /work/shared/data/README.md.
COUNTS = {
    "musk1": (92, 47, 45, 476, 166),
    "musk2": (102, 39, 63, 6598, 166),
    "fox": (200, 100, 100, 1320, 230),
    "tiger": (200, 100, 100, 1220, 230),
    "elephant": (200, 100, 100, 1391, 230),
    "ucsb_breast": (58, 26, 32, 2002, 708),
}

# sha256 of the uncompressed shipped files = the upstream files' sums (data/README.md, files/README.md).
SHA256 = {
    "musk1.csv.gz": "6eb13180b63f7cfabd1c759c510a036ecb561069aa8e86700c76a2fe139d297a",
    "musk2.csv.gz": "14040c8891369392f87f4ce8969a20657e615e40e042f02d1a2fe2cabab01717",
    "fox.mat.gz": "9c550a12a4417f99eb81ad6fd16506ab1772a18dcb5fcb2e7a555a99f07c7ad2",
    "tiger.mat.gz": "b37a443b25ed98089d86900db6dc3774ce4293e56c186337518e977ffff0b817",
    "elephant.mat.gz": "b871820b5df11ef9050e0c0ec73e3d4d95b3e59b64bac237ec115548a5024a13",
    "ucsb_breast_cancer.csv.gz": "9e48d4d5d44ae2728c940e8d79b3e59ffcec3e515017f70d3feb0063148dbd96",
}


@functools.cache
def shipped(name: str) -> MILDataset:
    return load_benchmark(name)  # cached: musk2 and ucsb take ~1 s each to parse


def _shipped_bytes(filename: str) -> bytes:
    return gzip.decompress((resources.files("abmil.data") / "files" / filename).read_bytes())


# ---------------------------------------------------------------------------------------------------------------------
# Real shipped data.


def test_benchmark_names():
    assert BENCHMARKS == ("musk1", "musk2", "fox", "tiger", "elephant", "ucsb_breast")
    assert set(COUNTS) == set(BENCHMARKS)


@pytest.mark.parametrize("name", BENCHMARKS)
def test_shipped_counts(name):
    ds = shipped(name)
    n_bags, n_pos, n_neg, n_inst, d = COUNTS[name]
    assert len(ds) == n_bags
    assert int((ds.labels == 1).sum()) == n_pos and int((ds.labels == 0).sum()) == n_neg
    assert ds.n_instances == n_inst
    assert ds.n_features == d
    assert ds.labels.dtype == np.int64 and ds.labels.shape == (n_bags,)
    assert all(b.dtype == np.float32 and b.ndim == 2 and b.shape[0] >= 1 for b in ds.bags)
    assert ds.bag_ids == [str(i) for i in range(1, n_bags + 1)]
    assert ds.name == name and ds.source == f"abmil:{name}"


@pytest.mark.parametrize("filename", sorted(SHA256))
def test_shipped_files_are_the_upstream_bytes(filename):
    assert hashlib.sha256(_shipped_bytes(filename)).hexdigest() == SHA256[filename]


def test_files_readme_lists_every_sum():
    readme = (resources.files("abmil.data") / "files" / "README.md").read_text(encoding="utf-8")
    for filename, digest in SHA256.items():
        assert filename in readme and digest in readme


def test_load_dataset_by_name_and_by_path(tmp_path):
    musk1 = shipped("musk1")
    by_name = load_dataset("musk1")
    path = tmp_path / "m.csv.gz"
    path.write_bytes(gzip.compress(_shipped_bytes("musk1.csv.gz")))
    by_path = load_dataset(path)
    assert by_path.name == "m" and by_path.source == str(path)
    for other in (by_name, by_path):
        assert other.bag_ids == musk1.bag_ids
        np.testing.assert_array_equal(other.labels, musk1.labels)
        assert all(np.array_equal(a, b) for a, b in zip(other.bags, musk1.bags))


def test_plain_mat_path_loads(tmp_path):
    path = tmp_path / "tiger.mat"
    path.write_bytes(_shipped_bytes("tiger.mat.gz"))
    ds = load_dataset(path)
    assert (len(ds), ds.n_instances, ds.n_features) == (200, 1220, 230)


def test_package_never_reads_shared():
    text = Path(benchmarks.__file__).read_text(encoding="utf-8")
    assert "/work" not in text


@pytest.mark.skipif(not (SHARED_DATA / "mil_classic" / "elephant.csv").exists(), reason="shared data absent")
def test_shipped_elephant_mat_equals_shared_csv():
    csv_ds = load_mil_csv(SHARED_DATA / "mil_classic" / "elephant.csv", expected_features=230)
    mat_ds = shipped("elephant")
    assert csv_ds.bag_ids == mat_ds.bag_ids
    np.testing.assert_array_equal(csv_ds.labels, mat_ds.labels)
    assert all(np.array_equal(a, b) for a, b in zip(csv_ds.bags, mat_ds.bags))
    # And in float64, before the float32 cast: max abs diff exactly 0.
    raw = np.loadtxt(SHARED_DATA / "mil_classic" / "elephant.csv", delimiter=",")
    mat = scipy.io.loadmat(__import__("io").BytesIO(_shipped_bytes("elephant.mat.gz")))
    assert np.abs(mat["features"].toarray() - raw[:, 2:]).max() == 0.0
    np.testing.assert_array_equal(mat["bag_ids"].ravel(), raw[:, 1])
    np.testing.assert_array_equal(mat["labels"].toarray().ravel() > 0, raw[:, 0] == 1)


# ---------------------------------------------------------------------------------------------------------------------
# Bad CSV files.


def _csv(tmp_path: Path, text: str, name: str = "bad.csv") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def _raises(fn, path, *, bag=None, match=()):
    """Call fn; check the DataError names the file, the bag (when given) and each string of ``match``."""
    with pytest.raises(DataError) as info:
        fn(path)
    msg = str(info.value)
    assert str(path) in msg and info.value.path == str(path)
    if bag is not None:
        assert f"bag {bag}" in msg and info.value.bag == bag
    for part in match:
        assert part in msg, msg
    return info.value


def test_csv_good_small(tmp_path):
    path = _csv(tmp_path, "1,1,0.5,2\n1,1,1.5,3\n\n0,2,-1,4\n")
    ds = load_mil_csv(path)
    assert ds.bag_ids == ["1", "2"] and ds.labels.tolist() == [1, 0]
    np.testing.assert_array_equal(ds.bags[0], np.array([[0.5, 2], [1.5, 3]], dtype=np.float32))
    assert ds.name == "bad"


def test_csv_missing_file(tmp_path):
    _raises(load_mil_csv, tmp_path / "nope.csv", match=("file not found",))
    _raises(load_dataset, tmp_path / "nope.mat.gz", match=("file not found",))


def test_csv_empty(tmp_path):
    _raises(load_mil_csv, _csv(tmp_path, "\n\n"), match=("empty dataset",))


def test_csv_too_few_columns(tmp_path):
    _raises(load_mil_csv, _csv(tmp_path, "1,1,0.5\n1,2\n"), bag="2", match=("too few columns", "row 2"))


def test_csv_ragged_row(tmp_path):
    _raises(load_mil_csv, _csv(tmp_path, "1,1,0.5,1\n1,1,0.5,1\n0,2,1,2,3\n"), bag="2",
            match=("inconsistent feature dimension", "row 3"))


def test_csv_unparsable_value(tmp_path):
    _raises(load_mil_csv, _csv(tmp_path, "1,1,0.5,1\n0,7,0.5,abc\n"), bag="7",
            match=("unparsable value 'abc'", "row 2", "column 4"))


@pytest.mark.parametrize("token", ["nan", "inf", "-inf"])
def test_csv_non_finite(tmp_path, token):
    _raises(load_mil_csv, _csv(tmp_path, f"1,1,0.5,1\n0,3,0.5,1\n0,3,{token},1\n"), bag="3",
            match=("non-finite", "row 3"))


def test_csv_float32_overflow(tmp_path):
    _raises(load_mil_csv, _csv(tmp_path, "1,1,0.5,1\n0,4,1e300,1\n"), bag="4", match=("float32 range", "row 2"))


@pytest.mark.parametrize("label", ["2", "-1", "yes"])
def test_csv_label_not_01(tmp_path, label):
    _raises(load_mil_csv, _csv(tmp_path, f"1,1,0.5,1\n{label},5,0.5,1\n"), bag="5", match=("not 0 or 1", "row 2"))


def test_csv_label_not_constant(tmp_path):
    _raises(load_mil_csv, _csv(tmp_path, "1,1,0.5,1\n0,1,0.5,1\n"), bag="1", match=("not constant", "row 2"))


def test_csv_rows_not_contiguous(tmp_path):
    _raises(load_mil_csv, _csv(tmp_path, "1,1,0,1\n1,1,0,1\n0,2,0,1\n1,1,0,1\n"), bag="1",
            match=("not contiguous", "row 4"))


def test_csv_missing_bag_id(tmp_path):
    _raises(load_mil_csv, _csv(tmp_path, "1,1,0,1\n1, ,0,1\n"), match=("missing bag id", "row 2"))


def test_csv_instance_label_leak(tmp_path):
    row = ",".join(["0"] * 167)
    path = _csv(tmp_path, f"1,1,{row}\n0,2,{row}\n")
    err = _raises(lambda p: load_mil_csv(p, expected_features=166), path,
                  match=("167 features, expected 166", "instance-label", "leak"))
    assert err.bag is None
    assert load_mil_csv(path).n_features == 167  # without an expectation the file itself is well formed


def test_csv_gz_transparent_and_corrupt(tmp_path):
    path = tmp_path / "ok.csv.gz"
    path.write_bytes(gzip.compress(b"1,1,0.5,1\n0,2,0.5,1\n"))
    assert len(load_dataset(path)) == 2
    bad = tmp_path / "bad.csv.gz"
    bad.write_bytes(gzip.compress(b"1,1,0.5,1\n" * 50)[:30])
    _raises(load_mil_csv, bad, match=("corrupt gzip",))


# ---------------------------------------------------------------------------------------------------------------------
# Bad MATLAB files.


def _mat(tmp_path: Path, *, features, labels, bag_ids, drop=(), name="bad.mat", sparse=True) -> Path:
    fields = {
        "features": scipy.sparse.csc_matrix(np.asarray(features, dtype=float)) if sparse else np.asarray(features),
        "labels": scipy.sparse.csc_matrix(np.asarray(labels, dtype=float).reshape(1, -1)),
        "bag_ids": np.asarray(bag_ids, dtype=np.uint8).reshape(1, -1),
        "comment": "test",
    }
    path = tmp_path / name
    scipy.io.savemat(path, {k: v for k, v in fields.items() if k not in drop})
    return path


GOOD = dict(features=[[1, 2], [3, 4], [5, 6]], labels=[1, 1, -1], bag_ids=[1, 1, 2])


def test_mat_good_small(tmp_path):
    ds = load_mil_mat(_mat(tmp_path, **GOOD))
    assert ds.bag_ids == ["1", "2"] and ds.labels.tolist() == [1, 0]
    np.testing.assert_array_equal(ds.bags[1], np.array([[5, 6]], dtype=np.float32))
    dense01 = load_mil_mat(_mat(tmp_path, **{**GOOD, "labels": [0, 0, 1]}, sparse=False, name="d.mat"))
    assert dense01.labels.tolist() == [0, 1]


def test_mat_gz_transparent(tmp_path):
    src = _mat(tmp_path, **GOOD)
    path = tmp_path / "good.mat.gz"
    path.write_bytes(gzip.compress(src.read_bytes()))
    assert load_dataset(path).labels.tolist() == [1, 0]


@pytest.mark.parametrize("field", ["features", "labels", "bag_ids"])
def test_mat_missing_field(tmp_path, field):
    _raises(load_mil_mat, _mat(tmp_path, **GOOD, drop=(field,)), match=(f"no field '{field}'",))


def test_mat_not_a_mat_file(tmp_path):
    path = tmp_path / "junk.mat"
    path.write_bytes(b"this is not a MATLAB file" * 10)
    _raises(load_mil_mat, path, match=("not a readable MATLAB",))


def test_mat_empty(tmp_path):
    _raises(load_mil_mat, _mat(tmp_path, features=np.zeros((0, 3)), labels=[], bag_ids=[]),
            match=("empty dataset",))


def test_mat_length_mismatch(tmp_path):
    _raises(load_mil_mat, _mat(tmp_path, **{**GOOD, "labels": [1, 1]}), match=("'labels'", "1 x 3"))


def test_mat_label_not_pm1(tmp_path):
    _raises(load_mil_mat, _mat(tmp_path, **{**GOOD, "labels": [1, 1, 2]}), bag="2",
            match=("not -1/+1 or 0/1", "instance 3"))
    _raises(load_mil_mat, _mat(tmp_path, **{**GOOD, "labels": [-1, -1, 0]}, name="mix.mat"), bag="2",
            match=("not -1/+1 or 0/1",))


def test_mat_label_not_constant(tmp_path):
    _raises(load_mil_mat, _mat(tmp_path, **{**GOOD, "labels": [1, -1, -1]}), bag="1",
            match=("not constant", "instance 2"))


def test_mat_rows_not_contiguous(tmp_path):
    _raises(load_mil_mat, _mat(tmp_path, features=np.ones((4, 2)), labels=[1, 1, 1, 1], bag_ids=[1, 2, 2, 1]),
            bag="1", match=("not contiguous", "instance 4"))


def test_mat_non_finite(tmp_path):
    _raises(load_mil_mat, _mat(tmp_path, **{**GOOD, "features": [[1, 2], [3, np.nan], [5, 6]]}), bag="1",
            match=("non-finite", "instance 2"))


def test_mat_instance_label_leak(tmp_path):
    path = _mat(tmp_path, features=np.ones((2, 231)), labels=[1, -1], bag_ids=[1, 2])
    _raises(lambda p: load_mil_mat(p, expected_features=230), path,
            match=("231 features, expected 230", "instance-label"))


# ---------------------------------------------------------------------------------------------------------------------
# validate_bags and dispatch.


def _bad_bags(bags, labels, *, bag=None, match=(), bag_ids=None):
    with pytest.raises(DataError) as info:
        validate_bags(bags, labels, source="my.npz", bag_ids=bag_ids)
    msg = str(info.value)
    assert "file my.npz" in msg
    if bag is not None:
        assert f"bag {bag}" in msg
    for part in match:
        assert part in msg, msg


def test_validate_bags_accepts_good():
    validate_bags([np.ones((2, 3)), np.zeros((1, 3), dtype=np.float32)], np.array([0, 1]), source=None)


def test_validate_bags_errors():
    ok = np.ones((2, 3))
    _bad_bags([], [], match=("empty dataset",))
    _bad_bags([ok, np.ones((0, 3))], [0, 1], bag="b2", bag_ids=["b1", "b2"], match=("empty bag", "index 1"))
    _bad_bags([ok, np.ones((0, 3))], [0, 1], bag="1", match=("empty bag",))
    _bad_bags([ok, np.ones(3)], [0, 1], bag="1", match=("2-D",))
    _bad_bags([ok, np.ones((2, 4))], [0, 1], bag="1", match=("inconsistent feature dimension", "4", "3"))
    _bad_bags([ok, np.array([[1.0, np.inf, 0]])], [0, 1], bag="1", match=("non-finite",))
    _bad_bags([ok, ok], [0, 2], bag="1", match=("not 0 or 1",))
    _bad_bags([ok, ok], [0], match=("2 bags but labels of shape (1,)",))


def test_load_dataset_rejects_unknown(tmp_path):
    _raises(load_dataset, _csv(tmp_path, "1,1,1\n", name="x.txt"), match=("neither a benchmark name",))
    with pytest.raises(DataError, match="unknown benchmark 'fox2'"):
        load_benchmark("fox2")
