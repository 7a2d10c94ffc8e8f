"""The analytics API over a call log of real outcome rows (RouterBench tokens, costs and latencies), on SQLite and
PostgreSQL: every figure checked against an independent computation over the same rows, and tenant isolation."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import httpx
import numpy as np
import polars as pl
import pytest

from router_ml.clock import FixedClock
from router_ml.data.prepare import prepare
from router_ml.data.report import ImportReport
from router_ml.embed import StaticEncoder
from router_ml.pricing import cost_usd
from router_ml.serve.app import create_app
from router_ml.calllog.store import CallStore
from router_ml.serve.providers.handler import HandlerProvider
from router_ml.serve.tenancy.tenants import TenantStore
from router_ml.train import TrainConfig, run

ADMIN = "admin-secret"
START = datetime(2026, 11, 20, tzinfo=UTC)
NOW = START + timedelta(days=2, hours=9)  # the app's pinned clock: the morning after the two logged days


@pytest.fixture(scope="module")
def outcomes(mini_files):
    return prepare(mini_files, ImportReport(), encoder=None)


@pytest.fixture(scope="module")
def bundle(outcomes, static_encoder_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("analytics-bundle")
    config = TrainConfig(name="analytics", router="linear", sources=["routerbench"], min_prompts=50, n_trials=0)
    return out, run(config, outcomes, StaticEncoder(static_encoder_dir), out).meta


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request, tmp_path):
    return request.getfixturevalue("postgres_url") if request.param == "postgresql" else f"sqlite:///{tmp_path}/a.db"


def _calls(outcomes: pl.DataFrame) -> pl.DataFrame:
    """Call-log rows made of real outcome rows: two tenants, spread over 30 hours; every 11th row a failed
    attempt, every 7th a cache hit (zero cost, saving the outcome's cost). No dataset records latencies: a call's
    latency stands in as 20 ms per output token plus 300 ms."""
    rows = outcomes.filter(pl.col("source") == "routerbench").head(300).with_row_index("i")
    return rows.select(
        pl.col("prompt"), pl.col("model"), pl.col("input_tokens"), pl.col("output_tokens"),
        (300.0 + 20.0 * pl.col("output_tokens")).alias("latency_ms"),
        pl.when(pl.col("i") % 3 == 0).then(pl.lit("small")).otherwise(pl.lit("big")).alias("tenant"),
        pl.when(pl.col("i") % 11 == 5).then(pl.lit("error")).otherwise(pl.lit("ok")).alias("status"),
        ((pl.col("i") % 7 == 3) & (pl.col("i") % 11 != 5)).alias("hit"),
        pl.col("cost_usd").alias("original_cost"),
        pl.col("i").map_elements(lambda i: START + timedelta(minutes=6 * i), return_dtype=pl.Datetime("us", "UTC"))
        .alias("ts"))


def _record(store: CallStore, frame: pl.DataFrame) -> None:
    for r in frame.iter_rows(named=True):
        call = {"prompt": r["prompt"], "model": r["model"], "task": "chat", "tenant": r["tenant"], "ts": r["ts"],
                "status": r["status"]}
        if r["status"] == "error":
            store.record({**call, "http_status": 503, "error": "upstream said 503", "latency_ms": r["latency_ms"]})
        elif r["hit"]:
            store.record({**call, "http_status": 200, "input_tokens": r["input_tokens"],
                          "output_tokens": r["output_tokens"], "cost_usd": 0.0, "cost_source": "tokens_x_price",
                          "latency_ms": 0.0, "cache": "exact", "saved_usd": r["original_cost"]})
        else:
            store.record({**call, "http_status": 200, "input_tokens": r["input_tokens"],
                          "output_tokens": r["output_tokens"], "cost_usd": r["original_cost"],
                          "cost_source": "tokens_x_price", "latency_ms": r["latency_ms"]})
    store.flush()


@pytest.fixture
def gateway(bundle, outcomes, static_encoder_dir, store_url):
    directory, meta = bundle
    clock = FixedClock(NOW)
    store, tenants = CallStore(store_url, clock=clock), TenantStore(store_url, clock=clock)
    tenants.create_tenant("small", reference_model="claude-v2")
    tenants.create_tenant("big")  # no reference set: the bundle's best model
    keys = {name: tenants.issue_key(name) for name in ("small", "big")}
    frame = _calls(outcomes)
    _record(store, frame)
    app = create_app(directory, {m: HandlerProvider(lambda r, m=m: f"from {m}") for m in meta["models"]},
                     store=store, encoder=StaticEncoder(static_encoder_dir), tenants=tenants, admin_key=ADMIN,
                     clock=clock)
    yield app, keys, frame, meta["metrics"]["best_model_name"]
    store.close()
    tenants.close()


def _get(app, path: str, key: str | None, **params) -> httpx.Response:
    async def go():
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gateway") as client:
            headers = {"authorization": f"Bearer {key}"} if key else {}
            return await client.get(path, headers=headers, params=params)

    return asyncio.run(go())


def _expected(frame: pl.DataFrame, best: str) -> pl.DataFrame:
    """Per row: what was spent and what the tenant's reference model would have cost, computed here."""
    reference = {"small": "claude-v2", "big": best}
    spend, ref = [], []
    for r in frame.iter_rows(named=True):
        if r["status"] == "error":
            spend.append(0.0)
            ref.append(0.0)
            continue
        spend.append(0.0 if r["hit"] else r["original_cost"])
        ref.append(cost_usd(reference[r["tenant"]], r["input_tokens"], r["output_tokens"]))
    return frame.with_columns(pl.Series("spend", spend), pl.Series("ref", ref))


def test_usage_figures_match_the_rows_they_summarize(gateway):
    app, _, frame, best = gateway
    answer = _get(app, "/v1/analytics/usage", ADMIN, start=START.isoformat(),
                  end=(START + timedelta(hours=30)).isoformat(), bucket="hour")
    assert answer.status_code == 200, answer.text
    report = answer.json()
    rows = _expected(frame, best)
    ok = rows.filter(pl.col("status") == "ok")
    totals = report["totals"]
    assert totals["requests"] == rows.height == 300
    assert totals["errors"] == rows.filter(pl.col("status") == "error").height
    assert totals["cache_hits"] == ok["hit"].sum()
    assert totals["cache_hit_rate"] == pytest.approx(ok["hit"].sum() / ok.height)
    assert totals["input_tokens"] == ok["input_tokens"].sum()
    assert totals["spend_usd"] == pytest.approx(rows["spend"].sum(), rel=1e-9)
    assert totals["reference_usd"] == pytest.approx(rows["ref"].sum(), rel=1e-9)
    assert totals["saved_usd"] == pytest.approx(rows["ref"].sum() - rows["spend"].sum(), rel=1e-9)
    assert totals["cache_saved_usd"] == pytest.approx(ok.filter(pl.col("hit"))["original_cost"].sum(), rel=1e-9)
    timed = ok.filter(~pl.col("hit"))["latency_ms"].to_numpy()
    for p in (50, 95, 99):
        assert totals["latency_ms"][f"p{p}"] == pytest.approx(np.percentile(timed, p), abs=1e-3)

    # 30 hourly buckets, each summing its own 10 rows
    assert len(report["series"]) == 30
    hour = rows.with_columns(((pl.col("ts") - START).dt.total_seconds() // 3600).alias("h"))
    for h, bucket in enumerate(report["series"]):
        mine = hour.filter(pl.col("h") == h)
        assert bucket["start"] == (START + timedelta(hours=h)).isoformat()
        assert bucket["requests"] == mine.height
        assert bucket["spend_usd"] == pytest.approx(mine["spend"].sum(), rel=1e-9, abs=1e-15)
        assert bucket["reference_usd"] == pytest.approx(mine["ref"].sum(), rel=1e-9, abs=1e-15)

    counts = rows.group_by("model").len()
    assert {m["model"]: m["requests"] for m in report["models"]} == dict(counts.iter_rows())
    assert sum(m["share"] for m in report["models"]) == pytest.approx(1.0)
    assert [t["tenant"] for t in report["tenants"]] == sorted(
        {"small", "big"}, key=lambda t: -rows.filter(pl.col("tenant") == t)["spend"].sum())
    assert len(report["recent_errors"]) == min(20, totals["errors"])
    assert report["recent_errors"][0]["ts"] >= report["recent_errors"][-1]["ts"]


def test_daily_buckets_and_a_model_filter(gateway):
    app, _, frame, _ = gateway
    report = _get(app, "/v1/analytics/usage", ADMIN, start=START.isoformat(),
                  end=(START + timedelta(days=2)).isoformat(), bucket="day", model=frame["model"][0]).json()
    mine = frame.filter(pl.col("model") == frame["model"][0])
    assert [b["requests"] for b in report["series"]] == [
        mine.filter(pl.col("ts") < START + timedelta(days=1)).height,
        mine.filter(pl.col("ts") >= START + timedelta(days=1)).height]
    assert [m["model"] for m in report["models"]] == [frame["model"][0]]


def test_a_tenant_key_reads_its_own_tenant_only(gateway):
    app, keys, frame, _ = gateway
    span = {"start": START.isoformat(), "end": (START + timedelta(hours=30)).isoformat()}
    small = _get(app, "/v1/analytics/usage", keys["small"], **span).json()
    assert small["scope"] == {"tenant": "small", "admin": False, "model": None}
    assert small["totals"]["requests"] == frame.filter(pl.col("tenant") == "small").height
    assert [t["tenant"] for t in small["tenants"]] == ["small"]
    assert all(e["tenant"] == "small" for e in small["recent_errors"])
    refused = _get(app, "/v1/analytics/usage", keys["small"], tenant="big", **span)
    assert refused.status_code == 403 and "'small' only" in refused.json()["error"]["message"]
    assert _get(app, "/v1/analytics/usage", None, **span).status_code == 401
    assert _get(app, "/v1/analytics/usage", "rm-wrong", **span).status_code == 401
    big = _get(app, "/v1/analytics/usage", ADMIN, tenant="big", **span).json()
    assert big["totals"]["requests"] == frame.filter(pl.col("tenant") == "big").height


def test_bad_ranges_name_the_parameter(gateway):
    app, keys, _, _ = gateway
    bad = _get(app, "/v1/analytics/usage", ADMIN, bucket="week")
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "bucket"
    bad = _get(app, "/v1/analytics/usage", ADMIN, start="yesterday")
    assert bad.status_code == 400 and "ISO 8601" in bad.json()["error"]["message"]
    bad = _get(app, "/v1/analytics/usage", ADMIN, start="2026-11-27T00:00:00Z", end="2026-11-26T00:00:00Z")
    assert bad.status_code == 400 and "before end" in bad.json()["error"]["message"]
    bad = _get(app, "/v1/analytics/usage", ADMIN, start="2020-01-01T00:00:00Z", end="2026-01-01T00:00:00Z")
    assert bad.status_code == 400 and "buckets" in bad.json()["error"]["message"]


def test_forecast_follows_the_logged_days_and_warns_before_a_budget_runs_out(gateway):
    app, keys, frame, best = gateway
    admin = _get(app, "/v1/analytics/forecast", ADMIN, horizon=30).json()
    daily = (frame.with_columns(pl.col("ts").dt.date().alias("day"))
             .group_by("day").len().sort("day"))
    logged = {row["day"]: row["requests"] for row in admin["history"] if row["requests"]}
    assert logged == {d.isoformat(): n for d, n in daily.iter_rows()}
    assert len(admin["forecast"]) == 30 and admin["budgets"] == [] and admin["method"]
    first = datetime.fromisoformat(admin["forecast"][0]["day"]).date()
    assert first == NOW.date()  # the history ends yesterday (by the app's clock): the forecast starts today
    assert admin["history"][-1]["day"] == (NOW.date() - timedelta(days=1)).isoformat()
    for day in admin["forecast"]:
        for metric in ("requests", "tokens", "spend_usd"):
            assert 0 <= day[f"{metric}_lo"] <= day[metric] <= day[f"{metric}_hi"]
    assert admin["next_7_days"]["requests"] == pytest.approx(sum(d["requests"] for d in admin["forecast"][:7]))

    mine = _get(app, "/v1/analytics/forecast", keys["small"]).json()
    assert mine["scope"] == {"tenant": "small", "admin": False} and mine["budgets"] == []
    assert sum(r["requests"] for r in mine["history"]) == frame.filter(pl.col("tenant") == "small").height
    assert _get(app, "/v1/analytics/forecast", keys["small"], tenant="big").status_code == 403

    # November so far: the two logged days; the rest of it is the forecast (15/24 of today, then 8 whole days).
    spent = _expected(frame, best).filter(pl.col("tenant") == "small")["spend"].sum()
    left_today = 1 - 9 / 24
    projection = [(d["day"], d["spend_usd"] * (left_today if i == 0 else 1.0))
                  for i, d in enumerate(mine["forecast"]) if d["day"] < "2026-12-01"]
    assert [day for day, _ in projection][-1] == "2026-11-30" and len(projection) == 9
    by_month_end = spent + sum(usd for _, usd in projection)
    assert by_month_end > spent > 0
    # A month budget above what is spent but below the projection: it runs out because of the forecast, on the
    # day the projection passes it.
    limit = (spent + by_month_end) / 2
    app.state.tenants.update_tenant("small", budget_usd_month=limit, budget_usd_day=1000.0)
    warned = _get(app, "/v1/analytics/forecast", keys["small"]).json()
    month, = (b for b in warned["budgets"] if b["period"] == "month")
    day, = (b for b in warned["budgets"] if b["period"] == "day")
    assert month["spent_usd"] == pytest.approx(spent, rel=1e-9) and month["spent_usd"] < limit
    assert month["projected_usd"] == pytest.approx(by_month_end, rel=1e-9)
    assert month["period_end"] == "2026-12-01T00:00:00+00:00"
    running = spent
    expected_on = next(d for d, usd in projection if (running := running + usd) > limit)
    assert month["runs_out"] and month["runs_out_on"] == expected_on
    assert not day["runs_out"] and day["warning"] is None
    assert day["spent_usd"] == 0.0 and day["period_end"] == "2026-11-23T00:00:00+00:00"  # nothing logged today
    assert warned["warnings"] == [month["warning"]] and "monthly budget" in month["warning"]
    assert f"runs out around {expected_on}, before the period ends on 2026-12-01" in month["warning"]


def test_minute_buckets_and_a_tenant_without_calls(gateway):
    app, _, frame, _ = gateway
    report = _get(app, "/v1/analytics/usage", ADMIN, start=START.isoformat(),
                  end=(START + timedelta(hours=1)).isoformat(), bucket="minute").json()
    assert len(report["series"]) == 60
    first_hour = frame.filter(pl.col("ts") < START + timedelta(hours=1))
    minutes = {int((ts - START).total_seconds() // 60) for ts in first_hour["ts"]}
    assert {i for i, b in enumerate(report["series"]) if b["requests"]} == minutes
    app.state.tenants.create_tenant("quiet")
    key = app.state.tenants.issue_key("quiet")
    quiet = _get(app, "/v1/analytics/forecast", key)
    assert quiet.status_code == 200 and quiet.json()["forecast"] == [] and "no calls" in quiet.json()["note"]
    assert _get(app, "/v1/analytics/usage", key).json()["totals"]["requests"] == 0
