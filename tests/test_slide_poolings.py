"""Every slide pooling of the registry (``abmil train --pooling``): its declared capabilities hold, it trains through
the one loop, predicts and heatmaps (or refuses one clearly); the linear probe is scikit-learn's model; the planted
cohort plants what it says."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from abmil.nn.zoo import MODELS, SLIDE_KEYS, create_model, model_spec
from abmil.slides.features import FeatureBagDataset
from abmil.slides.train import WSIConfig, train_feature_model
from wsi_helpers import DIM, make_dataset

SMALL = dict(hidden=16, att_dim=8, lr=1e-3)


def _model(name: str, seed: int = 0, **kwargs) -> torch.nn.Module:
    torch.manual_seed(seed)
    return create_model(name, family="slide", in_dim=DIM, hidden=16, att_dim=8, **kwargs).double()


@pytest.mark.parametrize("name", SLIDE_KEYS)
def test_declared_capabilities_hold(name):
    spec = model_spec(name)
    model = _model(name)
    torch.manual_seed(1)
    bags = [torch.randn(n, DIM, dtype=torch.float64) for n in (5, 17, 9)]
    x, bag_index = torch.cat(bags), torch.repeat_interleave(torch.tensor([5, 17, 9]))
    with torch.no_grad():
        model.eval()
        packed = model(x, bag_index, 3)
        alone = [model(b) for b in bags]
    # packed bags give what each bag alone gives (TransMIL forwards them one by one)
    assert torch.allclose(packed.logits, torch.cat([o.logits for o in alone]), atol=1e-10)
    scores = packed.instance_scores()
    assert (scores is None) == (spec.instance_scores is None)
    if scores is not None:
        assert scores.shape == (x.shape[0],)
    if spec.instance_scores == "attention":  # softmax weights: sum to 1 per bag
        sums = torch.zeros(3, dtype=torch.float64).index_add_(0, bag_index, scores)
        assert torch.allclose(sums, torch.ones(3, dtype=torch.float64))
    if spec.chunked:  # streamed inference equals the whole bag's
        with torch.no_grad():
            streamed = model.pool_chunks(iter(bags[1].split(4)))
        assert torch.allclose(streamed.logits, alone[1].logits, atol=1e-10)
    else:
        assert not hasattr(model, "pool_chunks") or not getattr(model.pool, "chunkable", False)


def test_registry_names_and_refusals():
    assert {"attention", "gated", "mean", "max", "instance-mean", "instance-max", "clam-sb", "transmil",
            "linear-probe"} <= set(SLIDE_KEYS)
    assert model_spec("mean") is MODELS["embedding-mean"]
    with pytest.raises(ValueError, match="unknown model 'median'"):
        create_model("median", family="slide", in_dim=DIM)
    with pytest.raises(ValueError, match="unknown benchmark model 'transmil'"):
        create_model("transmil", family="benchmark", in_dim=DIM)
    with pytest.raises(ValueError, match="two classes"):
        create_model("instance-max", family="slide", in_dim=DIM, n_classes=3)
    with pytest.raises(ValueError, match="--pooling must be one of"):
        WSIConfig(pooling="median")
    with pytest.raises(ValueError, match="--pooling clam-sb is for the classification task"):
        WSIConfig(pooling="clam-sb", task="survival")


def test_cli_refuses_an_unknown_pooling(tmp_path, capsys):
    from abmil.cli import main

    manifest, features = make_dataset(tmp_path, 4)
    assert main(["train", "--manifest", str(manifest), "--features", str(features), "--out", str(tmp_path / "r"),
                 "--pooling", "median"]) == 2
    err = capsys.readouterr().err
    assert "--pooling: invalid choice: 'median'" in err and "transmil" in err
    assert not (tmp_path / "r").exists()


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    root = tmp_path_factory.mktemp("cohort")
    manifest, features = make_dataset(root, 10, sizes=(8, 20), split=["train"] * 7 + ["val"] * 3)
    return manifest, features, FeatureBagDataset(manifest, features)


@pytest.mark.parametrize("name", SLIDE_KEYS)
def test_trains_predicts_and_heatmaps(name, cohort, tmp_path):
    from abmil.slides.heatmap import slide_heatmap
    from abmil.slides.predict import load_run, predict_dataset, write_predictions

    manifest, features, dataset = cohort
    run = tmp_path / "run"
    info = train_feature_model(dataset, run, WSIConfig(pooling=name, epochs=2, **SMALL))
    assert info["epoch"] == (1 if model_spec(name).trained == "fitted" else 2)
    assert np.isfinite(info["history"]["records"][-1]["val_loss"])
    trained = load_run(run)
    preds = predict_dataset(trained, dataset)
    probs = np.array([p.probabilities for p in preds])
    assert probs.shape == (10, 2) and np.allclose(probs.sum(1), 1.0)
    h5 = write_predictions(preds, trained.classes, tmp_path / "preds.csv")
    assert h5.is_file()
    spec = model_spec(name)
    scores = preds[0].instance_scores
    assert (scores is None) == (spec.instance_scores is None)
    slide = features / f"{dataset.slide_ids[0]}.h5"
    if spec.instance_scores is None:
        with pytest.raises(ValueError, match=f"--pooling {name}, which gives no per-patch scores"):
            slide_heatmap(run, slide, tmp_path / "map.png")
        assert not (tmp_path / "map.png").exists()
    else:
        assert scores.shape == (dataset.bag_sizes()[0],) and np.isfinite(scores).all()
        slide_heatmap(run, slide, tmp_path / "map.png")
        assert (tmp_path / "map.png").stat().st_size > 0


def test_clam_instance_loss_trains_the_instance_classifiers_through_the_loop(cohort, tmp_path):
    """The loop adds the model's aux_loss: CLAM's instance classifiers move (nothing else would train them)."""
    from wsi_helpers import load_weights

    _, _, dataset = cohort
    train_feature_model(dataset, tmp_path / "run", WSIConfig(pooling="clam-sb", epochs=1, **SMALL))
    trained = load_weights(tmp_path / "run")
    init = _model("clam-sb").float().state_dict()
    for c in range(2):
        name = f"instance_classifiers.{c}.weight"
        assert not torch.equal(trained[name], init[name])


def test_linear_probe_is_scikit_learns_logistic_regression():
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from abmil.nn.probe import LinearProbe

    rng = np.random.default_rng(0)
    bags = [torch.from_numpy(rng.standard_normal((int(rng.integers(3, 9)), 6)) + (i % 2)) for i in range(30)]
    labels = [i % 2 for i in range(30)]
    probe = LinearProbe(6).double()
    chosen = probe.fit_bags(bags, labels, [f"case{i // 2}" for i in range(30)], seed=0)
    assert chosen["inner_folds"] == 5 and chosen["C"] > 0
    x = np.stack([b.mean(0).numpy() for b in bags])
    ref = make_pipeline(StandardScaler(), LogisticRegression(C=chosen["C"], max_iter=5000)).fit(x, labels)
    with torch.no_grad():
        ours = torch.cat([probe(b).probabilities() for b in bags]).numpy()
    assert np.abs(ours - ref.predict_proba(x)).max() < 1e-6  # probabilities() in float32
    # three classes: the multinomial model, one logit per class
    labels3 = [i % 3 for i in range(30)]
    probe3 = LinearProbe(6, 3).double()
    chosen3 = probe3.fit_bags(bags, labels3, [f"case{i}" for i in range(30)], seed=0)
    ref3 = make_pipeline(StandardScaler(), LogisticRegression(C=chosen3["C"], max_iter=5000)).fit(x, labels3)
    with torch.no_grad():
        ours3 = torch.cat([probe3(b).probabilities() for b in bags]).numpy()
    assert np.abs(ours3 - ref3.predict_proba(x)).max() < 1e-6


def test_key_patch_cohort_plants_its_keys(tmp_path):
    import csv

    import h5py

    from abmil.data.synthetic import write_key_patch_cohort

    manifest, features, keys = write_key_patch_cohort(tmp_path, 6, seed=1, n_key=(2, 3), shift=50.0)
    rows = list(csv.DictReader(open(manifest)))
    assert {r["slide_id"] for r in rows} == set(keys)
    for r in rows:
        with h5py.File(features / f"{r['slide_id']}.h5") as f:
            x = f["features"][:]
        hot = np.flatnonzero(x[:, 0] > 20)  # the planted shift, far above N(0, 1) noise
        assert hot.tolist() == keys[r["slide_id"]].tolist()
        assert (len(hot) in (2, 3)) == (r["label"] == "pos")
