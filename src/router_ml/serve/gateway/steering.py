"""The online operating point in the gateway: per tenant with a reference model, routed calls are chosen by
:func:`~router_ml.routers.policy.choose_near_reference` at the margin of the tenant's
:class:`~router_ml.online.controller.OperatingPoint`, which the shadow judge's verdicts move
(:mod:`router_ml.serve.gateway.shadow`).

A tenant starts at the reference alone. Its ladder of margins is placed on the router's predictions for its first
``ladder_calls`` routed calls (:func:`~router_ml.online.controller.ladder`: rungs where 5%, 10%, 20% ... of its
traffic would leave the reference); from then on, a call the shadow judge samples is also asked which model each
level near the current one would have chosen (the *probes* it grades), so that the cheaper levels gather labels
while the current one serves: no steering work on a call that is not judged.

The points and their labels live in the call log's database (:class:`~router_ml.calllog.operating_points.
OperatingPointStore`), so every worker and replica steers a tenant alike: a judged call's labels are stored, the
point is rebuilt from the stored state and the stored labels (feedback labels included), and a move is saved only
from the version that was read. The first worker to place a tenant's ladder stores it; the others adopt it.
:meth:`Steering.refresh` (at start, then every few seconds: :func:`keep_fresh`) adopts what other workers moved,
so a restart resumes from the stored point. The hot path reads only the margin held in memory.

The shadow judge samples a tenant's calls on the online loop's schedule (:mod:`router_ml.online.sampling`:
front-loaded, from the tenant's calls since its ladder was placed, which each refresh reads from the call log
so that workers and restarts share one count).

A tenant with a spend target per UTC day (``spend_target_usd_day``) is also paced (:meth:`Steering.pace`, every
minute: :func:`keep_paced`): the cost pacer (:mod:`router_ml.online.pacer`) reads the day's calls and spend from
the call log (judging included) and moves the point's floor, a point between two levels; each call then draws its
level, the floor's upper one for the floor's fractional share of the calls. Pacing starts once the day has
:data:`PACE_MIN_CALLS` calls. It expects the rest of the day at the higher of the tenant's call rates over the
day so far and over the last ten minutes (no daily pattern), and it cannot spend less than judging costs
(bounded by the shadow cap).
"""

from __future__ import annotations

import asyncio
import logging
import math
import random
import threading
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta

import numpy as np

from router_ml.calllog.operating_points import Label, OperatingPointStore
from router_ml.online.controller import AWAY_SHARES, Change, OperatingPoint, ladder
from router_ml.online.pacer import level_costs, measured_scale, pace
from router_ml.online.sampling import judging_chance
from router_ml.routers.policy import choose_near_reference

logger = logging.getLogger(__name__)

MOVE_ATTEMPTS = 3  # a move lost to another worker's is recomputed from the stored point this many times
PACE_MIN_CALLS = 20  # calls in the day before the pacer moves, and since the last move before it measures costs
DAY = timedelta(days=1)
RECENT = timedelta(minutes=10)  # the window of a tenant's recent call rate, for the pacer's projection


@dataclass
class Held:
    """A tenant's point as this process holds it: the ladder it belongs to, the stored version it was read
    at (None: placed here and not stored yet), when the ladder was placed (the store clock's epoch seconds) and
    the tenant's calls since (the call log's count at the last refresh, plus this process's calls since)."""

    point: OperatingPoint
    ladder: str
    version: int | None
    placed_at: float
    calls: int = 0


@dataclass(frozen=True)
class Probes:
    """The levels a judged call grades (the current one and a few cheaper), the model each would serve for its
    prompt, and the ladder they belong to."""

    ladder: str
    models: dict[int, str]


class Steering:
    """The operating points of the tenants (see the module docstring). The defaults of the controller's settings
    are those ``benchmarks/online_quality.py`` chose on its validation streams."""

    def __init__(self, book: OperatingPointStore, target: float = 0.95, confidence: float = 0.8,
                 min_labels: int = 20, probe_levels: int = 9, ladder_calls: int = 100, away_shares=AWAY_SHARES,
                 window: int = 1000, max_step: int = 3, pace_every_s: float = 60.0,
                 usage: Callable[[str, datetime], tuple[int, float]] | None = None):
        self.book, self.target, self.confidence, self.min_labels = book, target, confidence, min_labels
        self.probe_levels, self.ladder_calls, self.away_shares = probe_levels, ladder_calls, away_shares
        self.window, self.max_step, self.pace_every_s = window, max_step, pace_every_s
        self.usage = usage  # (client calls, USD) of a tenant since a time: the call log's (None: counted here only)
        self.held: dict[str, Held] = {}
        self._seen: dict[str, list[tuple[np.ndarray, np.ndarray]]] = {}
        self._lock = threading.Lock()  # one store round at a time per process: judged calls, refreshes, reports

    # ----------------------------------------------------------------- the hot path (memory only)
    def margin(self, tenant: str) -> float:
        """The margin of the tenant's next call: -inf (the reference alone) until its ladder is placed; a draw
        between the floor's two levels when the pacer's floor lies between them."""
        held = self.held.get(tenant)
        return held.point.margin_for(random.random()) if held is not None else -math.inf

    def placed(self, tenant: str) -> bool:
        return tenant in self.held

    def count(self, tenant: str) -> None:
        """One more routed call of a tenant whose ladder is placed (the judging schedule's clock)."""
        held = self.held.get(tenant)
        if held is not None:
            held.calls += 1

    def chance(self, tenant: str, rate: float) -> float:
        """The probability of judging the tenant's call now (:func:`~router_ml.online.sampling.judging_chance` at
        a mean ``rate``); ``rate`` itself before its ladder is placed."""
        held = self.held.get(tenant)
        return judging_chance(rate, held.calls) if held is not None else rate

    def place(self, tenant: str, decision, models: list[str], reference: str) -> None:
        """One routed call's predictions (its :class:`~router_ml.bundle.Decision` over ``models``) toward placing
        the tenant's ladder, which is placed at the ``ladder_calls``-th (and stored at the next refresh or judged
        call)."""
        seen = self._seen.setdefault(tenant, [])
        seen.append(_predictions(decision))
        if len(seen) < self.ladder_calls:
            return
        qualities, costs = np.stack([q for q, _ in seen]), np.stack([c for _, c in seen])
        margins = ladder(qualities, costs, models.index(reference), self.away_shares)
        point = OperatingPoint(target=self.target, confidence=self.confidence, margins=margins,
                               min_labels=self.min_labels, window=self.window, max_step=self.max_step)
        point.costs = level_costs(qualities, costs, models.index(reference), margins)
        self.held[tenant] = Held(point, uuid.uuid4().hex, None, self.book.clock.now().timestamp())
        del self._seen[tenant]
        logger.info("tenant %s: operating point ladder placed at margins %s", tenant, margins)

    def probes(self, tenant: str, decision, models: list[str], reference: str) -> Probes | None:
        """The levels one routed call (its decision over ``models``) is graded at; None before the tenant's ladder
        is placed. Asked only for a call being judged."""
        held = self.held.get(tenant)
        if held is None:
            return None
        point = held.point
        quality, cost = _predictions(decision)
        top, ref = len(point.margins) - 1, models.index(reference)
        floor = {point.level_for(0.0), point.level_for(1.0 - 1e-9)}  # the levels the floor's calls are served at
        return Probes(held.ladder, {
            level: models[int(choose_near_reference(quality[None], cost[None], ref, point.margins[level])[0])]
            for level in sorted({*range(point.level, min(top, point.level + self.probe_levels) + 1), *floor})})

    # ----------------------------------------------------------------- the store (blocking: worker threads)
    def refresh(self) -> None:
        """Store the ladders placed here that are not stored yet, and adopt every stored point newer than the one
        held (moved by another worker, or stored before a restart)."""
        with self._lock:
            self._refresh()

    def _refresh(self) -> None:
        for tenant, held in list(self.held.items()):
            if held.version is None and self.book.save(tenant, _state(held), None):
                held.version = 1
        for tenant, stored in self.book.points().items():
            held = self.held.get(tenant)
            if held is None or held.version is None or held.version < stored.version:
                held = self._adopt(tenant, stored.state, stored.version)
            if self.usage is not None:
                held.calls = self.usage(tenant, datetime.fromtimestamp(held.placed_at, UTC))[0]

    def judged(self, tenant: str, ladder_id: str, labels: list[Label]):
        """Store one judged call's labels, then move the tenant's point if the stored labels say so; the change
        (logged, stamped with the store's clock), or None. A move another worker saved first is recomputed from
        its point."""
        with self._lock:
            self.book.add_labels(tenant, ladder_id, labels)
            return self._move(tenant, ladder_id, self.book.clock.now().timestamp())

    def _move(self, tenant: str, ladder_id: str, at: float):
        def decide(held: Held) -> Change | None:
            if held.ladder != ladder_id:
                return None  # the labels belong to a ladder this tenant no longer has
            return held.point.update(at)
        return self._save_move(tenant, decide)

    def _save_move(self, tenant: str, decide: Callable[[Held], Change | None]) -> Change | None:
        """The change ``decide`` makes to the tenant's stored point, saved from the version read (recomputed from
        another worker's point when that one saved first); None when it makes none."""
        for _ in range(MOVE_ATTEMPTS):
            held = self._current(tenant)
            change = decide(held) if held is not None else None
            if change is None:
                return None
            if self.book.save(tenant, _state(held), held.version):
                held.version += 1
                logger.info("tenant %s: %s %s -> %s: %s", tenant, "floor" if change.by == "cost" else "level",
                            change.old, change.new, change.reason)
                return change
        logger.warning("tenant %s: operating point not moved: other workers kept moving it", tenant)
        return None

    def pace(self, targets: dict[str, float]) -> list[Change]:
        """Move the floors of the tenants with a spend target (``targets``: USD per UTC day, by tenant) by the cost
        pacer, and back to 0 for a tenant whose target was removed, from the calls and spend ``usage`` reads in
        the call log. The changes made (logged)."""
        if self.usage is None:
            raise ValueError("pacing needs the call log's usage: give Steering usage=CallStore.usage")
        with self._lock:
            tenants = set(targets) | {t for t, held in self.held.items() if held.point.floor > 0}
            return [change for tenant in sorted(tenants)
                    if (change := self._pace(tenant, targets.get(tenant))) is not None]

    def _pace(self, tenant: str, target: float | None) -> Change | None:
        now = self.book.clock.now()
        day = now.replace(hour=0, minute=0, second=0, microsecond=0)

        def decide(held: Held) -> Change | None:
            point = held.point
            if point.costs is None:
                return None  # placed before the pacer was
            if target is None:
                return point.set_floor(0.0, now.timestamp(), "cost pacer: no spend target", {})
            paced = [c.at for c in point.changes if c.by == "cost"]
            if paced and now.timestamp() - paced[-1] < self.pace_every_s:
                return None  # another worker paced it a moment ago
            calls, spent = self.usage(tenant, day)
            if calls < PACE_MIN_CALLS:
                return None
            moved = max([c.at for c in point.changes], default=0.0)
            since = max(day, datetime.fromtimestamp(moved, UTC))
            point.scale = measured_scale(point.costs, point.level, point.floor, *self.usage(tenant, since),
                                         PACE_MIN_CALLS, point.scale)
            found = pace(floor=point.floor, level=point.level, costs=point.costs, scale=point.scale, spent=spent,
                         target=target, calls=calls, to_come=self._to_come(tenant, calls, now, day),
                         max_step=self.max_step)
            return point.set_floor(found.wanted, now.timestamp(), found.reason(), found.as_dict())

        return self._save_move(tenant, decide)

    def _to_come(self, tenant: str, calls: int, now: datetime, day: datetime) -> float:
        """The tenant's calls expected in the rest of the day: at the higher of its rates over the day so far and
        over the last :data:`RECENT` (a tenant whose traffic started an hour ago, or has just grown)."""
        left, gone = (day + DAY - now).total_seconds(), max((now - day).total_seconds(), 1.0)
        recent = self.usage(tenant, max(day, now - RECENT))[0] / min(gone, RECENT.total_seconds())
        return left * max(calls / gone, recent)

    def point(self, tenant: str) -> OperatingPoint | None:
        """The tenant's point as stored, with the stored labels (feedback labels included); None before its
        ladder is placed."""
        with self._lock:
            held = self._current(tenant)
        return held.point if held is not None else None

    def describe(self, tenant: str) -> dict | None:
        """The tenant's stored point: the quality controller's level, the pacer's floor, the level most calls are
        served at and its margin and estimate, the last moves."""
        point = self.point(tenant)
        if point is None:
            return None
        return {"level": point.level, "levels": len(point.margins), "floor": point.floor, "served": point.served,
                "margin": point.margin if math.isfinite(point.margin) else None,
                "estimate": point.estimate().as_dict(), "changes": [asdict(c) for c in point.changes[-10:]]}

    def _current(self, tenant: str) -> Held | None:
        """The tenant's point as stored, with the stored labels (its ladder stored first if only placed here)."""
        held = self.held.get(tenant)
        if held is not None and held.version is None and self.book.save(tenant, _state(held), None):
            held.version = 1
        stored = self.book.point(tenant)
        if stored is None:
            return None
        held = self._adopt(tenant, stored.state, stored.version)
        for level, labels in enumerate(self.book.labels(tenant, held.ladder, len(held.point.margins), self.window)):
            for label in labels:
                held.point.observe(level, *label)
        return held

    def _adopt(self, tenant: str, state: dict, version: int) -> Held:
        old = self.held.get(tenant)
        point = OperatingPoint.from_state({**state, "labels": [[] for _ in state["margins"]]})
        calls = old.calls if old is not None and old.ladder == state["ladder"] else 0
        held = self.held[tenant] = Held(point, state["ladder"], version, state.get("placed_at", 0.0), calls)
        self._seen.pop(tenant, None)
        if old is None or old.point.level != point.level or old.ladder != held.ladder:
            logger.info("tenant %s: operating point at level %d (stored version %d)", tenant, point.level, version)
        return held


async def keep_fresh(steering: Steering, every_s: float) -> None:
    """Refresh ``steering`` from the store now and every ``every_s`` seconds (a failed refresh is logged and
    retried at the next)."""
    while True:
        try:
            await asyncio.to_thread(steering.refresh)
        except Exception:
            logger.exception("operating points not refreshed from the store")
        await asyncio.sleep(every_s)


async def keep_paced(steering: Steering, targets: Callable[[], dict[str, float]], every_s: float) -> None:
    """Pace the tenants' floors (:meth:`Steering.pace`) every ``every_s`` seconds, the spend targets read anew
    each time (``targets()``: USD per UTC day by tenant); a failed pace is logged and retried at the next."""
    while True:
        await asyncio.sleep(every_s)
        try:
            await asyncio.to_thread(lambda: steering.pace(targets()))
        except Exception:
            logger.exception("operating points not paced")


def _state(held: Held) -> dict:
    """What is stored of a point: its state without labels (they have their own table), with its ladder's id."""
    state = held.point.state()
    return {**state, "labels": [], "ladder": held.ladder, "placed_at": held.placed_at}


def _predictions(decision) -> tuple[np.ndarray, np.ndarray]:
    """(predicted quality, predicted cost) per model of a decision."""
    return (np.array([p["quality"] for p in decision.predicted]),
            np.array([p["cost_usd"] for p in decision.predicted]))
