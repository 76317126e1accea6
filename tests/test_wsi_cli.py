"""``abmil train / predict / heatmap`` end to end on tiny CLAM HDF5 slides, and every bad input
giving one ``abmil: error:`` line that names the slide and the field, exit 2, nothing written."""
from __future__ import annotations

import csv
import shutil
from dataclasses import fields
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from PIL import Image

from abmil.cli import build_parser, default_of, main, wsi_config_from_args
from abmil.explain.heatmap import heatmap_layout
from abmil.slides.train import WSIConfig, train_feature_model
from wsi_helpers import DIM, PATCH, fail, grid, make_dataset, write_slide

TRAIN = ["--epochs", "2", "--hidden", "16", "--att-dim", "8", "--chunk-size", "32", "--lr", "1e-3"]
SPLITS = ["train", "train", "val", "train", "train", "val", "test", "test"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A run trained through the CLI on 8 slides (train/val/test split column), one slide chunked."""
    root = tmp_path_factory.mktemp("wsi")
    manifest, features = make_dataset(root, 8, split=SPLITS, big=70)
    assert main(["train", "--manifest", str(manifest), "--features", str(features), "--out", str(root / "run"),
                 *TRAIN]) == 0
    return root, manifest, features



def copy_data(src: Path, dst: Path) -> tuple[Path, Path]:
    shutil.copytree(src / "features", dst / "features")
    shutil.copy(src / "manifest.csv", dst / "manifest.csv")
    return dst / "manifest.csv", dst / "features"


def write_coords_only(path: Path) -> None:
    with h5py.File(path, "w") as f:
        f.create_dataset("coords", data=grid(4))


# ----------------------------------------------------------------------------- flags and their defaults
REQUIRED = ["train", "--manifest", "m.csv", "--out", "run"]


def test_train_defaults_are_the_config_dataclass():
    """A default restated in the CLI would drift from WSIConfig's; none is."""
    args = build_parser().parse_args(REQUIRED)
    assert wsi_config_from_args(args) == WSIConfig()
    assert {f.name for f in fields(WSIConfig)} - set(vars(args)) == {"optimizer"}  # every other field has a flag
    assert args.device == default_of(train_feature_model, "device")
    changed = build_parser().parse_args([*REQUIRED, "--lr", "0.5", "--hidden", "7", "--bf16", "--val-split", "0.3"])
    assert wsi_config_from_args(changed) == WSIConfig(lr=0.5, hidden=7, bf16=True, val_split=0.3)


def test_pooling_flag_and_its_hidden_model_alias(capsys):
    parse = build_parser().parse_args
    assert parse(REQUIRED).pooling == WSIConfig().pooling
    assert parse([*REQUIRED, "--pooling", "attention"]).pooling == "attention"
    assert parse([*REQUIRED, "--model", "attention"]).pooling == "attention"  # deprecated spelling still works
    assert wsi_config_from_args(parse([*REQUIRED, "--model", "attention"])).pooling == "attention"
    with pytest.raises(SystemExit):
        parse(["train", "--help"])
    shown = capsys.readouterr().out
    assert "--pooling" in shown and "--model" not in shown
    assert main([*REQUIRED, "--pooling", "sum"]) == 2
    assert "argument --pooling: invalid choice: 'sum'" in capsys.readouterr().err


def test_default_of_reads_dataclass_fields_and_function_keywords():
    assert default_of(WSIConfig, "lr") == WSIConfig().lr
    assert default_of(train_feature_model, "resume") is False
    with pytest.raises(KeyError):
        default_of(WSIConfig, "nonsense")
    with pytest.raises(KeyError):
        default_of(train_feature_model, "dataset")  # positional, no default


# ----------------------------------------------------------------------------- the happy path
def test_train_prints_epochs_and_validation(trained, capsys):
    root, manifest, features = trained
    assert main(["train", "--manifest", str(manifest), "--features", str(features), "--out", str(root / "run"),
                 *TRAIN[:1], "3", *TRAIN[2:], "--resume"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("epoch 3, train_loss ") and "val_auc" in out[0]  # epochs 1-2 were done
    assert out[-1].startswith("wrote ") and "(epoch 3)" in out[-1]


def test_predict_writes_csv_and_attention_h5(trained, tmp_path, capsys):
    root, manifest, features = trained
    out = tmp_path / "preds.csv"
    assert main(["predict", "--run", str(root / "run"), "--manifest", str(manifest), "--features", str(features),
                 "--out", str(out)]) == 0
    rows = list(csv.DictReader(out.open()))
    assert [r["slide_id"] for r in rows] == [f"s{i:02d}" for i in range(8)]
    assert list(rows[0]) == ["slide_id", "label", "prob_normal", "prob_tumor", "predicted"]
    for r in rows:
        assert abs(float(r["prob_normal"]) + float(r["prob_tumor"]) - 1) < 1e-5
        assert r["predicted"] == ("tumor" if float(r["prob_tumor"]) > 0.5 else "normal")
    with h5py.File(tmp_path / "preds.attention.h5") as h5, h5py.File(features / "s00.h5") as slide:
        assert sorted(h5) == [r["slide_id"] for r in rows]
        g = h5["s00"]
        assert g["attention"].shape == (70,) and abs(g["attention"][:].sum() - 1) < 1e-5
        np.testing.assert_array_equal(g["coords"][:], slide["coords"][:])
        assert g.attrs["predicted"] == rows[0]["predicted"]


def test_predict_on_unlabelled_slides(trained, tmp_path, capsys):
    root, manifest, features = trained
    unlabelled = tmp_path / "new.csv"
    unlabelled.write_text("slide_id,label\ns00,\ns01,tumor\n")
    out = tmp_path / "preds.csv"
    assert main(["predict", "--run", str(root / "run"), "--manifest", str(unlabelled), "--features", str(features),
                 "--out", str(out)]) == 0
    rows = list(csv.DictReader(out.open()))
    assert [(r["slide_id"], r["label"]) for r in rows] == [("s00", ""), ("s01", "tumor")]
    assert all(r["predicted"] in ("normal", "tumor") for r in rows)
    # training still needs every label
    fail(capsys, ["train", "--manifest", str(unlabelled), "--features", str(features), "--out", str(tmp_path / "r"),
                  *TRAIN], "field 'label' is empty")


def test_heatmap_over_thumbnail_and_on_white(trained, tmp_path, capsys):
    root, _, features = trained
    coords = grid(70)
    thumb = tmp_path / "thumb.png"
    Image.fromarray(np.full((40, 64, 3), 220, np.uint8)).save(thumb)  # 8x9 patches of 256 px at 1/32
    out = tmp_path / "heat.png"
    assert main(["heatmap", "--run", str(root / "run"), "--slide", str(features / "s00.h5"),
                 "--thumbnail", str(thumb), "--downsample", "32", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "s00" in printed and "70 patches of 256 px" in printed  # patch size inferred from the grid
    layout = heatmap_layout(coords, PATCH, image_shape=(40, 64), title="t")
    assert Image.open(out).size == (layout.width, layout.height)
    out2 = tmp_path / "white.png"
    assert main(["heatmap", "--run", str(root / "run"), "--slide", str(features / "s01.h5"),
                 "--out", str(out2)]) == 0
    assert Image.open(out2).size[0] > 0


# ----------------------------------------------------------------------------- bad input
def test_train_bad_slides_name_slide_and_field(trained, tmp_path, capsys):
    root, *_ = trained
    cases = {
        "missing": lambda f: (f / "s03.h5").unlink(),
        "nofeatures": lambda f: write_coords_only(f / "s03.h5"),
        "dim": lambda f: write_slide(f / "s03.h5", np.zeros((5, DIM + 1), np.float32), grid(5)),
        "nan": lambda f: write_slide(f / "s03.h5", np.full((5, DIM), np.nan, np.float32), grid(5)),
    }
    fields = {"missing": "'path'", "nofeatures": "'features'", "dim": "'features'", "nan": "'features'"}
    for name, damage in cases.items():
        manifest, features = copy_data(root, tmp_path / name)
        damage(features)
        run = tmp_path / name / "run"
        fail(capsys, ["train", "--manifest", str(manifest), "--features", str(features), "--out", str(run),
                      *TRAIN], "s03", fields[name])
        assert not run.exists(), name  # nothing half-written


def test_train_duplicate_ids_and_bad_settings(trained, tmp_path, capsys):
    root, *_ = trained
    manifest, features = copy_data(root, tmp_path)
    manifest.write_text(manifest.read_text() + "s01,tumor,train\n")
    fail(capsys, ["train", "--manifest", str(manifest), "--features", str(features), "--out", str(tmp_path / "r")],
         "s01", "'slide_id'", "duplicate")
    manifest, _ = copy_data(root, tmp_path / "again")
    fail(capsys, ["train", "--manifest", str(manifest), "--features", str(features), "--out", str(tmp_path / "r"),
                  "--val-split", "0.2"], "already names validation")
    fail(capsys, ["train", "--manifest", str(manifest), "--features", str(features), "--out", str(tmp_path / "r"),
                  "--device", "nonsense"], "device")
    assert not (tmp_path / "r").exists()


def test_predict_bad_input_writes_nothing(trained, tmp_path, capsys):
    root, *_ = trained
    run = str(root / "run")
    manifest, features = copy_data(root, tmp_path)
    out = tmp_path / "preds.csv"
    # a label outside the run's classes
    text = manifest.read_text()
    manifest.write_text(text.replace("s02,normal", "s02,stroma"))
    fail(capsys, ["predict", "--run", run, "--manifest", str(manifest), "--features", str(features),
                  "--out", str(out)], "s02", "'label'", "stroma")
    manifest.write_text(text)
    # features of another dimension than the model's
    write_slide(features / "s05.h5", np.zeros((4, DIM * 2), np.float32), grid(4))
    fail(capsys, ["predict", "--run", run, "--manifest", str(manifest), "--features", str(features),
                  "--out", str(out)], "s05", "'features'", str(DIM))
    # NaN in the last slide: found while predicting, still before anything is written
    write_slide(features / "s05.h5", np.zeros((4, DIM), np.float32), grid(4))
    bad = np.zeros((4, DIM), np.float32)
    bad[2, 3] = np.nan
    write_slide(features / "s07.h5", bad, grid(4))
    fail(capsys, ["predict", "--run", run, "--manifest", str(manifest), "--features", str(features),
                  "--out", str(out)], "s07", "'features'", "instance 2")
    fail(capsys, ["predict", "--run", str(tmp_path / "norun"), "--manifest", str(manifest), "--out", str(out)],
         "checkpoint")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["features", "manifest.csv"]


def test_heatmap_bad_input(trained, tmp_path, capsys):
    root, _, features = trained
    run = str(root / "run")
    out = tmp_path / "h.png"
    fail(capsys, ["heatmap", "--run", run, "--slide", str(tmp_path / "gone.h5"), "--out", str(out)],
         "gone", "'path'")
    torch.save(torch.zeros(3, DIM), tmp_path / "nocoords.pt")
    fail(capsys, ["heatmap", "--run", run, "--slide", str(tmp_path / "nocoords.pt"), "--out", str(out)],
         "nocoords", "'coords'")
    fail(capsys, ["heatmap", "--run", run, "--slide", str(features / "s00.h5"), "--thumbnail", "x.png",
                  "--out", str(out)], "--downsample")
    assert not out.exists()
