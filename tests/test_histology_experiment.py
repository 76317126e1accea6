"""The histology experiment end to end on real images: CV units, results files, resume, input errors, heatmaps, demo.

Fixtures are built in tmp_path in the published layouts from the real images of /work/shared/data: UCSB TIFFs
cropped to 96x128 px (10-12 tissue tiles) under their own names, and six Warwick ``img{i}`` folders copied unchanged.
Tests that need them skip when that folder is absent.
"""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import scipy.io
from PIL import Image
from sklearn.metrics import roc_auc_score

from abmil.cli import main
from abmil.data.histology_training import FloatBags
from abmil.errors import DataError
from abmil.experiments import histology as hx
from abmil.experiments.histology import explain_histology, load_unit_model, reproduce_histology
from abmil.experiments.histology_demo import DEMO_IMAGE, demo_bags, demo_histology, demo_image_path
from abmil.explain.heatmap import COLORBAR_PX, heatmap_layout
from abmil.explain.histology import heatmap_for_image, patch_scores
from abmil.report import paper
from abmil.report.results import CORE_KEYS, read_results
from abmil.train.fit import predict

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
BACKGROUND_SCRIPT = Path(__file__).resolve().parents[1] / "results" / "histology-breast" / "attention_vs_background.py"
BISQUE = SHARED_DATA / "ucsb_breast_images" / "Bisque"
CLASSIFICATION = SHARED_DATA / "colon_crc" / "Classification"
BREAST_FILES = [f"ytma10_010704_{kind}{i}_ccd.tif" for kind in ("benign", "malignant") for i in (1, 2, 3)]
# three negative folders with few nuclei (6, 8, 11) and three positive ones (88, 96, 102 nuclei)
COLON_FOLDERS = ("img96", "img74", "img35", "img38", "img72", "img32")
FAST = {"repeats": 1, "folds": 2, "epochs": 2, "patience": 1, "progress": False}


def _need(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"shared data absent: {path}")
    return path


@pytest.fixture(scope="module")
def breast_root(tmp_path_factory) -> Path:
    """``root/Bisque/`` with 3 benign + 3 malignant real UCSB images, each cropped to rows 384:480, cols 384:512
    (10-12 tissue tiles of 32x32 each)."""
    src = _need(BISQUE)
    root = tmp_path_factory.mktemp("ucsb")
    (root / "Bisque").mkdir()
    for name in BREAST_FILES:
        with Image.open(src / name) as im:
            im.convert("RGB").crop((384, 384, 512, 480)).save(root / "Bisque" / name)
    return root


@pytest.fixture(scope="module")
def colon_root(tmp_path_factory) -> Path:
    """``root/Classification/img{i}/`` for six real folders, files copied unchanged."""
    src = _need(CLASSIFICATION)
    root = tmp_path_factory.mktemp("warwick") / "Classification"
    for name in COLON_FOLDERS:
        (root / name).mkdir(parents=True)
        for f in (src / name).iterdir():
            shutil.copyfile(f, root / name / f.name)  # copyfile: the shared files are read-only
    return root


def _copy(tree: Path, dst: Path) -> Path:
    shutil.copytree(tree, dst)
    return dst


# --------------------------------------------------------------------------------------------- a full small run

def test_breast_run_files_schema_and_resume(breast_root, tmp_path, monkeypatch, capsys):
    out = tmp_path / "run"
    models = ("attention", "instance-mean")
    rows = reproduce_histology("breast", breast_root, models=models, out_dir=out, **FAST)

    assert sorted(p.name for p in out.iterdir()) == ["models", "results.csv", "results.json", "results.md", "units"]
    assert sorted(p.name for p in (out / "units").iterdir()) == sorted(
        f"{m}__rep0__fold{f}.json" for m in models for f in (0, 1))
    assert sorted(p.name for p in (out / "models").iterdir()) == [f"{m}.safetensors" for m in sorted(models)]

    # one row per (model, metric, averaging): the per-fold means first, then the pooled predictions; the core
    # schema first; the paper's number beside ours
    assert [(r.model, r.metric, r.extra["averaging"]) for r in rows] == [
        (m, x, how) for how in ("folds", "pooled") for m in models for x in paper.HISTOLOGY_METRICS]
    raw = json.loads((out / "results.json").read_text())
    assert all(list(d)[:len(CORE_KEYS)] == list(CORE_KEYS) for d in raw)
    for r in rows:
        assert r.dataset == "breast" and 0.0 <= r.mean <= 1.0
        assert (r.paper_mean, r.paper_std) == paper.paper_value("histology", "breast", r.model, r.metric)
        assert r.extra["max_epochs"] == 2 and r.extra["patience"] == 1
        if r.extra["averaging"] == "folds":
            assert r.n_runs == 2 and r.extra["std_over"] == "folds"
        else:  # one repetition: one pooled score, no spread
            assert r.n_runs == 1 and r.std is None
    # pooled = the metric of all six test predictions of the repetition at once, not the mean of the two folds'
    units = [json.loads((out / "units" / f"attention__rep0__fold{f}.json").read_text()) for f in (0, 1)]
    labels = np.concatenate([u["test_labels"] for u in units])
    probs = np.concatenate([u["test_probs"] for u in units])
    pooled = {r.metric: r.mean for r in rows if r.model == "attention" and r.extra["averaging"] == "pooled"}
    assert pooled["accuracy"] == np.mean((probs >= 0.5) == labels) and len(labels) == 6
    assert pooled["auc"] == pytest.approx(roc_auc_score(labels, probs), abs=1e-12)
    assert [(r.model, r.metric, r.mean) for r in read_results(out / "results.csv")] == [
        (r.model, r.metric, r.mean) for r in rows]
    md = (out / "results.md").read_text()
    assert "### Breast Cancer" in md and "| Attention | ours " in md and "paper 0.745 ± 0.018" in md
    assert "Gated-Attention (paper only)" in md and "--dataset breast" in md
    assert "### Breast Cancer (averaging=pooled, " in md and "averaging=pooled: each repetition's" in md

    unit = json.loads((out / "units" / "attention__rep0__fold1.json").read_text())
    assert set(unit["metrics"]) == set(paper.HISTOLOGY_METRICS)
    assert len(unit["test"]) == len(unit["test_probs"]) == 3 and len(unit["val"]) >= 1
    assert set(unit["train"]).isdisjoint(unit["val"]) and set(unit["train"] + unit["val"]).isdisjoint(unit["test"])
    assert unit["history"]["epochs_run"] <= 2 and unit["train_seconds"] > 0

    # resume: every unit is cached, nothing is trained again, the same rows come back
    def boom(unit):
        raise AssertionError(f"retrained {unit.key}")

    monkeypatch.setattr(hx, "_train_unit", boom)
    again = reproduce_histology("breast", breast_root / "Bisque", models=models, out_dir=out, **FAST)
    assert [(r.model, r.metric, r.mean, r.std) for r in again] == [(r.model, r.metric, r.mean, r.std) for r in rows]
    # other settings are not the cached ones: the unit would be trained again
    with pytest.raises(AssertionError, match="retrained attention__rep0__fold0"):
        reproduce_histology("breast", breast_root, models=models, out_dir=out, **{**FAST, "epochs": 3})

    # --status: the finished folds and their mean metrics, without training (monkeypatched to fail above)
    fast = {k: v for k, v in FAST.items() if k != "progress"}
    status = hx.histology_progress("breast", breast_root, models=models, out_dir=out, **fast).splitlines()
    acc = next(r.mean for r in rows if (r.model, r.metric) == ("attention", "accuracy"))
    assert status[0].startswith("breast attention: 2/2 folds, ") and f"accuracy {acc:.3f}" in status[0]
    assert "(done)" in status[0] and "to go" not in status[0]
    assert f"pooled per repetition, mean over the 1 finished: accuracy {pooled['accuracy']:.3f}," in status[0]
    assert hx.histology_progress("breast", breast_root, models=["gated"], out_dir=out, **fast) == (
        "breast gated: 0/2 folds")
    assert hx.histology_progress("breast", breast_root, models=models, out_dir=out, **{**fast, "epochs": 3}) == (
        "breast attention: 0/2 folds\nbreast instance-mean: 0/2 folds")  # other settings: none of these units
    assert main(["reproduce", "histology", "--dataset", "breast", "--data-dir", str(breast_root), "--models",
                 "attention", "--repeats", "1", "--folds", "2", "--epochs", "2", "--patience", "1", "--out", str(out),
                 "--status"]) == 0
    assert capsys.readouterr().out == status[0] + "\n"

    # the saved fold-0 model paints a heatmap of one of its test images
    net, meta = load_unit_model(out, "attention")
    image = breast_root / "Bisque" / f"{meta['test'][0]}.tif"
    heat = heatmap_for_image(net, image, tmp_path / "breast.png")
    layout = heatmap_layout(heat.coords[:, ::-1], 32, image_shape=(96, 128), title="x")
    with Image.open(heat.out) as im:
        assert im.size == (layout.width, layout.height) and layout.width >= 128 + COLORBAR_PX
    assert heat.score_kind == "attention" and heat.scores.shape == (len(heat.bag),) and len(heat.bag) >= 10
    assert heat.bag.label == int("malignant" in image.name)
    prob, scores, kind = patch_scores(net, heat.bag.patches)
    assert kind == "attention" and prob == heat.prob and np.array_equal(scores, heat.scores)
    assert abs(scores.sum() - 1.0) < 1e-5

    # the committed breast analysis script runs on such a run: one line per test image of the fold, then a summary
    done = subprocess.run([sys.executable, str(BACKGROUND_SCRIPT), "--run", str(out), "--data-dir", str(breast_root),
                           "--folds", "0:0"], capture_output=True, text=True, check=True)
    lines = done.stdout.splitlines()
    assert lines[0].startswith("6 images, no model: AUC of -(mean white fraction) ")
    assert lines[1].startswith("2 finished folds of attention, 6 test predictions: rho(P(positive), ")
    assert lines[2].startswith("repeat 0 fold 0: test AUC ") and len(lines) == 4 + len(meta["test"])
    assert all(f"  {name} label " in line for name, line in zip(meta["test"], lines[3:-1]))
    assert lines[-1].startswith(f"{len(meta['test'])} images: median rho ")


def test_more_repeats_on_a_finished_run_trains_only_the_new_repeats(breast_root, tmp_path, monkeypatch):
    out = tmp_path / "run"
    reproduce_histology("breast", breast_root, models=["attention"], out_dir=out, **FAST)
    first = {f: (out / "units" / f"attention__rep0__fold{f}.json").read_bytes() for f in (0, 1)}

    trained, train_unit = [], hx._train_unit

    def spy(unit):
        trained.append(unit.key)
        return train_unit(unit)

    monkeypatch.setattr(hx, "_train_unit", spy)
    rows = reproduce_histology("breast", breast_root, models=["attention"], out_dir=out, **{**FAST, "repeats": 2})
    assert sorted(trained) == ["attention__rep1__fold0", "attention__rep1__fold1"]
    assert all((out / "units" / f"attention__rep0__fold{f}.json").read_bytes() == first[f] for f in (0, 1))
    acc = next(r for r in rows if (r.metric, r.extra["averaging"]) == ("accuracy", "folds"))
    assert acc.n_runs == 4 and acc.extra["std_over"] == "repeats"
    assert "--repeats 2" in (out / "results.md").read_text()
    # the units that stay count as finished for --status too
    fast = {k: v for k, v in FAST.items() if k != "progress"}
    assert hx.histology_progress("breast", breast_root, models=["attention"], out_dir=out,
                                 **{**fast, "repeats": 3}).startswith("breast attention: 4/6 folds, ")


def test_killed_unit_resumes_from_its_checkpoint(breast_root, tmp_path, monkeypatch):
    """A run killed in the middle of a unit leaves that unit's checkpoint; the rerun continues it (no epoch trained
    twice) and the unit comes out as in a run that was never killed."""
    settings = {**FAST, "epochs": 3, "patience": 3}
    reproduce_histology("breast", breast_root, models=("attention",), out_dir=tmp_path / "clean", **settings)
    fit = hx.fit

    def killed_after_epoch_1(*args, **kwargs):
        def kill(epoch, history):
            if epoch == 0:
                raise KeyboardInterrupt

        return fit(*args, on_epoch_end=kill, **kwargs)

    out = tmp_path / "run"
    monkeypatch.setattr(hx, "fit", killed_after_epoch_1)
    with pytest.raises(KeyboardInterrupt):
        reproduce_histology("breast", breast_root, models=("attention",), out_dir=out, **settings)
    assert (out / "checkpoints" / "attention__rep0__fold0" / "checkpoint.json").is_file()
    assert not any((out / "units").iterdir())
    fast = {k: v for k, v in settings.items() if k != "progress"}
    assert hx.histology_progress("breast", breast_root, models=["attention"], out_dir=out, **fast) == (
        "breast attention: 0/2 folds; resumes rep0 fold0 after epoch 1")
    assert hx.histology_progress("breast", breast_root, models=["attention"], out_dir=out, **{**fast, "seed": 1}) == (
        "breast attention: 0/2 folds")  # another run's checkpoint is not this one's
    monkeypatch.undo()
    reproduce_histology("breast", breast_root, models=("attention",), out_dir=out, **settings)
    assert not (out / "checkpoints").exists()
    for fold in (0, 1):
        name = f"attention__rep0__fold{fold}.json"
        unit, clean = (json.loads((d / "units" / name).read_text()) for d in (out, tmp_path / "clean"))
        assert unit["history"]["resumed_at"] == ([1] if fold == 0 else [])
        assert unit["test_probs"] == clean["test_probs"] and unit["metrics"] == clean["metrics"]
        assert unit["history"]["val_loss"] == clean["history"]["val_loss"] and unit["history"]["epochs_run"] == 3


def test_colon_run_localisation_and_marked_heatmap(colon_root, tmp_path):
    out = tmp_path / "run"
    rows = reproduce_histology("colon", colon_root, models=["attention"], out_dir=out, **{**FAST, "epochs": 1})
    # instance AUC is a per-fold measure: no pooled row of it
    assert [(r.metric, r.extra["averaging"]) for r in rows] == [
        *((x, "folds") for x in paper.HISTOLOGY_METRICS), ("instance_auc", "folds"),
        *((x, "pooled") for x in paper.HISTOLOGY_METRICS)]
    inst = rows[len(paper.HISTOLOGY_METRICS)]
    assert inst.paper_mean is None and 0.0 <= inst.mean <= 1.0 and inst.n_runs == 2
    assert "Instance AUC" in (out / "results.md").read_text()

    text = explain_histology(out, out=tmp_path / "explained.png")  # default: a positive test image of fold 0
    assert "a test image of fold 0" in text and "label 1" in text and (tmp_path / "explained.png").is_file()

    net, _ = load_unit_model(out, "attention")
    heat = heatmap_for_image(net, colon_root / "img38" / "img38.bmp", tmp_path / "colon.png")
    assert heat.patch_size == 27 and heat.scores.shape == (88,) and heat.bag.label == 1
    png = np.asarray(Image.open(heat.out).convert("RGB"))
    layout = heatmap_layout(heat.coords[:, ::-1], 27, image_shape=(500, 500), title="x")
    assert png.shape == (layout.height, layout.width, 3) and layout.width >= 500 + COLORBAR_PX
    # each epithelial nucleus is marked: a black dot at its centre
    centres = heat.bag.centres[heat.bag.instance_labels == 1]
    z = layout.zoom
    dots = [png[layout.top + int((r + 0.5) * z), int((c + 0.5) * z)].tolist() == [0, 0, 0] for r, c in centres]
    assert len(centres) == 26 and np.mean(dots) > 0.9


# --------------------------------------------------------------------------------------------- bad input

@pytest.mark.filterwarnings("ignore:Corrupt EXIF")  # Pillow, on the truncated TIFF
def test_bad_data_names_the_file_and_writes_nothing(breast_root, colon_root, tmp_path):
    out = tmp_path / "never"

    truncated = _copy(breast_root / "Bisque", tmp_path / "trunc" / "Bisque")
    victim = truncated / BREAST_FILES[4]
    victim.write_bytes(victim.read_bytes()[:2000])
    with pytest.raises(DataError, match=BREAST_FILES[4]):
        reproduce_histology("breast", truncated, out_dir=out, **FAST)

    small = _copy(breast_root / "Bisque", tmp_path / "small" / "Bisque")
    Image.new("RGB", (20, 20), (120, 60, 140)).save(small / BREAST_FILES[0])
    with pytest.raises(DataError, match=f"{BREAST_FILES[0]}.*smaller than one 32x32 patch"):
        reproduce_histology("breast", small, out_dir=out, **FAST)

    no_detection = _copy(colon_root, tmp_path / "nodet" / "Classification")
    scipy.io.savemat(str(no_detection / "img74" / "img74_others.mat"), {"points": np.zeros((2, 2))})
    with pytest.raises(DataError, match="img74_others.mat.*no 'detection'"):
        reproduce_histology("colon", no_detection, out_dir=out, **FAST)

    with pytest.raises(DataError, match="cannot be split into 4 stratified folds"):
        reproduce_histology("breast", breast_root, out_dir=out, **{**FAST, "folds": 4})
    assert not out.exists()


def test_lr_weight_decay_stain_normalisation_and_kept_models(breast_root, tmp_path, capsys):
    out = tmp_path / "options"
    fast = {**FAST, "folds": 2, "epochs": 1}
    assert main(["reproduce", "histology", "--dataset", "breast", "--data-dir", str(breast_root), "--models",
                 "attention", "--repeats", "1", "--folds", "2", "--epochs", "1", "--patience", "1", "--lr", "2e-4",
                 "--weight-decay", "5e-3", "--stain-normalize", "--keep-models", "--out", str(out),
                 "--no-progress"]) == 0
    capsys.readouterr()
    unit = json.loads((out / "units" / "attention__rep0__fold0.json").read_text())
    config = unit["settings"]["config"]
    assert (config["lr"], config["weight_decay"], unit["settings"]["stain_normalize"]) == (2e-4, 5e-3, True)
    # results.md carries the command that reruns it
    assert "--lr 0.0002 --weight-decay 0.005 --stain-normalize" in (out / "results.md").read_text()
    status = {k: v for k, v in fast.items() if k != "progress"}
    options = {"lr": 2e-4, "weight_decay": 5e-3, "stain_normalize": True}
    assert hx.histology_progress("breast", breast_root, models=["attention"], out_dir=out, **options,
                                 **status).startswith("breast attention: 2/2 folds")
    # the preset's settings are another run: none of these units counts for it
    assert hx.histology_progress("breast", breast_root, models=["attention"], out_dir=out, **status) == (
        "breast attention: 0/2 folds")

    # every fold's model is kept; each normalises inside: it gives its unit's test probabilities again, the bare
    # CNN does not
    assert sorted(p.name for p in (out / "models").iterdir()) == [
        "attention.safetensors", "attention__rep0__fold0.safetensors", "attention__rep0__fold1.safetensors"]
    bags = {b.bag_id: b for b in hx.load_histology("breast", breast_root).bags}
    for fold in (0, 1):
        unit = json.loads((out / "units" / f"attention__rep0__fold{fold}.json").read_text())
        net, meta = load_unit_model(out, "attention", fold=fold)
        assert meta["settings"] == unit["settings"] and meta["settings"]["stain_normalize"] is True
        test = FloatBags([bags[i] for i in unit["test"]])
        assert np.allclose(predict(net, test)[0].numpy(), unit["test_probs"], atol=1e-5)
    net.encoder.preprocess = None
    assert not np.allclose(predict(net, test)[0].numpy(), unit["test_probs"], atol=1e-3)
    with pytest.raises(FileNotFoundError, match="--keep-models"):
        load_unit_model(out, "attention", repeat=1)

    # a heatmap from fold 1's model, of one of its test images
    image = breast_root / "Bisque" / f"{unit['test'][0]}.tif"
    assert main(["heatmap", "--run", str(out), "--image", str(image), "--fold", "1",
                 "--out", str(tmp_path / "fold1.png")]) == 0
    assert "a test image of fold 1" in capsys.readouterr().out and (tmp_path / "fold1.png").is_file()


def test_stricter_background_rule_trains_tests_and_paints_the_same_cut(breast_root, tmp_path, capsys):
    """--max-white-fraction: the run's bags, its unit settings, its command, --status and its heatmaps all use it."""
    out = tmp_path / "strict"
    assert main(["reproduce", "histology", "--dataset", "breast", "--data-dir", str(breast_root), "--models",
                 "attention", "--repeats", "1", "--folds", "2", "--epochs", "1", "--patience", "1",
                 "--max-white-fraction", "0.25", "--out", str(out), "--no-progress"]) == 0
    capsys.readouterr()
    unit = json.loads((out / "units" / "attention__rep0__fold0.json").read_text())
    assert unit["settings"]["max_white_fraction"] == 0.25
    assert "--max-white-fraction 0.25 --out" in (out / "results.md").read_text()
    paper_rule = {b.bag_id: len(b) for b in hx.load_histology("breast", breast_root).bags}
    strict = {b.bag_id: b for b in hx.load_histology("breast", breast_root, max_white_fraction=0.25).bags}
    assert all(len(strict[k]) <= paper_rule[k] for k in paper_rule)
    assert sum(map(len, strict.values())) < sum(paper_rule.values())  # some tissue tiles are 25-75% white
    status = {**{k: v for k, v in FAST.items() if k != "progress"}, "epochs": 1}
    assert hx.histology_progress("breast", breast_root, models=["attention"], out_dir=out, max_white_fraction=0.25,
                                 **status).startswith("breast attention: 2/2 folds")
    assert hx.histology_progress("breast", breast_root, models=["attention"], out_dir=out, **status) == (
        "breast attention: 0/2 folds")  # the paper's rule is another run
    # the saved model was tested on the strict bags, and a heatmap of a test image cuts it the same way
    net, _ = load_unit_model(out, "attention")
    test = FloatBags([strict[i] for i in unit["test"]])
    assert np.allclose(predict(net, test)[0].numpy(), unit["test_probs"], atol=1e-5)
    name = max(unit["test"], key=lambda k: paper_rule[k] - len(strict[k]))
    assert len(strict[name]) < paper_rule[name]  # so that the count below tells the two cuts apart
    image = breast_root / "Bisque" / f"{name}.tif"
    assert main(["heatmap", "--run", str(out), "--image", str(image), "--out", str(tmp_path / "strict.png")]) == 0
    assert f": {len(strict[name])} patches of 32x32" in capsys.readouterr().out


@pytest.mark.parametrize("kwargs, message", [
    ({"dataset": "lung"}, "dataset must be one of breast, colon"),
    ({"models": ["mi-net-ds"]}, "unknown histology model"),
    ({"folds": 1}, "folds must be an integer >= 2"),
    ({"epochs": 0}, "epochs must be an integer >= 1"),
    ({"jobs": 0}, "jobs must be an integer >= 1"),
    ({"lr": 0.0}, "lr must be a finite number > 0"),
    ({"weight_decay": float("nan")}, "weight_decay must be a finite number"),
    ({"weight_decay": -1e-3}, "weight_decay must be a finite number >= 0"),
    ({"max_white_fraction": 0.0}, r"max_white_fraction must be in \(0, 1\]"),
    ({"max_white_fraction": 1.5}, r"max_white_fraction must be in \(0, 1\]"),
    ({"dataset": "colon", "max_white_fraction": 0.5}, "max_white_fraction is for the breast grid"),
])
def test_bad_arguments_write_nothing(kwargs, message, tmp_path):
    args = {"dataset": "breast", "data_dir": tmp_path / "nowhere", "out_dir": tmp_path / "out", **FAST, **kwargs}
    with pytest.raises(ValueError, match=message):
        reproduce_histology(**args)
    assert not (tmp_path / "out").exists()


# --------------------------------------------------------------------------------------------- demo

def test_demo_image_ships_and_bags_follow_the_rule():
    path = demo_image_path()
    assert path.name == DEMO_IMAGE and path.is_file() and path.stat().st_size < 1_000_000
    readme = (path.parent / "README.md").read_text()
    assert DEMO_IMAGE in readme and "CC0" in readme
    bags = demo_bags(path)
    assert len(bags) == 60 and sum(b.label for b in bags) == 24
    assert all(b.label == b.instance_labels.max() for b in bags)


def test_demo_end_to_end(tmp_path):
    text = demo_histology(tmp_path, epochs=1)
    assert "NOT A RESULT" in text and "COLOUR RULE" in text and "60 bags, 24 positive" in text
    for name in ("heatmap.png", "rule.png"):
        with Image.open(tmp_path / name) as im:
            assert im.size[0] >= 1110 + COLORBAR_PX and im.size[1] >= 1483


def test_cli_truncated_image_exits_2_naming_it(breast_root, tmp_path):
    import subprocess
    import sys

    truncated = _copy(breast_root / "Bisque", tmp_path / "trunc" / "Bisque")
    victim = truncated / BREAST_FILES[1]
    victim.write_bytes(victim.read_bytes()[:2000])
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, "-m", "abmil", "reproduce", "histology", "--dataset", "breast",
                           "--data-dir", str(truncated), "--repeats", "1", "--folds", "2", "--epochs", "1",
                           "--out", str(out), "--no-progress"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2
    # the last line is ours (libtiff may print its own "Read error" lines from C before it)
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("abmil: error:") and BREAST_FILES[1] in last
    assert not out.exists()
