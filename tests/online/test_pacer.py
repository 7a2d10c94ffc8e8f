"""The cost pacer (router_ml.online.pacer): its arithmetic, the floor of the operating point, and a replay of
RouterBench's test split (routed by a task-name router) held to cost targets."""

from __future__ import annotations

import json
import math

import pytest

from router_ml.online.controller import OperatingPoint
from router_ml.online.pacer import cost_at, floor_for, pace
from router_ml.online.simulate import Settings, Stream, simulate
from real_streams import REFERENCE, task_router_stream

COSTS = (10.0, 8.0, 2.0, 1.0)  # per call at levels 0 (the reference) to 3 (the cheapest)


@pytest.fixture(scope="module")
def stream(real_files) -> Stream:
    return task_router_stream(real_files)


def test_a_floor_between_levels_mixes_their_costs():
    assert cost_at(COSTS, 1.5) == 5.0 and cost_at(COSTS, 3) == 1.0
    for allowance in (9.0, 5.0, 1.5):
        assert cost_at(COSTS, floor_for(COSTS, allowance)) == pytest.approx(allowance)
    assert floor_for(COSTS, 20.0) == 0.0 and floor_for(COSTS, 0.5) == 3.0  # nothing fits: the cheapest level


def test_the_pacer_tightens_when_over_and_relaxes_slowly():
    half_day = dict(level=0, costs=COSTS, scale=1.0, calls=100, to_come=100, max_step=1)
    over = pace(floor=0.0, spent=900.0, target=1000.0, **half_day)  # 100 left for 100 calls: 1 a call
    assert over.allowance == pytest.approx(1.0) and over.wanted == 1.0  # one level at a time (max_step)
    assert over.projected_spend == pytest.approx(900 + 100 * 10)
    assert pace(floor=0.0, spent=1200.0, target=1000.0, **{**half_day, "max_step": 5}).wanted == 3.0  # overspent
    under = pace(floor=3.0, spent=100.0, target=1000.0, **half_day)  # 9 a call fits level 0.5, but one level back
    assert under.wanted == 2.0
    doubled = pace(floor=1.0, spent=300.0, target=1000.0, **{**half_day, "scale": 2.0})  # 7 a call, costs x2
    assert doubled.wanted == pytest.approx(1.8)  # cost_at(costs x 2, 1.75) = 7, to a tenth of a level
    with pytest.raises(ValueError, match="cost target must be positive"):
        pace(floor=0.0, spent=0.0, target=0.0, **half_day)
    with pytest.raises(ValueError, match="calls to come"):
        pace(floor=0.0, spent=0.0, target=1.0, **{**half_day, "to_come": -1})


def test_the_floor_serves_its_share_of_calls_cheaper_and_survives_a_restart():
    point = OperatingPoint(margins=(-math.inf, 0.0, 0.1, math.inf))
    point.costs, point.scale = COSTS, 1.3
    change = point.set_floor(1.3, 7.0, "cost pacer: test", {"allowance": 6.2})
    assert change.by == "cost" and (change.old, change.new) == (0.0, 1.3)
    draws = [(k + 0.5) / 100 for k in range(100)]
    assert sum(point.level_for(d) == 2 for d in draws) == 30 and sum(point.level_for(d) == 1 for d in draws) == 70
    assert point.served == 1 and point.set_floor(1.3, 8.0, "again", {}) is None
    point.level = 2  # the quality controller's level, cheaper than the floor: it serves every call
    assert {point.level_for(d) for d in draws} == {2}
    again = OperatingPoint.from_state(json.loads(json.dumps(point.state())))
    assert (again.floor, again.scale, again.costs, again.changes[-1].by) == (1.3, 1.3, COSTS, "cost")
    with pytest.raises(ValueError, match="floor 4"):
        point.set_floor(4, 9.0, "off the ladder", {})


@pytest.mark.parametrize("cost_target", [0.3, 0.5])
def test_a_replayed_stream_spends_its_cost_target(stream, cost_target):
    free = simulate(stream, REFERENCE, Settings(), orders=3)
    paced = simulate(stream, REFERENCE, Settings(cost_target=cost_target), orders=3)
    assert free["median"]["cost_moves"] == 0 and 1 - free["median"]["net_cost_cut"] > cost_target  # it needs pacing
    for run in paced["runs"]:
        assert 0.95 <= run["spend_of_cost_target"] <= 1.05, run
        assert run["cost_moves"] > 0
    assert paced["median"]["quality_share"] < free["median"]["quality_share"]  # cost wins, at a price in quality
