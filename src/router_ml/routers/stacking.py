"""Stacked quality router: a per-model convex blend of base routers, weighted on out-of-fold predictions."""

from __future__ import annotations

import numpy as np
from scipy.optimize import nnls
from sklearn.base import BaseEstimator, clone
from sklearn.model_selection import KFold
from sklearn.utils.validation import check_is_fitted

from router_ml.routers.estimators import _check_targets


class StackedQualityRouter(BaseEstimator):
    """Predicts, for each model j, ``sum_b weights_[j, b] * base_b(x)[j]`` with non-negative weights
    summing to 1, chosen to minimize the squared error of the bases' K-fold out-of-fold predictions
    on model j's known cells. The bases are then refitted on all the data.

    ``estimators`` is a list of ``(name, router)``; each router is cloned, never fitted in place.
    """

    def __init__(self, estimators: list[tuple[str, BaseEstimator]], n_splits: int = 5, random_state: int = 0):
        self.estimators = estimators
        self.n_splits = n_splits
        self.random_state = random_state

    def fit(self, X, Y):
        X, Y = _check_targets(X, Y)
        if not self.estimators:
            raise ValueError("estimators must name at least one base router")
        empty = np.flatnonzero(np.isnan(Y).all(axis=0))
        if empty.size:
            raise ValueError(f"model column {empty[0]} has no known quality to learn from")
        folds = KFold(self.n_splits, shuffle=True, random_state=self.random_state).split(X)
        out_of_fold = np.full((len(self.estimators), *Y.shape), np.nan)
        for train, test in folds:
            # A model with no known cell among this fold's training rows is left out of it (its
            # out-of-fold predictions stay NaN and do not count towards its weights).
            seen = np.flatnonzero(~np.isnan(Y[train]).all(axis=0))
            for b, (_, base) in enumerate(self.estimators):
                fitted = clone(base).fit(X[train], Y[np.ix_(train, seen)])
                out_of_fold[b][np.ix_(test, seen)] = fitted.predict(X[test])
        self.weights_ = np.array([_simplex_least_squares(out_of_fold[:, :, j].T, Y[:, j]) for j in range(Y.shape[1])])
        self.estimators_ = [clone(base).fit(X, Y) for _, base in self.estimators]
        return self

    def predict(self, X) -> np.ndarray:
        check_is_fitted(self, "estimators_")
        predictions = np.stack([base.predict(X) for base in self.estimators_])  # (bases, n, models)
        return np.einsum("bnm,mb->nm", predictions, self.weights_)


def _simplex_least_squares(P: np.ndarray, y: np.ndarray) -> np.ndarray:
    """argmin ||P w - y|| over w >= 0, sum(w) = 1, on the rows where y and every column of P are known
    (equal weights when there are none). The sum is enforced by a heavily weighted extra row."""
    usable = ~np.isnan(y) & ~np.isnan(P).any(axis=1)
    if not usable.any():
        return np.full(P.shape[1], 1.0 / P.shape[1])
    penalty = 1e3 * np.sqrt(usable.sum())
    weights, _ = nnls(np.vstack([P[usable], np.full(P.shape[1], penalty)]), np.append(y[usable], penalty))
    return weights / weights.sum()
