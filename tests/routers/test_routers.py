"""Quality routers and the cost policy: estimator contract, policy ends, calibration, real data."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from sklearn.base import clone

from router_ml import evaluate
from router_ml.routers import (
    KNNQualityRouter, LinearQualityRouter, MeanQualityRouter, calibrate_lambda, choose, operating_curve,
)


def test_policy_ends_are_best_predicted_and_cheapest():
    predicted = np.array([[0.2, 0.9, 0.8], [0.5, 0.5, 0.1]])
    cost = np.array([[1.0, 5.0, 2.0], [1.0, 3.0, 0.5]])
    assert choose(predicted, cost, 0.0).tolist() == [1, 0]  # ties go to the cheaper model
    assert choose(predicted, cost, np.inf).tolist() == [0, 2]


def test_router_is_a_clonable_estimator():
    router = KNNQualityRouter(n_neighbors=5, prior_weight=1.0)
    assert clone(router).get_params() == {"n_neighbors": 5, "prior_weight": 1.0}
    with pytest.raises(ValueError, match="quality"):
        router.fit(np.zeros((2, 3)), np.array([[0.5, 2.0], [0.1, 0.2]]))


@settings(max_examples=40, deadline=None)
@given(st.integers(3, 30).flatmap(lambda n: st.tuples(
    arrays(float, (n, 4), elements=st.floats(-1, 1)), arrays(float, (n, 3), elements=st.sampled_from([0.0, 1.0])))))
def test_one_neighbour_without_prior_recalls_training_quality(case):
    features, Y = case
    X = np.column_stack([10 * np.eye(len(Y)), features])  # the one-hot part makes each row its own nearest
    router = KNNQualityRouter(n_neighbors=1, prior_weight=0.0).fit(X, Y)
    assert np.array_equal(router.predict(X), Y)


def test_calibrated_lambda_is_the_cheapest_that_reaches_the_target():
    rng = np.random.default_rng(0)
    quality = rng.integers(0, 2, size=(200, 3)).astype(float)
    cost = np.tile([1.0, 3.0, 10.0], (200, 1))
    predicted = np.clip(quality + rng.normal(0, 0.4, size=quality.shape), 0, 1)
    target = 0.8 * quality[:, 2].mean()
    lam = calibrate_lambda(predicted, cost, quality, cost, target)
    grid, costs, qualities = operating_curve(predicted, cost, quality, cost)
    reaching = qualities >= target
    assert qualities[grid == lam][0] >= target
    assert grid[reaching].max() == lam


def test_knn_on_real_routerbench_prompts(mini_files, report):
    from router_ml.data.costs import add_tokens_and_costs
    from router_ml.data.importers import routerbench
    from router_ml.embed import MiniLMEncoder
    from router_ml.label import outcome_matrix

    matrix = outcome_matrix(add_tokens_and_costs(routerbench.load(mini_files, report))).complete()
    X = MiniLMEncoder().encode(matrix.prompts["prompt"].to_list())
    train = (matrix.prompts["split"] == "train").to_numpy()
    router = KNNQualityRouter(n_neighbors=5).fit(X[train], matrix.quality[train])
    predicted = router.predict(X[~train])
    assert predicted.shape == matrix.quality[~train].shape and (predicted >= 0).all() and (predicted <= 1).all()
    mean = MeanQualityRouter().fit(X[train], matrix.quality[train]).predict(X[~train])
    cost = np.tile(matrix.cost[train].mean(axis=0), (int((~train).sum()), 1))
    truth, true_cost = matrix.quality[~train], matrix.cost[~train]
    oracle = evaluate.oracle_curve(truth, true_cost)
    cost_range = (true_cost.min(axis=1).mean(), true_cost.max(axis=1).mean())
    for predictions in (predicted, mean):
        _, costs, qualities = operating_curve(predictions, cost, truth, true_cost)
        assert evaluate.aiq(costs, qualities, cost_range) <= evaluate.aiq(*oracle, cost_range) + 1e-12


def test_linear_router_learns_each_model_from_its_known_rows():
    rng = np.random.default_rng(1)
    X = rng.normal(size=(400, 5))
    Y = np.column_stack([0.5 + 0.1 * X[:, 0], 0.5 - 0.1 * X[:, 1]]).clip(0, 1)
    Y[::3, 1] = np.nan  # unknown outcomes are skipped, not read as zeros
    router = LinearQualityRouter(alpha=1e-3).fit(X, Y)
    predicted = router.predict(X)
    assert np.abs(predicted[:, 0] - Y[:, 0]).max() < 0.01
    known = ~np.isnan(Y[:, 1])
    assert np.abs(predicted[known, 1] - Y[known, 1]).max() < 0.01
    assert clone(router).get_params() == {"alpha": 1e-3}
    with pytest.raises(ValueError, match="no known quality"):
        LinearQualityRouter().fit(X, np.full((400, 1), np.nan))
