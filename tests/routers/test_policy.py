"""The policy layer: threshold rule, exact sweeps, calibration to a target and its report, by hand."""

from __future__ import annotations

import numpy as np
import pytest

from router_ml.routers.policy import (
    Calibration, apply, calibrate, calibrate_lambda, choose, choose_threshold, lambdas, operating_curve,
    target_report, threshold_curve, thresholds,
)

# Three models, cheap to dear; on each prompt the dear model is right, the middle one on half.
QUALITY = np.array([[0.0, 1.0, 1.0], [0.0, 0.0, 1.0], [1.0, 1.0, 1.0], [0.0, 1.0, 1.0]])
COST = np.tile([1.0, 2.0, 10.0], (4, 1))


def test_threshold_picks_the_cheapest_model_reaching_it():
    predicted = np.array([[0.2, 0.7, 0.9], [0.3, 0.5, 0.4], [0.8, 0.8, 0.1]])
    cost = np.array([[1.0, 2.0, 3.0], [1.0, 2.0, 0.5], [2.0, 2.0, 1.0]])
    assert choose_threshold(predicted, cost, 0.6).tolist() == [1, 1, 0]  # row 1: none reaches it, best is 1
    assert choose_threshold(predicted, cost, 0.35).tolist() == [1, 2, 0]
    assert choose_threshold(predicted, cost, 0.0).tolist() == [0, 2, 2]
    assert choose_threshold(predicted, cost, 2.0).tolist() == [2, 1, 0]  # none reaches: best, ties to cheaper


def test_infinite_lambda_is_the_cheapest_then_the_best_predicted():
    predicted = np.array([[0.2, 0.6, 0.9]])
    assert choose(predicted, np.array([[1.0, 1.0, 3.0]]), np.inf).tolist() == [1]


def test_sweeps_list_each_distinct_policy_once():
    grid = lambdas(QUALITY, COST)
    assert grid[0] == 0 and grid[-1] == np.inf and np.all(np.diff(grid) > 0)
    # Hull slopes: 1 (middle -> cheap, prompts 0 and 3 at once), 1/9 (dear -> cheap, prompt 1: the
    # middle model lies under that line); prompt 2 takes the cheap model from the start.
    assert [choose(QUALITY, COST, lam).tolist() for lam in grid] == [[1, 2, 0, 1], [1, 0, 0, 1], [0, 0, 0, 0]]
    levels = thresholds(QUALITY, COST)
    assert levels.tolist() == [1.0, 0.0]
    assert [choose_threshold(QUALITY, COST, t).tolist() for t in levels] == [[1, 2, 0, 1], [0, 0, 0, 0]]
    _, costs, qualities = threshold_curve(QUALITY, COST, QUALITY, COST)
    assert costs.tolist() == [3.75, 1.0] and qualities.tolist() == [1.0, 0.25]


def test_operating_curve_keeps_the_ends_when_capped():
    rng = np.random.default_rng(0)
    predicted, cost = rng.random((300, 6)), rng.random((300, 6))
    full, _, _ = operating_curve(predicted, cost, predicted, cost, max_points=None)
    capped, costs, _ = operating_curve(predicted, cost, predicted, cost, max_points=50)
    assert len(full) > 50 and len(capped) == 50 and capped[0] == 0 and capped[-1] == np.inf
    assert costs[-1] == pytest.approx(cost.min(axis=1).mean())


def test_quality_share_calibration_is_the_cheapest_reaching_it():
    # Best single model: the dear one (quality 1, cost 10). 75% of it: the middle model where it is right.
    for rule in ("lambda", "threshold"):
        calibration = calibrate(QUALITY, COST, QUALITY, COST, "quality_share", 0.75, rule=rule)
        assert calibration.reference_model == 2 and calibration.met
        assert calibration.validation_value == pytest.approx(1.0 if rule == "threshold" else 0.75)
        report = target_report(calibration, QUALITY, COST, QUALITY, COST)
        assert report["met"] and report["achieved"] == pytest.approx(calibration.validation_value)
    calibration = calibrate(QUALITY, COST, QUALITY, COST, "quality_share", 0.75)
    assert apply(calibration, QUALITY, COST).tolist() == [1, 0, 0, 1]


def test_strong_share_and_cost_ceilings_keep_the_best_quality_within_them():
    strong = calibrate(QUALITY, COST, QUALITY, COST, "strong_share", 0.25)
    report = target_report(strong, QUALITY, COST, QUALITY, COST)
    assert strong.met and report["model_shares"][2] == pytest.approx(0.25)  # the one prompt only it solves
    assert report["mean_quality"] == 1.0 and report["quality_share"] == 1.0
    cost = calibrate(QUALITY, COST, QUALITY, COST, "cost_per_1k", 2000.0)
    assert cost.met and cost.validation_value <= 2000.0
    assert target_report(cost, QUALITY, COST, QUALITY, COST)["mean_quality"] == 0.75


def test_unreachable_target_falls_back_to_the_closest_and_says_so():
    calibration = calibrate(QUALITY, COST, QUALITY, COST, "cost_per_1k", 500.0)
    assert not calibration.met and calibration.validation_value == 1000.0  # the cheapest model everywhere
    report = target_report(calibration, QUALITY, COST, QUALITY, COST)
    assert not report["met"] and report["cost_per_1k"] == 1000.0 and report["model_shares"] == [1.0, 0.0, 0.0]
    with pytest.raises(ValueError, match="kind"):
        calibrate(QUALITY, COST, QUALITY, COST, "latency", 1.0)


def test_report_uses_test_data_for_the_best_model():
    calibration = Calibration("quality_share", 0.9, "lambda", 0.0, 1.0, reference_model=2)
    test_quality = QUALITY[:, ::-1]  # now the cheapest model is the best
    report = target_report(calibration, QUALITY, COST, test_quality, COST)
    assert report["best_model"] == 0 and report["best_model_quality"] == 1.0
    assert report["quality_share"] == report["achieved"] == pytest.approx(0.75)  # choices [1, 2, 0, 1]


def test_calibrate_lambda_wraps_the_quality_target():
    lam = calibrate_lambda(QUALITY, COST, QUALITY, COST, 0.75)
    assert choose(QUALITY, COST, lam).tolist() == [1, 0, 0, 1]
    assert calibrate_lambda(QUALITY, COST, QUALITY, COST, 2.0) == 0.0  # unreachable: the best quality


def test_large_sweep_stays_small_and_exact_at_its_ends():
    rng = np.random.default_rng(1)
    predicted, cost = rng.random((4000, 60)), rng.random((4000, 60)) * 1e-3
    grid, costs, qualities = operating_curve(predicted, cost, predicted, cost, max_points=None)
    first, last = choose(predicted, cost, 0.0), choose(predicted, cost, np.inf)
    rows = np.arange(4000)
    assert qualities[0] == pytest.approx(predicted[rows, first].mean())
    assert costs[-1] == pytest.approx(cost[rows, last].mean())
    assert np.all(np.diff(grid) > 0)
