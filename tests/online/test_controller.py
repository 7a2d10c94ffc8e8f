"""The online operating point (router_ml.online.controller) fed with real RouterBench labels: on ARC-Challenge,
Claude v1 keeps about 95% of GPT-4's quality and Mistral 7B about 70%."""

from __future__ import annotations

import json
import math

import pytest

from router_ml.online.controller import OperatingPoint
from real_streams import REFERENCE, routerbench_matrix

MARGINS = (-math.inf, 0.0, math.inf)  # the reference alone, a near model, a cheap one


@pytest.fixture(scope="module")
def arc(real_files):
    matrix = routerbench_matrix(real_files)
    rows = matrix.prompts["task"].to_numpy() == "arc-challenge"
    column = {name: matrix.quality[rows, matrix.models.index(model)] for name, model in
              (("reference", REFERENCE), ("near", "claude-v1"), ("cheap", "mistralai/mistral-7b-chat"))}
    return column


def _feed(point: OperatingPoint, arc: dict, levels: dict, calls: range) -> list:
    changes = []
    for i in calls:
        for level, name in levels.items():
            point.observe(level, arc[name][i], arc["reference"][i])
        if (change := point.update(i)) is not None:
            changes.append(change)
    return changes


def test_it_starts_at_the_reference_and_moves_only_as_far_as_labels_justify(arc):
    point = OperatingPoint(target=0.9, margins=MARGINS, min_labels=30)
    assert point.level == 0 and point.margin == -math.inf and point.estimate().share == 1.0
    changes = _feed(point, arc, {1: "near", 2: "cheap"}, range(29))
    assert changes == [] and point.level == 0  # too few labels to prove anything
    changes = _feed(point, arc, {1: "near", 2: "cheap"}, range(29, 400))
    assert point.level == 1 and (changes[0].old, changes[0].new) == (0, 1)
    assert all(2 not in (c.old, c.new) for c in changes)  # never the cheap level
    assert "level 1 proven" in changes[0].reason and changes[0].estimate["lower"] >= 0.91
    assert point.estimate(2).upper < 0.9  # the cheap level is known to be worse than the target


def test_it_steps_back_at_once_when_the_bound_falls_and_a_restart_keeps_its_state(arc):
    point = OperatingPoint(target=0.9, margins=MARGINS, min_labels=30)
    _feed(point, arc, {1: "near"}, range(300))
    assert point.level == 1
    resumed = OperatingPoint.from_state(json.loads(json.dumps(point.state())))
    assert resumed.level == 1 and resumed.estimate(1) == point.estimate(1)
    changes = _feed(resumed, arc, {1: "cheap"}, range(300, 700))  # the level's traffic turns bad
    assert resumed.level == 0 and (changes[0].old, changes[0].new) == (1, 0)
    assert "fell below the target" in changes[0].reason and changes[0].estimate["lower"] < 0.9


@pytest.mark.parametrize("max_step, first_move", [(1, (0, 1)), (2, (0, 2)), (3, (0, 2))])
def test_a_move_skips_to_the_cheapest_proven_level_within_max_step(arc, max_step, first_move):
    point = OperatingPoint(target=0.9, margins=(-math.inf, -0.1, 0.0, math.inf), min_labels=30, max_step=max_step)
    changes = _feed(point, arc, {1: "near", 2: "near", 3: "cheap"}, range(400))
    assert (changes[0].old, changes[0].new) == first_move and "level 2 proven" in changes[-1].reason
    assert point.level == 2  # the cheap level never proves, however far a move may go
    assert OperatingPoint.from_state(json.loads(json.dumps(point.state()))).max_step == max_step


def test_settings_are_checked():
    with pytest.raises(ValueError, match="target"):
        OperatingPoint(target=1.5)
    with pytest.raises(ValueError, match="margins"):
        OperatingPoint(margins=(0.0, 0.1))
    with pytest.raises(ValueError, match="max_step"):
        OperatingPoint(max_step=0)
