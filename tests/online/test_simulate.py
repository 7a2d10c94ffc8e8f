"""The replay simulator (router_ml.online.simulate) on RouterBench's test split routed by a task-name router."""

from __future__ import annotations

import numpy as np
import pytest

from router_ml.online.sampling import judging_chance
from router_ml.online.simulate import Settings, Stream, simulate
from real_streams import REFERENCE, task_router_stream


@pytest.fixture(scope="module")
def stream(real_files) -> Stream:
    return task_router_stream(real_files)


def test_the_target_holds_and_the_books_balance(stream):
    report = simulate(stream, REFERENCE, Settings(sample_rate=0.2), orders=5)
    assert report["calls"] == len(stream) and len(report["runs"]) == 5
    assert report["held_rate"] == 1.0 and report["min_quality_share"] >= 0.94
    for run in report["runs"]:
        assert run["net_cost_cut"] < run["gross_cost_cut"]  # judging is paid for
        assert run["shadow_share"] <= run["judged_share"] == pytest.approx(run["labels"] / len(stream))
        assert run["exact_labels"] <= run["labels"]
    assert report["median"]["changes"] > 0 and report["median"]["gross_cost_cut"] > 0.05  # it earned its way down
    assert report["baselines"]["always the reference"] == {"quality_share": 1.0, "cost_cut": 0.0}


def test_a_new_tenant_with_few_labels_stays_at_the_reference(stream):
    report = simulate(stream, REFERENCE, Settings(sample_rate=0.01), orders=3)
    assert all(run["final_level"] == 0 and run["gross_cost_cut"] == 0.0 for run in report["runs"])
    assert report["median"]["quality_share"] == 1.0


def test_the_static_baseline_is_reported_and_bad_streams_are_refused(stream):
    cheapest = np.full(len(stream), stream.models.index("mistralai/mistral-7b-chat"))
    with_static = Stream(stream.name, stream.models, stream.predicted_quality, stream.predicted_cost,
                         stream.quality, stream.cost, static_choice=cheapest)
    static = simulate(with_static, REFERENCE, orders=1)["baselines"]["static calibration"]
    assert static["quality_share"] < 0.8 and static["cost_cut"] > 0.9
    with pytest.raises(ValueError, match="reference 'gpt-5'"):
        simulate(stream, "gpt-5", orders=1)
    with pytest.raises(ValueError, match="predicted_cost has shape"):
        Stream("bad", stream.models, stream.predicted_quality, stream.predicted_cost[:, :3], stream.quality,
               stream.cost)


def test_the_judging_schedule_is_front_loaded_at_its_mean_rate():
    chances = [judging_chance(0.05, t, horizon=2000) for t in range(1, 2001)]
    assert chances[0] == 1.0 and chances[-1] == pytest.approx(0.025)
    assert np.mean(chances) == pytest.approx(0.05, rel=0.05) and all(np.diff(chances) <= 0)
