"""Will a tenant's budget last its period? What is spent so far plus the forecast for the rest of the period.

The forecast (:func:`router_ml.forecast.forecast_usage`) starts today and gives whole days; today's share
still to come is its forecast times the fraction of the UTC day left. A budget "runs out" when that
projection passes it before the period ends; the day it passes is ``runs_out_on``.

Sums of the interval bounds over several days are wider than the interval of the sum (they assume every day
lands at its bound together), so the totals' ``_lo``/``_hi`` are conservative.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

import polars as pl

from router_ml.serve.limits import period_starts

METRICS = ("requests", "tokens", "spend_usd")


def total(predicted: pl.DataFrame, days: int) -> dict:
    """Each metric summed over the first ``days`` forecast days, with its (conservative) bounds."""
    head = predicted.head(days)
    return {f"{m}{suffix}": float(head[f"{m}{suffix}"].sum()) for m in METRICS for suffix in ("", "_lo", "_hi")}


def _period_end(period: str, start: datetime) -> datetime:
    if period == "day":
        return start + timedelta(days=1)
    return (start.replace(day=28) + timedelta(days=4)).replace(day=1)


def budgets(tenant, store, predicted: pl.DataFrame, today: date, now: datetime | None = None) -> list[dict]:
    """One outlook per budget the tenant has (day, month): limit, spent, projected, whether and when it runs out."""
    now = now or datetime.now(UTC)
    left_today = 1.0 - (now - now.replace(hour=0, minute=0, second=0, microsecond=0)) / timedelta(days=1)
    daily = dict(zip(predicted["day"].to_list(), predicted["spend_usd"].to_list()))
    out = []
    for period, start in period_starts(now).items():
        limit = tenant.budget_usd_day if period == "day" else tenant.budget_usd_month
        if limit is None:
            continue
        end = _period_end(period, start)
        spent = store.spend(tenant.name, start)
        projected, runs_out_on = spent, None
        day = today
        while datetime(day.year, day.month, day.day, tzinfo=UTC) < end:
            projected += daily.get(day, 0.0) * (left_today if day == today else 1.0)
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
