"""CLAM's split files (``splits_K.csv`` of create_splits_seq.py) as the folds of ``abmil train --splits-from``. The
files are written by CLAM's own ``save_splits`` code (dataset_modules/dataset_generic.py, with pandas), not by
hand."""
from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from abmil.cli import main
from abmil.slides.clam_splits import read_clam_splits
from abmil.slides.features import FeatureBagDataset
from wsi_helpers import fail, make_case_dataset

pd = pytest.importorskip("pandas")
SMALL = ["--epochs", "1", "--hidden", "8", "--att-dim", "4", "--lr", "1e-3"]


def save_splits(parts: dict[str, list[str]], filename) -> None:
    """CLAM's ``save_splits(split_datasets, ['train', 'val', 'test'], filename)``, its non-boolean branch: one
    Series of slide ids per part, side by side (the shorter padded with NaN), written with the index."""
    splits = [pd.Series(parts[k], name="slide_id", dtype=object) for k in ("train", "val", "test")]
    df = pd.concat(splits, ignore_index=True, axis=1)
    df.columns = ["train", "val", "test"]
    df.to_csv(filename)


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    root = tmp_path_factory.mktemp("clam")
    manifest, features, rows = make_case_dataset(root, 12)
    cases = list(dict.fromkeys(case for _, _, case in rows))
    slides_of = {c: [s for s, _, case in rows if case == c] for c in cases}
    return root, manifest, features, cases, slides_of


def _partition(cases, slides_of, k: int) -> list[dict[str, list[str]]]:
    """K disjoint test parts of whole cases; of the rest, every fourth case validates."""
    out = []
    for i in range(k):
        test = cases[i::k]
        rest = [c for c in cases if c not in test]
        val = rest[1::4]
        out.append({p: [s for c in part for s in slides_of[c]]
                    for p, part in (("train", [c for c in rest if c not in val]), ("val", val), ("test", test))})
    return out


def test_clam_folds_train_a_study_on_exactly_their_parts(cohort, tmp_path, capsys):
    root, manifest, features, cases, slides_of = cohort
    folds = _partition(cases, slides_of, 3)
    split_dir = tmp_path / "splits"
    split_dir.mkdir()
    for i, parts in enumerate(folds):
        save_splits(parts, split_dir / f"splits_{i}.csv")
    (split_dir / "splits_0_bool.csv").write_text("not read\n")  # CLAM's other files beside them
    assert open(split_dir / "splits_0.csv").readline() == ",train,val,test\n"  # pandas' index column
    out = tmp_path / "cv"
    assert main(["train", "--manifest", str(manifest), "--features", str(features), "--out", str(out),
                 "--splits-from", str(split_dir), *SMALL]) == 0
    written = json.loads((out / "splits.json").read_text())
    assert [f["key"] for f in written["folds"]] == ["r0_f0", "r0_f1", "r0_f2"] and "CLAM" in written["splitter"]
    for f, parts in zip(written["folds"], folds):
        for p in ("train", "val", "test"):
            assert sorted(f[p]["slides"]) == sorted(parts[p]), (f["key"], p)
    with open(out / "oof.csv", newline="") as fh:
        oof = list(csv.DictReader(fh))
    assert sorted(r["slide_id"] for r in oof) == sorted(s for c in cases for s in slides_of[c])
    for r in oof:
        assert r["slide_id"] in folds[int(r["fold"])]["test"]
    capsys.readouterr()
    # a rerun with other files is another study
    moved = next(v for v in slides_of.values() if folds[0]["val"][0] in v)  # a validation case, whole
    save_splits({**folds[0], "train": folds[0]["train"] + moved,
                 "val": [s for s in folds[0]["val"] if s not in moved]},
                split_dir / "splits_0.csv")
    fail(capsys, ["train", "--manifest", str(manifest), "--features", str(features), "--out", str(out),
                  "--splits-from", str(split_dir), *SMALL], "splits", "choose another --out")


def test_monte_carlo_splits_are_a_repeat_each_and_case_level_bags(cohort, tmp_path):
    root, manifest, features, cases, slides_of = cohort
    split_dir = tmp_path / "mc"
    split_dir.mkdir()
    folds = _partition(cases, slides_of, 3)
    folds[1] = {**folds[1], "test": folds[1]["test"] + folds[0]["test"],
                "train": [s for s in folds[1]["train"] if s not in folds[0]["test"]]}  # test parts overlap
    for i, parts in enumerate(folds):
        save_splits(parts, split_dir / f"splits_{i}.csv")
    ds = FeatureBagDataset(manifest, features)
    splits = read_clam_splits(split_dir, ds, seed=3)
    assert [s.key for s in splits] == ["r0_f0", "r1_f0", "r2_f0"]
    assert [ds.slide_ids[i] for i in splits[1].test] == [s for s in ds.slide_ids if s in folds[1]["test"]]
    assert len(read_clam_splits(split_dir, ds, k=2)) == 2
    by_case = read_clam_splits(split_dir, ds, bag_level="case")
    case_ids = list(dict.fromkeys(ds.case_ids))
    assert sorted(case_ids[i] for i in by_case[0].test) == sorted(cases[0::3])
    assert all(isinstance(s.test, np.ndarray) and s.test.dtype == np.int64 for s in by_case)


def test_bad_clam_split_files_are_refused_before_anything_is_written(cohort, tmp_path, capsys):
    root, manifest, features, cases, slides_of = cohort
    good = _partition(cases, slides_of, 2)
    argv = ["train", "--manifest", str(manifest), "--features", str(features), "--out", str(tmp_path / "cv"), *SMALL]

    def refused(parts, *fragments, extra=()):
        folder = tmp_path / f"s{len(list(tmp_path.iterdir()))}"
        folder.mkdir()
        for i, p in enumerate(parts):
            save_splits(p, folder / f"splits_{i}.csv")
        fail(capsys, [*argv, "--splits-from", str(folder), *extra], *fragments)
        assert not (tmp_path / "cv").exists()

    refused([{**good[0], "test": [*good[0]["test"], "nosuch"]}, good[1]], "splits_0.csv", "nosuch",
            "not in the manifest")
    multi = next(c for c in cases if len(slides_of[c]) > 1)
    leak = {p: [s for s in good[0][p] if s not in slides_of[multi]] for p in good[0]}
    leak["train"] += slides_of[multi][:1]
    leak["test"] += slides_of[multi][1:]
    refused([good[1], leak], "splits_1.csv", f"case {multi!r}", "keep a case's slides in one part")
    refused([good[0], {**good[1], "val": []}], "splits_1.csv", "no 'val' slides")
    refused([good[0], {**good[1], "test": [*good[1]["test"], good[1]["train"][0]]}], "both 'train' and 'test'")
    refused(good, "no splits_2.csv", extra=("--folds", "3"))
    refused(good, "--repeats", extra=("--repeats", "2"))
    fail(capsys, [*argv, "--splits-from", str(tmp_path)], "no splits_K.csv")
    no_col = tmp_path / "nocol"
    no_col.mkdir()
    (no_col / "splits_0.csv").write_text(",train,validation,test\n0,a,b,c\n")
    fail(capsys, [*argv, "--splits-from", str(no_col)], "splits_0.csv", "no column(s) val")
