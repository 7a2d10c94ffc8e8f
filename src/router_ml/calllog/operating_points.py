"""Tenants' online operating points and the labels behind them, in the call log's database, so that every worker
and replica steers a tenant from the same point and the same labels, and a restart keeps what they had earned.

Table ``operating_points`` holds each tenant's point (``OperatingPoint.state()`` without its labels, plus the id
of its ``ladder``) and a ``version``: a worker moves a point only from the version it read (compare and swap), so
two workers that judged calls at the same time cannot undo each other's move. Table ``online_labels`` holds one
label per level a judged call graded; the exact labels of /v1/feedback join them at read time (the quality given
to the row of the graded answer and to the row of the reference's answer). Blocking: the gateway calls these
from worker threads.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass

import sqlalchemy as sa

from router_ml.calllog.store import calls, online_labels, operating_points
from router_ml.clock import SYSTEM_CLOCK, Clock


@dataclass(frozen=True)
class Stored:
    """A tenant's stored point: its state (with ``ladder``, without labels) and the version it was saved at."""

    state: dict
    version: int


@dataclass(frozen=True)
class Label:
    """One judged label of a ladder's level: the judge's scores of the level's answer and of the reference's, the
    ids of the rows holding the two answers, and the weight (1 / the chance the call was judged)."""

    level: int
    judged_call: str
    graded_call: str
    reference_call: str
    routed: float
    reference: float
    weight: float


class OperatingPointStore:
    """The operating points and labels of every tenant in the database of ``engine``."""

    def __init__(self, engine: sa.Engine, clock: Clock = SYSTEM_CLOCK):
        self.engine, self.clock = engine, clock

    def points(self) -> dict[str, Stored]:
        """Every stored point, by tenant."""
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(operating_points)).all()
        return {r.tenant: Stored(json.loads(r.state), r.version or 0) for r in rows}

    def point(self, tenant: str) -> Stored | None:
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(operating_points).where(operating_points.c.tenant == tenant)).first()
        return None if row is None else Stored(json.loads(row.state), row.version or 0)

    def save(self, tenant: str, state: dict, version: int | None) -> bool:
        """Store ``state`` as the tenant's point if the stored one is still at ``version`` (None: if the tenant
        has none yet); whether it was stored. The stored version becomes ``version + 1`` (1 for a new point)."""
        values = {"state": json.dumps(state), "updated_at": self.clock.now(), "version": (version or 0) + 1}
        if version is None:
            try:
                with self.engine.begin() as conn:
                    conn.execute(sa.insert(operating_points).values(tenant=tenant, **values))
            except sa.exc.IntegrityError:  # another worker placed this tenant's ladder first
                return False
            return True
        current = operating_points.c.version if version else sa.func.coalesce(operating_points.c.version, 0)
        with self.engine.begin() as conn:
            moved = conn.execute(sa.update(operating_points)
                                 .where(operating_points.c.tenant == tenant, current == version).values(**values))
        return moved.rowcount == 1

    def add_labels(self, tenant: str, ladder: str, labels: list[Label]) -> None:
        if not labels:
            return
        now = self.clock.now()
        rows = [{"tenant": tenant, "ladder": ladder, "ts": now, **vars(label)} for label in labels]
        with self.engine.begin() as conn:
            conn.execute(sa.insert(online_labels), rows)

    def labels(self, tenant: str, ladder: str, levels: int, window: int) -> list[list[tuple]]:
        """Per level of the ladder, its last ``window`` labels as ``OperatingPoint`` holds them: (routed, reference,
        exact routed, exact reference, weight), an exact label being the feedback quality of the answer's row
        (NaN without feedback); oldest first."""
        graded, against = calls.alias("graded"), calls.alias("against")

        def exact(row):
            return sa.case((row.c.feedback_at.is_not(None), row.c.quality), else_=None)

        found = []
        with self.engine.connect() as conn:
            for level in range(levels):
                query = (sa.select(online_labels.c.routed, online_labels.c.reference, exact(graded), exact(against),
                                   online_labels.c.weight)
                         .select_from(online_labels
                                      .outerjoin(graded, graded.c.call_id == online_labels.c.graded_call)
                                      .outerjoin(against, against.c.call_id == online_labels.c.reference_call))
                         .where(online_labels.c.tenant == tenant, online_labels.c.ladder == ladder,
                                online_labels.c.level == level)
                         .order_by(online_labels.c.id.desc()).limit(window))
                rows = conn.execute(query).all()
                found.append([(r[0], r[1], _nan(r[2]), _nan(r[3]), r[4]) for r in reversed(rows)])
        return found


def _nan(value) -> float:
    return math.nan if value is None else float(value)
