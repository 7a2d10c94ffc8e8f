"""A cost pacer on the operating point's ladder: holds a tenant's spend over a period (a day) to a target by
raising the *floor* of its :class:`~router_ml.online.controller.OperatingPoint`, the level it serves at least.

The floor is a point between levels: at floor 4.3, 30% of the calls are served at level 5 and the rest at level
4, so that the spend can match the target between two levels whose costs are far apart (the cheapest model's
level often costs a tenth of the one below it). The ladder's levels cost what the router predicts for the tenant's
own prompts (:func:`level_costs`, from the predictions the ladder was placed on). Those predictions are off by
some factor on real traffic (answers longer than predicted, shadow and judge calls), so the pacer scales them by
what a call really cost since the point last moved (``scale``: kept from pace to pace). Each pace splits what
is left of the target over the calls still to come in the period (the caller's projection), and wants the floor whose scaled cost is that allowance (the cheapest level when even
that costs more). The floor moves toward it, cheaper by up to ``max_step`` levels at once, more expensive by at
most one level and only as far as leaves ``slack`` of the allowance unspent, so that it does not flap.

A budget is a hard limit (:mod:`router_ml.serve.tenancy.limits`); a cost target is what the pacer steers to.
When the two targets of a tenant disagree, cost wins: the point serves the cheaper of the quality controller's
level and the floor, and the quality estimate of the level served says what that costs in quality.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

from router_ml.routers.policy import choose_near_reference


def level_costs(predicted_quality, predicted_cost, reference: int, margins) -> tuple[float, ...]:
    """Per level of the ladder ``margins``: the mean predicted cost of a call at that margin over these prompts,
    made non-increasing up the ladder (a cheaper level never costs more)."""
    quality, cost = np.asarray(predicted_quality, dtype=float), np.asarray(predicted_cost, dtype=float)
    rows = np.arange(len(cost))
    means = [float(cost[rows, choose_near_reference(quality, cost, reference, m)].mean()) for m in margins]
    return tuple(float(c) for c in np.minimum.accumulate(means))


def cost_at(costs, floor: float) -> float:
    """The expected cost per call at a (fractional) floor: the two levels around it, mixed."""
    return float(np.interp(floor, np.arange(len(costs)), costs))


def floor_for(costs, allowance: float) -> float:
    """The most expensive (fractional) floor whose expected cost is at most ``allowance``; the cheapest level
    when none is."""
    costs = list(costs)
    if allowance >= costs[0]:
        return 0.0
    if allowance < costs[-1]:
        return float(len(costs) - 1)
    k = next(k for k in range(len(costs) - 1) if costs[k + 1] <= allowance)
    return k + (costs[k] - allowance) / (costs[k] - costs[k + 1])


@dataclass(frozen=True)
class Pace:
    """One pace: the floor wanted, the allowance per call still to come, the projected calls and spend of the
    period at the level served now, and the factor the predicted costs were scaled by."""

    wanted: float
    allowance: float
    projected_calls: float
    projected_spend: float
    scale: float
    spent: float
    target: float

    def reason(self) -> str:
        return (f"cost pacer: {self.spent:.4g} spent of the target {self.target:.4g}, {self.projected_spend:.4g} "
                f"projected over {self.projected_calls:.0f} calls; floor {self.wanted:.1f} fits the allowance "
                f"of {self.allowance:.4g} a call")

    def as_dict(self) -> dict:
        return {k: (v if math.isfinite(v) else None) if isinstance(v, float) else v for k, v in asdict(self).items()}


def pace(*, floor: float, level: int, costs, scale: float, spent: float, target: float, calls: int,
         to_come: float, max_step: int = 3, slack: float = 0.9) -> Pace:
    """The next floor (see the module docstring). ``costs`` are the ladder's predicted costs per call
    (:func:`level_costs`) and ``scale`` what real calls cost against them, ``level`` the quality controller's,
    ``spent`` and ``calls`` the period's so far, ``to_come`` the calls expected in the rest of it."""
    if target <= 0:
        raise ValueError(f"a cost target must be positive, not {target}")
    if not to_come >= 0:
        raise ValueError(f"the calls to come must be a count >= 0, not {to_come}")
    scaled = [c * scale for c in costs]
    allowance = (target - spent) / to_come if to_come > 0 else math.inf
    wanted = floor_for(scaled, allowance)
    if wanted > floor:
        new = min(wanted, floor + max_step)
    else:
        new = max(floor - 1, min(floor, floor_for(scaled, slack * allowance)))
    projected = spent + to_come * cost_at(scaled, max(level, floor))
    return Pace(round(new, 1), allowance, calls + to_come, projected, scale, spent, target)


def measured_scale(costs, level: int, floor: float, calls: int, spent: float, min_calls: int,
                   previous: float) -> float:
    """What ``calls`` calls served at (``level``, ``floor``) since the point last moved really cost (``spent``,
    judging included) against the predicted cost there; ``previous`` when fewer than ``min_calls`` are known."""
    predicted = cost_at(costs, max(level, floor))
    return spent / calls / predicted if calls >= min_calls and predicted > 0 else previous
