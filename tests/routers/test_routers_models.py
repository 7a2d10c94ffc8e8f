"""LightGBM, matrix-factorization and stacked quality routers, on real ZeroEval outcomes."""

from __future__ import annotations

import json
from dataclasses import dataclass

import joblib
import numpy as np
import pytest
from scipy.stats import spearmanr
from sklearn.base import clone
from sklearn.exceptions import NotFittedError
from sklearn.utils.validation import check_is_fitted

from router_ml.data.importers import zeroeval
from router_ml.data.report import ImportReport
from router_ml.data.sources import DataFiles, fetch, load_manifest
from router_ml.embed import StaticEncoder
from router_ml.label import outcome_matrix
from router_ml.routers import (
    LightGBMQualityRouter, LinearQualityRouter, MatrixFactorizationRouter, MeanQualityRouter, StackedQualityRouter,
)
from router_ml.split import group_holdout

from conftest import MANIFEST, REAL_MIRROR

ITEMS_PER_TASK = 200  # the first items of each ZeroEval task, answered by 43-51 of its 60 models

# Small settings so that the file runs in seconds; the defaults are exercised by the experiment in the report.
ROUTERS = {
    "lightgbm": lambda: LightGBMQualityRouter(n_estimators=30, learning_rate=0.1, min_child_samples=10),
    "mf": lambda: MatrixFactorizationRouter(),
    "stack": lambda: StackedQualityRouter(
        [("linear", LinearQualityRouter(alpha=10.0)), ("mf", MatrixFactorizationRouter())], n_splits=3),
}


@dataclass
class Outcomes:
    X: np.ndarray
    Y: np.ndarray  # real outcomes, with half of the known cells hidden again to make the matrix sparser
    train: np.ndarray
    test: np.ndarray


@pytest.fixture(scope="module")
def outcomes(request, tmp_path_factory) -> Outcomes:
    """The first items of every ZeroEval model's results, cut from the real files, as features and qualities."""
    if REAL_MIRROR is None:
        pytest.skip("no public datasets mirror (set ROUTER_ML_DATA_MIRROR)")
    out = tmp_path_factory.mktemp("zeroeval-cut")
    real = fetch([e for e in load_manifest(MANIFEST) if e.source == zeroeval.SOURCE], out / "cache", mirror=REAL_MIRROR)
    cut = {}
    for task_dir in zeroeval.TASK_NAMES:
        for path in real.paths(zeroeval.SOURCE, f"{zeroeval.RESULTS}/{task_dir}/", ".json"):
            local = out / "cut" / path
            local.parent.mkdir(parents=True, exist_ok=True)
            local.write_text(json.dumps(json.loads(real.read_bytes(zeroeval.SOURCE, path))[:ITEMS_PER_TASK]))
            cut[(zeroeval.SOURCE, path)] = local
    matrix = outcome_matrix(zeroeval.load(DataFiles(cut), ImportReport()))
    prompts = matrix.prompts["prompt"].to_list()
    encoder = StaticEncoder(request.getfixturevalue("static_encoder_dir"))  # built only when the data is there
    X = np.column_stack([encoder.encode(prompts), np.log1p([len(p) for p in prompts])])
    Y = matrix.quality.copy()
    known = np.argwhere(~np.isnan(Y))
    hidden = known[np.random.default_rng(0).random(len(known)) < 0.5]
    Y[hidden[:, 0], hidden[:, 1]] = np.nan
    train, test = group_holdout(matrix.prompts["prompt_id"].to_list(), 0.3, seed=0)
    return Outcomes(X.astype(np.float32), Y, train, test)


@pytest.fixture(scope="module", params=list(ROUTERS))
def fitted(request, outcomes):
    return request.param, ROUTERS[request.param]().fit(outcomes.X[outcomes.train], outcomes.Y[outcomes.train])


def test_sparse_outcomes_fixture_is_what_the_routers_are_meant_for(outcomes):
    assert outcomes.Y.shape == (3 * ITEMS_PER_TASK, 60)
    known_per_prompt = (~np.isnan(outcomes.Y)).sum(axis=1)
    assert known_per_prompt.min() >= 10 and known_per_prompt.max() <= 40  # 43-51 models per task, half hidden


def test_predictions_are_a_quality_for_every_model(fitted, outcomes):
    _, router = fitted
    predicted = router.predict(outcomes.X[outcomes.test])
    assert predicted.shape == (len(outcomes.test), outcomes.Y.shape[1])
    assert np.isfinite(predicted).all() and (predicted >= 0).all() and (predicted <= 1).all()
    assert router.predict(outcomes.X[:0]).shape == (0, outcomes.Y.shape[1])


def test_ranks_models_by_mean_quality_like_the_truth(fitted, outcomes):
    """On its training prompts, each model's mean predicted quality (over the cells where its quality is
    known) orders the models about as their observed mean quality does."""
    _, router = fitted
    Y = outcomes.Y[outcomes.train]
    predicted = router.predict(outcomes.X[outcomes.train])
    known = ~np.isnan(Y)
    predicted_mean = np.where(known, predicted, 0).sum(axis=0) / known.sum(axis=0)
    assert spearmanr(predicted_mean, np.nanmean(Y, axis=0)).statistic > 0.8


def test_fit_is_deterministic_and_survives_clone_and_pickle(fitted, outcomes, tmp_path):
    _, router = fitted
    X = outcomes.X[outcomes.test]
    again = clone(router)
    assert again.get_params(deep=False).keys() == router.get_params(deep=False).keys()
    with pytest.raises(NotFittedError):
        check_is_fitted(again)
    again.fit(outcomes.X[outcomes.train], outcomes.Y[outcomes.train])
    assert np.array_equal(again.predict(X), router.predict(X))
    joblib.dump(router, tmp_path / "router.joblib")
    assert np.array_equal(joblib.load(tmp_path / "router.joblib").predict(X), router.predict(X))


@pytest.mark.parametrize("name", list(ROUTERS))
def test_a_model_without_known_quality_is_named(name, outcomes):
    Y = outcomes.Y.copy()
    Y[:, 0] = np.nan
    with pytest.raises(ValueError, match="model column 0 has no known quality"):
        ROUTERS[name]().fit(outcomes.X, Y)


def test_matrix_factorization_beats_the_mean_on_held_out_prompts(outcomes):
    train, test = outcomes.train, outcomes.test
    truth = outcomes.Y[test]
    known = ~np.isnan(truth)

    def scores(router):
        p = np.clip(router.fit(outcomes.X[train], outcomes.Y[train]).predict(outcomes.X[test])[known], 1e-6, 1 - 1e-6)
        y = truth[known]
        return np.mean((p - y) ** 2), -np.mean(y * np.log(p) + (1 - y) * np.log(1 - p))

    mf_brier, mf_log_loss = scores(MatrixFactorizationRouter())
    mean_brier, mean_log_loss = scores(MeanQualityRouter())
    assert mf_brier < mean_brier - 0.005 and mf_log_loss < mean_log_loss - 0.01


def test_compiled_trees_predict_what_lightgbm_predicts(outcomes):
    from lightgbm import LGBMRegressor

    router = LightGBMQualityRouter(n_estimators=30, learning_rate=0.1, min_child_samples=10)
    X, Y = outcomes.X, outcomes.Y.copy()
    few = np.flatnonzero(~np.isnan(Y[:, 0]))[5:]
    Y[few, 0] = np.nan  # 5 known prompts: fewer than 2 * min_child_samples, so the mean is predicted
    predicted = router.fit(X, Y).predict(X)
    assert np.allclose(predicted[:, 0], np.nanmean(Y[:, 0]), atol=1e-6)
    for j in (1, 30, 59):
        known = ~np.isnan(Y[:, j])
        booster = LGBMRegressor(objective="cross_entropy", n_estimators=30, learning_rate=0.1, num_leaves=15,
                                min_child_samples=10, subsample=0.8, subsample_freq=1, colsample_bytree=0.5,
                                reg_lambda=1.0, random_state=0, n_jobs=1, verbose=-1).fit(X[known], Y[known, j])
        assert np.abs(booster.predict(X) - predicted[:, j]).max() < 1e-6


def test_stack_blends_each_model_convexly_and_prefers_the_informed_base(outcomes):
    stack = StackedQualityRouter([("mean", MeanQualityRouter()), ("mf", MatrixFactorizationRouter())],
                                 n_splits=3).fit(outcomes.X[outcomes.train], outcomes.Y[outcomes.train])
    assert stack.weights_.shape == (outcomes.Y.shape[1], 2)
    assert (stack.weights_ >= 0).all() and np.allclose(stack.weights_.sum(axis=1), 1)
    assert stack.weights_[:, 1].mean() > 0.5
    bases = [base.predict(outcomes.X[outcomes.test]) for base in stack.estimators_]
    blended = stack.weights_[:, 0] * bases[0] + stack.weights_[:, 1] * bases[1]
    assert np.allclose(stack.predict(outcomes.X[outcomes.test]), blended)
