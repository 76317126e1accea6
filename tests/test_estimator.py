"""The scikit-learn estimator: fit/predict on the shipped Musk1, sklearn's protocols, and input validation."""
from __future__ import annotations

import inspect

import numpy as np
import pytest
import torch
from sklearn.base import clone, is_classifier
from sklearn.exceptions import NotFittedError
from sklearn.model_selection import cross_val_score
from sklearn.utils._param_validation import InvalidParameterError

from abmil.data.benchmarks import load_benchmark
from abmil.errors import DataError
from abmil.estimator import AttentionMILClassifier
from abmil.nn.models import EmbeddingMIL

# A few epochs of Adam with 4 bags per step: about a second per fit on one CPU core, and well above chance on
# Musk1 (3-fold accuracy 0.84-0.88 over random_state 0-4; chance is 47/92 = 0.51).
FAST = dict(optimizer="adam", lr=1e-3, weight_decay=1e-4, epochs=5, batch_size=4)


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """Tiny models gain nothing from intra-op threads, and on a busy machine OpenMP's spin-waiting makes them
    10-20x slower; the previous setting is restored (the estimator itself never touches it)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def musk1():
    ds = load_benchmark("musk1")
    return ds.bags, ds.labels


@pytest.fixture(scope="module")
def fitted(musk1):
    bags, y = musk1
    return AttentionMILClassifier(**FAST).fit(bags, y)


def _synthetic(n_bags=12, n_inst=3, d=5, seed=0):
    """Equal-size bags; positive bags hold one shifted instance."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n_bags, n_inst, d)).astype(np.float32)
    y = np.arange(n_bags) % 2
    x[y == 1, 0, :] += 3.0
    return x, y


# ------------------------------------------------------------------------------------------------------------------
# Fit and predict.


def test_fit_sets_fitted_attributes(fitted, musk1):
    bags, _ = musk1
    assert is_classifier(fitted)
    np.testing.assert_array_equal(fitted.classes_, [0, 1])
    assert fitted.n_features_in_ == 166
    assert isinstance(fitted.model_, EmbeddingMIL)
    assert fitted.mean_.shape == fitted.scale_.shape == (166,)
    assert fitted.seed_ == 0


def test_predict_shapes_and_consistency(fitted, musk1):
    bags, y = musk1
    proba = fitted.predict_proba(bags)
    logit = fitted.decision_function(bags)
    pred = fitted.predict(bags)
    assert proba.shape == (92, 2) and logit.shape == (92,) and pred.shape == (92,)
    assert np.all((proba >= 0) & (proba <= 1))
    np.testing.assert_allclose(proba.sum(1), 1.0, atol=1e-12)
    np.testing.assert_allclose(logit, np.log(proba[:, 1] / proba[:, 0]), rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(pred, fitted.classes_[(proba[:, 1] > 0.5).astype(int)])
    assert set(np.unique(pred)) <= {0, 1}
    assert fitted.score(bags, y) > 0.8  # training accuracy of a model that learned something


def test_instance_scores_are_attention_weights(fitted, musk1):
    bags, _ = musk1
    scores = fitted.instance_scores(bags)
    assert isinstance(scores, list) and len(scores) == len(bags)
    for bag, s in zip(bags, scores):
        assert isinstance(s, np.ndarray) and s.shape == (bag.shape[0],)
        assert np.all(s >= 0)
        assert s.sum() == pytest.approx(1.0, abs=1e-5)
    assert any(s.std() > 1e-3 for s in scores if s.size > 1)  # attention, not uniform weights


def test_instance_scores_mean_pooling_uniform_and_max_unavailable():
    x, y = _synthetic()
    clf = AttentionMILClassifier(pooling="mean", epochs=1, hidden=(8,)).fit(x, y)
    for s in clf.instance_scores(x):
        np.testing.assert_allclose(s, np.full(3, 1 / 3))
    assert not hasattr(AttentionMILClassifier(pooling="max"), "instance_scores")
    proba = AttentionMILClassifier(pooling="max", epochs=1, hidden=(8,)).fit(x, y).predict_proba(x)
    assert proba.shape == (12, 2)


def test_not_fitted_errors(musk1):
    bags, _ = musk1
    clf = AttentionMILClassifier()
    for method in (clf.predict, clf.predict_proba, clf.decision_function, clf.instance_scores):
        with pytest.raises(NotFittedError):
            method(bags)


# ------------------------------------------------------------------------------------------------------------------
# scikit-learn protocols.


def test_get_params_set_params_clone_round_trip():
    clf = AttentionMILClassifier(pooling="attention", hidden=(32, 16), lr=1e-3, random_state=7)
    params = clf.get_params()
    names = [p for p in inspect.signature(AttentionMILClassifier.__init__).parameters if p != "self"]
    assert sorted(params) == sorted(names)
    assert params["pooling"] == "attention" and params["hidden"] == (32, 16) and params["random_state"] == 7
    assert clf.set_params(epochs=3, optimizer="adam") is clf
    assert clf.epochs == 3 and clf.optimizer == "adam"
    twin = clone(clf)
    assert twin is not clf and twin.get_params() == clf.get_params()
    assert AttentionMILClassifier(**twin.get_params()).get_params() == clf.get_params()
    # defaults are stored as given
    default = AttentionMILClassifier().get_params()
    assert default["pooling"] == "gated" and default["hidden"] == (256, 128, 64) and default["weight_decay"] == 1e-2


def test_clone_of_fitted_is_unfitted(fitted, musk1):
    twin = clone(fitted)
    assert not hasattr(twin, "model_")
    with pytest.raises(NotFittedError):
        twin.predict(musk1[0])


def test_cross_val_score_on_list_of_bags_beats_chance(musk1):
    bags, y = musk1
    assert isinstance(bags, list)
    scores = cross_val_score(AttentionMILClassifier(**FAST), bags, y, cv=3, error_score="raise")
    assert scores.shape == (3,)
    assert scores.mean() > 0.75, scores  # chance is 0.51; seed 0 gives about 0.85
    assert scores.min() > 0.65, scores


def test_same_random_state_identical_predictions(fitted, musk1):
    bags, y = musk1
    again = clone(fitted).fit(bags, y)
    np.testing.assert_array_equal(again.decision_function(bags), fitted.decision_function(bags))
    np.testing.assert_array_equal(again.predict(bags), fitted.predict(bags))
    other = clone(fitted).set_params(random_state=1).fit(bags, y)
    assert not np.array_equal(other.decision_function(bags), fitted.decision_function(bags))


def test_string_labels(fitted, musk1):
    bags, y = musk1
    y_str = np.where(y == 1, "pos", "neg")
    clf = clone(fitted).fit(bags, list(y_str))
    np.testing.assert_array_equal(clf.classes_, ["neg", "pos"])
    # the same 0/1 targets after encoding, so the same model as with integer labels
    np.testing.assert_array_equal(clf.decision_function(bags), fitted.decision_function(bags))
    pred = clf.predict(bags)
    assert pred.dtype.kind == "U" and set(pred) <= {"neg", "pos"}
    np.testing.assert_array_equal(pred == "pos", fitted.predict(bags) == 1)


def test_three_d_and_object_array_inputs(fitted, musk1):
    bags, _ = musk1
    obj = np.empty(len(bags), dtype=object)
    obj[:] = bags
    np.testing.assert_array_equal(fitted.predict_proba(obj), fitted.predict_proba(bags))

    x, y = _synthetic()
    from_3d = AttentionMILClassifier(epochs=2, hidden=(8,), att_dim=4).fit(x, y)
    obj = np.empty(len(x), dtype=object)
    obj[:] = list(x)
    from_obj = AttentionMILClassifier(epochs=2, hidden=(8,), att_dim=4).fit(obj, y)
    from_list = AttentionMILClassifier(epochs=2, hidden=(8,), att_dim=4).fit(list(x), y)
    assert from_3d.n_features_in_ == 5
    for clf in (from_obj, from_list):
        np.testing.assert_array_equal(clf.decision_function(list(x)), from_3d.decision_function(x))


def test_fit_leaves_torch_global_state_alone():
    x, y = _synthetic()
    rng, threads = torch.get_rng_state(), torch.get_num_threads()
    AttentionMILClassifier(epochs=1, hidden=(8,), random_state=3).fit(x, y)
    assert torch.equal(torch.get_rng_state(), rng) and torch.get_num_threads() == threads


def test_unstandardised_fit():
    x, y = _synthetic()
    clf = AttentionMILClassifier(standardize=False, epochs=1, hidden=(8,)).fit(x, y)
    assert clf.mean_ is None and clf.scale_ is None
    assert clf.predict(x).shape == (12,)


# ------------------------------------------------------------------------------------------------------------------
# Bad input: clear errors that name the bag at fault.


def _bad_bags(kind, bags):
    bags = [b.copy() for b in bags]
    if kind == "dims":
        bags[3] = bags[3][:, :-1]
    elif kind == "nan":
        bags[5][1, 7] = np.nan
    elif kind == "inf":
        bags[6][0, 0] = np.inf
    elif kind == "empty":
        bags[2] = bags[2][:0]
    elif kind == "one_d":
        bags[4] = bags[4][0]
    return bags


@pytest.mark.parametrize("kind, match", [
    ("dims", r"bag 3: inconsistent feature dimension: 165 features, earlier bags have 166"),
    ("nan", r"bag 5: non-finite feature value nan at instance 1 .*feature 7"),
    ("inf", r"bag 6: non-finite feature value inf"),
    ("empty", r"bag 2: empty bag"),
    ("one_d", r"bag 4: bag must be a 2-D"),
])
def test_fit_rejects_bad_bags_naming_the_bag(musk1, kind, match):
    bags, y = musk1
    with pytest.raises(DataError, match=match):
        AttentionMILClassifier(epochs=1).fit(_bad_bags(kind, bags), y)


@pytest.mark.filterwarnings("ignore:invalid value encountered in cast:RuntimeWarning")
def test_fit_rejects_bad_labels(musk1):
    bags, y = musk1
    with pytest.raises(ValueError, match="exactly two classes, got 3"):
        AttentionMILClassifier(epochs=1).fit(bags, np.arange(len(bags)) % 3)
    with pytest.raises(ValueError, match="exactly two classes, got 1"):
        AttentionMILClassifier(epochs=1).fit(bags, np.ones(len(bags)))
    with pytest.raises(ValueError, match="92 bags but 91 labels"):
        AttentionMILClassifier(epochs=1).fit(bags, y[:-1])
    with pytest.raises(ValueError, match="NaN"):
        AttentionMILClassifier(epochs=1).fit(bags, np.where(y == 1, 1.0, np.nan))


def test_fit_rejects_bad_containers():
    x, y = _synthetic()
    with pytest.raises(ValueError, match=r"got a 2-D array .*for a single bag, pass \[bag\]"):
        AttentionMILClassifier().fit(x[0], y[:3])
    with pytest.raises(ValueError, match="no bags"):
        AttentionMILClassifier().fit([], [])


@pytest.mark.parametrize("params", [
    dict(pooling="sum"), dict(hidden=()), dict(hidden=[8, 0]), dict(dropout=1.0), dict(optimizer="rmsprop"),
    dict(epochs=0), dict(lr=float("nan")), dict(lr=float("inf")), dict(momentum=float("nan")),
    dict(weight_decay=-1e-3), dict(random_state=-1),
])
def test_bad_hyperparameters_raise_at_fit_not_init(params):
    """sklearn's rule: __init__ stores, fit validates; the message names the parameter (InvalidParameterError is a
    ValueError)."""
    clf = AttentionMILClassifier(**params)
    assert clf.get_params()[next(iter(params))] is next(iter(params.values()))  # stored as given
    x, y = _synthetic()
    (name,) = params
    with pytest.raises(ValueError, match=f"The '{name}' parameter of AttentionMILClassifier must be"):
        clf.fit(x, y)


def test_nan_lr_and_unknown_pooling_name_the_parameter():
    x, y = _synthetic()
    with pytest.raises(InvalidParameterError, match=r"'lr' parameter .* range \(0(\.0)?, inf\)\. Got nan"):
        AttentionMILClassifier(lr=float("nan")).fit(x, y)
    with pytest.raises(InvalidParameterError, match=r"'pooling' parameter .* among .*'gated'.*Got 'sum'"):
        AttentionMILClassifier(pooling="sum").fit(x, y)


def test_predict_rejects_wrong_feature_count_and_bad_bags(fitted, musk1):
    bags, _ = musk1
    with pytest.raises(ValueError, match="165 features per instance, but AttentionMILClassifier was fitted with 166"):
        fitted.predict([b[:, :-1] for b in bags[:4]])
    with pytest.raises(DataError, match="bag 5: non-finite"):
        fitted.predict_proba(_bad_bags("nan", bags))
    with pytest.raises(DataError, match="bag 2: empty bag"):
        fitted.instance_scores(_bad_bags("empty", bags))
