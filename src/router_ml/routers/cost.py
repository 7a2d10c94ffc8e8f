"""Per-model cost of a call predicted from the prompt's input tokens.

cost_ij ≈ fixed_j + per_token_j · input_tokens_i, fitted by least squares per model on
the calls where that model's cost is known, with both coefficients kept non-negative.
The fixed part absorbs the typical output cost (output length is not known before the
call); the slope is the input price as billed.
"""

from __future__ import annotations

import numpy as np
from scipy.optimize import nnls
from sklearn.base import BaseEstimator
from sklearn.utils.validation import check_is_fitted


class CostPredictor(BaseEstimator):
    def fit(self, input_tokens, C):
        tokens, C = np.asarray(input_tokens, dtype=float).ravel(), np.asarray(C, dtype=float)
        if C.ndim != 2 or len(C) != len(tokens):
            raise ValueError(f"C must be (n, models) with n = len(input_tokens); got {C.shape} and {tokens.shape}")
        coefficients = []
        for j in range(C.shape[1]):
            known = ~np.isnan(C[:, j])
            if not known.any():
                raise ValueError(f"model column {j} has no known cost to learn from")
            design = np.column_stack([np.ones(known.sum()), tokens[known]])
            coefficients.append(nnls(design, C[known, j])[0])
        self.fixed_, self.per_token_ = np.array(coefficients).T
        return self

    def predict(self, input_tokens) -> np.ndarray:
        check_is_fitted(self, "fixed_")
        tokens = np.asarray(input_tokens, dtype=float).reshape(-1, 1)
        return self.fixed_ + tokens * self.per_token_
