"""Tenants' online operating points in the call log's database (table ``operating_points``): saved when one
moves and at shutdown, loaded at start, so that a restart keeps what the labels had earned. Blocking: the
gateway calls these from a worker thread."""

from __future__ import annotations

import json

import sqlalchemy as sa

from router_ml.calllog.store import operating_points
from router_ml.clock import SYSTEM_CLOCK, Clock


def save(engine: sa.Engine, tenant: str, state: dict, clock: Clock = SYSTEM_CLOCK) -> None:
    """Write ``tenant``'s operating point state (``OperatingPoint.state()``), replacing the one stored."""
    row = {"tenant": tenant, "state": json.dumps(state), "updated_at": clock.now()}
    with engine.begin() as conn:
        conn.execute(sa.delete(operating_points).where(operating_points.c.tenant == tenant))
        conn.execute(sa.insert(operating_points).values(**row))


def load(engine: sa.Engine) -> dict[str, dict]:
    """Every stored operating point state, by tenant."""
    with engine.connect() as conn:
        return {r.tenant: json.loads(r.state) for r in conn.execute(sa.select(operating_points))}
