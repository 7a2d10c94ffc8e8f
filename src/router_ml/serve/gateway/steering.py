"""The online operating point in the gateway: per tenant with a reference model, routed calls are chosen by
:func:`~router_ml.routers.policy.choose_near_reference` at the margin of the tenant's
:class:`~router_ml.online.controller.OperatingPoint`, which the shadow judge's verdicts move
(:mod:`router_ml.serve.gateway.shadow`).

A tenant starts at the reference alone. Its ladder of margins is placed on the router's predictions for its first
``ladder_calls`` routed calls (:func:`~router_ml.online.controller.ladder`: rungs where 5%, 10%, 20% ... of its
traffic would leave the reference); from then on, a call the shadow judge samples is also asked which model each
level near the current one would have chosen (the *probes* it grades), so that the cheaper levels gather labels
while the current one serves: no steering work on a call that is not judged. Each move is saved through ``saver`` (the gateway's is
:func:`router_ml.calllog.operating_points.save`) and :meth:`Steering.restore` resumes from what was saved, so a
restart keeps the operating point. Between saves the state lives in the process: each worker steers on its own
labels (the last to move writes the stored point).
"""

from __future__ import annotations

import logging
import math

import numpy as np

from router_ml.online.controller import AWAY_SHARES, OperatingPoint, ladder
from router_ml.routers.policy import choose_near_reference

logger = logging.getLogger(__name__)


class Steering:
    """The operating points of the tenants (see the module docstring)."""

    def __init__(self, target: float = 0.95, confidence: float = 0.8, min_labels: int = 20, probe_levels: int = 3,
                 ladder_calls: int = 100, away_shares=AWAY_SHARES, saver=None):
        self.target, self.confidence, self.min_labels, self.saver = target, confidence, min_labels, saver
        self.probe_levels, self.ladder_calls, self.away_shares = probe_levels, ladder_calls, away_shares
        self.points: dict[str, OperatingPoint] = {}
        self._seen: dict[str, list[tuple[np.ndarray, np.ndarray]]] = {}

    def restore(self, states: dict[str, dict]) -> None:
        """Resume the tenants' operating points from saved states (``OperatingPoint.state()`` by tenant)."""
        for tenant, state in states.items():
            self.points[tenant] = OperatingPoint.from_state(state)
            logger.info("tenant %s: operating point resumed at level %d", tenant, self.points[tenant].level)

    def persist(self, tenant: str) -> None:
        """Save the tenant's operating point through ``saver`` (blocking: call it from a worker thread)."""
        if self.saver is not None and tenant in self.points:
            self.saver(tenant, self.points[tenant].state())

    def margin(self, tenant: str) -> float:
        """The tenant's current margin: -inf (the reference alone) until its ladder is placed."""
        point = self.points.get(tenant)
        return point.margin if point is not None else -math.inf

    def placed(self, tenant: str) -> bool:
        return tenant in self.points

    def place(self, tenant: str, decision, models: list[str], reference: str) -> None:
        """One routed call's predictions (its :class:`~router_ml.bundle.Decision` over ``models``) toward placing
        the tenant's ladder, which is placed at the ``ladder_calls``-th."""
        seen = self._seen.setdefault(tenant, [])
        seen.append(_predictions(decision))
        if len(seen) < self.ladder_calls:
            return
        qualities, costs = np.stack([q for q, _ in seen]), np.stack([c for _, c in seen])
        margins = ladder(qualities, costs, models.index(reference), self.away_shares)
        self.points[tenant] = OperatingPoint(target=self.target, confidence=self.confidence, margins=margins,
                                             min_labels=self.min_labels)
        del self._seen[tenant]
        logger.info("tenant %s: operating point ladder placed at margins %s", tenant, margins)

    def probes(self, tenant: str, decision, models: list[str], reference: str) -> dict[int, str]:
        """{level: model} for the current level and the cheaper ones graded with it, from one routed call's
        decision over ``models``; {} before the tenant's ladder is placed. Asked only for a call being judged."""
        point = self.points.get(tenant)
        if point is None:
            return {}
        quality, cost = _predictions(decision)
        top, ref = len(point.margins) - 1, models.index(reference)
        return {level: models[int(choose_near_reference(quality[None], cost[None], ref, point.margins[level])[0])]
                for level in range(point.level, min(top, point.level + self.probe_levels) + 1)}

    def label(self, tenant: str, level: int, routed: float, reference: float, weight: float) -> None:
        self.points[tenant].observe(level, routed, reference, weight=weight)

    def update(self, tenant: str, at: float):
        """Move the tenant's operating point if its labels say so; the change (logged), or None."""
        change = self.points[tenant].update(at)
        if change is not None:
            logger.info("tenant %s: operating point %d -> %d: %s", tenant, change.old, change.new, change.reason)
        return change


def _predictions(decision) -> tuple[np.ndarray, np.ndarray]:
    """(predicted quality, predicted cost) per model of a decision."""
    return (np.array([p["quality"] for p in decision.predicted]),
            np.array([p["cost_usd"] for p in decision.predicted]))
