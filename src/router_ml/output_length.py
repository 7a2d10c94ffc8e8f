"""How many tokens a model will answer a prompt with, learned from the response texts of the outcomes.

Used before a call, where only the prompt is known: the budget reservation needs an upper bound on the
answer's length when the request sets no ``max_tokens``, and a cost estimate needs its expected length.

Per model, a ridge regression on the prompt's features predicts ``log1p(output tokens)`` (lengths are
skewed: a multiple-choice letter, an essay); the expected length is its back-transform and the upper
bound adds the model's ``quantile`` of the fit residuals, or, after :meth:`calibrate` on held-out rows,
of their residuals (split conformal: the fit residuals are optimistic). A model with fewer than
``min_rows`` outcomes gets the pooled regression of all models plus its own median offset. Follows
scikit-learn's estimator contract (learned state in attributes ending in ``_``).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from sklearn.base import BaseEstimator
from sklearn.linear_model import Ridge


class OutputLengthPredictor(BaseEstimator):
    def __init__(self, alpha: float = 10.0, quantile: float = 0.9, min_rows: int = 30):
        self.alpha = alpha
        self.quantile = quantile
        self.min_rows = min_rows

    def fit(self, X: np.ndarray, models: Sequence[str], tokens: Sequence[float]) -> OutputLengthPredictor:
        X = np.asarray(X, dtype=np.float32)
        models = np.asarray(models)
        raw = np.asarray(tokens, dtype=np.float64)
        if len(X) != len(models) or len(X) != len(raw):
            raise ValueError(f"X, models and tokens differ in length: {len(X)}, {len(models)}, {len(raw)}")
        if np.any(~np.isfinite(raw) | (raw < 0)):
            raise ValueError("tokens must be finite and >= 0")
        y = np.log1p(raw)
        self.pooled_ = Ridge(alpha=self.alpha).fit(X, y)
        pooled_residual = y - self.pooled_.predict(X)
        self.regressions_, self.offsets_, self.margins_ = {}, {}, {}
        for model in np.unique(models):
            rows = models == model
            if rows.sum() >= self.min_rows:
                regression = Ridge(alpha=self.alpha).fit(X[rows], y[rows])
                residual = y[rows] - regression.predict(X[rows])
                self.regressions_[str(model)] = regression
            else:
                residual = pooled_residual[rows] - np.median(pooled_residual[rows])
                self.offsets_[str(model)] = float(np.median(pooled_residual[rows]))
            self.margins_[str(model)] = float(np.quantile(residual, self.quantile))
        self.pooled_margin_ = float(np.quantile(pooled_residual, self.quantile))
        return self

    def calibrate(self, X: np.ndarray, models: Sequence[str], tokens: Sequence[float]) -> OutputLengthPredictor:
        """Set each model's upper-bound margin to the ``quantile`` of its residuals on these held-out rows (a
        model with fewer than ``min_rows`` of them keeps its fit margin)."""
        X = np.asarray(X, dtype=np.float32)
        models = np.asarray(models)
        y = np.log1p(np.asarray(tokens, dtype=np.float64))
        for model in np.unique(models):
            rows = models == model
            if rows.sum() >= self.min_rows:
                log_length, _ = self._log_length(X[rows], str(model))
                self.margins_[str(model)] = float(np.quantile(y[rows] - log_length, self.quantile))
        return self

    def predict_models(self, X: np.ndarray, models: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """(expected, upper) output tokens, each (rows x models): every model's fit applied in one product."""
        X = np.asarray(X, dtype=np.float32)
        weights, bias, margin = [], [], []
        for model in models:
            regression = self.regressions_.get(model, self.pooled_)
            weights.append(regression.coef_)
            bias.append(regression.intercept_ + (0.0 if model in self.regressions_ else self.offsets_.get(model, 0.0)))
            margin.append(self.margins_.get(model, self.pooled_margin_))
        log_length = X @ np.asarray(weights, dtype=np.float32).T + np.asarray(bias)
        return np.maximum(np.expm1(log_length), 0.0), np.maximum(np.expm1(log_length + np.asarray(margin)), 1.0)

    def _log_length(self, X: np.ndarray, model: str) -> tuple[np.ndarray, float]:
        X = np.asarray(X, dtype=np.float32)
        if model in self.regressions_:
            return self.regressions_[model].predict(X), self.margins_[model]
        offset = self.offsets_.get(model, 0.0)
        return self.pooled_.predict(X) + offset, self.margins_.get(model, self.pooled_margin_)

    def predict(self, X: np.ndarray, model: str) -> np.ndarray:
        """Expected output tokens of ``model`` for each row of ``X`` (a model never seen gets the pooled fit)."""
        log_length, _ = self._log_length(X, model)
        return np.maximum(np.expm1(log_length), 0.0)

    def predict_upper(self, X: np.ndarray, model: str) -> np.ndarray:
        """Output tokens that ``model``'s answer stays under with probability ``quantile`` (on the fit data)."""
        log_length, margin = self._log_length(X, model)
        return np.maximum(np.expm1(log_length + margin), 1.0)


ALPHAS = (0.1, 1.0, 10.0, 100.0)


def fit_on_validation(X_fit, m_fit, y_fit, X_val, m_val, y_val, alphas=ALPHAS,
                      quantile: float = 0.9) -> tuple[OutputLengthPredictor, dict]:
    """The predictor whose ridge penalty gives the lowest mean absolute error of log length on the validation
    rows, refitted, with its upper bounds calibrated on those rows; and a report of the choice."""
    m_val = np.asarray(m_val)
    real = np.log1p(np.asarray(y_val, dtype=np.float64))
    errors = {}
    for alpha in alphas:
        predictor = OutputLengthPredictor(alpha=alpha, quantile=quantile).fit(X_fit, m_fit, y_fit)
        predicted = np.empty(len(real))
        for model in np.unique(m_val):
            predicted[m_val == model] = predictor.predict(np.asarray(X_val)[m_val == model], str(model))
        errors[alpha] = float(np.mean(np.abs(np.log1p(predicted) - real)))
    alpha = min(errors, key=errors.get)
    predictor = OutputLengthPredictor(alpha=alpha, quantile=quantile).fit(X_fit, m_fit, y_fit)
    predictor.calibrate(X_val, m_val, y_val)
    return predictor, {"alpha": alpha, "validation_mae_log": errors, "fit_rows": int(len(y_fit)),
                       "validation_rows": int(len(real)), "quantile": quantile}
