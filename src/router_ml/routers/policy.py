"""One policy over any router's predicted quality and cost per model.

``choose`` maximizes predicted quality - lambda * cost per prompt (ties to the cheaper
model); ``operating_curve`` sweeps lambda over every value at which a choice changes;
``calibrate_lambda`` picks lambda on validation data so a requested target holds.
"""

from __future__ import annotations

import numpy as np


def choose(predicted_quality: np.ndarray, cost: np.ndarray, lam: float) -> np.ndarray:
    """Per prompt, the model maximizing predicted quality - ``lam`` * cost; ``lam=inf`` is the cheapest."""
    predicted_quality, cost = np.asarray(predicted_quality, dtype=float), np.asarray(cost, dtype=float)
    score = -cost if np.isinf(lam) else predicted_quality - lam * cost
    top = score >= score.max(axis=1, keepdims=True) - 1e-12
    return np.where(top, cost, np.inf).argmin(axis=1)


def choice_point(quality: np.ndarray, cost: np.ndarray, choice: np.ndarray) -> tuple[float, float]:
    """(mean cost, mean quality) when prompt i is sent to model ``choice[i]``."""
    rows = np.arange(len(choice))
    return float(np.asarray(cost)[rows, choice].mean()), float(np.asarray(quality)[rows, choice].mean())


def lambdas(predicted_quality: np.ndarray, cost: np.ndarray) -> np.ndarray:
    """Every lambda at which some prompt's choice changes (just below and above), plus 0 and inf."""
    dq = predicted_quality[:, :, None] - predicted_quality[:, None, :]
    dc = cost[:, :, None] - cost[:, None, :]
    with np.errstate(divide="ignore", invalid="ignore"):
        breaks = dq / dc
    breaks = np.unique(breaks[np.isfinite(breaks) & (breaks > 0)])
    return np.concatenate([[0.0], breaks * (1 - 1e-9), breaks * (1 + 1e-9), [np.inf]])


def operating_curve(predicted_quality, predicted_cost, true_quality, true_cost, max_points: int = 400):
    """(lambdas, mean true cost, mean true quality) of the policy at each lambda of the sweep."""
    predicted_quality, predicted_cost = np.asarray(predicted_quality, float), np.asarray(predicted_cost, float)
    grid = lambdas(predicted_quality, predicted_cost)
    if len(grid) > max_points:  # keep the ends and an even spread of the breakpoints
        grid = grid[np.unique(np.linspace(0, len(grid) - 1, max_points).round().astype(int))]
    points = [choice_point(true_quality, true_cost, choose(predicted_quality, predicted_cost, lam)) for lam in grid]
    costs, qualities = zip(*points)
    return grid, np.array(costs), np.array(qualities)


def calibrate_lambda(predicted_quality, predicted_cost, true_quality, true_cost, quality_target: float) -> float:
    """The largest lambda (cheapest policy) whose validation quality reaches ``quality_target``.

    Falls back to lambda = 0 (best predicted quality) when no lambda reaches it.
    """
    grid, _, qualities = operating_curve(predicted_quality, predicted_cost, true_quality, true_cost)
    reached = grid[qualities >= quality_target - 1e-12]
    return float(reached.max()) if len(reached) else 0.0
