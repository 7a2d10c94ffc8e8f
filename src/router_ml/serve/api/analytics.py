"""``/v1/analytics/*``: the usage report and the usage forecast of one tenant (its own key) or of all (the
admin key), read from the call log. Queries run in a worker thread: the event loop keeps serving calls. "Now" (a
range's default end, where a forecast starts, the budget periods) is the app's clock (``app.state.clock``)."""

from __future__ import annotations

import asyncio
from datetime import datetime

from fastapi import APIRouter, Query, Request

from router_ml.clock import as_utc
from router_ml.serve.observability import analytics, budget_outlook
from router_ml.serve.api.auth import Viewer
from router_ml.serve.api.errors import APIError

router = APIRouter(prefix="/v1/analytics")
FLUSH_TIMEOUT_S = 5.0  # calls still queued for the call log are written first, so a report includes them


def _store(request: Request):
    store = request.app.state.store
    if store is None:
        raise APIError(503, "this server keeps no call log, so it has no analytics")
    return store


def _timestamp(value: str | None, name: str) -> datetime | None:
    if value is None:
        return None
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError as exc:
        raise APIError(400, f"{name} must be an ISO 8601 time such as 2026-11-27T00:00:00Z, not {value!r}",
                       param=name) from exc
    return as_utc(parsed)


def _references(request: Request) -> tuple[dict[str, str | None], str | None]:
    """(tenant -> its reference model setting, the default reference: the bundle's best model on its test data)."""
    tenants = request.app.state.tenants
    settings = {t.name: t.reference_model for t in tenants.list_tenants()} if tenants is not None else {}
    return settings, request.app.state.bundles.current.meta.get("metrics", {}).get("best_model_name")


@router.get("/usage")
async def usage(request: Request, scope: Viewer, start: str | None = None, end: str | None = None,
                bucket: str = "hour"):
    store = _store(request)
    try:
        first, last = analytics.resolve_range(_timestamp(start, "start"), _timestamp(end, "end"), bucket,
                                              request.app.state.clock.now())
    except ValueError as exc:
        raise APIError(400, str(exc), param="bucket" if "bucket" in str(exc) else "start") from exc

    def report() -> dict:
        store.flush(timeout=FLUSH_TIMEOUT_S)
        references, default = _references(request)
        return analytics.usage(store.engine, scope, first, last, bucket, references, default)

    return await asyncio.to_thread(report)


@router.get("/forecast")
async def forecast(request: Request, scope: Viewer, horizon: int = Query(30, ge=1, le=90),
                   history_days: int = Query(56, ge=1, le=366)):
    store = _store(request)
    tenants, clock = request.app.state.tenants, request.app.state.clock

    def outlook() -> dict:
        store.flush(timeout=FLUSH_TIMEOUT_S)
        return budget_outlook.report(store, tenants, scope, clock.now(), horizon, history_days)

    return await asyncio.to_thread(outlook)


@router.get("/quality")
async def quality(request: Request, scope: Viewer, start: str | None = None, end: str | None = None,
                  confidence: float = Query(0.8, gt=0, lt=1)):
    """The quality routed calls kept of the reference's, from the shadow judge's verdicts (default: the last 30 days)."""
    store = _store(request)
    try:
        first, last = analytics.resolve_range(_timestamp(start, "start"), _timestamp(end, "end"), "day",
                                              request.app.state.clock.now())
    except ValueError as exc:
        raise APIError(400, str(exc), param="start") from exc

    steering = request.app.state.steering

    def report() -> dict:
        store.flush(timeout=FLUSH_TIMEOUT_S)
        found = analytics.quality(store.engine, scope, first, last, confidence)
        for row in found["tenants"]:  # a steered tenant's stored operating point and its last moves
            point = steering.describe(row["tenant"]) if steering is not None else None
            if point is not None:
                row["operating_point"] = point
        return found

    return await asyncio.to_thread(report)
