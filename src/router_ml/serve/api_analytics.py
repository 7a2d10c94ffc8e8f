"""``/v1/analytics/*``: the usage report and the usage forecast of one tenant (its own key) or of all (the
admin key), read from the call log. Queries run in a worker thread: the event loop keeps serving calls."""

from __future__ import annotations

import asyncio
from datetime import UTC, date, datetime, timedelta

from fastapi import APIRouter, Query, Request

from router_ml.serve import analytics, budget_outlook
from router_ml.serve.auth import Viewer
from router_ml.serve.errors import APIError

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
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=UTC)


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
        first, last = analytics.resolve_range(_timestamp(start, "start"), _timestamp(end, "end"), bucket)
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

    def outlook() -> dict:
        from router_ml.forecast import daily_usage, forecast_usage  # offline code: loaded on first use

        store.flush(timeout=FLUSH_TIMEOUT_S)
        today = datetime.now(UTC).date()
        daily = daily_usage(store.engine, tenant=scope.tenant, days=history_days, until=today)
        predicted = forecast_usage(daily.drop("tenant"), horizon=horizon)
        tenant = request.app.state.tenants.get_tenant(scope.tenant) if (
            scope.tenant is not None and request.app.state.tenants is not None) else None
        budgets = budget_outlook.budgets(tenant, store, predicted, today) if tenant is not None else []
        return {"scope": {"tenant": scope.tenant, "admin": scope.admin},
                "method": predicted["method"][0] if predicted.height else None,
                "note": _history_note(daily, today),
                "history": [{**row, "day": row["day"].isoformat()} for row in
                            daily.select("day", "requests", "tokens", "spend_usd").to_dicts()],
                "forecast": [{**row, "day": row["day"].isoformat()} for row in
                             predicted.drop("method").to_dicts()],
                "next_7_days": budget_outlook.total(predicted, 7),
                "next_30_days": budget_outlook.total(predicted, 30),
                "budgets": budgets,
                "warnings": [b["warning"] for b in budgets if b["runs_out"]]}

    return await asyncio.to_thread(outlook)


def _history_note(daily, today: date) -> str | None:
    active = daily.filter(daily["requests"] > 0)
    if active.height == 0:
        return "no calls logged yet: the forecast is zero until traffic arrives"
    first = active["day"].min()
    days = (today - first + timedelta(days=1)).days
    return f"{days} day(s) of history: too short for a weekly pattern, a level forecast" if days < 14 else None
