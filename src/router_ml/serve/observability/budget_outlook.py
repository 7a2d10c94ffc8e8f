"""Will a tenant's budget last its period? What is spent so far plus the forecast for the rest of the period.

The forecast (:func:`router_ml.forecast.forecast_usage`) starts today and gives whole days; today's share
still to come is its forecast times the fraction of the UTC day left. A budget "runs out" when that
projection passes it before the period ends; the day it passes is ``runs_out_on``. Periods are UTC days and
months at ``now``, the app's clock (:mod:`router_ml.clock`); the forecast behind a month's outlook reaches the
month's last day whatever horizon the caller asked to see (30 days from the 1st of a 31-day month would not).

Sums of the interval bounds over several days are wider than the interval of the sum (they assume every day
lands at its bound together), so the totals' ``_lo``/``_hi`` are conservative.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

import polars as pl

from router_ml.clock import period_end, period_starts

METRICS = ("requests", "tokens", "spend_usd")


def total(predicted: pl.DataFrame, days: int) -> dict:
    """Each metric summed over the first ``days`` forecast days, with its (conservative) bounds."""
    head = predicted.head(days)
    return {f"{m}{suffix}": float(head[f"{m}{suffix}"].sum()) for m in METRICS for suffix in ("", "_lo", "_hi")}


def days_to_period_end(now: datetime) -> int:
    """Forecast days, today included, that reach the end of the longest budget period at ``now`` (its month)."""
    return (period_end("month", period_starts(now)["month"]).date() - now.astimezone(UTC).date()).days


def report(store, tenants, scope, now: datetime, horizon: int = 30, history_days: int = 56) -> dict:
    """What ``GET /v1/analytics/forecast`` answers at ``now``: the daily history of ``scope`` (a viewer: its tenant,
    None for all, and whether it is the admin), ``horizon`` days of forecast with 7- and 30-day totals, and the
    outlook of each budget of the tenant (``tenants``: the tenant store, or None) with a warning per budget that
    runs out. ``store``: the call log (:class:`~router_ml.calllog.store.CallStore`), already flushed."""
    from router_ml.forecast import forecast_history, forecast_usage  # offline code: loaded on first use

    history, note = forecast_history(store.engine, scope.tenant, now, history_days)
    out = {"scope": {"tenant": scope.tenant, "admin": scope.admin}, "method": None, "note": note,
           "history": [{**row, "day": row["day"].isoformat()} for row in history.to_dicts()],
           "forecast": [], "next_7_days": None, "next_30_days": None, "budgets": [], "warnings": []}
    if history.height == 0:
        return out
    predicted = forecast_usage(history, horizon=max(horizon, days_to_period_end(now)))
    shown = predicted.head(horizon)
    tenant = tenants.get_tenant(scope.tenant) if scope.tenant is not None and tenants is not None else None
    outlooks = budgets(tenant, store, predicted, now.astimezone(UTC).date(), now) if tenant is not None else []
    out.update(method=shown["method"][0],
               forecast=[{**row, "day": row["day"].isoformat()} for row in shown.drop("method").to_dicts()],
               next_7_days=total(shown, 7), next_30_days=total(shown, 30),
               budgets=outlooks, warnings=[b["warning"] for b in outlooks if b["runs_out"]])
    return out


def budgets(tenant, store, predicted: pl.DataFrame, today: date, now: datetime) -> list[dict]:
    """One outlook per budget the tenant has (day, month) at ``now`` (the app's clock): limit, spent, projected,
    whether and when it runs out."""
    now = now.astimezone(UTC)
    left_today = 1.0 - (now - now.replace(hour=0, minute=0, second=0, microsecond=0)) / timedelta(days=1)
    daily = dict(zip(predicted["day"].to_list(), predicted["spend_usd"].to_list()))
    out = []
    for period, start in period_starts(now).items():
        limit = tenant.budget_usd_day if period == "day" else tenant.budget_usd_month
        if limit is None:
            continue
        end = period_end(period, start)
        spent = store.spend(tenant.name, start)
        projected, runs_out_on = spent, None
        day = today
        while datetime(day.year, day.month, day.day, tzinfo=UTC) < end:
            if day not in daily:
                raise ValueError(f"the forecast ends before {day}, within the {period} period that ends {end.date()}")
            projected += daily[day] * (left_today if day == today else 1.0)
            if runs_out_on is None and projected > limit:
                runs_out_on = day
            day += timedelta(days=1)
        runs_out = projected > limit
        label = "daily" if period == "day" else "monthly"
        warning = (f"the {label} budget of tenant {tenant.name} (${limit:,.2f}) runs out around {runs_out_on}, before "
                   f"the period ends on {end.date()} (spent ${spent:,.4f}, projected ${projected:,.4f})")
        out.append({"period": period, "limit_usd": limit, "spent_usd": spent, "projected_usd": projected,
                    "period_end": end.isoformat(), "runs_out": runs_out,
                    "runs_out_on": runs_out_on.isoformat() if runs_out_on is not None else None,
                    "warning": warning if runs_out else None})
    return out
