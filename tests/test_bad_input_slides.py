"""Bad-input corpus (issue 30) for the whole-slide commands (train / predict / heatmap / evaluate): each case runs
``python -m abmil`` on real files and must exit 2 with one line ``abmil: error: ...`` naming the file, field or slide
at fault, with no traceback and nothing new on disk (a predictions CSV and its attention HDF5 are written both or
neither)."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from abmil.cli import main
from cli_helpers import assert_refused
from wsi_helpers import make_dataset

SMALL = ["--epochs", "1", "--hidden", "8", "--att-dim", "4"]


def _manifest(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture(scope="module")
def ws(tmp_path_factory) -> Path:
    """A trained run, broken copies of it, and manifests with one fault each (over the same 8 slides)."""
    root = tmp_path_factory.mktemp("slides")
    manifest, features = make_dataset(root, 8)
    assert main(["train", "--manifest", str(manifest), "--features", str(features), "--out", str(root / "run"),
                 *SMALL]) == 0
    assert main(["train", "--manifest", str(manifest), "--features", str(features), "--out", str(root / "wide"),
                 "--epochs", "1", "--hidden", "12", "--att-dim", "4"]) == 0
    info = json.loads((root / "run" / "checkpoint.json").read_text())
    shutil.copytree(root / "run", root / "noclasses")
    del info["classes"]
    (root / "noclasses" / "checkpoint.json").write_text(json.dumps(info))
    shutil.copytree(root / "run", root / "othersize")  # weights of a model with another hidden size
    wide = json.loads((root / "wide" / "checkpoint.json").read_text())
    shutil.copy(root / "wide" / wide["weights"], root / "othersize" / info["weights"])
    rows = manifest.read_text().splitlines()
    _manifest(root / "split_typo.csv", [rows[0] + ",split", *[r + (",trian" if i == 2 else ",train")
                                                               for i, r in enumerate(rows[1:])]])
    _manifest(root / "mixed_labels.csv", [rows[0], *[r.replace(",tumor", ",1") if i == 3 else r
                                                     for i, r in enumerate(rows[1:])]])
    _manifest(root / "one_class_train.csv", [rows[0] + ",split", *[r + (",train" if ",normal" in r else ",test")
                                                                    for r in rows[1:]]])
    _manifest(root / "no_labels.csv", ["slide_id,prob_normal,prob_tumor", "s00,0.4,0.6", "s01,0.7,0.3"])
    (root / "a_file").write_text("not a folder\n")
    return root


_TRAIN = ["train", "--features", "{ws}/features", *SMALL]
_PREDICT = ["predict", "--manifest", "{ws}/manifest.csv", "--features", "{ws}/features"]

CASES = [
    ("checkpoint-missing-key", [*_PREDICT, "--run", "{ws}/noclasses", "--out", "{ws}/p.csv"],
     "{ws}/noclasses/checkpoint.json"),
    ("weights-other-size", [*_PREDICT, "--run", "{ws}/othersize", "--out", "{ws}/p.csv"], "{ws}/othersize/"),
    ("heatmap-weights-other-size", ["heatmap", "--run", "{ws}/othersize", "--slide", "{ws}/features/s00.h5",
                                    "--out", "{ws}/h.png"], "{ws}/othersize/"),
    ("split-typo", [*_TRAIN, "--manifest", "{ws}/split_typo.csv", "--out", "{ws}/new"], "'trian'"),
    ("labels-mix-numbers-and-names", [*_TRAIN, "--manifest", "{ws}/mixed_labels.csv", "--out", "{ws}/new"],
     "labels mix class indices and class names"),
    ("one-class-training-split", [*_TRAIN, "--manifest", "{ws}/one_class_train.csv", "--out", "{ws}/new"],
     "one class only"),
    ("train-nan-lr", [*_TRAIN, "--manifest", "{ws}/manifest.csv", "--lr", "nan", "--out", "{ws}/new"], "lr"),
    ("resume-weights-other-size", [*_TRAIN, "--manifest", "{ws}/manifest.csv", "--out", "{ws}/othersize", "--resume"],
     "{ws}/othersize/"),
    ("train-out-is-a-file", [*_TRAIN, "--manifest", "{ws}/manifest.csv", "--out", "{ws}/a_file"], "{ws}/a_file"),
    ("study-out-is-a-file", [*_TRAIN, "--manifest", "{ws}/manifest.csv", "--folds", "2", "--out", "{ws}/a_file"],
     "{ws}/a_file"),
    ("predict-out-under-file", [*_PREDICT, "--run", "{ws}/run", "--out", "{ws}/a_file/p.csv"], "{ws}/a_file"),
    ("evaluate-no-labels", ["evaluate", "--predictions", "{ws}/no_labels.csv", "--out", "{ws}/eval"], "label"),
    ("heatmap-downsample-zero", ["heatmap", "--run", "{ws}/run", "--slide", "{ws}/features/s00.h5", "--thumbnail",
                                 "{ws}/a_file", "--downsample", "0", "--out", "{ws}/h.png"], "downsample"),
]


@pytest.mark.parametrize("args, culprit", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_slide_input_exits_2_with_one_line_naming_it(ws: Path, args: list[str], culprit: str):
    assert_refused(ws, args, culprit)


def test_predictions_are_written_both_or_neither(ws: Path, tmp_path: Path, monkeypatch):
    """The attention HDF5 is finished first; if the CSV cannot then be put in place, neither file appears."""
    import abmil.io as io

    real = io.os.replace
    calls = []

    def replace(src, dst):  # the second rename (the CSV's) fails as on a full disk
        calls.append(dst)
        if len(calls) == 2:
            raise OSError(28, "No space left on device")
        return real(src, dst)

    monkeypatch.setattr(io.os, "replace", replace)
    out = tmp_path / "p.csv"
    argv = [a.format(ws=ws) for a in _PREDICT] + ["--run", str(ws / "run"), "--out", str(out)]
    code = main(argv)
    assert code == 2 and not out.exists()
    assert len(calls) == 2 and str(calls[0]).endswith("p.attention.h5")  # the HDF5 was in place, then taken back out
    assert list(tmp_path.iterdir()) == []
