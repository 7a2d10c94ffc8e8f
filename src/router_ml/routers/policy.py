"""One policy layer over any router's predicted quality and cost per model.

Two rules turn a (prompts x models) matrix of predicted quality and one of predicted
cost into a choice per prompt:

- ``choose``: maximize predicted quality - lambda * cost (ties to the cheaper model);
- ``choose_threshold``: the cheapest model predicted to reach a quality threshold (absolute);
- ``choose_near_reference``: the cheapest model predicted within a margin of a reference model (the online
  operating point's rule).

``choose_for`` is the one choice the gateway, the bundle and the benchmarks make: a caller's
``Policy`` (allowed models, a cost cap, a share of the best predicted quality or a lambda) over
the bundle's calibrated rule; ``fallback_order`` ranks the other allowed models after it.

Each rule has one parameter; sweeping it from the quality end to the cheap end gives
the router's operating curve (``operating_curve``, ``threshold_curve``). Both sweeps
are computed exactly without trying every setting: per prompt, the choice changes at
a few known points (for lambda, the slopes of the prompt's upper convex hull of
(cost, quality) points; for the threshold, the records of its quality sorted by cost),
so the curve is the running sum of those per-prompt switches sorted by parameter.
``calibrate`` picks the parameter on validation data so a target holds; ``apply`` and
``target_report`` use it on test data.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from pydantic import BaseModel, Field

KINDS = ("quality_share", "strong_share", "cost_per_1k")
RULES = ("lambda", "threshold")
_TIE = 1e-12  # scores closer than this are ties (``choose``), and so are calibration targets
_SAME_LAMBDA = 1e-9  # breakpoints closer than this (relative) are one: a lambda between them is a tie


def _cheapest(allowed: np.ndarray, cost: np.ndarray, quality: np.ndarray) -> np.ndarray:
    """Per row, the cheapest allowed model; ties go to the higher quality, then the lower index."""
    masked = np.where(allowed, cost, np.inf)
    tied = allowed & (masked <= masked.min(axis=1, keepdims=True))
    return np.where(tied, quality, -np.inf).argmax(axis=1)


def choose(predicted_quality: np.ndarray, cost: np.ndarray, lam: float,
           allowed: np.ndarray | None = None) -> np.ndarray:
    """Per prompt, the model maximizing predicted quality - ``lam`` * cost, ties to the cheaper model; only
    ``allowed`` models (a boolean mask of the same shape, at least one per prompt) when given.

    ``lam=inf`` is the cheapest model (ties to the higher predicted quality), the limit of large ``lam``.
    """
    predicted_quality, cost = np.asarray(predicted_quality, dtype=float), np.asarray(cost, dtype=float)
    allowed = np.ones(cost.shape, dtype=bool) if allowed is None else allowed
    if np.isinf(lam):
        return _cheapest(allowed, cost, predicted_quality)
    score = np.where(allowed, predicted_quality - lam * cost, -np.inf)
    top = allowed & (score >= score.max(axis=1, keepdims=True) - _TIE)
    return np.where(top, cost, np.inf).argmin(axis=1)


def choose_threshold(predicted_quality: np.ndarray, cost: np.ndarray, threshold: float,
                     allowed: np.ndarray | None = None) -> np.ndarray:
    """Per prompt, the cheapest model whose predicted quality is at least ``threshold`` (ties to the
    higher predicted quality); where none reaches it, the highest predicted quality (ties to the cheaper).
    Only ``allowed`` models when given, as for ``choose``."""
    predicted_quality, cost = np.asarray(predicted_quality, dtype=float), np.asarray(cost, dtype=float)
    allowed = np.ones(cost.shape, dtype=bool) if allowed is None else allowed
    masked = np.where(allowed, predicted_quality, -np.inf)
    reaching = allowed & (predicted_quality >= threshold)
    best = allowed & (masked >= masked.max(axis=1, keepdims=True))
    fallback = np.where(best, cost, np.inf).argmin(axis=1)
    return np.where(reaching.any(axis=1), _cheapest(reaching, cost, predicted_quality), fallback)


def choose_share(predicted_quality: np.ndarray, cost: np.ndarray, share: float,
                 allowed: np.ndarray | None = None) -> np.ndarray:
    """Per prompt, the cheapest model predicted to keep ``share`` of the best predicted quality among the
    ``allowed`` ones (ties to the higher predicted quality); the best one always qualifies."""
    predicted_quality, cost = np.asarray(predicted_quality, dtype=float), np.asarray(cost, dtype=float)
    allowed = np.ones(cost.shape, dtype=bool) if allowed is None else allowed
    best = np.where(allowed, predicted_quality, -np.inf).max(axis=1, keepdims=True)
    keeping = allowed & ((predicted_quality >= share * best) | (predicted_quality >= best))
    return _cheapest(keeping, cost, predicted_quality)


def choose_near_reference(predicted_quality: np.ndarray, cost: np.ndarray, reference: int, margin: float,
                          allowed: np.ndarray | None = None) -> np.ndarray:
    """Per prompt, the cheapest model predicted to come within ``margin`` of the ``reference`` model's predicted
    quality (ties to the higher predicted quality); the reference always qualifies. ``margin=-inf`` sends every
    prompt to the reference, ``margin=inf`` to the cheapest allowed model: the online operating point
    (:mod:`router_ml.online.controller`) moves between them."""
    predicted_quality, cost = np.asarray(predicted_quality, dtype=float), np.asarray(cost, dtype=float)
    allowed = np.ones(cost.shape, dtype=bool) if allowed is None else allowed.copy()
    near = allowed & (predicted_quality >= predicted_quality[:, [reference]] - margin)
    near[:, reference] = True
    return _cheapest(near, cost, predicted_quality)


class Policy(BaseModel):
    """What a caller asks of the choice, for one request or as a tenant's default.

    - ``quality``: a *share*: keep this share of the best predicted quality among the allowed models (the
      cheapest allowed model predicted to reach ``quality`` x that best; see ``choose_share``);
    - ``lam``: maximize predicted quality - ``lam`` x predicted cost in USD (``choose``);
    - ``max_cost``: only models predicted to cost at most this (USD per call); where none does, the cheapest
      allowed one;
    - ``models``: only these models;
    - ``reference`` and ``margin``: the cheapest model predicted within ``margin`` of the ``reference`` model's
      predicted quality (``choose_near_reference``; the online operating point sets both).

    Without ``quality``, ``lam`` or ``margin`` the bundle's calibrated rule applies, whichever it is
    (``Calibration``).
    """

    quality: float | None = Field(default=None, gt=0, le=1)
    lam: float | None = Field(default=None, ge=0)
    max_cost: float | None = Field(default=None, gt=0)
    models: list[str] | None = None
    reference: str | None = None
    margin: float | None = None


def allowed_mask(policy: Policy, models: Sequence[str], cost: np.ndarray) -> np.ndarray:
    """(prompts x models) booleans: the models ``policy`` lets each prompt use. A ``max_cost`` no allowed model
    meets for a prompt leaves that prompt its cheapest allowed model(s). ValueError names models not in ``models``."""
    cost = np.atleast_2d(np.asarray(cost, dtype=float))
    allowed = np.ones(cost.shape, dtype=bool)
    if policy.models is not None:
        unknown = sorted(set(policy.models) - set(models))
        if unknown:
            raise ValueError(f"models not in the router bundle: {', '.join(unknown)}; known: {', '.join(models)}")
        if not policy.models:
            raise ValueError("models is empty: name at least one model, or leave it out for every model")
        allowed &= np.isin(np.asarray(models), policy.models)
    if policy.max_cost is not None:
        cheap = allowed & (cost <= policy.max_cost)
        floor = np.where(allowed, cost, np.inf).min(axis=1, keepdims=True)
        allowed = np.where(cheap.any(axis=1, keepdims=True), cheap, allowed & (cost <= floor))
    return allowed


def choose_for(policy: Policy, predicted_quality: np.ndarray, cost: np.ndarray, models: Sequence[str],
               calibration: Calibration) -> tuple[np.ndarray, np.ndarray]:
    """(model index per prompt, allowed mask): the choice under ``policy``, which falls back to
    ``calibration``'s rule and parameter when it sets neither ``quality`` nor ``lam``."""
    predicted_quality = np.atleast_2d(np.asarray(predicted_quality, dtype=float))
    cost = np.atleast_2d(np.asarray(cost, dtype=float))
    allowed = allowed_mask(policy, models, cost)
    if policy.margin is not None:
        if policy.reference not in models:
            raise ValueError(f"a margin needs a reference model of the router bundle, not {policy.reference!r}")
        return choose_near_reference(predicted_quality, cost, list(models).index(policy.reference), policy.margin,
                                     allowed), allowed
    if policy.quality is not None:
        return choose_share(predicted_quality, cost, policy.quality, allowed), allowed
    if policy.lam is not None:
        return choose(predicted_quality, cost, policy.lam, allowed), allowed
    rule = choose if calibration.rule == "lambda" else choose_threshold
    return rule(predicted_quality, cost, calibration.parameter, allowed), allowed


def fallback_order(choice: int, allowed: np.ndarray, predicted_quality: np.ndarray, cost: np.ndarray) -> list[int]:
    """One prompt's allowed models to try, as indices: the choice, then the others by predicted quality
    (highest first), ties to the cheaper."""
    others = [i for i in np.flatnonzero(allowed) if i != choice]
    return [int(choice)] + sorted((int(i) for i in others), key=lambda i: (-predicted_quality[i], cost[i]))


def choice_point(quality: np.ndarray, cost: np.ndarray, choice: np.ndarray) -> tuple[float, float]:
    """(mean cost, mean quality) when prompt i is sent to model ``choice[i]``."""
    rows = np.arange(len(choice))
    return float(np.asarray(cost)[rows, choice].mean()), float(np.asarray(quality)[rows, choice].mean())


def best_single_model(quality: np.ndarray, cost: np.ndarray) -> int:
    """Column of the model with the highest mean quality; ties go to the lower mean cost, then the lower index."""
    mean_quality, mean_cost = np.asarray(quality, float).mean(axis=0), np.asarray(cost, float).mean(axis=0)
    return int(np.lexsort((np.arange(len(mean_cost)), mean_cost, -mean_quality))[0])


@dataclass(frozen=True)
class _Sweep:
    """The distinct policies met along a parameter sweep, from the quality end to the cheap end.

    ``settings[k]`` gives policy k. Policy 0 sends prompt i to ``start[i]``; switch j moves prompt
    ``rows[j]`` from model ``old[j]`` to ``new[j]``; policy k + 1 is policy 0 after the switches up
    to ``ends[k]`` (inclusive).
    """

    settings: np.ndarray
    start: np.ndarray
    rows: np.ndarray
    old: np.ndarray
    new: np.ndarray
    ends: np.ndarray

    def means(self, values: np.ndarray) -> np.ndarray:
        """Per policy, the mean over prompts of ``values[i, choice[i]]``."""
        values = np.asarray(values, dtype=float)
        first = values[np.arange(len(self.start)), self.start].sum()
        steps = np.cumsum(values[self.rows, self.new] - values[self.rows, self.old])
        return np.concatenate([[first], first + steps[self.ends]]) / len(self.start)


def _sorted_switches(keys, rows, old, new, same: float):
    """Switches sorted by key, and the last index and first/last key of each group of equal keys
    (consecutive keys within relative ``same`` of each other are equal)."""
    order = np.argsort(keys, kind="stable")
    keys, rows, old, new = keys[order], rows[order], old[order], new[order]
    breaks = np.nonzero(keys[1:] > keys[:-1] * (1 + same))[0]
    ends = np.append(breaks, len(keys) - 1) if len(keys) else breaks
    firsts = np.insert(breaks + 1, 0, 0) if len(keys) else breaks
    return (rows, old, new, ends), keys[firsts], keys[ends]


def _lambda_sweep(predicted_quality: np.ndarray, cost: np.ndarray) -> _Sweep:
    """Walk each prompt down its upper convex hull of (cost, predicted quality), from the choice at
    lambda = 0 to the cheapest model: from model c the next is the cheaper model j with the smallest
    slope (q_c - q_j) / (cost_c - cost_j), reached when lambda passes that slope. O(prompts x models)
    memory and O(prompts x models x hull size) time."""
    n = len(cost)
    current = choose(predicted_quality, cost, 0.0)
    start, floor, active = current.copy(), np.zeros(n), np.arange(n)
    found = []
    while len(active):
        q, c, here = predicted_quality[active], cost[active], current[active]
        q0, c0 = q[np.arange(len(active)), here][:, None], c[np.arange(len(active)), here][:, None]
        with np.errstate(divide="ignore", invalid="ignore"):
            slope = np.where(c < c0, (q0 - q) / (c0 - c), np.inf)
        least = slope.min(axis=1)
        moving = np.isfinite(least)
        active, here, slope, least, q, c = (x[moving] for x in (active, here, slope, least, q, c))
        # Models on one line from c are passed at once: go straight to the cheapest of them.
        step = _cheapest(slope <= least[:, None] + np.abs(least[:, None]) * _SAME_LAMBDA, c, q)
        lam = np.maximum(least, floor[active])  # never below the prompt's previous breakpoint
        found.append((lam, active, here, step))
        current[active], floor[active] = step, lam
    keys, rows, old, new = (np.concatenate(parts) for parts in zip(*found)) if found else (np.zeros(0, int),) * 4
    switches, firsts, lasts = _sorted_switches(keys.astype(float), rows, old, new, _SAME_LAMBDA)
    # One lambda inside each interval between breakpoints (geometric middle), 0 and inf at the ends.
    inner = np.sqrt(lasts[:-1]) * np.sqrt(firsts[1:])
    settings = np.concatenate([[0.0], inner, [np.inf]]) if len(lasts) else np.zeros(1)
    return _Sweep(settings, start, *switches)


def _threshold_sweep(predicted_quality: np.ndarray, cost: np.ndarray) -> _Sweep:
    """Lower the threshold from the top: a prompt's choice is the first model, in order of cost, whose
    predicted quality is a new record at least the threshold; it moves to the previous record when the
    threshold reaches that record's quality."""
    order = np.lexsort((-predicted_quality, cost))  # per prompt: by cost, then higher quality first
    q = np.take_along_axis(predicted_quality, order, axis=1)
    record = np.ones(q.shape, dtype=bool)
    record[:, 1:] = q[:, 1:] > np.maximum.accumulate(q, axis=1)[:, :-1]
    rows, pos = np.nonzero(record)
    followed = rows[:-1] == rows[1:]  # a record with a higher one after it, for the same prompt
    r, here, higher = rows[:-1][followed], pos[:-1][followed], pos[1:][followed]
    switches, values, _ = _sorted_switches(-q[r, here], r, order[r, higher], order[r, here], 0.0)
    settings = np.concatenate([[predicted_quality.max()], -values])
    return _Sweep(settings, choose_threshold(predicted_quality, cost, np.inf), *switches)


def _sweep(rule: str, predicted_quality, cost) -> _Sweep:
    if rule not in RULES:
        raise ValueError(f"rule must be one of {RULES}, got {rule!r}")
    predicted_quality, cost = np.asarray(predicted_quality, dtype=float), np.asarray(cost, dtype=float)
    if predicted_quality.shape != cost.shape or predicted_quality.ndim != 2:
        raise ValueError(f"predicted quality and cost must be one (prompts x models) shape, got "
                         f"{predicted_quality.shape} and {cost.shape}")
    return (_lambda_sweep if rule == "lambda" else _threshold_sweep)(predicted_quality, cost)


def _spread(count: int, max_points: int | None) -> np.ndarray:
    """Indices of at most ``max_points`` of ``count`` items: both ends and an even spread between."""
    if max_points is None or count <= max_points:
        return np.arange(count)
    return np.unique(np.linspace(0, count - 1, max_points).round().astype(int))


def lambdas(predicted_quality: np.ndarray, cost: np.ndarray) -> np.ndarray:
    """One lambda per distinct policy, ascending: 0, one inside each interval between the lambdas at
    which some prompt's choice changes, and inf."""
    return _sweep("lambda", predicted_quality, cost).settings


def thresholds(predicted_quality: np.ndarray, cost: np.ndarray) -> np.ndarray:
    """One threshold per distinct policy, descending: predicted quality values at which some prompt's
    choice changes, starting from the highest predicted quality."""
    return _sweep("threshold", predicted_quality, cost).settings


def _curve(rule, predicted_quality, predicted_cost, true_quality, true_cost, max_points):
    sweep = _sweep(rule, predicted_quality, predicted_cost)
    keep = _spread(len(sweep.settings), max_points)
    return sweep.settings[keep], sweep.means(true_cost)[keep], sweep.means(true_quality)[keep]


def operating_curve(predicted_quality, predicted_cost, true_quality, true_cost, max_points: int | None = 400):
    """(lambdas, mean true cost, mean true quality) of ``choose`` at each lambda of ``lambdas``, at most
    ``max_points`` of them (the ends and an even spread; None keeps all)."""
    return _curve("lambda", predicted_quality, predicted_cost, true_quality, true_cost, max_points)


def threshold_curve(predicted_quality, predicted_cost, true_quality, true_cost, max_points: int | None = 400):
    """(thresholds, mean true cost, mean true quality) of ``choose_threshold`` at each of ``thresholds``."""
    return _curve("threshold", predicted_quality, predicted_cost, true_quality, true_cost, max_points)


def _miss(at_least: bool, value, target: float) -> np.ndarray:
    """How far ``value`` falls short of a floor (``at_least``) or exceeds a ceiling; 0 when it holds."""
    over = np.asarray(target - value if at_least else value - target, dtype=float)
    return np.where(over > _TIE * max(1.0, abs(target)), over, 0.0)


def _select(achieved, target: float, at_least: bool, costs, qualities) -> int:
    """Index of the setting to use. Among settings meeting the target: for a floor (quality), the
    lowest cost, then the highest quality; for a ceiling (share of calls, cost), the highest quality,
    then the lowest cost; remaining ties go to the cheap end of the sweep. When none meets it, the
    one that misses it by the least, ties broken the same way."""
    later = -np.arange(len(costs))
    objective = (later, -qualities, costs) if at_least else (later, costs, -qualities)
    return int(np.lexsort((*objective, _miss(at_least, achieved, target)))[0])


def _quality_share(quality, best_quality: float) -> np.ndarray:
    """Quality as a share of the best single model's (1 when that is 0: every policy matches it)."""
    quality = np.asarray(quality, dtype=float)
    return quality / best_quality if best_quality > 0 else np.ones_like(quality)


@dataclass(frozen=True)
class Calibration:
    """A policy setting chosen on validation data for one target.

    ``kind``: "quality_share" (mean quality >= target x the best single model's), "strong_share"
    (share of calls to that model <= target) or "cost_per_1k" (mean cost x 1000 <= target USD).
    ``rule``: "lambda" (``choose``) or "threshold" (``choose_threshold``), with ``parameter`` its
    value. ``validation_value``: the calibrated quantity reached on validation data; when no setting
    met the target it shows the miss (``met`` is False). ``reference_model``: the best single model on
    validation data (highest mean quality), the reference of both shares.
    """

    kind: str
    target: float
    rule: str
    parameter: float
    validation_value: float
    reference_model: int

    @property
    def met(self) -> bool:
        """Whether the target held on the validation data."""
        return bool(_miss(self.kind == "quality_share", self.validation_value, self.target) == 0)


def calibrate(predicted_quality, predicted_cost, true_quality, true_cost, kind: str, target: float,
              rule: str = "lambda", max_points: int | None = 400) -> Calibration:
    """Choose the rule's parameter on validation data so the ``kind`` target holds (see ``Calibration``).

    Candidates are ``max_points`` settings of the sweep (``lambdas`` or ``thresholds``: the ends and an
    even spread). For "quality_share" the cheapest candidate (lowest mean true cost) reaching the target
    wins; for "strong_share" and "cost_per_1k" the highest-quality one within the ceiling. When no
    candidate meets the target, the one missing it by the least is used and ``met`` is False.
    """
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    true_quality, true_cost = np.asarray(true_quality, dtype=float), np.asarray(true_cost, dtype=float)
    sweep = _sweep(rule, predicted_quality, predicted_cost)
    keep = _spread(len(sweep.settings), max_points)
    reference = best_single_model(true_quality, true_cost)
    costs, qualities = sweep.means(true_cost)[keep], sweep.means(true_quality)[keep]
    if kind == "quality_share":
        achieved = _quality_share(qualities, true_quality[:, reference].mean())
    elif kind == "strong_share":
        achieved = sweep.means(np.broadcast_to(np.arange(true_cost.shape[1]) == reference, true_cost.shape))[keep]
    else:
        achieved = 1000 * costs
    index = _select(achieved, target, kind == "quality_share", costs, qualities)
    return Calibration(kind, float(target), rule, float(sweep.settings[keep][index]), float(achieved[index]),
                       reference)


def apply(calibration: Calibration, predicted_quality, predicted_cost) -> np.ndarray:
    """Per prompt, the model the calibrated policy chooses."""
    rule = choose if calibration.rule == "lambda" else choose_threshold
    return rule(predicted_quality, predicted_cost, calibration.parameter)


def target_report(calibration: Calibration, predicted_quality, predicted_cost, true_quality, true_cost) -> dict:
    """How the calibrated policy does on test data.

    ``achieved`` is the calibrated quantity on these data and ``met`` whether it meets ``target``.
    The quality share is relative to the best single model on these data (``best_model``); the
    strong share counts calls to the calibration's ``reference_model``. Also: mean cost and quality
    per call, cost per 1k calls (USD) and ``model_shares``, the share of calls per model.
    """
    true_quality, true_cost = np.asarray(true_quality, dtype=float), np.asarray(true_cost, dtype=float)
    choices = apply(calibration, predicted_quality, predicted_cost)
    mean_cost, mean_quality = choice_point(true_quality, true_cost, choices)
    best = best_single_model(true_quality, true_cost)
    best_quality = float(true_quality[:, best].mean())
    shares = np.bincount(choices, minlength=true_quality.shape[1]) / len(choices)
    quality_share = float(_quality_share(mean_quality, best_quality))
    achieved = {"quality_share": quality_share, "strong_share": float(shares[calibration.reference_model]),
                "cost_per_1k": 1000 * mean_cost}[calibration.kind]
    return {
        "kind": calibration.kind, "target": calibration.target, "achieved": achieved,
        "met": bool(_miss(calibration.kind == "quality_share", achieved, calibration.target) == 0),
        "rule": calibration.rule, "parameter": calibration.parameter,
        "mean_cost": mean_cost, "cost_per_1k": 1000 * mean_cost, "mean_quality": mean_quality,
        "best_model": best, "best_model_quality": best_quality, "quality_share": quality_share,
        "reference_model": calibration.reference_model, "model_shares": shares.tolist(),
    }


def calibrate_lambda(predicted_quality, predicted_cost, true_quality, true_cost, quality_target: float) -> float:
    """The cheapest lambda (lowest validation cost; ties to the larger lambda) whose validation mean
    quality reaches ``quality_target`` (absolute); when none does, the one closest to it."""
    grid, costs, qualities = operating_curve(predicted_quality, predicted_cost, true_quality, true_cost)
    return float(grid[_select(qualities, quality_target, True, costs, qualities)])
