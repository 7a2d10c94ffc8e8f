"""Usage forecasts per tenant: daily requests, tokens and spend for the coming days, with prediction intervals.

Method (chosen by the backtest in benchmarks/forecast.py, on real per-tenant traces: ServeGen and BurstGPT):
each daily series is modelled on a log scale, ``z = log(y + c)`` with ``c`` a small share of the series' mean,
by statsforecast's AutoETS (weekly season offered once two full weeks are known), and the forecast and its interval are
transformed back. The log scale keeps intervals non-negative and lets them widen with the level (usage is
multiplicative: a tenant's day is "half" or "twice" another, rarely "minus 1,000 requests"); AutoETS picks error,
trend and season by AICc on the tenant's own history, so nothing is fitted across tenants. On the backtest's test
windows it beat seasonal-naive (median MASE 0.76 against 1.01 on ServeGen, with calibrated 80% intervals), AutoETS
and AutoTheta on raw counts, and the hourly models (MSTL, hourly AutoETS, summed to days; MSTL was better on the
validation window only, and needs hourly data the daily API does not have); see benchmarks/results/forecast.json.

With fewer than :data:`MIN_DAYS_MODEL` days of history (a fresh gateway) there is too little to fit a model:
the forecast is the mean of the known days on the log scale, with an interval from their spread, never narrower
than :data:`SHORT_HISTORY_SIGMA` (the typical day-to-day log change, measured on the backtest's validation
window). The ``method`` column says which method produced each row.

statsforecast and numpy are imported inside the functions that need them: importing this module costs nothing
on the gateway's hot path; the first forecast in a process pays statsforecast's import (a few seconds), later
ones take milliseconds.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta

import polars as pl

from router_ml.clock import as_utc

METRICS = ("requests", "tokens", "spend_usd")
SEASON_DAYS = 7
MIN_DAYS_SEASONAL = 2 * SEASON_DAYS
"""A weekly season is only offered to AutoETS once two full weeks are known (one week gives no repeat)."""
MIN_DAYS_MODEL = 7
"""Fewer known days than this: the short-history fallback, not a model (AutoETS refuses such "tiny datasets")."""
OFFSET_SHARE = 0.1
"""``c`` of ``log(y + c)`` as a share of the series' mean of its non-zero days: scale-free, so spend in cents and
tokens in millions behave alike, and days with zero usage stay finite. 0.1 had the lowest median MASE of
{0.001, 0.01, 0.1} on the backtest's validation window (the differences are small)."""
MIN_RUN_RATE_HOURS = 1.0
"""A first day's calls are taken to span at least this long when scaled to a daily rate (a burst is no rate)."""
SHORT_HISTORY_SIGMA = 0.5
"""Smallest log-scale standard deviation of the short-history fallback (one known day has no spread of its own)."""


@dataclass(frozen=True)
class SeriesForecast:
    mean: list[float]
    lo: list[float]
    hi: list[float]
    method: str


def _z_quantile(level: float) -> float:
    from statistics import NormalDist

    return NormalDist().inv_cdf(0.5 + level / 2)


def seasonal_naive(history, horizon: int, level: float = 0.8) -> SeriesForecast:
    """The baseline: the last week repeated (the last day, with less than a week of history).

    Interval: normal, from the in-sample errors of the same rule (lag-1 errors when there is no earlier week to
    compare with), widened with the number of seasons ahead as for a random walk; clipped at zero.
    """
    import numpy as np

    y = np.asarray(history, dtype=float)
    season = SEASON_DAYS if len(y) >= SEASON_DAYS else 1
    steps = np.arange(horizon)
    mean = y[len(y) - season + steps % season]
    lag = season if len(y) >= 2 * season else 1
    errors = y[lag:] - y[:-lag]
    sigma = float(np.sqrt(np.mean(errors**2))) if len(errors) else float(np.mean(y))
    width = _z_quantile(level) * sigma * np.sqrt(steps // season + 1)
    return SeriesForecast(mean.tolist(), np.maximum(mean - width, 0).tolist(), (mean + width).tolist(),
                          f"seasonal-naive({season})")


def forecast_series(history, horizon: int, level: float = 0.8, *, offset_share: float = OFFSET_SHARE,
                    min_days: int = MIN_DAYS_MODEL, model: str = "ZZZ") -> SeriesForecast:
    """Forecast one non-negative daily series ``horizon`` days ahead with a central ``level`` interval.

    ``offset_share``, ``min_days`` and ``model`` (AutoETS's model string) exist for the backtest, which compares
    settings on its validation window; callers keep the defaults.
    """
    import numpy as np

    y = np.asarray(history, dtype=float)
    if len(y) == 0:
        raise ValueError("forecast_series: the history is empty")
    positive = y[y > 0]
    if len(positive) == 0:
        zeros = [0.0] * horizon
        return SeriesForecast(zeros, zeros, zeros, "zero (no usage yet)")
    offset = offset_share * float(positive.mean())
    z = np.log(y + offset)
    if len(y) >= min_days:
        fitted = _ets(z, horizon, level, model)
        if fitted is not None:
            mean, lo, hi, name = fitted
            back = [np.maximum(np.exp(v) - offset, 0).tolist() for v in (mean, lo, hi)]
            return SeriesForecast(*back, f"AutoETS {name} on log(y + c)")
    sigma = max(float(np.std(z, ddof=1)) if len(z) > 1 else 0.0, SHORT_HISTORY_SIGMA)
    centre = float(np.mean(z))
    width = _z_quantile(level) * sigma * np.sqrt(1 + 1 / len(z))
    point, lo, hi = (max(float(np.exp(v)) - offset, 0.0) for v in (centre, centre - width, centre + width))
    return SeriesForecast([point] * horizon, [lo] * horizon, [hi] * horizon,
                          f"mean of {len(y)} day(s) on log(y + c) (short history)")


def _ets(z, horizon: int, level: float, model: str):
    """AutoETS on the log series: (mean, lo, hi, chosen model), or None where it cannot fit this history."""
    import warnings

    from statsforecast.models import AutoETS

    season = SEASON_DAYS if len(z) >= MIN_DAYS_SEASONAL else 1
    if season == 1:
        model = model[:2] + "N"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            estimator = AutoETS(season_length=season, model=model).fit(z)
            out = estimator.predict(h=horizon, level=[100 * level])
    except (NotImplementedError, ValueError, ZeroDivisionError, FloatingPointError):
        return None
    lo = next(v for k, v in out.items() if k.startswith("lo-"))
    hi = next(v for k, v in out.items() if k.startswith("hi-"))
    if not all(map(_finite, (out["mean"], lo, hi))):
        return None
    error, trend, seasonal, damped = estimator.model_["components"][:4]  # e.g. "AAdN"... as "A", "A", "N", "D"
    trend += "d" if damped == "D" else ""
    return out["mean"], lo, hi, f"({error},{trend},{seasonal}{f'{season}' if seasonal != 'N' else ''})"


def _finite(values) -> bool:
    import numpy as np

    return bool(np.isfinite(values).all())


def forecast_usage(daily: pl.DataFrame, horizon: int = 30, level: float = 0.8) -> pl.DataFrame:
    """One tenant's next ``horizon`` days of requests, tokens and spend, each with a ``level`` interval.

    ``daily``: columns ``day`` (pl.Date, consecutive, oldest first), ``requests``, ``tokens``, ``spend_usd``
    (non-negative; days without calls are 0). Returns one row per future day: ``day``, for each metric ``m``
    the point forecast ``m`` and its bounds ``m_lo``, ``m_hi`` (all >= 0), and ``method``.
    """
    _check_daily(daily, horizon, level)
    last = daily["day"].max()
    out: dict[str, list] = {"day": [last + timedelta(days=k) for k in range(1, horizon + 1)]}
    methods = []
    for metric in METRICS:
        f = forecast_series(daily[metric].cast(pl.Float64).to_numpy(), horizon, level)
        out[metric], out[f"{metric}_lo"], out[f"{metric}_hi"] = f.mean, f.lo, f.hi
        methods.append(f"{metric}: {f.method}")
    out["method"] = ["; ".join(methods)] * horizon
    return pl.DataFrame(out, schema={"day": pl.Date, **{c: pl.Float64 for c in out if c not in ("day", "method")},
                                     "method": pl.String})


def _check_daily(daily: pl.DataFrame, horizon: int, level: float) -> None:
    if not isinstance(horizon, int) or horizon < 1:
        raise ValueError(f"forecast_usage: horizon must be a positive integer, got {horizon!r}")
    if not 0 < level < 1:
        raise ValueError(f"forecast_usage: level must be in (0, 1), got {level!r}")
    missing = [c for c in ("day", *METRICS) if c not in daily.columns]
    if missing:
        raise ValueError(f"forecast_usage: daily lacks column(s) {missing} (has {daily.columns})")
    if daily.height == 0:
        raise ValueError("forecast_usage: daily has no rows; there is no history to forecast from")
    if daily.schema["day"] != pl.Date:
        raise ValueError(f"forecast_usage: column 'day' must be pl.Date, got {daily.schema['day']}")
    gaps = daily["day"].diff().drop_nulls()
    if (gaps != timedelta(days=1)).any():
        raise ValueError("forecast_usage: 'day' must be consecutive days in ascending order (fill missing days "
                         "with 0)")
    for metric in METRICS:
        column = daily[metric]
        if not column.dtype.is_numeric() or column.null_count() or (column < 0).any():
            raise ValueError(f"forecast_usage: column {metric!r} must be non-negative numbers without nulls")


def daily_usage(store, tenant: str | None = None, days: int | None = None,
                until: date | None = None) -> pl.DataFrame:
    """Each tenant's daily usage from the gateway's call log: ``tenant``, ``day`` (UTC), ``requests``, ``tokens``
    (input + output), ``spend_usd``.

    ``store``: a SQLAlchemy URL or engine of the call log (``calls`` table of router_ml.calllog.store). Every
    logged call counts, failed ones too (they were requests, and an abandoned stream is billed). ``tenant``
    keeps one tenant; ``days`` keeps the last ``days`` days up to ``until`` (default: the last day with a call).
    Each tenant's days run consecutively from its first call to ``until``, days without calls as 0; calls
    logged without a tenant appear under tenant null. No calls: an empty frame with these columns.
    """
    import sqlalchemy as sa

    from router_ml.calllog.store import calls

    query = sa.select(calls.c.ts, calls.c.tenant, calls.c.input_tokens, calls.c.output_tokens, calls.c.cost_usd)
    if tenant is not None:
        query = query.where(calls.c.tenant == tenant)
    if days is not None:
        if days < 1:
            raise ValueError(f"daily_usage: days must be >= 1, got {days}")
        if until is not None:
            start = datetime.combine(until - timedelta(days=days - 1), datetime.min.time(), UTC)
            query = query.where(calls.c.ts >= start)
    rows = _run(store, query).all()
    schema = {"tenant": pl.String, "day": pl.Date, "requests": pl.Int64, "tokens": pl.Int64, "spend_usd": pl.Float64}
    if not rows:
        return pl.DataFrame(schema=schema)
    raw = pl.DataFrame({"ts": [as_utc(r[0]).date() for r in rows], "tenant": [r[1] for r in rows],
                        "tokens": [(r[2] or 0) + (r[3] or 0) for r in rows], "spend_usd": [r[4] or 0.0 for r in rows]},
                       schema={"ts": pl.Date, "tenant": pl.String, "tokens": pl.Int64, "spend_usd": pl.Float64})
    end = until or raw["ts"].max()
    if days is not None:
        raw = raw.filter(pl.col("ts") > end - timedelta(days=days))
    raw = raw.filter(pl.col("ts") <= end)
    totals = raw.group_by("tenant", pl.col("ts").alias("day")).agg(pl.len().cast(pl.Int64).alias("requests"),
                                                                   pl.col("tokens").sum(), pl.col("spend_usd").sum())
    firsts = totals.group_by("tenant").agg(pl.col("day").min().alias("first"))
    grid = firsts.select("tenant", pl.date_ranges("first", pl.lit(end), interval="1d").alias("day")).explode("day")
    return (grid.join(totals, on=["tenant", "day"], how="left", nulls_equal=True)
            .with_columns(pl.col("requests", "tokens").fill_null(0), pl.col("spend_usd").fill_null(0.0))
            .sort("tenant", "day", nulls_last=True).select(list(schema)).cast(schema))


def forecast_history(store, tenant: str | None, now: datetime, days: int | None = None) -> tuple[pl.DataFrame, str | None]:
    """(daily requests, tokens and spend up to yesterday, a note on how it was made or None): the history of a
    forecast that starts today, for :func:`forecast_usage`; ``tenant`` None sums every tenant, ``days`` keeps the
    last ones. Today's partial day counts only where all calls came today: their rate since the first one (over
    at least :data:`MIN_RUN_RATE_HOURS`), scaled to a day, then stands for yesterday. No calls: an empty frame."""
    today = now.date()
    daily = daily_usage(store, tenant=tenant, days=days + 1 if days is not None else None, until=today)
    if daily.height == 0:
        return daily.drop("tenant"), "no calls logged yet: no forecast until traffic arrives"
    daily = (daily.group_by("day").agg(pl.col("requests", "tokens", "spend_usd").sum()).sort("day")
             .filter(pl.col("day") <= today))
    if daily["day"].min() < today:
        history = daily.filter(pl.col("day") < today)
        return history, (f"{history.height} day(s) of history: too short for a weekly pattern"
                         if history.height < 14 else None)
    first = _first_call(store, tenant, today)
    hours = max((now - first).total_seconds() / 3600, MIN_RUN_RATE_HOURS)  # a first burst is not a daily rate
    scale = 24.0 / hours
    history = daily.select(pl.lit(today - timedelta(days=1)).alias("day"),
                           *(pl.col(m).cast(pl.Float64) * scale for m in ("requests", "tokens", "spend_usd")))
    return history, (f"all calls came today: the forecast extrapolates their rate over the last {hours:.1f} hours "
                     f"(at least {MIN_RUN_RATE_HOURS:g}) to whole days; it firms up after the first full day")


def _first_call(store, tenant: str | None, today: date) -> datetime:
    import sqlalchemy as sa

    from router_ml.calllog.store import calls

    query = sa.select(sa.func.min(calls.c.ts)).where(calls.c.ts >= datetime.combine(today, datetime.min.time(), UTC))
    if tenant is not None:
        query = query.where(calls.c.tenant == tenant)
    return as_utc(_run(store, query).scalar_one())


def _run(store, query):
    """``query``'s buffered result on the call log ``store`` (a SQLAlchemy URL, opened and closed here, or engine)."""
    import sqlalchemy as sa

    engine = sa.create_engine(store) if isinstance(store, str) else store
    try:
        with engine.connect() as conn:
            return conn.execute(query).freeze()()
    finally:
        if isinstance(store, str):
            engine.dispose()
