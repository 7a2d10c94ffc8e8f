"""Hypothesis properties of the evaluation metrics and the policy, on small random matrices.

Qualities and costs are drawn on a grid of 1/1000 (costs > 0): distinct slopes between models then
differ by far more than the policy's tie tolerance, so the exact sweeps can be compared point for
point with brute force (with arbitrary floats, choices closer than 1e-12 in score are ties).
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from router_ml import evaluate
from router_ml.routers.policy import (
    apply, best_single_model, calibrate, choice_point, choose, choose_threshold, operating_curve, threshold_curve,
)


def _grid_matrix(n: int, m: int, low: int):
    return arrays(float, (n, m), elements=st.integers(low, 1000).map(lambda k: k / 1000))


# (true quality, true cost, predicted quality, predicted cost, random choices)
cases = st.integers(1, 30).flatmap(lambda n: st.integers(2, 6).flatmap(lambda m: st.tuples(
    _grid_matrix(n, m, 0), _grid_matrix(n, m, 1), _grid_matrix(n, m, 0), _grid_matrix(n, m, 1),
    st.lists(arrays(np.int64, (n,), elements=st.integers(0, m - 1)), min_size=1, max_size=4),
)))


def _brute_lambdas(predicted_quality, cost):
    """0, the middle of each pair of consecutive pairwise slopes, and inf: every lambda policy."""
    dq = predicted_quality[:, :, None] - predicted_quality[:, None, :]
    dc = cost[:, :, None] - cost[:, None, :]
    with np.errstate(divide="ignore", invalid="ignore"):
        slopes = np.unique((dq / dc)[(dc != 0) & (dq / dc > 0)])
    return np.concatenate([[0.0], (slopes[:-1] + slopes[1:]) / 2, [np.inf]])


def _brute_choices(rule, predicted_quality, cost):
    if rule == "lambda":
        return [choose(predicted_quality, cost, lam) for lam in _brute_lambdas(predicted_quality, cost)]
    levels = [*np.unique(predicted_quality), np.inf]
    return [choose_threshold(predicted_quality, cost, level) for level in levels]


def _same_points(a, b) -> bool:
    """Every point of each set lies within 1e-9 of a point of the other."""
    distance = np.abs(a[:, None, :] - b[None, :, :]).max(axis=2)
    return bool((distance.min(axis=1) < 1e-9).all() and (distance.min(axis=0) < 1e-9).all())


def _cost_range(quality, cost):
    costs, _ = evaluate.single_model_points(quality, cost)
    return costs.min(), costs.max() + 1e-9


@settings(max_examples=60, deadline=None)
@given(cases)
def test_oracle_aiq_is_at_least_any_routers_and_the_zero_routers(case):
    quality, cost, predicted, predicted_cost, choices = case
    cost_range = _cost_range(quality, cost)
    oracle = evaluate.aiq(*evaluate.oracle_curve(quality, cost), cost_range)
    curves = [operating_curve(predicted, predicted_cost, quality, cost)[1:],
              threshold_curve(predicted, predicted_cost, quality, cost)[1:],
              evaluate.zero_router_curve(quality, cost), evaluate.random_curve(quality, cost),
              tuple(zip(*(choice_point(quality, cost, c) for c in choices)))]
    for curve in curves:
        assert oracle >= evaluate.aiq(*curve, cost_range) - 1e-9


@settings(max_examples=60, deadline=None)
@given(cases)
def test_fast_sweeps_equal_brute_force(case):
    quality, cost, predicted, predicted_cost, _ = case
    sweeps = [(evaluate.oracle_curve(quality, cost), "lambda", quality, cost),
              (operating_curve(predicted, predicted_cost, quality, cost, max_points=None)[1:], "lambda",
               predicted, predicted_cost),
              (threshold_curve(predicted, predicted_cost, quality, cost, max_points=None)[1:], "threshold",
               predicted, predicted_cost)]
    for fast, rule, rule_quality, rule_cost in sweeps:
        brute = [choice_point(quality, cost, c) for c in _brute_choices(rule, rule_quality, rule_cost)]
        assert _same_points(np.column_stack(fast), np.array(brute))


@settings(max_examples=60, deadline=None)
@given(arrays(float, st.integers(2, 30), elements=st.floats(0, 1)),
       arrays(float, st.integers(2, 30), elements=st.floats(0, 1)))
def test_hull_is_non_decreasing_and_concave(costs, qualities):
    n = min(len(costs), len(qualities))
    hc, hq = evaluate.hull(costs[:n], qualities[:n])
    assert np.all(np.diff(hc) > 0) and np.all(np.diff(hq) > 0)
    slopes = np.diff(hq) / np.diff(hc)
    assert np.all(np.diff(slopes) <= 1e-9)
    assert hq[-1] == pytest.approx(qualities[:n].max())


pairs = st.integers(2, 40).flatmap(lambda n: st.tuples(
    arrays(float, (n,), elements=st.sampled_from([0.0, 0.5, 1.0])),
    arrays(float, (n,), elements=st.sampled_from([0.0, 0.5, 1.0])),
    arrays(float, (n,), elements=st.floats(-1, 1))))


def _strong_first(strong, weak):
    return (strong, weak) if strong.mean() >= weak.mean() else (weak, strong)


@settings(max_examples=60, deadline=None)
@given(pairs)
def test_all_strong_has_pgr_one_and_all_weak_zero(case):
    strong, weak = _strong_first(*case[:2])
    if strong.mean() == weak.mean():
        return
    _, pgr = evaluate.pgr_curve(strong, weak, case[2], [0.0, 1.0])
    assert pgr.tolist() == pytest.approx([0.0, 1.0])


@settings(max_examples=60, deadline=None)
@given(pairs)
def test_the_true_gain_has_the_highest_apgr(case):
    strong, weak = _strong_first(*case[:2])
    if strong.mean() == weak.mean():
        return
    assert evaluate.apgr(strong, weak, strong - weak) >= evaluate.apgr(strong, weak, case[2]) - 1e-12


@settings(max_examples=60, deadline=None)
@given(cases, st.sampled_from(["lambda", "threshold"]), st.floats(0.5, 1.0))
def test_quality_share_holds_on_validation_whenever_reachable(case, rule, target):
    quality, cost, predicted, predicted_cost, _ = case
    calibration = calibrate(predicted, predicted_cost, quality, cost, "quality_share", target, rule=rule)
    best_quality = quality[:, best_single_model(quality, cost)].mean()
    points = [choice_point(quality, cost, c) for c in _brute_choices(rule, predicted, predicted_cost)]
    reaching = [c for c, q in points if q >= target * best_quality]
    if reaching:
        mean_cost, mean_quality = choice_point(quality, cost, apply(calibration, predicted, predicted_cost))
        assert calibration.met and mean_quality >= target * best_quality - 1e-9
        assert mean_cost <= min(reaching) + 1e-9  # the cheapest setting reaching it
    elif not calibration.met:  # the closest miss: the highest quality
        assert calibration.validation_value * best_quality == pytest.approx(max(q for _, q in points))


@settings(max_examples=60, deadline=None)
@given(cases, st.sampled_from(["lambda", "threshold"]), st.sampled_from(["strong_share", "cost_per_1k"]),
       st.floats(0, 1))
def test_ceilings_hold_on_validation_with_the_best_quality_under_them(case, rule, kind, fraction):
    quality, cost, predicted, predicted_cost, _ = case
    strong = best_single_model(quality, cost)
    if kind == "strong_share":
        target = fraction
    else:
        low, high = cost.min(axis=1).mean(), cost.max(axis=1).mean()
        target = 1000 * (low + fraction * (high - low))

    def measured(choice):
        mean_cost, mean_quality = choice_point(quality, cost, choice)
        return (np.mean(choice == strong) if kind == "strong_share" else 1000 * mean_cost), mean_quality

    calibration = calibrate(predicted, predicted_cost, quality, cost, kind, target, rule=rule)
    value, mean_quality = measured(apply(calibration, predicted, predicted_cost))
    assert value == pytest.approx(calibration.validation_value)
    within = [q for v, q in map(measured, _brute_choices(rule, predicted, predicted_cost)) if v <= target]
    if within:
        assert calibration.met and value <= target + 1e-9 and mean_quality >= max(within) - 1e-9
    else:
        assert not calibration.met


@settings(max_examples=100, deadline=None)
@given(cases, st.integers(0, 1000).map(lambda k: k / 1000))
def test_threshold_picks_the_cheapest_model_reaching_it(case, threshold):
    _, _, predicted, cost, _ = case
    rows = np.arange(len(cost))
    chosen = choose_threshold(predicted, cost, threshold)
    reaching = predicted >= threshold
    best = predicted >= predicted.max(axis=1, keepdims=True)
    allowed = np.where(reaching.any(axis=1, keepdims=True), reaching, best)
    assert allowed[rows, chosen].all()
    assert (cost[rows, chosen] <= np.where(allowed, cost, np.inf).min(axis=1)).all()
