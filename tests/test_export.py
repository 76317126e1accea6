"""`abmil export`: every slide pooling and task, exported to TorchScript and ONNX, gives `abmil predict`'s outputs and
per-patch scores on bags of 1 to 100,000 patches; a study's folds export as their mean; wsinfer-mil's layout
validates against wsinfer-mil's own schema and loads through its loader; `abmil predict --model` writes `predict
--run`'s files; bad input is refused in one line with nothing written."""
from __future__ import annotations

import csv
import importlib.util
import json
import shutil
import sys
import types
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from abmil.cli import main
from abmil.data.synthetic import write_multilabel_cohort, write_multitarget_cohort, write_outcome_cohort
from abmil.export import export_run
from abmil.export.deployed import load_export, predict_bag_exported
from abmil.nn.zoo import SLIDE_KEYS, model_spec
from abmil.slides.feature_files import FeatureFile
from abmil.slides.features import FeatureBagDataset
from abmil.slides.predict import load_models, predict_bag
from abmil.slides.study import cross_validate
from abmil.slides.train import WSIConfig, train_feature_model
from abmil.tasks import get_task
from cli_helpers import assert_refused
from wsi_helpers import DIM, make_dataset

SMALL = dict(hidden=16, att_dim=8, lr=1e-3, epochs=1)
PROBE_SIZES = (1, 2, 37, 1500)
BIG = 100_000
SCHEMA = Path(__file__).parent / "data" / "wsinfer_mil" / "model-config.schema.json"
ONNX = importlib.util.find_spec("onnxruntime") is not None and importlib.util.find_spec("onnx") is not None
FORMATS = ["torchscript", pytest.param("onnx", marks=pytest.mark.skipif(not ONNX, reason="the onnx extra"))]


@pytest.fixture(scope="module")
def cohorts(tmp_path_factory):
    """Single runs: classification with every pooling, three classes, and each other task; the bags to probe."""
    root = tmp_path_factory.mktemp("export")
    runs = {}
    manifest, features = make_dataset(root / "cls", 10, sizes=(8, 20), split=["train"] * 7 + ["val"] * 3)
    data = FeatureBagDataset(manifest, features)
    for name in SLIDE_KEYS:
        train_feature_model(data, root / name, WSIConfig(pooling=name, **SMALL))
        runs[name] = root / name
    manifest3, features3 = make_dataset(root / "cls3", 9, classes=("a", "b", "c"), sizes=(8, 20),
                                        split=["train"] * 6 + ["val"] * 3)
    train_feature_model(FeatureBagDataset(manifest3, features3), root / "three",
                        WSIConfig(pooling="attention", **SMALL))
    runs["three"] = root / "three"
    for task, loss, pooling in (("survival", "nll", "gated"), ("survival", "cox", "mean"),
                                ("regression", "mse", "transmil")):
        m, f, _ = write_outcome_cohort(root / f"{task}-{loss}", task, 10, sizes=(8, 20), dim=DIM)
        ds = FeatureBagDataset(m, f, task=task)
        train_feature_model(ds, root / f"{task}-{loss}-run",
                            WSIConfig(pooling=pooling, task=task, loss=loss, val_split=0.3, batch_size=2, **SMALL))
        runs[f"{task}-{loss}"] = root / f"{task}-{loss}-run"
    m, f, _ = write_multilabel_cohort(root / "ml", ("A", "B"), 10, sizes=(8, 20), dim=DIM)
    train_feature_model(FeatureBagDataset(m, f, task=get_task("multilabel", "A,B")), root / "ml-run",
                        WSIConfig(pooling="gated", task="multilabel", targets="A,B", val_split=0.3, **SMALL))
    runs["multilabel"] = root / "ml-run"
    heads = "label,os:survival,grade:regression"
    m, f, _ = write_multitarget_cohort(root / "mt", 12, sizes=(8, 20), dim=DIM)
    train_feature_model(FeatureBagDataset(m, f, task=get_task("multitarget", heads)), root / "mt-run",
                        WSIConfig(pooling="attention", task="multitarget", targets=heads, val_split=0.3, **SMALL))
    runs["multitarget"] = root / "mt-run"
    rng = np.random.default_rng(1)
    probes = root / "probes"
    probes.mkdir()
    files = []
    for n in (*PROBE_SIZES, BIG):
        path = probes / f"n{n}.h5"
        with h5py.File(path, "w") as f:  # contiguous (not CLAM's row chunks): 100,000 rows read at once
            f.create_dataset("features", data=rng.standard_normal((n, DIM)).astype(np.float32) * 2)
        files.append(FeatureFile(path, f"n{n}"))
    return root, runs, files, (manifest, features)


@pytest.fixture(scope="module")
def study(cohorts):
    root, _, _, (manifest, features) = cohorts
    lines = Path(manifest).read_text().splitlines()  # without the split column: the study makes its own
    plain = root / "study-manifest.csv"
    plain.write_text("\n".join(",".join(line.split(",")[:2]) for line in lines) + "\n")
    ds = FeatureBagDataset(plain, features)
    cross_validate(ds, root / "cv", WSIConfig(pooling="gated", **SMALL), folds=3)
    return root / "cv", plain, features


def assert_same(runs, model, file: FeatureFile):
    """The export's outputs and scores on ``file`` are predict's to 1e-5 (scores: also relative to their size)."""
    expected = predict_bag(runs, [file], file.slide_id)
    got = predict_bag_exported(model, [file], file.slide_id)
    np.testing.assert_allclose(got.probabilities, expected.probabilities, rtol=0, atol=1e-5)
    want, have = expected.instance_scores, got.instance_scores
    assert (want is None) == (have is None)
    if want is not None:
        assert have.shape == want.shape == (file.shape()[0],)
        np.testing.assert_allclose(have, want, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("name", [*SLIDE_KEYS, "three", "survival-nll", "survival-cox", "regression-mse",
                                  "multilabel", "multitarget"])
def test_export_gives_predicts_outputs(cohorts, tmp_path, name, fmt):
    root, runs, files, _ = cohorts
    run = runs[name]
    trained = load_models(run)
    if fmt == "onnx" and trained[0].spec.level == "transformer":
        with pytest.raises(ValueError, match="--format onnx cannot express --pooling transmil"):
            export_run(run, tmp_path / "out", fmt)
        assert not (tmp_path / "out").exists() and list(tmp_path.iterdir()) == []
        return
    meta = export_run(run, tmp_path / "out", fmt)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted(
        ["export.json", meta["model_file"], "model_card.md", "model_card.json"])
    model = load_export(tmp_path / "out")
    big = name in ("gated", "transmil") and fmt == "torchscript"  # 100,000 patches: two cases, to keep time
    for file in files if big else files[:-1]:
        assert_same(trained, model, file)


def test_study_ensemble_and_one_fold(study, cohorts, tmp_path):
    """The folds' mean as one module, and one fold alone; `predict --model` writes `predict --run`'s CSV."""
    run, manifest, features = study
    files = cohorts[2][:-1]
    for fmt in ("torchscript", *(["onnx"] if ONNX else [])):
        meta = export_run(run, tmp_path / f"all-{fmt}", fmt, ensemble=True)
        assert meta["members"] == ["r0_f0", "r0_f1", "r0_f2"] and meta["threshold"] is not None
        model, runs = load_export(tmp_path / f"all-{fmt}"), load_models(run)
        for file in files:
            assert_same(runs, model, file)
    export_run(run, tmp_path / "f1", "torchscript", fold=(0, 1))
    one = load_models(run, fold=(0, 1))
    for file in files:
        assert_same(one, load_export(tmp_path / "f1"), file)
    # the CLI: the same predictions file (probabilities to the CSV's 6 decimals) from the export and from the run
    for args, out in ((["--model", str(tmp_path / "all-torchscript")], "model.csv"), (["--run", str(run)], "run.csv")):
        assert main(["predict", *args, "--manifest", str(manifest), "--features", str(features),
                     "--out", str(tmp_path / out)]) == 0
    a, b = (list(csv.reader(open(tmp_path / n))) for n in ("model.csv", "run.csv"))
    assert a[0] == b[0] and [r[:2] + r[4:] for r in a] == [r[:2] + r[4:] for r in b] and len(a) == 11
    np.testing.assert_allclose(np.array([r[2:4] for r in a[1:]], float), np.array([r[2:4] for r in b[1:]], float),
                               atol=1.5e-6)
    card = json.loads((tmp_path / "all-torchscript" / "model_card.json").read_text())
    summary = json.loads((run / "summary.json").read_text())
    assert card["out_of_fold_metrics"]["mean"] == summary["mean"]
    assert card["threshold"] == json.loads((run / "run.json").read_text())["threshold"]
    assert [s["train_slides"] + s["val_slides"] for s in card["data"]["splits"]] == [
        len(s["train"]) + len(s["val"]) for s in _fold_splits(run)]
    text = (tmp_path / "all-torchscript" / "model_card.md").read_text()
    for heading in ("## Intended use", "## Limitations", "## Out-of-fold metrics", "## Decision threshold",
                    "## Software", "## Commands"):
        assert heading in text


def _fold_splits(run: Path) -> list[dict]:
    folds = json.loads((run / "splits.json").read_text())["folds"]
    return [{"train": f["train"]["slides"], "val": f["val"]["slides"]} for f in folds]


def _wsinfer_loader():
    """wsinfer-mil's loader: imported as it is where its package imports (it needs torchvision, tiffslide,
    huggingface_hub...), else its module file run as it is with the package's ``__init__`` (those imports)
    skipped; None where wsinfer-mil is not installed."""
    try:
        from wsinfer_mil.client.localmodel import load_torchscript_model_from_filesystem
        return load_torchscript_model_from_filesystem
    except ImportError:
        pass
    spec = importlib.util.find_spec("wsinfer_mil")
    if spec is None:
        return None
    root = Path(spec.origin).parent
    saved = {k: sys.modules.get(k) for k in ("wsinfer_mil", "wsinfer_mil.client", "wsinfer_mil.errors",
                                             "wsinfer_mil.client.localmodel")}
    try:
        for name, path in (("wsinfer_mil", root), ("wsinfer_mil.client", root / "client")):
            package = types.ModuleType(name)
            package.__path__ = [str(path)]
            sys.modules[name] = package
        module = importlib.import_module("wsinfer_mil.client.localmodel")
        return module.load_torchscript_model_from_filesystem
    finally:
        for k, v in saved.items():
            if v is None:
                sys.modules.pop(k, None)
            else:
                sys.modules[k] = v


@pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:DeprecationWarning")
@pytest.mark.parametrize("which", ["study", "clam-sb", "three"])
def test_wsinfer_mil_layout_schema_and_loader(which, study, cohorts, tmp_path):
    import jsonschema

    run = study[0] if which == "study" else cohorts[1][which]
    out = tmp_path / "ws"
    export_run(run, out, "wsinfer-mil", feature_extractor="ctranspath", patch_size_um=128)
    config = json.loads((out / "config.json").read_text())
    jsonschema.validate(config, json.loads(SCHEMA.read_text()))
    spec = importlib.util.find_spec("wsinfer_mil")
    if spec is not None:  # the installed package's own copy too
        jsonschema.validate(config, json.loads((Path(spec.origin).parent / "schemas" /
                                                "model-config.schema.json").read_text()))
    runs = load_models(run)
    assert config["class_names"] == runs[0].classes and config["num_classes"] == len(runs[0].classes)
    assert config["type"] == ("clam" if which == "clam-sb" else "abmil")
    loader = _wsinfer_loader()
    path = out / "torchscript_model.pt"
    if loader is not None:
        loaded = loader(path, out / "config.json")
        assert loaded.config.class_names == runs[0].classes and loaded.config.patch_size_um == 128
        path = loaded.model_path
    model = torch.jit.load(path, map_location="cpu")  # wsinfer-mil's inference.get_model_outputs from here on
    for file in cohorts[2][:-1]:
        embedding = file.read()[0].float().numpy()
        with torch.inference_mode():
            logits, attention = model(torch.from_numpy(embedding))
        expected = predict_bag(runs, [file], file.slide_id)
        np.testing.assert_allclose(logits.softmax(1).numpy()[0], expected.probabilities, atol=1e-5)
        np.testing.assert_allclose(attention.numpy(), expected.instance_scores, rtol=1e-5, atol=1e-7)


def test_refusals_leave_nothing(study, cohorts, tmp_path, capsys):
    """Bad input: one line, exit 2, no export folder (nor a temporary one beside it)."""
    run, _, _ = study
    runs = cohorts[1]
    broken = tmp_path / "broken"
    shutil.copytree(runs["gated"], broken)
    for weights in broken.glob("*.safetensors"):
        weights.unlink()
    (tmp_path / "exists").mkdir()
    ws = tmp_path / "ws"
    ws.mkdir()
    cases = [
        (["--run", str(broken), "--format", "torchscript"], str(broken)),
        (["--run", str(tmp_path / "none"), "--format", "onnx"], "no run folder"),
        (["--run", str(runs["transmil"]), "--format", "onnx"], "cannot express --pooling transmil"),
        (["--run", str(run), "--format", "onnx", "--fold", "0,3"], "--fold 0,3"),
        (["--run", str(runs["gated"]), "--format", "onnx", "--fold", "0,0"], "single run"),
        (["--run", str(runs["survival-nll"]), "--format", "wsinfer-mil", "--feature-extractor", "x",
          "--patch-size-um", "100"], "for classification runs"),
        (["--run", str(runs["gated"]), "--format", "wsinfer-mil"], "--feature-extractor and --patch-size-um"),
    ]
    for args, culprit in cases:
        before = sorted(p.name for p in tmp_path.iterdir())
        assert main(["export", *args, "--out", str(tmp_path / "out")]) == 2, args
        err = capsys.readouterr().err
        assert err.startswith("abmil: error: ") and err.count("\n") == 1 and culprit in err, err
        assert sorted(p.name for p in tmp_path.iterdir()) == before
    # through the real entry point: an existing output folder is never written into
    assert_refused(tmp_path, ["export", "--run", str(runs["gated"]), "--format", "torchscript", "--out",
                              "{ws}/exists"], "exists")


def test_export_failing_midway_leaves_nothing(cohorts, tmp_path, monkeypatch):
    """A failure after the model file is written (the card here) removes the half-made folder."""
    import abmil.export.card as card

    def fail(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(card, "write_card", fail)
    with pytest.raises(OSError, match="disk full"):
        export_run(cohorts[1]["gated"], tmp_path / "out", "torchscript")
    assert list(tmp_path.iterdir()) == []


def test_every_registered_pooling_is_covered():
    """A pooling added to the registry must say how it exports (bag_graph raises for an unknown level)."""
    from abmil.export.graph import bag_graph

    for name in SLIDE_KEYS:
        spec = model_spec(name)
        model = __import__("abmil.nn.zoo", fromlist=["create_model"]).create_model(
            name, family="slide", in_dim=DIM, hidden=16, att_dim=8).eval()
        graph = bag_graph(model, spec, DIM)
        x = torch.randn(5, DIM)
        with torch.no_grad():
            out, scores = graph(x)
        assert out.shape[0] == 1 and scores.shape in ((5,), (0,))


def test_survival_study_folds_on_other_time_bins(cohorts, tmp_path):
    """nll folds fitted on other training parts have other time bins: their mean needs predict's interpolation, so
    the ensemble is refused (one line, nothing written) and each fold exports alone."""
    m, f, _ = write_outcome_cohort(tmp_path / "surv", "survival", 12, sizes=(8, 16), dim=DIM)
    ds = FeatureBagDataset(m, f, task="survival")
    cross_validate(ds, tmp_path / "cv", WSIConfig(pooling="mean", task="survival", loss="nll", batch_size=2,
                                                  **SMALL), folds=3)
    bins = {tuple(r.head.time_bins) for r in load_models(tmp_path / "cv")}
    assert len(bins) == 3
    with pytest.raises(ValueError, match="interpolation"):
        export_run(tmp_path / "cv", tmp_path / "all", "torchscript")
    assert not (tmp_path / "all").exists()
    export_run(tmp_path / "cv", tmp_path / "f2", "onnx" if ONNX else "torchscript", fold=(0, 2))
    for file in cohorts[2][:3]:
        assert_same(load_models(tmp_path / "cv", fold=(0, 2)), load_export(tmp_path / "f2"), file)


def test_a_task_without_tensor_outputs_is_refused(cohorts, tmp_path, monkeypatch):
    from abmil.tasks.base import Task
    from abmil.tasks.classification import ClassificationTask

    monkeypatch.setattr(ClassificationTask, "torch_outputs", Task.torch_outputs)
    with pytest.raises(ValueError, match="the classification task has no tensor form of its outputs"):
        export_run(cohorts[1]["gated"], tmp_path / "out", "torchscript")
    assert list(tmp_path.iterdir()) == []


def test_feature_settings_from_abmil_extract_attributes(tmp_path):
    """wsinfer-mil's feature_extractor and patch_size_um from the attributes `abmil extract` writes (through the
    writer itself), the flags winning; nothing recorded: nothing claimed."""
    from abmil.export import feature_settings
    from abmil.extract.writer import write_features

    features = tmp_path / "features"
    features.mkdir()
    write_features(features / "s0.h5", np.zeros((3, DIM), np.float32), np.zeros((3, 2), np.int64),
                   {"encoder": "resnet50-trunc", "encoder_weights": "none", "mpp": 0.5, "patch_size": 256})
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text(json.dumps({"features": str(features)}))
    found = feature_settings(run, None, None)
    assert found["feature_extractor"] == "resnet50-trunc" and found["patch_size_um"] == 128.0
    assert feature_settings(run, "uni", 224)["feature_extractor"] == "uni"
    assert feature_settings(run, "uni", 224)["patch_size_um"] == 224.0
    assert feature_settings(tmp_path / "elsewhere", None, None) == {}


def test_evaluate_run_writes_the_runs_model_card(study, tmp_path):
    """`abmil evaluate --run` writes the run's model card beside its evaluation: the evaluation's rows with their
    intervals, the study's out-of-fold means, the stored threshold, and the reliability figure in place."""
    run, _, _ = study
    out = tmp_path / "eval"
    assert main(["evaluate", "--predictions", str(run / "oof.csv"), "--run", str(run), "--bootstrap", "20",
                 "--out", str(out)]) == 0
    card = json.loads((out / "model_card.json").read_text())
    metrics = json.loads((out / "metrics.json").read_text())
    assert card["evaluation"]["metrics"] == metrics["metrics"] and card["run"] == str(run)
    assert card["out_of_fold_metrics"]["mean"] == json.loads((run / "summary.json").read_text())["mean"]
    assert card["threshold"] == json.loads((run / "run.json").read_text())["threshold"]
    text = (out / "model_card.md").read_text()
    assert "## Evaluation with confidence intervals" in text and "![reliability](reliability.png)" in text
    assert (out / "reliability.png").is_file() and "Exported by" not in text
