"""Usage forecasts and the trace loaders, on slices of the real traces (ServeGen, BurstGPT) from the mirror."""

from __future__ import annotations

import gzip
import json
import os
import time
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import sqlalchemy as sa

from router_ml.config import PROJECT_ROOT
from router_ml.data.sources import MANIFEST_COLUMNS, ChecksumError, git_blob_sha1, load_manifest
from router_ml.data.traces import (BURSTGPT, BURSTGPT_PRICED_AS, SERVEGEN_POOLS, burstgpt, servegen_windows,
                                   trace_files)
from router_ml.forecast import METRICS, daily_usage, forecast_series, forecast_usage, seasonal_naive

MANIFEST = PROJECT_ROOT / "datasets" / "traces.tsv"
STEADY, WEEKLY = "data/language/m-large/chunk-100-trace.csv", "data/language/m-large/chunk-107-trace.csv"


def _traces_mirror() -> Path | None:
    for candidate in (os.environ.get("ROUTER_ML_TRACES_MIRROR"), PROJECT_ROOT.parent / "shared" / "traces"):
        if candidate and (Path(candidate) / "servegen").is_dir():
            return Path(candidate)
    return None


TRACES_MIRROR = _traces_mirror()
pytestmark = pytest.mark.skipif(TRACES_MIRROR is None, reason="no traces mirror (set ROUTER_ML_TRACES_MIRROR)")


@pytest.fixture(scope="module")
def mini_traces(tmp_path_factory):
    """Two ServeGen clients and BurstGPT's first 3,000 calls, laid out and pinned like the real mirror."""
    out = tmp_path_factory.mktemp("mini-traces")
    rows = []
    for entry in load_manifest(MANIFEST):
        if entry.path not in (STEADY, WEEKLY, BURSTGPT[1]):
            continue
        content = gzip.decompress((TRACES_MIRROR / entry.source / (Path(entry.path).name + ".gz")).read_bytes())
        if entry.path == BURSTGPT[1]:
            content = b"".join(content.splitlines(keepends=True)[:3001])
        target = out / "mirror" / entry.source / (Path(entry.path).name + ".gz")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(gzip.compress(content, mtime=0))
        rows.append([entry.source, entry.repo, entry.commit, entry.path, git_blob_sha1(content), str(len(content))])
    manifest = out / "traces.tsv"
    manifest.write_text("\n".join("\t".join(r) for r in [list(MANIFEST_COLUMNS), *rows]) + "\n")
    return manifest, out / "mirror", trace_files(manifest, out / "cache", out / "mirror")


def _daily(requests, start=date(2025, 1, 6)) -> pl.DataFrame:
    requests = np.asarray(requests, float)
    return pl.DataFrame({"day": [start + timedelta(days=i) for i in range(len(requests))], "requests": requests,
                         "tokens": requests * 900, "spend_usd": requests * 0.002})


def _servegen_days(files, path) -> np.ndarray:
    windows = servegen_windows(files, SERVEGEN_POOLS[0], path)
    return windows.group_by(pl.col("t_s") // 86400).agg(pl.col("requests").sum()).sort("t_s")["requests"].to_numpy()


def test_manifest_pins_every_servegen_client_and_burstgpt():
    entries = load_manifest(MANIFEST)
    per_source = {s: sum(e.source == s for e in entries) for s in {e.source for e in entries}}
    assert per_source == {"servegen/language/m-large": 162, "servegen/language/m-small": 43, "burstgpt": 1}
    assert all(e.repo == "azaj01/ServeGen" and e.path.endswith("-trace.csv") for e in entries if e.source != "burstgpt")


def test_real_mirror_matches_the_pins(tmp_path):
    files = trace_files(MANIFEST, tmp_path, TRACES_MIRROR)
    assert len(files.paths("servegen/language/m-large")) == 162 and len(files.paths("burstgpt")) == 1
    assert not any(tmp_path.joinpath("sources").rglob("*")), "a mirror read must not copy files into the cache"


def test_a_changed_trace_file_fails_its_checksum(mini_traces, tmp_path):
    manifest, mirror, _ = mini_traces
    broken = tmp_path / "mirror"
    for f in mirror.rglob("*.gz"):
        target = broken / f.relative_to(mirror)
        target.parent.mkdir(parents=True, exist_ok=True)
        content = gzip.decompress(f.read_bytes())
        target.write_bytes(gzip.compress(content.replace(b"0", b"1", 1) if "chunk-100" in f.name else content))
    with pytest.raises(ChecksumError, match="chunk-100-trace.csv"):
        trace_files(manifest, tmp_path / "cache", broken)


def test_servegen_loader_reads_14_days_of_600s_windows(mini_traces):
    windows = servegen_windows(mini_traces[2], SERVEGEN_POOLS[0], STEADY)
    assert windows.height == 2016 and windows["tenant"].unique().to_list() == ["m-large/chunk-100"]
    assert windows["t_s"].diff().drop_nulls().unique().to_list() == [600]
    assert windows["requests"].min() >= 0 and windows["requests"].sum() > 0


def test_burstgpt_loader_keeps_calls_models_and_failures(mini_traces):
    calls = burstgpt(mini_traces[2])
    assert calls.height == 3000 and set(calls["model"].unique()) == set(BURSTGPT_PRICED_AS)
    assert calls["t_s"].is_sorted() and calls["t_s"].max() < 86400
    assert calls["failed"].sum() == (calls["output_tokens"] == 0).sum() > 0


def test_forecast_usage_shape_bounds_and_method_on_a_real_tenant(mini_traces):
    days = _servegen_days(mini_traces[2], WEEKLY)
    out = forecast_usage(_daily(days[:14]), horizon=30, level=0.8)
    assert out.height == 30 and out["day"][0] == date(2025, 1, 20) and out["day"].diff().drop_nulls().unique()[0] == \
        timedelta(days=1)
    for m in METRICS:
        assert (out[f"{m}_lo"] >= 0).all() and (out[f"{m}_lo"] <= out[m]).all() and (out[m] <= out[f"{m}_hi"]).all()
        assert (out[f"{m}_hi"] > out[f"{m}_lo"]).any()
    assert out["method"][0].startswith("requests: AutoETS")


def test_week_ahead_intervals_cover_real_days_of_steady_and_weekly_tenants(mini_traces):
    """80% intervals from the first 7 days should hold most of the next 7 real days (the benchmark pools this
    over 205 tenants; here two, at a loose bar), and the point forecast should not be far off."""
    covered, total = 0, 0
    for path in (STEADY, WEEKLY):
        days = _servegen_days(mini_traces[2], path)
        f = forecast_series(days[:7], 7, 0.8)
        actual = days[7:]
        covered += int(((actual >= np.array(f.lo)) & (actual <= np.array(f.hi))).sum())
        total += len(actual)
        assert np.mean(np.abs(actual - f.mean)) < np.mean(actual)
    assert covered / total >= 0.6


def test_short_history_falls_back_and_says_so():
    for n in (1, 2, 3):
        out = forecast_usage(_daily([120, 80, 100][:n]), horizon=7)
        assert out["method"][0].count("short history") == 3
        assert (out["requests_lo"] < out["requests"]).all() and (out["requests"] < out["requests_hi"]).all()
        assert 50 < out["requests"][0] < 150


def test_no_usage_forecasts_zero():
    out = forecast_usage(_daily([0, 0, 0, 0, 0, 0, 0, 0]), horizon=5)
    assert out.select(pl.exclude("day", "method")).to_numpy().max() == 0 and "no usage" in out["method"][0]


def test_seasonal_naive_repeats_the_last_week():
    history = np.arange(1, 11, dtype=float)
    f = seasonal_naive(history, 9)
    assert f.mean == [4, 5, 6, 7, 8, 9, 10, 4, 5] and all(lo <= m <= hi for lo, m, hi in zip(f.lo, f.mean, f.hi))


@pytest.mark.parametrize("bad, message", [
    (lambda d: d.filter(pl.col("day") != pl.col("day").min() + timedelta(days=1)), "consecutive"),
    (lambda d: d.with_columns(pl.col("tokens") - 1e9), "'tokens' must be non-negative"),
    (lambda d: d.drop("spend_usd"), "lacks column"),
    (lambda d: d.head(0), "no rows"),
    (lambda d: d.with_columns(pl.col("day").cast(pl.Datetime)), "pl.Date"),
])
def test_bad_daily_input_is_named(bad, message):
    with pytest.raises(ValueError, match=message):
        forecast_usage(bad(_daily([5, 6, 7, 8])))


def test_forecast_usage_is_fast_once_imported():
    daily = _daily(100 + 40 * np.sin(np.arange(90) * 2 * np.pi / 7) + np.arange(90))
    forecast_usage(daily.head(10), horizon=3)
    started = time.perf_counter()
    forecast_usage(daily, horizon=30)
    assert time.perf_counter() - started < 1.0


@pytest.fixture(scope="module")
def call_log(mini_traces, tmp_path_factory):
    """A SQLite call log of BurstGPT's first 3,000 calls (tenant = model), spread over 4 days from 2024-03-01:
    calls at hour h of the trace's day 0 are logged on day (h % 4)."""
    from router_ml.pricing import cost_usd
    from router_ml.calllog.store import calls, metadata

    trace = burstgpt(mini_traces[2])
    url = f"sqlite:///{tmp_path_factory.mktemp('calls') / 'calls.db'}"
    engine = sa.create_engine(url)
    metadata.create_all(engine)
    start = datetime(2024, 3, 1, tzinfo=UTC)
    rows = []
    for i, r in enumerate(trace.iter_rows(named=True)):
        hour = int(r["t_s"] // 3600)
        ts = start + timedelta(days=hour % 4, seconds=r["t_s"] % 86400)
        rows.append({"call_id": f"{i:032x}", "prompt_id": str(i), "prompt": "p", "model": r["model"], "ts": ts,
                     "source": "trace", "task": "chat", "group_id": str(i), "flags": "[]", "tenant": r["model"],
                     "status": "error" if r["failed"] else "ok", "http_status": 200, "routed": False,
                     "input_tokens": r["input_tokens"], "output_tokens": r["output_tokens"],
                     "cost_usd": cost_usd(BURSTGPT_PRICED_AS[r["model"]], r["input_tokens"], r["output_tokens"])})
    with engine.begin() as conn:
        conn.execute(calls.insert(), rows)
    engine.dispose()
    expected = (trace.with_columns((pl.col("t_s") // 3600 % 4).cast(pl.Int64).alias("offset"))
                .group_by("model", "offset").agg(pl.len().alias("requests"),
                                                 (pl.col("input_tokens") + pl.col("output_tokens")).sum().alias("tokens")))
    return url, expected


def test_daily_usage_counts_every_call_per_tenant_and_day(call_log):
    url, expected = call_log
    usage = daily_usage(url)
    assert usage.columns == ["tenant", "day", "requests", "tokens", "spend_usd"]
    assert usage["tenant"].unique().sort().to_list() == ["ChatGPT", "GPT-4"]
    for r in expected.iter_rows(named=True):
        row = usage.filter((pl.col("tenant") == r["model"]) & (pl.col("day") == date(2024, 3, 1 + r["offset"])))
        assert row["requests"].item() == r["requests"] and row["tokens"].item() == r["tokens"]
    assert usage["spend_usd"].min() > 0
    only = daily_usage(url, tenant="GPT-4", days=2)
    assert only["tenant"].unique().to_list() == ["GPT-4"] and only["day"].to_list() == [date(2024, 3, 3),
                                                                                        date(2024, 3, 4)]


def test_daily_usage_fills_days_without_calls(tmp_path):
    from router_ml.calllog.store import calls, metadata

    url = f"sqlite:///{tmp_path / 'calls.db'}"
    engine = sa.create_engine(url)
    metadata.create_all(engine)
    base = {"prompt_id": "p", "prompt": "p", "model": "m", "source": "s", "task": "t", "group_id": "g",
            "flags": "[]", "status": "ok", "http_status": 200, "routed": False, "cost_usd": 0.5}
    with engine.begin() as conn:
        conn.execute(calls.insert(), [{**base, "call_id": "a", "tenant": "x", "ts": datetime(2024, 1, 1, 12)},
                                      {**base, "call_id": "b", "tenant": "x", "ts": datetime(2024, 1, 4, 1)},
                                      {**base, "call_id": "c", "tenant": "y", "ts": datetime(2024, 1, 3, 1)}])
    usage = daily_usage(engine)
    assert usage.filter(pl.col("tenant") == "x")["requests"].to_list() == [1, 0, 0, 1]
    assert usage.filter(pl.col("tenant") == "y")["day"].to_list() == [date(2024, 1, 3), date(2024, 1, 4)]
    assert daily_usage(engine, tenant="nobody").height == 0


def test_forecast_cli_on_a_call_log(call_log):
    from typer.testing import CliRunner

    from router_ml.cli import app

    url, _ = call_log
    runner = CliRunner()
    result = runner.invoke(app, ["forecast", "--store-url", url, "--json", "--horizon", "10", "--as-of", "2024-03-05"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert set(report["tenants"]) == {"ChatGPT", "GPT-4", "(all tenants)"}
    chatgpt = report["tenants"]["ChatGPT"]
    assert chatgpt["history_days"] == 4 and len(chatgpt["daily"]) == 10 and set(chatgpt["totals"]) == {"7", "10"}
    assert chatgpt["daily"][0]["day"] == "2024-03-05" and "short history" in chatgpt["method"]
    week = chatgpt["totals"]["7"]
    assert 0 <= week["requests_lo"] < week["requests"] < week["requests_hi"]
    assert week["requests"] == pytest.approx(sum(d["requests"] for d in chatgpt["daily"][:7]))
    both = report["tenants"]["(all tenants)"]["daily"][0]["requests"]
    assert both > chatgpt["daily"][0]["requests"]  # all tenants together
    today = runner.invoke(app, ["forecast", "--store-url", url, "--json"])  # from today: a long silence since
    assert json.loads(today.output)["tenants"]["ChatGPT"]["history_days"] > 365
    table = runner.invoke(app, ["forecast", "--store-url", url, "--tenant", "GPT-4", "--as-of", "2024-03-05"])
    assert table.exit_code == 0, table.output
    assert "GPT-4" in table.output and "ChatGPT" not in table.output and "short history" in table.output
    missing = runner.invoke(app, ["forecast", "--store-url", url, "--tenant", "nobody"])
    assert missing.exit_code == 1 and "no calls of tenant 'nobody'" in missing.output
