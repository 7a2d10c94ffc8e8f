"""Gradient-boosted quality router: one LightGBM model per LLM, compiled to numpy for serving.

Predicting one prompt through 60 LightGBM boosters costs about 4 ms (each ``predict``
call has ~70 us of overhead), so after fitting, every tree of every booster is flattened
into one array of nodes and evaluated with a few vectorized numpy steps per tree level.
The fitted router holds no LightGBM object: it pickles to a few MB and predicts
without importing ``lightgbm``.
"""

from __future__ import annotations

import numpy as np
from scipy.special import expit, logit
from sklearn.base import BaseEstimator
from sklearn.utils.validation import check_is_fitted

from router_ml.routers.estimators import _check_targets

# One tree node. A split sends x to the node ``step`` further on when x[feature] <= value, else to
# the one after it. A leaf has step 0 and tests the constant -inf that ``_predict_block`` appends
# to x as feature ``n_features``, so once reached it is never left; its value is the leaf output.
_NODE = np.dtype([("value", "<f4"), ("feature", "<i2"), ("step", "<i2")])


class LightGBMQualityRouter(BaseEstimator):
    """One LightGBM cross-entropy regressor per model (soft labels in [0, 1]), fitted on the prompts
    where that model's quality is known; a model with fewer than ``2 * min_child_samples`` known
    prompts predicts its mean quality."""

    def __init__(self, n_estimators: int = 200, learning_rate: float = 0.05, num_leaves: int = 15,
                 min_child_samples: int = 20, subsample: float = 0.8, colsample_bytree: float = 0.5,
                 reg_lambda: float = 1.0, random_state: int = 0):
        self.n_estimators = n_estimators
        self.learning_rate = learning_rate
        self.num_leaves = num_leaves
        self.min_child_samples = min_child_samples
        self.subsample = subsample
        self.colsample_bytree = colsample_bytree
        self.reg_lambda = reg_lambda
        self.random_state = random_state

    def fit(self, X, Y):
        from lightgbm import LGBMRegressor

        X, Y = _check_targets(X, Y)
        if not np.isfinite(X).all():
            raise ValueError("X must be finite (the compiled trees have no missing-value branches)")
        if X.shape[1] >= np.iinfo(np.int16).max or self.num_leaves > np.iinfo(np.int16).max // 2:
            raise ValueError("compiled trees hold at most 32766 features and 16383 leaves per tree")
        params = dict(objective="cross_entropy", n_estimators=self.n_estimators, learning_rate=self.learning_rate,
                      num_leaves=self.num_leaves, min_child_samples=self.min_child_samples,
                      subsample=self.subsample, subsample_freq=1,  # LightGBM ignores subsample without a freq
                      colsample_bytree=self.colsample_bytree, reg_lambda=self.reg_lambda,
                      random_state=self.random_state, n_jobs=1, verbose=-1)
        trees = []  # (model column, tree root as dumped by LightGBM)
        for j in range(Y.shape[1]):
            known = ~np.isnan(Y[:, j])
            if not known.any():
                raise ValueError(f"model column {j} has no known quality to learn from")
            if known.sum() < 2 * self.min_child_samples:
                mean = np.clip(Y[known, j].mean(), 1e-7, 1 - 1e-7)
                trees.append((j, {"leaf_value": float(logit(mean))}))  # a one-leaf tree: the mean, as a logit
                continue
            booster = LGBMRegressor(**params).fit(X[known], Y[known, j]).booster_
            trees += [(j, tree["tree_structure"]) for tree in booster.dump_model()["tree_info"]]
        self.n_features_in_ = X.shape[1]
        self.n_models_ = Y.shape[1]
        self.nodes_, self.roots_, self.tree_model_, self.active_ = _compile(trees, X.shape[1])
        return self

    def predict(self, X, block: int = 64) -> np.ndarray:
        check_is_fitted(self, "nodes_")
        X = np.asarray(X, dtype=np.float32)
        out = np.empty((len(X), self.n_models_))
        for start in range(0, len(X), block):
            out[start:start + block] = self._predict_block(X[start:start + block])
        return out

    def _predict_block(self, X: np.ndarray) -> np.ndarray:
        n, width = len(X), self.n_features_in_ + 1
        padded = np.column_stack([X, np.full(n, -np.inf, dtype=np.float32)]).ravel()
        row_start = (np.arange(n) * width)[:, None]
        node = np.tile(self.roots_, (n, 1))
        for active in self.active_:  # trees are sorted deepest first: only the first `active` are still moving
            moving = node[:, :active]
            at = self.nodes_[moving]
            moving += at["step"] + (padded[row_start + at["feature"]] > at["value"])
        leaf_values = self.nodes_["value"][node].astype(float)
        cell = (np.arange(n)[:, None] * self.n_models_ + self.tree_model_).ravel()
        raw = np.bincount(cell, weights=leaf_values.ravel(), minlength=n * self.n_models_)
        return expit(raw.reshape(n, self.n_models_))


def _flatten(root: dict, n_features: int) -> tuple[list[tuple[float, int, int]], int]:
    """The nodes of one dumped tree in breadth-first order (the two children of a split next to
    each other) as (value, feature, step) rows, and the tree's depth."""
    queue, rows, depth = [(root, 0)], [], 0
    while len(rows) < len(queue):
        node, level = queue[len(rows)]
        depth = max(depth, level)
        if "leaf_value" in node:
            rows.append((node["leaf_value"], n_features, 0))
        else:
            if node["decision_type"] != "<=":
                raise ValueError(f"cannot compile a {node['decision_type']!r} split")
            rows.append((node["threshold"], node["split_feature"], len(queue) - len(rows)))
            queue += [(node["left_child"], level + 1), (node["right_child"], level + 1)]
    return rows, depth


def _compile(trees: list[tuple[int, dict]], n_features: int):
    """(nodes, root of each tree, model of each tree, trees still moving at each level), trees deepest first."""
    flat = [_flatten(root, n_features) for _, root in trees]
    order = np.argsort([-depth for _, depth in flat], kind="stable")
    rows = [row for t in order for row in flat[t][0]]
    sizes = np.array([len(flat[t][0]) for t in order])
    depths = np.array([flat[t][1] for t in order])
    nodes = np.array(rows, dtype=_NODE)
    # Split thresholds are doubles; rounding each one down to a float32 keeps x <= threshold exact for float32 x.
    exact = np.array([value for value, _, _ in rows])
    split = nodes["feature"] != n_features
    too_high = split & (nodes["value"].astype(float) > exact)
    nodes["value"][too_high] = np.nextafter(nodes["value"][too_high], np.float32(-np.inf))
    roots = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int32)
    tree_model = np.array([trees[t][0] for t in order], dtype=np.int32)
    active = np.array([(depths > level).sum() for level in range(depths.max(initial=0))], dtype=np.int32)
    return nodes, roots, tree_model, active
