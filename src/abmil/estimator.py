"""A scikit-learn classifier over bags: attention-based deep MIL behind ``fit`` / ``predict``.

    >>> clf = AttentionMILClassifier(pooling="gated", epochs=20)
    >>> clf.fit(bags, y)                    # bags: list of (n_i, d) arrays, y: two labels
    >>> clf.predict_proba(bags)             # (n_bags, 2)
    >>> clf.instance_scores(bags)           # attention weights, one (n_i,) array per bag

A *sample* is a bag, so ``X`` is a list of 2-D arrays (or a 3-D array of equal-size bags, or a
1-D object array of bags); scikit-learn's model selection indexes such lists, so the estimator
works inside ``cross_val_score``, ``GridSearchCV`` and ``clone``. Training is the paper's loop
(:func:`abmil.train.fit.fit`) with the model built under ``torch.manual_seed(random_state)``.
"""
from __future__ import annotations

from collections.abc import Sequence
from numbers import Integral, Real
from typing import ClassVar

import numpy as np
import torch
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.utils import check_random_state
from sklearn.utils._param_validation import Interval, InvalidParameterError, StrOptions
from sklearn.utils.metaestimators import available_if
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_is_fitted, column_or_1d

from .data.bags import pack
from .data.benchmarks import validate_bags
from .errors import DataError
from .nn.zoo import create_model, family_keys
from .train.config import TrainConfig
from .train.cv import fold_standardiser
from .train.engines import fit_auto

__all__ = ["AttentionMILClassifier"]

POOLINGS = family_keys("estimator")
_PREDICT_CHUNK = 256  # bags per forward pass at prediction time


def _has_instance_scores(est: AttentionMILClassifier) -> bool:
    if est.pooling == "max":
        raise AttributeError("instance_scores is not available with pooling='max': max pooling has no "
                             "per-instance weights (use 'attention', 'gated' or 'mean')")
    return True


class AttentionMILClassifier(ClassifierMixin, BaseEstimator):
    """Embedding-level deep MIL classifier (Ilse et al., 2018) in scikit-learn's conventions.

    The model is ``prob = sigm(w·σ(f(x)) + b)``: an MLP instance encoder ``f`` (fc-ReLU-dropout
    per ``hidden`` size), a MIL pooling ``σ`` and a linear bag classifier, trained on the Bernoulli
    log-likelihood of the bag labels.

    Parameters
    ----------
    pooling : {"attention", "gated", "mean", "max"}, default="gated"
        MIL pooling over the instance embeddings (attention: eq. 8, gated: eq. 9 of the paper).
    hidden : sequence of int, default=(256, 128, 64)
        Sizes of the encoder's fully connected layers; the last is the embedding size M.
    att_dim : int, default=64
        Hidden size L of the attention network (attention and gated pooling only).
    dropout : float in [0, 1), default=0.2
        Dropout after every encoder layer.
    optimizer : {"sgd", "adam"}, default="sgd"
    lr : float, default=5e-4
    weight_decay : float, default=1e-2
        L2 coefficient in torch's convention (``g += weight_decay * p``).
    momentum : float, default=0.9
        SGD (Nesterov) momentum; ignored by Adam.
    epochs : int, default=50
    batch_size : int, default=1
        Bags per optimizer step (1 is the paper's setting).
    standardize : bool, default=True
        Standardise every feature with the mean and std of the training instances.
    random_state : int, RandomState instance or None, default=0
        Seeds the weight initialisation, the bag order and the dropout masks; an int gives
        identical models on every fit.

    Attributes
    ----------
    classes_ : ndarray of shape (2,)
        The two labels seen in ``fit``; ``classes_[1]`` is the positive class.
    n_features_in_ : int
        Number of features per instance.
    mean_, scale_ : ndarray of shape (n_features_in_,) or None
        Standardisation statistics (``None`` when ``standardize=False``).
    model_ : torch.nn.Module
        The trained :class:`abmil.nn.EmbeddingMIL` (CPU, float32).
    seed_ : int
        The integer seed the model was trained with.
    """

    # Checked by ``_validate_params`` at the start of ``fit`` (scikit-learn's rule: ``__init__`` only stores).
    # Intervals open on the right reject inf, and every Interval rejects NaN; TrainConfig alone would accept lr=nan.
    _parameter_constraints: ClassVar[dict[str, list]] = {
        "pooling": [StrOptions(set(POOLINGS))],
        "hidden": [Interval(Integral, 1, None, closed="left"), "array-like"],
        "att_dim": [Interval(Integral, 1, None, closed="left")],
        "dropout": [Interval(Real, 0, 1, closed="left")],
        "optimizer": [StrOptions({"sgd", "adam"})],
        "lr": [Interval(Real, 0, None, closed="neither")],
        "weight_decay": [Interval(Real, 0, None, closed="left")],
        "momentum": [Interval(Real, 0, 1, closed="left")],
        "epochs": [Interval(Integral, 1, None, closed="left")],
        "batch_size": [Interval(Integral, 1, None, closed="left")],
        "standardize": ["boolean"],
        "random_state": ["random_state"],
    }

    def __init__(self, pooling="gated", hidden=(256, 128, 64), att_dim=64, dropout=0.2, optimizer="sgd",
                 lr=5e-4, weight_decay=1e-2, momentum=0.9, epochs=50, batch_size=1, standardize=True,
                 random_state=0):
        self.pooling = pooling
        self.hidden = hidden
        self.att_dim = att_dim
        self.dropout = dropout
        self.optimizer = optimizer
        self.lr = lr
        self.weight_decay = weight_decay
        self.momentum = momentum
        self.epochs = epochs
        self.batch_size = batch_size
        self.standardize = standardize
        self.random_state = random_state

    # ------------------------------------------------------------------------------------------------------------
    # Training.

    def fit(self, bags, y):
        """Train on ``bags`` (list of (n_i, d) arrays, 3-D array or object array) with two-class labels ``y``."""
        self._validate_params()
        hidden = self._hidden()
        config = TrainConfig(optimizer=self.optimizer, lr=float(self.lr), weight_decay=float(self.weight_decay),
                             momentum=float(self.momentum), epochs=int(self.epochs),
                             batch_size=int(self.batch_size))
        bag_list = _as_bag_list(bags)
        y = _as_labels(y)
        if len(bag_list) != len(y):
            raise DataError(f"got {len(bag_list)} bags but {len(y)} labels; need one label per bag")
        check_classification_targets(y)
        classes, encoded = np.unique(y, return_inverse=True)
        if len(classes) != 2:
            raise DataError(f"AttentionMILClassifier is a binary classifier: y must hold exactly two classes, "
                            f"got {len(classes)}: {_show(classes)}")
        validate_bags(bag_list, encoded, source=None)
        d = int(np.asarray(bag_list[0]).shape[1])

        if self.standardize:
            mu, sd = fold_standardiser([np.asarray(b) for b in bag_list], np.arange(len(bag_list)))
            self.mean_, self.scale_ = mu.numpy().astype(np.float64), sd.numpy().astype(np.float64)
        else:
            self.mean_ = self.scale_ = None
        tensors = self._tensors(bag_list)

        seed = _seed(self.random_state)
        with torch.random.fork_rng(devices=[]):  # the caller's torch RNG stream is left as it was
            torch.manual_seed(seed)
            model = create_model(self.pooling, family="estimator", in_dim=d, hidden=hidden,
                                 dropout=float(self.dropout), att_dim=int(self.att_dim))
        fit_auto(model, tensors, torch.as_tensor(encoded, dtype=torch.float32), config, seed=seed)
        model.eval()

        self.classes_ = classes
        self.n_features_in_ = d
        self.seed_ = seed
        self.model_ = model
        return self

    def _hidden(self) -> tuple[int, ...]:
        """``hidden`` as a tuple of layer sizes: the element check ``_parameter_constraints`` cannot express."""
        hidden = (self.hidden,) if isinstance(self.hidden, Integral) else tuple(self.hidden)
        if not hidden or not all(isinstance(h, Integral) and not isinstance(h, bool) and h > 0 for h in hidden):
            raise InvalidParameterError(f"The 'hidden' parameter of {type(self).__name__} must be an int >= 1 or a "
                                        f"non-empty sequence of them. Got {self.hidden!r} instead.")
        return tuple(int(h) for h in hidden)

    def _tensors(self, bag_list: list[np.ndarray]) -> list[torch.Tensor]:
        """Validated bags → standardised float32 tensors; values beyond float32 range are rejected."""
        out = []
        for i, bag in enumerate(bag_list):
            x = np.asarray(bag, dtype=np.float64)
            if self.mean_ is not None:
                x = (x - self.mean_) / self.scale_
            with np.errstate(over="ignore"):
                x32 = x.astype(np.float32)
            if not np.isfinite(x32).all():
                raise DataError(f"feature values exceed the float32 range"
                                f"{' after standardisation' if self.mean_ is not None else ''} (bag index {i})",
                                bag=i)
            out.append(torch.from_numpy(x32))
        return out

    # ------------------------------------------------------------------------------------------------------------
    # Prediction.

    def _forward(self, bags) -> tuple[np.ndarray, list[np.ndarray] | None]:
        """Bag logits (n_bags,) float64 and, with weighted pooling, each bag's attention weights."""
        check_is_fitted(self)
        bag_list = _as_bag_list(bags)
        validate_bags(bag_list, np.zeros(len(bag_list), dtype=np.int64), source=None)
        d = int(np.asarray(bag_list[0]).shape[1])
        if d != self.n_features_in_:
            raise ValueError(f"bags have {d} features per instance, but AttentionMILClassifier was fitted with "
                             f"{self.n_features_in_} features")
        tensors = self._tensors(bag_list)
        model = self.model_
        model.eval()
        logits, weights = [], []
        with torch.no_grad():
            for start in range(0, len(tensors), _PREDICT_CHUNK):
                chunk = tensors[start:start + _PREDICT_CHUNK]
                x, bag_index = pack(chunk)
                out = model(x, bag_index, len(chunk))
                logits.append(out.logits[:, 0])
                if (w := out.weights) is not None:
                    weights += [t.numpy().astype(np.float64) for t in torch.split(w, [t.shape[0] for t in chunk])]
        scores = weights if weights else None
        return torch.cat(logits).numpy().astype(np.float64), scores

    def decision_function(self, bags) -> np.ndarray:
        """Log-odds of the positive class ``classes_[1]``, shape (n_bags,)."""
        return self._forward(bags)[0]

    def predict_proba(self, bags) -> np.ndarray:
        """Class probabilities, shape (n_bags, 2), columns in the order of ``classes_``."""
        p = _sigmoid(self.decision_function(bags))
        return np.stack([1.0 - p, p], axis=1)

    def predict(self, bags) -> np.ndarray:
        """Predicted labels (values of ``classes_``), shape (n_bags,)."""
        positive = self.decision_function(bags) > 0
        return self.classes_[positive.astype(np.int64)]

    @available_if(_has_instance_scores)
    def instance_scores(self, bags) -> list[np.ndarray]:
        """Each bag's attention weights: one (n_i,) array per bag, summing to 1.

        With ``pooling="mean"`` every instance gets 1/n_i (mean pooling is attention with equal
        weights); with ``pooling="max"`` the method is unavailable.
        """
        logits, scores = self._forward(bags)
        if scores is None:  # mean pooling
            scores = [np.full(np.asarray(b).shape[0], 1.0 / np.asarray(b).shape[0]) for b in _as_bag_list(bags)]
        return scores

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.two_d_array = False
        tags.input_tags.three_d_array = True
        tags.classifier_tags.multi_class = False
        return tags


# ----------------------------------------------------------------------------------------------------------------
# Input handling.


def _as_bag_list(bags) -> list:
    """A list of bags from a list/tuple of arrays, a 3-D array of equal-size bags or a 1-D object array."""
    if isinstance(bags, torch.Tensor):
        bags = bags.detach().cpu().numpy()
    if isinstance(bags, np.ndarray):
        if bags.dtype == object:
            if bags.ndim != 1:
                raise DataError(f"an object array of bags must be 1-D (one bag per entry), got shape {bags.shape}")
            return list(bags)
        if bags.ndim == 3:
            return list(bags)
        raise DataError(f"bags must be a list of (n_instances, n_features) arrays or a 3-D array "
                        f"(n_bags, n_instances, n_features); got a {bags.ndim}-D array of shape {bags.shape}"
                        + (" (for a single bag, pass [bag])" if bags.ndim == 2 else ""))
    if isinstance(bags, (str, bytes)) or not isinstance(bags, Sequence):
        try:
            bags = list(bags)
        except TypeError:
            raise DataError(f"bags must be a list of (n_instances, n_features) arrays, got {type(bags).__name__}") \
                from None
    out = []
    for i, bag in enumerate(bags):
        if isinstance(bag, torch.Tensor):
            bag = bag.detach().cpu().numpy()
        try:
            out.append(np.asarray(bag))
        except (TypeError, ValueError) as e:
            raise DataError(f"not an array of numbers ({e}) (bag index {i})", bag=i) from None
    if not out:
        raise DataError("no bags given")
    return out


def _as_labels(y) -> np.ndarray:
    y = np.asarray(y)
    if y.ndim == 0:
        raise DataError(f"y must be a 1-D array of bag labels, got a scalar {y!r}")
    if y.ndim == 2 and y.shape[1] != 1:
        raise DataError(f"y must be a 1-D array of bag labels, got shape {y.shape}")
    return column_or_1d(y, warn=True)


def _seed(random_state) -> int:
    if isinstance(random_state, Integral):
        return int(random_state)
    return int(check_random_state(random_state).randint(0, 2**31 - 1))


def _sigmoid(x: np.ndarray) -> np.ndarray:
    out = np.empty_like(x)
    pos = x >= 0
    out[pos] = 1.0 / (1.0 + np.exp(-x[pos]))
    e = np.exp(x[~pos])
    out[~pos] = e / (1.0 + e)
    return out


def _show(values: np.ndarray, limit: int = 5) -> str:
    shown = ", ".join(repr(v.item() if hasattr(v, "item") else v) for v in values[:limit])
    return f"[{shown}{', ...' if len(values) > limit else ''}]"
