"""Usage forecasts (router_ml.forecast) against seasonal-naive, backtested on real per-tenant traces.

Data (datasets/traces.tsv; ROUTER_ML_TRACES_MIRROR or a download): ServeGen's 205 language clients (m-large,
m-small; request counts in 600 s windows over 14 days) and BurstGPT's first 7 days (one row per call; per model,
ChatGPT and GPT-4: requests, tokens, and spend priced as gpt-3.5-turbo-0125 and gpt-4-0314). Every method sees a
series' daily totals up to the forecast origin (hourly models: hourly totals, summed back to days) and
forecasts the following days. Windows (day d = [24d, 24d + 24) h from the trace's start):

- validation (settings are chosen here): ServeGen origin day 7, days 7-9; BurstGPT origin day 4, day 4;
- test (reported, never tuned on): ServeGen origin day 10, days 10-13; BurstGPT origin day 5, days 5-6;
- week ahead (ServeGen origin day 7, days 7-13): the week-ahead question of the CLI; overlaps validation;
- fresh gateway (ServeGen origin day 3, days 3-6): three days of history, the short-history fallback.

Metrics per series: MASE = mean |actual - forecast| / mean |day-to-day change| of the history (the in-sample
error of the naive forecast: with 3-10 days of history the weekly seasonal-naive has no in-sample error to
scale by); series with a flat history (scale 0) are left out and counted. Coverage: share of forecast days whose
actual lies in the 80% interval (pooled over series and days), with the mean interval width in the same scale
units. ServeGen aggregates: median MASE, share of tenants with lower MASE than seasonal-naive, coverage.

    .venv/bin/python benchmarks/forecast.py

Writes benchmarks/results/forecast.json and forecast.png (about a minute on 2 cores).
"""

from __future__ import annotations

import json
import time
import warnings

import numpy as np
import polars as pl
from rich.progress import Progress

from router_ml.config import PROJECT_ROOT, get_settings
from router_ml.data.traces import BURSTGPT_PRICED_AS, burstgpt, servegen, trace_files
from router_ml.forecast import MIN_DAYS_MODEL, OFFSET_SHARE, SeriesForecast, forecast_series, seasonal_naive
from router_ml.pricing import price_of

RESULTS = PROJECT_ROOT / "benchmarks" / "results"
LEVEL = 0.8
OFFSET_SHARES = (0.001, 0.01, 0.1)
WINDOWS = {  # name: {dataset: (origin day, horizon days)}
    "validation": {"servegen": (7, 3), "burstgpt": (4, 1)},
    "test": {"servegen": (10, 4), "burstgpt": (5, 2)},
    "week_ahead": {"servegen": (7, 7)},
    "fresh_gateway": {"servegen": (3, 4)},
}


def _statsforecast(model, history, horizon: int) -> SeriesForecast:
    out = model.forecast(y=np.asarray(history, float), h=horizon, level=[int(100 * LEVEL)])
    return SeriesForecast(*(np.maximum(out[k], 0) for k in ("mean", "lo-80", "hi-80")), type(model).__name__)


def _hourly(model_factory):
    """A model of the hourly series, its hourly forecasts and bounds summed to days (summed bounds assume the
    hours' errors move together: an upper bound on the daily interval's width)."""
    def run(daily, hourly, horizon):
        f = _statsforecast(model_factory(), hourly, 24 * horizon)
        return SeriesForecast(*(np.asarray(v).reshape(horizon, 24).sum(1) for v in (f.mean, f.lo, f.hi)), f.method)
    return run


def _with_offset(share: float):
    return lambda daily, hourly, horizon: forecast_series(daily, horizon, LEVEL, offset_share=share)


def methods(dataset: str, origin: int) -> dict:
    """The methods compared on a window. The statsforecast models of the raw daily series need a week of history
    (AutoETS refuses "tiny datasets"); the hourly ones need ServeGen's hourly detail."""
    from statsforecast.models import MSTL, AutoETS, AutoTheta

    out = {
        "seasonal_naive": lambda d, h, n: seasonal_naive(d, n, LEVEL),
        "chosen: AutoETS on log(y + c)": lambda d, h, n: forecast_series(d, n, LEVEL),
        **{f"AutoETS on log(y + c), c = {s} x mean": _with_offset(s) for s in OFFSET_SHARES if s != OFFSET_SHARE},
    }
    if origin < MIN_DAYS_MODEL:
        return out
    out["AutoETS on raw counts"] = lambda d, h, n: _statsforecast(AutoETS(season_length=1), d, n)
    out["AutoTheta on raw counts"] = lambda d, h, n: _statsforecast(AutoTheta(season_length=1), d, n)
    if dataset == "servegen":
        out["hourly AutoETS (season 24), summed"] = _hourly(lambda: AutoETS(season_length=24))
        out["hourly MSTL (season 24), summed"] = _hourly(lambda: MSTL(season_length=[24]))
    return out


def score(history, actual, f: SeriesForecast) -> dict:
    history, actual = np.asarray(history, float), np.asarray(actual, float)
    scale = float(np.mean(np.abs(np.diff(history)))) if len(history) > 1 else 0.0
    mean, lo, hi = (np.asarray(v, float) for v in (f.mean, f.lo, f.hi))
    return {"mase": float(np.mean(np.abs(actual - mean)) / scale) if scale > 0 else None,
            "covered": int(((actual >= lo) & (actual <= hi)).sum()), "days": len(actual),
            "width": float(np.mean(hi - lo)) / scale if scale > 0 else None}


def aggregate(scores: list[dict], baseline: list[dict]) -> dict:
    pairs = [(s["mase"], b["mase"]) for s, b in zip(scores, baseline, strict=True) if s["mase"] is not None]
    mase = np.array([p[0] for p in pairs])
    return {"series": len(scores), "series_scored": len(pairs), "series_flat_history": len(scores) - len(pairs),
            "median_mase": float(np.median(mase)), "mean_mase": float(np.mean(mase)),
            "share_beating_seasonal_naive": float(np.mean([a < b for a, b in pairs])),
            "share_tied_with_seasonal_naive": float(np.mean([a == b for a, b in pairs])),
            "coverage_80": sum(s["covered"] for s in scores) / sum(s["days"] for s in scores),
            "median_width_80": float(np.median([s["width"] for s in scores if s["width"] is not None]))}


def servegen_series(files) -> dict[str, np.ndarray]:
    """tenant -> hourly requests over the 14 days."""
    hourly = (servegen(files).group_by("tenant", (pl.col("t_s") // 3600).alias("hour"))
              .agg(pl.col("requests").sum()).sort("tenant", "hour"))
    return {t: g["requests"].to_numpy() for (t,), g in hourly.group_by("tenant", maintain_order=True)}


def burstgpt_series(files) -> dict[str, np.ndarray]:
    """'<model> <metric>' -> hourly totals over the 7 days (metric: requests, tokens, spend_usd)."""
    calls = burstgpt(files).with_columns((pl.col("t_s") // 3600).cast(pl.Int64).alias("hour"))
    out = {}
    for (model,), part in calls.group_by("model", maintain_order=True):
        price = price_of(BURSTGPT_PRICED_AS[model])
        hours = (part.group_by("hour").agg(pl.len().alias("requests"),
                                           (pl.col("input_tokens") + pl.col("output_tokens")).sum().alias("tokens"),
                                           ((pl.col("input_tokens") * price.input_usd_per_mtok
                                             + pl.col("output_tokens") * price.output_usd_per_mtok) / 1e6)
                                           .sum().alias("spend_usd"))
                 .join(pl.DataFrame({"hour": range(7 * 24)}), on="hour", how="right").fill_null(0).sort("hour"))
        for metric in ("requests", "tokens", "spend_usd"):
            out[f"{model} {metric}"] = hours[metric].to_numpy().astype(float)
    return out


def backtest(series: dict[str, np.ndarray], origin: int, horizon: int, runners: dict, bar, task) -> dict:
    scores: dict[str, list[dict]] = {name: [] for name in runners}
    forecasts: dict[str, dict[str, list]] = {name: {} for name in runners}
    for key, hourly in series.items():
        daily = hourly.reshape(-1, 24).sum(1)
        history, actual = daily[:origin], daily[origin:origin + horizon]
        for name, run in runners.items():
            f = run(history, hourly[:24 * origin], horizon)
            scores[name].append(score(history, actual, f))
            forecasts[name][key] = [np.asarray(v, float).tolist() for v in (f.mean, f.lo, f.hi)]
        bar.advance(task)
    return {"scores": scores, "forecasts": forecasts}


def plot(series, week, path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    chosen, base = "chosen: AutoETS on log(y + c)", "seasonal_naive"
    fig, axes = plt.subplots(1, 2, figsize=(13, 4.8))
    a = np.array([s["mase"] if s["mase"] is not None else np.nan for s in week["scores"][chosen]])
    b = np.array([s["mase"] if s["mase"] is not None else np.nan for s in week["scores"][base]])
    ax = axes[0]
    ax.scatter(b, a, s=10, alpha=0.6)
    lim = [np.nanmin([a, b]) * 0.8, np.nanmax([a, b]) * 1.2]
    ax.plot(lim, lim, "k--", lw=1)
    ax.set(xscale="log", yscale="log", xlabel="seasonal-naive MASE", ylabel="AutoETS on log(y + c) MASE",
           title=f"ServeGen, week ahead: {np.mean((a < b)[np.isfinite(a)]):.0%} of scored tenants below the diagonal")
    tenant = max(series, key=lambda t: series[t].sum())
    daily = series[tenant].reshape(-1, 24).sum(1)
    ax = axes[1]
    ax.plot(range(len(daily)), daily, "k.-", label="actual")
    days = np.arange(7, 14)
    for name, colour in ((chosen, "tab:blue"), (base, "tab:orange")):
        mean, lo, hi = week["forecasts"][name][tenant]
        ax.plot(days, mean, color=colour, label=name.removeprefix("chosen: "))
        ax.fill_between(days, lo, hi, color=colour, alpha=0.2)
    ax.axvline(6.5, color="grey", lw=0.8)
    ax.set(xlabel="day", ylabel="requests", title=f"{tenant} (largest client): forecast from day 7, 80% intervals")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    started = time.perf_counter()
    warnings.filterwarnings("ignore")
    settings = get_settings()
    with Progress() as bar:
        task = bar.add_task("verify traces" if settings.traces_mirror else "download traces")
        files = trace_files(settings.traces_manifest, settings.cache_dir, settings.traces_mirror,
                            on_file=lambda entry: bar.advance(task))
        data = {"servegen": servegen_series(files), "burstgpt": burstgpt_series(files)}
        report: dict = {"level": LEVEL, "windows": {}, "series": {k: len(v) for k, v in data.items()}}
        week = None
        for window, per_dataset in WINDOWS.items():
            for dataset, (origin, horizon) in per_dataset.items():
                runners = methods(dataset, origin)
                task = bar.add_task(f"{window} {dataset}", total=len(data[dataset]))
                result = backtest(data[dataset], origin, horizon, runners, bar, task)
                base = result["scores"]["seasonal_naive"]
                entry = {"origin_day": origin, "horizon_days": horizon,
                         "methods": {n: aggregate(s, base) for n, s in result["scores"].items()}}
                if dataset == "burstgpt":
                    entry["per_series_mase"] = {n: {k: s["mase"] for k, s in zip(data[dataset], sc, strict=True)}
                                                for n, sc in result["scores"].items()}
                report["windows"].setdefault(window, {})[dataset] = entry
                if window == "week_ahead":
                    week = result
    report["seconds"] = round(time.perf_counter() - started, 1)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "forecast.json").write_text(json.dumps(report, indent=2) + "\n")
    plot(data["servegen"], week, RESULTS / "forecast.png")
    for window, per_dataset in report["windows"].items():
        for dataset, entry in per_dataset.items():
            print(f"\n{window} / {dataset}: origin day {entry['origin_day']}, {entry['horizon_days']} day(s) ahead")
            print(f"  {'method':<44} {'median MASE':>11} {'mean MASE':>10} {'beats SN':>9} {'cov80':>6} {'width':>6}")
            for name, m in entry["methods"].items():
                print(f"  {name:<44} {m['median_mase']:>11.3f} {m['mean_mase']:>10.3f} "
                      f"{m['share_beating_seasonal_naive']:>9.2f} {m['coverage_80']:>6.2f} {m['median_width_80']:>6.2f}")
    print(f"\nwrote {RESULTS / 'forecast.json'} and forecast.png ({report['seconds']} s)")


if __name__ == "__main__":
    main()
