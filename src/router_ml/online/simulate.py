"""Replay an outcomes table as one tenant's traffic through the online loop: the routing rule at the operating
point, shadow judging of a sampled share of calls, and the controller (:mod:`router_ml.online.controller`).

A stream is a (prompts x models) matrix of a router's predicted quality and cost and of the recorded quality and
cost (:class:`router_ml.label.OutcomeMatrix`). The served answer's quality is the recorded one. The judge is
simulated from the recorded outcomes: it scores an answer with its recorded quality, flipped (``1 - q``) with
probability ``flip_rate`` (a noisy judge); a share ``exact_share`` of the judged calls also gets exact labels
(the recorded qualities), which correct the judge's bias. With a cost target (a share of what always serving the
reference would cost over the stream, the stream standing for the pacer's period), the pacer
(:mod:`router_ml.online.pacer`) paces every ``pace_calls`` calls on what the stream has spent so far. Costs: a judged call pays the reference's answer
(unless the reference served it), the answers of the cheaper levels it grades, and the judge, priced at
``judge_cost_factor`` times the pool's cheapest answer to the prompt per comparison, run in both orders.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import polars as pl

from router_ml.label import outcome_matrix
from router_ml.online.controller import AWAY_SHARES, OperatingPoint, ladder
from router_ml.online.pacer import level_costs, measured_scale, pace
from router_ml.online.sampling import HORIZON, judging_chance
from router_ml.routers.policy import choose_near_reference
from router_ml.tokens import count_tokens


@dataclass
class Stream:
    """One tenant's traffic: row i is a prompt, column j ``models[j]``; ``static_choice`` is today's choice per
    prompt (the bundle's calibrated policy), the baseline beside the online loop."""

    name: str
    models: list[str]
    predicted_quality: np.ndarray
    predicted_cost: np.ndarray
    quality: np.ndarray
    cost: np.ndarray
    static_choice: np.ndarray | None = None

    def __post_init__(self):
        shape = (len(self.quality), len(self.models))
        for name in ("predicted_quality", "predicted_cost", "quality", "cost"):
            value = np.asarray(getattr(self, name), dtype=float)
            if value.shape != shape:
                raise ValueError(f"stream {self.name!r}: {name} has shape {value.shape}, not {shape}")
            if np.isnan(value).any():
                raise ValueError(f"stream {self.name!r}: {name} has NaN (keep prompts every model answered)")
            setattr(self, name, value)

    def __len__(self) -> int:
        return len(self.quality)


def stream_from_outcomes(outcomes, bundle, name: str) -> Stream:
    """The prompts of an outcomes table (already filtered to one tenant's traffic) that every model of ``bundle``
    answered, with the bundle's predictions and its static calibrated choice."""
    rows = outcomes.filter(pl.col("model").is_in(bundle.models) & pl.col("quality").is_not_null())
    matrix = outcome_matrix(rows, bundle.models).complete()
    if len(matrix.prompts) == 0:
        raise ValueError(f"stream {name!r}: no prompt has an outcome with a quality for every model of the bundle "
                         f"({', '.join(bundle.models)})")
    prompts = matrix.prompts["prompt"].to_list()
    predicted_quality, predicted_cost = bundle.predict(prompts, [count_tokens(p) for p in prompts])
    return Stream(name, list(bundle.models), predicted_quality, predicted_cost, matrix.quality, matrix.cost,
                  static_choice=bundle.choose(predicted_quality, predicted_cost))


@dataclass(frozen=True)
class Settings:
    """The loop's settings: the tenant's target and the controller's, sampling, and the simulated judge.

    A call is judged when one of the levels it is graded at (the current one and the ``probe_levels`` cheaper
    ones) would serve another model than the reference, with a probability that falls as the stream goes on
    (:func:`~router_ml.online.sampling.judging_chance`, as the gateway judges: about ``sample_rate`` of the first
    ``horizon`` calls). Other calls
    are judged at ``quiet_rate`` (the judge then grades the reference's answer alone: no shadow call). The ladder of
    margins (:func:`~router_ml.online.controller.ladder` at ``away_shares``) is placed on the predictions of the
    stream's first ``ladder_calls`` calls; a move cheaper skips to the cheapest proven level up to ``max_step`` away."""

    target: float = 0.95
    confidence: float = 0.8
    sample_rate: float = 0.05
    horizon: int = HORIZON
    quiet_rate: float = 0.01
    probe_levels: int = 3
    max_step: int = 1
    exact_share: float = 0.1
    flip_rate: float = 0.0
    min_labels: int = 30
    away_shares: tuple = AWAY_SHARES
    ladder_calls: int = 100
    judge_cost_factor: float = 3.0
    cost_target: float | None = None
    pace_calls: int = 25


@dataclass
class Run:
    """One replay of a stream in one order: what each call served and what the loop spent and learned."""

    order: np.ndarray
    served: np.ndarray
    level: np.ndarray  # the level each call was served at
    position: np.ndarray  # the operating point's, between levels when the pacer's floor is
    judged: np.ndarray
    shadow_usd: np.ndarray
    judge_usd: np.ndarray
    labels: int
    exact: int
    changes: list = field(default_factory=list)
    margins: tuple = ()


def run_stream(stream: Stream, reference: int, settings: Settings = Settings(), seed: int = 0) -> Run:
    """Replay ``stream`` in a random order (``seed``) through the online loop with ``reference`` (a column)."""
    rng = np.random.default_rng(seed)
    n = len(stream)
    order = rng.permutation(n)
    first = order[:settings.ladder_calls]
    margins = ladder(stream.predicted_quality[first], stream.predicted_cost[first], reference, settings.away_shares)
    choices = np.stack([choose_near_reference(stream.predicted_quality, stream.predicted_cost, reference, margin)
                        for margin in margins])
    point = OperatingPoint(target=settings.target, confidence=settings.confidence, margins=margins,
                           min_labels=settings.min_labels, max_step=settings.max_step)
    point.costs = level_costs(stream.predicted_quality[first], stream.predicted_cost[first], reference, margins)
    budget = None if settings.cost_target is None else settings.cost_target * stream.cost[:, reference].sum()
    served, level, position = np.empty(n, dtype=int), np.empty(n, dtype=int), np.empty(n)
    judged = np.zeros(n, dtype=bool)
    shadow_usd, judge_usd = np.zeros(n), np.zeros(n)
    labels = exact_labels = 0
    top = len(margins) - 1
    since = 0  # the first call since the point last moved
    for t, i in enumerate(order):
        if budget is not None and t and t % settings.pace_calls == 0:
            paid = stream.cost[order[:t], served[:t]] + shadow_usd[:t] + judge_usd[:t]
            point.scale = measured_scale(point.costs, point.level, point.floor, t - since, float(paid[since:].sum()),
                                         settings.pace_calls, point.scale)
            found = pace(floor=point.floor, level=point.level, costs=point.costs, scale=point.scale,
                         spent=float(paid.sum()), target=budget, calls=t, to_come=n - t, max_step=settings.max_step)
            if point.set_floor(found.wanted, t, found.reason(), found.as_dict()) is not None:
                since = t
        draw = rng.random() if budget is not None else 0.0  # without a floor, a call's level needs no draw
        level[t], position[t] = point.level_for(draw), max(point.level, point.floor)
        served[t] = choices[level[t], i]
        window = sorted({*range(point.level, min(top, point.level + settings.probe_levels) + 1), int(level[t])})
        informative = any(choices[lvl, i] != reference for lvl in window)
        early = judging_chance(settings.sample_rate, t + 1, settings.horizon)
        chance = early if informative else settings.quiet_rate
        if rng.random() >= chance:
            continue
        judged[t] = True
        graded = sorted({int(choices[lvl, i]) for lvl in window} | {reference})
        truth = stream.quality[i, graded]
        scores = np.where(rng.random(len(graded)) < settings.flip_rate, 1.0 - truth, truth)
        score = dict(zip(graded, scores))
        exact = dict(zip(graded, truth)) if rng.random() < settings.exact_share else {}
        shadow_usd[t] = sum(stream.cost[i, m] for m in graded if m != served[t])
        comparisons = max(1, 2 * (len(graded) - 1))  # each answer against the reference's, in both orders
        judge_usd[t] = comparisons * settings.judge_cost_factor * stream.cost[i].min()
        for lvl in window:
            m = int(choices[lvl, i])
            point.observe(lvl, score[m], score[reference], exact.get(m, math.nan), exact.get(reference, math.nan),
                          1.0 / chance)
        labels += 1
        exact_labels += bool(exact)
        if point.update(t) is not None:
            since = t + 1
    return Run(order, served, level, position, judged, shadow_usd, judge_usd, labels, exact_labels, point.changes,
               margins)


def summarize(stream: Stream, reference: int, run: Run, target: float, cost_target: float | None = None) -> dict:
    """Per run: the realized quality share (whole stream and last half), whether the target held (within one
    point), the cost cut against always serving the reference (gross, and net of shadow and judge costs), the
    shadow traffic and the labels used; with a cost target, the spend as a share of it."""
    rows, served = run.order, run.served
    got, ref = stream.quality[rows, served], stream.quality[rows, reference]
    spent, ref_cost = stream.cost[rows, served], stream.cost[rows, reference]
    half = len(rows) // 2
    share = float(got.sum() / ref.sum())
    shadowed = run.judged & (run.shadow_usd > 0)
    paid = spent.sum() + run.shadow_usd.sum() + run.judge_usd.sum()
    paced = {} if cost_target is None else {"spend_of_cost_target": float(paid / (cost_target * ref_cost.sum()))}
    return {**paced, "quality_share": share, "last_half_share": float(got[half:].sum() / ref[half:].sum()),
            "held": share >= target - 0.01, "gross_cost_cut": float(1 - spent.sum() / ref_cost.sum()),
            "net_cost_cut": float(1 - paid / ref_cost.sum()),
            "shadow_share": float(shadowed.mean()), "judged_share": float(run.judged.mean()),
            "labels": run.labels, "exact_labels": run.exact, "changes": len(run.changes),
            "final_level": int(run.level[-1]),
            "cost_moves": sum(c.by == "cost" for c in run.changes)}


def _fixed(stream: Stream, reference: int, choice: np.ndarray) -> dict:
    rows = np.arange(len(stream))
    return {"quality_share": float(stream.quality[rows, choice].sum() / stream.quality[:, reference].sum()),
            "cost_cut": float(1 - stream.cost[rows, choice].sum() / stream.cost[:, reference].sum())}


def simulate(stream: Stream, reference: str, settings: Settings = Settings(), orders: int = 20, seed: int = 0,
             progress=None) -> dict:
    """``orders`` replays of ``stream`` (random orders from ``seed``) and their summary beside the baselines:
    static calibration (when the stream has it), always the reference, and the best fixed model that keeps the
    target on the stream (known only in hindsight)."""
    if reference not in stream.models:
        raise ValueError(f"reference {reference!r} is not a model of stream {stream.name!r}: {stream.models}")
    ref = stream.models.index(reference)
    runs = []
    for k in range(orders):
        runs.append(run_stream(stream, ref, settings, seed + k))
        if progress is not None:
            progress(k + 1, orders)
    summaries = [summarize(stream, ref, r, settings.target, settings.cost_target) for r in runs]
    keeps = [j for j in range(len(stream.models))
             if _fixed(stream, ref, np.full(len(stream), j))["quality_share"] >= settings.target]
    best_fixed = min(keeps, key=lambda j: stream.cost[:, j].sum())
    baselines = {"always the reference": {"quality_share": 1.0, "cost_cut": 0.0},
                 f"best fixed model in hindsight ({stream.models[best_fixed]})":
                     _fixed(stream, ref, np.full(len(stream), best_fixed))}
    if stream.static_choice is not None:
        baselines["static calibration"] = _fixed(stream, ref, np.asarray(stream.static_choice))
    column = {key: [s[key] for s in summaries] for key in summaries[0]}
    return {"stream": stream.name, "calls": len(stream), "reference": reference, "target": settings.target,
            "cost_target": settings.cost_target, "flip_rate": settings.flip_rate, "orders": orders,
            "held_rate": float(np.mean(column["held"])),
            "median": {key: float(np.median(v)) for key, v in column.items() if key != "held"},
            "min_quality_share": float(min(column["quality_share"])),
            "baselines": baselines, "runs": summaries,
            "level_trace": [r.position.tolist() for r in runs[:3]], "away_shares": list(settings.away_shares)}
