"""A tenant's online operating point: a ladder of margins for :func:`router_ml.routers.policy.choose_near_reference`,
from the reference model alone (level 0, margin -inf) to the cheapest model (the last level, margin inf).
:func:`ladder` places the rungs where the router's predictions on the tenant's prompts send a given share of the
traffic away from the reference, so that each step moves a known share of calls.

A judged call is graded at the current level and a few cheaper ones at once: the judge scores the answer each of
those levels would have served for that prompt against the reference's (the shadow call asks the models the
served answer did not come from), so each level gathers unbiased labels whatever level serves. A level is
*proven* when its quality share's lower confidence bound is at or above the target with at least ``min_labels`` labels; each level above 0 starts with
``prior`` pseudo-labels of a complete loss, so that a handful of lucky labels proves nothing. The controller
serves the current level while it stays proven, moves to the cheapest proven level at most ``max_step`` levels
cheaper (the levels a judged call grades are the ones that can be proven), and when the
current level's bound falls below the target it goes back at once to the cheapest proven level above it (level
0 is proven by definition). Moving cheaper asks for ``hysteresis`` more than the target, so that a level whose
bound hovers at the target does not flap. Every change is recorded with its reason and the estimate behind it.

A tenant with a cost target also has a *floor* (:mod:`router_ml.online.pacer`), a point between two levels: a
call is served at the cheaper of the quality controller's level and the floor (:meth:`OperatingPoint.level_for`),
and the pacer's moves of the floor are recorded beside the quality controller's (``by="cost"``).
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import asdict, dataclass

import numpy as np

from router_ml.online.estimate import ShareEstimate, quality_share

MARGINS = (-math.inf, -0.2, -0.1, -0.05, 0.0, 0.05, 0.1, 0.15, 0.2, 0.3, 0.5, math.inf)
AWAY_SHARES = (0.05, 0.1, 0.2, 0.3, 0.45, 0.6, 0.75, 0.9)


def ladder(predicted_quality, predicted_cost, reference: int, shares=AWAY_SHARES) -> tuple[float, ...]:
    """Margins at which ``shares`` of these prompts leave the reference (by the router's predictions alone: no
    labels), between -inf (the reference alone) and inf (the cheapest model)."""
    quality, cost = np.asarray(predicted_quality, dtype=float), np.asarray(predicted_cost, dtype=float)
    cheaper = cost < cost[:, [reference]]
    best_cheaper = np.where(cheaper, quality, -np.inf).max(axis=1)
    gap = quality[:, reference] - best_cheaper  # the margin from which the prompt leaves the reference
    finite = gap[np.isfinite(gap)]
    rungs = [float(np.quantile(finite, s)) if finite.size else math.inf for s in sorted(shares)]
    return (-math.inf, *rungs, math.inf)  # one rung per share, equal ones included: level k keeps its meaning


@dataclass(frozen=True)
class Change:
    """One move of the operating point: when (``at``: the caller's clock, e.g. a call's index), from which level
    to which (the pacer's floor, ``by="cost"``, may lie between levels), why, and the estimate of the level (or
    the pace) that decided it."""

    at: float
    old: float
    new: float
    reason: str
    estimate: dict
    by: str = "quality"  # or "cost": a move of the pacer's floor


class OperatingPoint:
    """The operating point of one tenant (or one prompt cluster of it); see the module docstring."""

    def __init__(self, *, target: float = 0.95, confidence: float = 0.8, margins=MARGINS, min_labels: int = 30,
                 window: int = 1000, prior: int = 1, hysteresis: float = 0.01, max_step: int = 1):
        if not 0 < target <= 1:
            raise ValueError(f"target must be a share in (0, 1], not {target}")
        if margins[0] != -math.inf or list(margins) != sorted(margins):
            raise ValueError("margins must rise from -inf (the reference alone)")
        if max_step < 1:
            raise ValueError(f"max_step must be at least one level, not {max_step}")
        self.target, self.confidence, self.margins = target, confidence, tuple(margins)
        self.min_labels, self.prior, self.hysteresis, self.max_step = min_labels, prior, hysteresis, max_step
        self.level = 0
        self.floor = 0.0
        self.costs: tuple[float, ...] | None = None  # the pacer's predicted cost per call of each level
        self.scale = 1.0  # and what real calls cost against those predictions
        self.changes: list[Change] = []
        # per level: (routed, reference, exact routed, exact reference, weight)
        self._labels = [deque(maxlen=window) for _ in self.margins]

    @property
    def served(self) -> int:
        """The level most calls are served at: the quality controller's, or the floor's nearest when cheaper."""
        return max(self.level, round(self.floor))

    def level_for(self, draw: float) -> int:
        """The level one call is served at, given a uniform ``draw`` in [0, 1): the floor's upper level for the
        floor's fractional share of the draws."""
        below = math.floor(self.floor)
        return max(self.level, below + (draw < self.floor - below))

    @property
    def margin(self) -> float:
        return self.margins[self.served]

    def margin_for(self, draw: float) -> float:
        return self.margins[self.level_for(draw)]

    def observe(self, level: int, routed: float, reference: float, exact_routed: float = math.nan,
                exact_reference: float = math.nan, weight: float = 1.0) -> None:
        """One judged label of ``level``: the judge's scores of that level's answer and of the reference's, the
        exact labels of the two where known, and the label's weight (1 / the probability the call was judged)."""
        self._labels[level].append((routed, reference, exact_routed, exact_reference, weight))

    def estimate(self, level: int | None = None) -> ShareEstimate:
        """The quality share of ``level`` (default: the one served); level 0 keeps the reference's by definition."""
        level = self.served if level is None else level
        if level == 0:
            return ShareEstimate(1.0, 1.0, 1.0, 0, 0)
        labels = list(self._labels[level])
        # the prior counts as one label of the most-sampled kind (the calls where levels differ)
        typical = min(label[4] for label in labels) if labels else 1.0
        rows = np.array(labels + [(0.0, 1.0, math.nan, math.nan, typical)] * self.prior, dtype=float)
        found = quality_share(rows[:, 0], rows[:, 1], rows[:, 2], rows[:, 3], rows[:, 4], self.confidence)
        return ShareEstimate(found.share, found.lower, found.upper, found.labels - self.prior, found.exact)

    def proven(self, level: int, margin: float = 0.0) -> bool:
        """Whether ``level``'s lower bound is at least the target (plus ``margin``) on enough labels."""
        return level == 0 or self._clears(self.estimate(level), margin)

    def _clears(self, estimate: ShareEstimate, margin: float = 0.0) -> bool:
        return estimate.labels >= self.min_labels and estimate.lower >= self.target + margin

    def update(self, at: float) -> Change | None:
        """Move the operating point if the labels say so (see the module docstring); the change, or None."""
        current = self.estimate(self.level)
        if self.level > 0 and not self._clears(current):
            new = max(level for level in range(self.level) if self.proven(level))
            reason = (f"lower bound {current.lower:.3f} of level {self.level} fell below the target "
                      f"{self.target:.3f}")
            return self._move(at, new, reason, current)
        reach = range(self.level + 1, min(len(self.margins) - 1, self.level + self.max_step) + 1)
        for cheaper in reversed(reach):
            estimate = self.estimate(cheaper)
            if self._clears(estimate, self.hysteresis):
                reason = (f"level {cheaper} proven: lower bound {estimate.lower:.3f} >= target {self.target:.3f} "
                          f"+ {self.hysteresis:.3f} on {estimate.labels} labels")
                return self._move(at, cheaper, reason, estimate)
        return None

    def _move(self, at: float, new: int, reason: str, estimate: ShareEstimate) -> Change:
        change = Change(at, self.level, new, reason, estimate.as_dict())
        self.level = new
        self.changes.append(change)
        return change

    def set_floor(self, new: float, at: float, reason: str, estimate: dict) -> Change | None:
        """Move the pacer's floor to ``new`` (recorded with its reason and the pace behind it); None if it is
        there already."""
        if not 0 <= new < len(self.margins):
            raise ValueError(f"floor {new} is not a level of this ladder (0 to {len(self.margins) - 1})")
        if new == self.floor:
            return None
        change = Change(at, self.floor, new, reason, estimate, by="cost")
        self.floor = new
        self.changes.append(change)
        return change

    def state(self) -> dict:
        """Everything needed to resume after a restart (JSON-safe but for infinite margins)."""
        return {"target": self.target, "confidence": self.confidence, "margins": list(self.margins),
                "min_labels": self.min_labels, "prior": self.prior, "hysteresis": self.hysteresis,
                "max_step": self.max_step, "level": self.level, "floor": self.floor,
                "costs": list(self.costs) if self.costs is not None else None, "scale": self.scale,
                "window": self._labels[0].maxlen, "labels": [list(map(list, q)) for q in self._labels],
                "changes": [asdict(c) for c in self.changes]}

    @classmethod
    def from_state(cls, state: dict) -> OperatingPoint:
        point = cls(target=state["target"], confidence=state["confidence"], margins=state["margins"],
                    min_labels=state["min_labels"], window=state["window"], prior=state["prior"],
                    hysteresis=state["hysteresis"], max_step=state.get("max_step", 1))
        point.level, point.floor, point.scale = state["level"], state.get("floor", 0.0), state.get("scale", 1.0)
        point.costs = tuple(state["costs"]) if state.get("costs") is not None else None
        for queue, labels in zip(point._labels, state["labels"]):
            queue.extend(tuple(label) for label in labels)
        point.changes = [Change(**c) for c in state["changes"]]
        return point
