"""The linear probe: logistic regression on the mean instance of each bag (or on a slide's one embedding vector).

    logits = W · mean_k(x_k) + b

A baseline a MIL model has to beat: no attention, no hidden layer. It is fitted in closed form, not trained by the
loop: :meth:`LinearProbe.fit_bags` standardises the bag means, fits scikit-learn's ``LogisticRegression`` (L2,
lbfgs) with ``C`` chosen on inner folds over the cases (``GridSearchCV`` with ``StratifiedGroupKFold``, log loss),
and folds the standardisation into ``W`` and ``b`` so that the module's probabilities are scikit-learn's
``predict_proba``. Two classes: one logit; more: one per class (softmax, scikit-learn's multinomial model).
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor, nn

from .models import MILOutput
from .segment import num_bags, segment_mean

#: The grid of inverse regularisation strengths C searched on the inner folds.
C_GRID = tuple(float(c) for c in np.logspace(-4, 2, 13))
INNER_FOLDS = 5


class LinearProbe(nn.Module):
    """Logistic regression on the bag mean ``(n_instances, in_dim)`` → logits ``(n_bags, n_out)``."""

    def __init__(self, in_dim: int, n_out: int = 1):
        super().__init__()
        self.classifier = nn.Linear(in_dim, n_out)

    @property
    def n_out(self) -> int:
        return self.classifier.out_features

    def forward(self, x: Tensor, bag_index: Tensor | None = None, n_bags: int | None = None) -> MILOutput:
        if bag_index is None:
            bag_index = torch.zeros(x.shape[0], dtype=torch.long, device=x.device)
        z = segment_mean(x.to(self.classifier.weight.dtype), bag_index, num_bags(bag_index, n_bags))
        return MILOutput(self.classifier(z))

    def fit_bags(self, bags: Sequence[Tensor], labels: Sequence[int], groups: Sequence[str], seed: int = 0) -> dict:
        """Fit on ``bags`` (each (n_i, in_dim)) with class indices ``labels``; ``groups``: each bag's case (the inner
        folds keep a case's bags together). Returns what was chosen: ``C``, the inner folds, their mean log loss."""
        from sklearn.linear_model import LogisticRegression
        from sklearn.model_selection import GridSearchCV, StratifiedGroupKFold
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import StandardScaler

        x = np.stack([b.double().mean(0).numpy() for b in bags])
        y, groups = np.asarray(labels, dtype=int), np.asarray(groups)
        pipe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=5000))
        per_class = [len(set(groups[y == c])) for c in np.unique(y)]
        folds = min(INNER_FOLDS, *per_class)
        chosen = {"C": 1.0, "inner_folds": 0, "inner_log_loss": None}
        if folds >= 2:
            splits = list(StratifiedGroupKFold(folds, shuffle=True, random_state=seed).split(x, y, groups))
            search = GridSearchCV(pipe, {"logisticregression__C": list(C_GRID)}, cv=splits,
                                  scoring="neg_log_loss").fit(x, y)
            pipe = search.best_estimator_
            chosen = {"C": float(search.best_params_["logisticregression__C"]), "inner_folds": folds,
                      "inner_log_loss": float(-search.best_score_)}
        else:
            pipe.fit(x, y)
        self.load_pipeline(pipe)
        return chosen

    @torch.no_grad()
    def load_pipeline(self, pipe) -> None:
        """Copy a fitted ``StandardScaler`` + ``LogisticRegression`` pipeline into the weights: ``W = coef / sd``,
        ``b = intercept - W · mean``. A class absent from the fit gets logit -30 (probability ~0)."""
        scaler, lr = pipe[0], pipe[-1]
        w = lr.coef_ / scaler.scale_
        b = lr.intercept_ - w @ scaler.mean_
        weight = np.zeros((self.n_out, w.shape[1]))
        bias = np.full(self.n_out, -30.0)
        if self.n_out == 1:
            weight[0], bias[0] = w[0], b[0]
        elif w.shape[0] == 1:  # two of more classes present: their softmax is the binary model's sigmoid
            weight[lr.classes_[1]], bias[lr.classes_[1]], bias[lr.classes_[0]] = w[0], b[0], 0.0
        else:
            weight[lr.classes_], bias[lr.classes_] = w, b
        self.classifier.weight.copy_(torch.from_numpy(weight))
        self.classifier.bias.copy_(torch.from_numpy(bias))
