"""Router evaluation metrics: cost-quality hulls, AIQ, PGR/APGR/CPT and savings at a quality target.

Plain numpy functions a notebook can call. Conventions:

- A *curve* is a set of (average cost per call, average quality) operating points,
  one per setting of a router's cost weight or threshold.
- The *hull* of a curve is its non-decreasing upper convex hull (RouterBench): the
  best quality reachable at each budget by mixing operating points at random, never
  worse for spending more.
- AIQ (RouterBench) is the area under the hull over a cost range, divided by its
  width; below the hull's cheapest point the router reaches nothing and counts 0.
- PGR, APGR and CPT (RouteLLM) describe a two-model router by the share of calls it
  sends to the strong model.
- Baselines on a (prompts x models) test matrix: each single model, the zero router
  (hull of the single models), the random router (cheapest vs best single model mixed
  at random) and the oracle (each prompt's true best trade-off); ``curve_summary``
  puts a router's curve among them.
"""

from __future__ import annotations

import numpy as np

from router_ml.routers.policy import best_single_model, operating_curve


def _cross(o: np.ndarray, a: np.ndarray, b: np.ndarray) -> float:
    return float((a[0] - o[0]) * (b[1] - o[1]) - (a[1] - o[1]) * (b[0] - o[0]))


def hull(costs, qualities) -> tuple[np.ndarray, np.ndarray]:
    """The non-decreasing upper convex hull of the points, as (costs, qualities) sorted by cost."""
    points = np.column_stack([np.asarray(costs, dtype=float), np.asarray(qualities, dtype=float)])
    if len(points) == 0:
        raise ValueError("hull of no points")
    if not np.isfinite(points).all():
        raise ValueError("costs and qualities must be finite")
    # Highest quality per cost, sorted by cost then kept only while quality strictly rises.
    order = np.lexsort((-points[:, 1], points[:, 0]))
    rising = []
    for point in points[order]:
        if not rising or point[1] > rising[-1][1]:
            rising.append(point)
    upper: list[np.ndarray] = []
    for point in rising:
        while len(upper) >= 2 and _cross(upper[-2], upper[-1], point) >= 0:
            upper.pop()
        upper.append(point)
    result = np.array(upper)
    return result[:, 0], result[:, 1]


def hull_quality(hull_costs: np.ndarray, hull_qualities: np.ndarray, cost) -> np.ndarray:
    """Quality the hull reaches at each budget: linear between points, flat after the last, 0 before the first."""
    cost = np.asarray(cost, dtype=float)
    value = np.interp(cost, hull_costs, hull_qualities)
    return np.where(cost < hull_costs[0], 0.0, value)


def aiq(costs, qualities, cost_range: tuple[float, float]) -> float:
    """Average quality of the hull over ``cost_range`` (RouterBench's AIQ)."""
    low, high = cost_range
    if not high > low:
        raise ValueError(f"cost_range must have high > low, got {cost_range}")
    hc, hq = hull(costs, qualities)
    grid = np.unique(np.concatenate([[low, high], hc[(hc > low) & (hc < high)]]))
    values = hull_quality(hc, hq, grid)
    # Exact integral of a piecewise-linear function, with the step at the first hull point.
    area = 0.0
    for a, b, va, vb in zip(grid[:-1], grid[1:], values[:-1], values[1:]):
        if a < hc[0] <= b:
            area += (b - hc[0]) * (hq[0] + vb) / 2
        else:
            area += (b - a) * (va + vb) / 2
    return float(area / (high - low))


def cost_at_quality(costs, qualities, target: float) -> float:
    """Lowest average cost at which the hull reaches ``target`` quality (inf when it never does)."""
    hc, hq = hull(costs, qualities)
    if hq[-1] < target:
        return float("inf")
    if hq[0] >= target:
        return float(hc[0])
    i = int(np.searchsorted(hq, target))  # hull qualities rise strictly
    fraction = (target - hq[i - 1]) / (hq[i] - hq[i - 1])
    return float(hc[i - 1] + fraction * (hc[i] - hc[i - 1]))


def savings_at_quality_share(costs, qualities, best_cost: float, best_quality: float, share: float = 0.95) -> float:
    """Share of the best single model's cost saved while keeping ``share`` of its quality."""
    cost = cost_at_quality(costs, qualities, share * best_quality)
    return float(1.0 - cost / best_cost)


def pgr_curve(strong, weak, scores, fractions=None) -> tuple[np.ndarray, np.ndarray]:
    """PGR at each share of calls sent to the strong model, routing the highest scores first.

    ``strong`` and ``weak`` hold each prompt's quality under the two models; ``scores``
    the router's preference for the strong model. PGR = (router - weak) / (strong - weak)
    of the mean qualities.
    """
    strong, weak, scores = (np.asarray(x, dtype=float) for x in (strong, weak, scores))
    if not strong.shape == weak.shape == scores.shape or strong.ndim != 1:
        raise ValueError("strong, weak and scores must be 1-d and of one length")
    gap = strong.mean() - weak.mean()
    if gap <= 0:
        raise ValueError("the strong model must have the higher mean quality")
    n = len(strong)
    fractions = np.linspace(0, 1, 101) if fractions is None else np.asarray(fractions, dtype=float)
    order = np.argsort(-scores, kind="stable")
    gains = np.concatenate([[0.0], np.cumsum((strong - weak)[order])])  # gain from the k top prompts
    counts = np.rint(fractions * n).astype(int)
    router_quality = weak.mean() + gains[counts] / n
    return fractions, (router_quality - weak.mean()) / gap


def apgr(strong, weak, scores) -> float:
    """Average PGR over the share of strong calls from 0 to 1 (area under the PGR curve)."""
    fractions, pgr = pgr_curve(strong, weak, scores)
    return float(np.trapezoid(pgr, fractions))


def cpt(strong, weak, scores, pgr_target: float) -> float:
    """Smallest share of calls to the strong model at which PGR reaches ``pgr_target``."""
    n = len(np.asarray(strong))
    fractions, pgr = pgr_curve(strong, weak, scores, np.arange(n + 1) / n)
    reached = np.nonzero(pgr >= pgr_target - 1e-12)[0]
    return float(fractions[reached[0]]) if len(reached) else float("nan")


def oracle_curve(quality, cost) -> tuple[np.ndarray, np.ndarray]:
    """Operating points of the oracle: the cost policy applied to the true quality, at every lambda
    where some prompt's choice changes. ``quality`` and ``cost`` are (prompts x models) matrices.

    Exact and fast: per prompt the oracle walks down its upper convex hull of (cost, quality) as
    lambda grows, so the curve merges the per-prompt hull segments sorted by slope."""
    _, costs, qualities = operating_curve(quality, cost, quality, cost, max_points=None)
    return costs, qualities


def single_model_points(quality, cost) -> tuple[np.ndarray, np.ndarray]:
    """(mean cost, mean quality) of each model (column) sent every prompt."""
    return np.asarray(cost, dtype=float).mean(axis=0), np.asarray(quality, dtype=float).mean(axis=0)


def zero_router_curve(quality, cost) -> tuple[np.ndarray, np.ndarray]:
    """RouterBench's zero router: the hull of the single-model points (random mixes of single models)."""
    return hull(*single_model_points(quality, cost))


def random_curve(quality, cost) -> tuple[np.ndarray, np.ndarray]:
    """The random router: the cheapest single model (ties to the higher quality) and the best one
    (``best_single_model``); sending each call to the best with probability p gives, over p in
    [0, 1], the straight line between these two points. For two models its PGR is the share of
    strong calls (RouteLLM's random baseline)."""
    costs, qualities = single_model_points(quality, cost)
    cheapest, best = int(np.lexsort((-qualities, costs))[0]), best_single_model(quality, cost)
    ends = [cheapest] if cheapest == best else [cheapest, best]
    return costs[ends], qualities[ends]


def gap_closed(router_aiq: float, zero_aiq: float, oracle_aiq: float) -> float:
    """Share of the zero-router-to-oracle gap a router closes: (router - zero) / (oracle - zero), nan without a gap."""
    gap = oracle_aiq - zero_aiq
    return float((router_aiq - zero_aiq) / gap) if gap > 0 else float("nan")


def _average_quality(costs, qualities, low: float, high: float) -> float:
    """AIQ over [low, high]; for an empty range (all single models cost the same), the hull's quality there."""
    if high > low:
        return aiq(costs, qualities, (low, high))
    return float(hull_quality(*hull(costs, qualities), low))


def curve_summary(costs, qualities, quality, cost, models=None) -> dict:
    """A router's operating curve (``costs``, ``qualities``) on the test matrices ``quality`` and
    ``cost`` (prompts x models), next to the baselines on the same matrices.

    - ``cost_range``: [cheapest, dearest] single-model mean cost; every AIQ is over it.
    - ``aiq``, ``zero_aiq``, ``oracle_aiq``, ``random_aiq``: AIQ of the router, the zero router
      (``zero_router_curve``), the oracle (``oracle_curve``) and the random router (``random_curve``).
    - ``gap_closed``: (aiq - zero_aiq) / (oracle_aiq - zero_aiq).
    - ``best_model`` (column; ``best_model_name`` when ``models`` names the columns),
      ``best_model_cost``, ``best_model_quality``: the single model with the highest mean quality
      (ties to the cheaper), its mean cost and quality.
    - ``cost_at_best_quality``: the router hull's lowest cost reaching the best model's quality (inf if never).
    - ``quality_at_best_cost``: the router hull's quality at the best model's cost.
    - ``savings_at_95``, ``zero_savings_at_95``, ``oracle_savings_at_95``: 1 - (lowest cost at which
      the hull of the router / zero router / oracle reaches 95% of the best model's quality) / the best
      model's cost (-inf when never reached).
    """
    single_costs, single_qualities = single_model_points(quality, cost)
    low, high = float(single_costs.min()), float(single_costs.max())
    best = best_single_model(quality, cost)
    best_cost, best_quality = float(single_costs[best]), float(single_qualities[best])
    curves = {"router": (costs, qualities), "zero": (single_costs, single_qualities),
              "oracle": oracle_curve(quality, cost), "random": random_curve(quality, cost)}
    aiqs = {name: _average_quality(*curve, low, high) for name, curve in curves.items()}
    savings = {name: savings_at_quality_share(*curves[name], best_cost, best_quality, 0.95)
               for name in ("router", "zero", "oracle")}
    summary = {
        "cost_range": (low, high),
        "aiq": aiqs["router"], "zero_aiq": aiqs["zero"], "oracle_aiq": aiqs["oracle"], "random_aiq": aiqs["random"],
        "gap_closed": gap_closed(aiqs["router"], aiqs["zero"], aiqs["oracle"]),
        "best_model": best, "best_model_cost": best_cost, "best_model_quality": best_quality,
        "cost_at_best_quality": cost_at_quality(costs, qualities, best_quality),
        "quality_at_best_cost": float(hull_quality(*hull(costs, qualities), best_cost)),
        "savings_at_95": savings["router"], "zero_savings_at_95": savings["zero"],
        "oracle_savings_at_95": savings["oracle"],
    }
    if models is not None:
        summary["best_model_name"] = models[best]
    return summary
