"""Per-model quality predictors following scikit-learn's estimator contract.

``fit(X, Y)``: X is (prompts x features), Y is (prompts x models) observed quality in
[0, 1] with NaN where a model's outcome is unknown. ``predict(X)`` returns the
predicted quality matrix. Hyper-parameters are stored as given; learned state ends
in ``_``; ``fit`` returns ``self``.
"""

from __future__ import annotations

import numpy as np
from sklearn.base import BaseEstimator
from sklearn.utils.validation import check_is_fitted


def _check_targets(X: np.ndarray, Y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    X, Y = np.asarray(X, dtype=np.float32), np.asarray(Y, dtype=float)
    if X.ndim != 2 or Y.ndim != 2 or len(X) != len(Y):
        raise ValueError(f"X must be (n, features) and Y (n, models); got {X.shape} and {Y.shape}")
    known = Y[~np.isnan(Y)]
    if known.size and (known.min() < 0 or known.max() > 1):
        raise ValueError("Y (quality) must lie in [0, 1]")
    return X, Y


class MeanQualityRouter(BaseEstimator):
    """Every prompt gets each model's mean training quality: the best any single model can do,
    and under a cost sweep, the "zero router" of single models."""

    def fit(self, X, Y):
        _, Y = _check_targets(X, Y)
        self.mean_quality_ = np.nanmean(Y, axis=0)
        return self

    def predict(self, X) -> np.ndarray:
        check_is_fitted(self, "mean_quality_")
        return np.tile(self.mean_quality_, (len(X), 1))


class KNNQualityRouter(BaseEstimator):
    """Quality of each model averaged over the ``n_neighbors`` most similar training prompts
    (cosine on unit-normalized embeddings), shrunk toward the model's mean by ``prior_weight``
    pseudo-neighbours so that sparse neighbourhoods do not swing to 0 or 1."""

    def __init__(self, n_neighbors: int = 20, prior_weight: float = 2.0):
        self.n_neighbors = n_neighbors
        self.prior_weight = prior_weight

    def fit(self, X, Y):
        X, Y = _check_targets(X, Y)
        self.X_ = X / np.maximum(np.linalg.norm(X, axis=1, keepdims=True), 1e-12)
        self.Y_ = Y
        self.mean_quality_ = np.nanmean(Y, axis=0)
        return self

    def predict(self, X, block: int = 1024) -> np.ndarray:
        check_is_fitted(self, "X_")
        X = np.asarray(X, dtype=np.float32)
        X = X / np.maximum(np.linalg.norm(X, axis=1, keepdims=True), 1e-12)
        k = min(self.n_neighbors, len(self.X_))
        out = np.empty((len(X), self.Y_.shape[1]))
        for start in range(0, len(X), block):
            sims = X[start:start + block] @ self.X_.T
            nearest = np.argpartition(-sims, k - 1, axis=1)[:, :k]
            neighbours = self.Y_[nearest]  # (batch, k, models)
            known = ~np.isnan(neighbours)
            total = np.where(known, neighbours, 0.0).sum(axis=1) + self.prior_weight * self.mean_quality_
            out[start:start + block] = total / (known.sum(axis=1) + self.prior_weight)
        return out


class LinearQualityRouter(BaseEstimator):
    """One ridge regression per model from prompt features to quality, clipped to [0, 1].

    Each model is fitted on the prompts where its quality is known. The fitted weights are kept
    as one (features x models) matrix, so a prediction is a single matrix product.
    """

    def __init__(self, alpha: float = 1.0):
        self.alpha = alpha

    def fit(self, X, Y):
        from sklearn.linear_model import Ridge

        X, Y = _check_targets(X, Y)
        coefficients, intercepts = [], []
        for j in range(Y.shape[1]):
            known = ~np.isnan(Y[:, j])
            if not known.any():
                raise ValueError(f"model column {j} has no known quality to learn from")
            ridge = Ridge(alpha=self.alpha).fit(X[known], Y[known, j])
            coefficients.append(ridge.coef_)
            intercepts.append(ridge.intercept_)
        self.coef_ = np.array(coefficients, dtype=np.float32).T
        self.intercept_ = np.array(intercepts, dtype=np.float32)
        return self

    def predict(self, X) -> np.ndarray:
        check_is_fitted(self, "coef_")
        X = np.asarray(X, dtype=np.float32)
        return np.clip(X @ self.coef_ + self.intercept_, 0.0, 1.0).astype(float)
