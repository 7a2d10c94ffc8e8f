"""Online quality loop benchmark: does the quality target hold on traffic the router never trained on?

Streams (each replayed in 20 random orders by router_ml.online.simulate):
- the modern pool (ZeroEval's models that answered every benchmark): each benchmark held out in turn, routed by
  the matrix-factorization router trained (optuna on validation) on the other two, the reference being the best
  single model on validation, static calibration being today's policy calibrated on validation to keep 95%;
- MMLU-Pro's 13 models: a quarter of its questions (by duplicate group), routed by a matrix-factorization router
  trained on the rest (a stream of thousands of calls, where the shadow share is judged);
- RouterBench's test split, per task and all tasks as one stream, routed by the default bundle (its 11 models,
  reference GPT-4).

The loop's settings (sampling rate, labels before a level counts as proven, levels graded per judged call,
confidence, how many levels a move may skip) are chosen on the VALIDATION streams (the modern pool's: prompts of
the benchmarks the router trained on; MMLU-Pro's: questions held out from its router's fit):
the setting with the best mean net cost cut among those whose target held in at least 95% of the orders of every
validation stream (a margin for the shift to the test streams), with a noiseless and a 10%-noisy judge. The cost
pacer (router_ml.online.pacer) then replays the test streams of more than 900 calls with cost targets (a share of
what always serving the reference costs over the stream): the spend against the target, and the quality it leaves.
Writes benchmarks/results/online_quality.json and online_quality.png. Run with `make bench`.
"""

from __future__ import annotations

import dataclasses
import json
import sys
import time
from pathlib import Path

import numpy as np
import polars as pl

from router_ml import tracks
from router_ml.bundle import json_safe, load_bundle
from router_ml.config import PROJECT_ROOT, get_settings
from router_ml.embed import StaticEncoder, build_static_encoder
from router_ml.features import PromptFeaturizer
from router_ml.online.simulate import Settings, Stream, simulate, stream_from_outcomes
from router_ml.plots import plot_operating_point
from router_ml.routers.policy import apply, best_single_model, calibrate
from router_ml.split import group_holdout
from router_ml.train import build_dataset, complete_rows, fit_cost, make_router, search

RESULTS = PROJECT_ROOT / "benchmarks" / "results"
DEFAULT_BUNDLE = PROJECT_ROOT / "models" / "default"
ORDERS = 20
FLIPS = (0.0, 0.1)
GRID = [{"sample_rate": rate, "min_labels": labels, "probe_levels": probe, "confidence": confidence, "max_step": step}
        for rate in (0.05, 0.1) for labels in (20, 40) for probe in (3, 9) for confidence in (0.7, 0.8, 0.9)
        for step in (1, 3)]
MMLU_PRO_TEST = 0.25  # the share of MMLU-Pro's questions (by duplicate group) replayed as the test stream
HELD = 0.95  # the share of orders a validation stream must hold the target in: above the 90% asked on test
COST_TARGETS = (0.5, 0.3)  # shares of the reference's cost over the stream, for the pacer's replays
PACED_CALLS = 900  # streams at least this long are paced


def _stream(name: str, dataset, predicted_quality, predicted_cost, static_choice=None) -> Stream:
    return Stream(name, dataset.matrix.models, predicted_quality, predicted_cost, dataset.matrix.quality,
                  dataset.matrix.cost, static_choice)


def modern_pool_streams(outcomes: pl.DataFrame, featurize, n_trials: int = 6) -> list[tuple[Stream, Stream, str]]:
    """(validation stream, test stream, reference) per held-out benchmark of the modern pool."""
    _, data = tracks.modern_pool_data(outcomes, featurize)
    streams = []
    for task, fit, val, test in tracks.held_out_splits(data):
        val, test = complete_rows(val), complete_rows(test)
        best, _ = search("mf", fit, val, n_trials, 0)
        router = make_router("mf", **best).fit(fit.X, fit.matrix.quality)
        cost = fit_cost(fit)
        val_q, test_q = router.predict(val.X), router.predict(test.X)
        val_c, test_c = cost.predict(val.input_tokens), cost.predict(test.input_tokens)
        calibration = calibrate(val_q, val_c, val.matrix.quality, val.matrix.cost, "quality_share", 0.95)
        reference = val.matrix.models[best_single_model(val.matrix.quality, val.matrix.cost)]
        streams.append((_stream(f"modern pool validation (for {task})", val, val_q, val_c),
                        _stream(f"modern pool: {task} held out", test, test_q, test_c,
                                apply(calibration, test_q, test_c)), reference))
    return streams


def mmlu_pro_streams(outcomes: pl.DataFrame, featurize, n_trials: int = 6) -> tuple[Stream, Stream, str]:
    """(validation stream, test stream, reference) on MMLU-Pro's 13 models: a stream long enough to judge the
    shadow share on (thousands of calls), routed by a matrix-factorization router trained on other MMLU-Pro
    questions (held out by duplicate group: a tenant whose traffic the router has seen the like of)."""
    rows = outcomes.filter((pl.col("source") == "mmlu_pro") & pl.col("quality").is_not_null())
    data = complete_rows(build_dataset(rows, sorted(rows["model"].unique().to_list()), featurize))
    rest, test_idx = group_holdout(data.groups, MMLU_PRO_TEST, seed=2)
    train, test = data.take(rest), data.take(test_idx)
    fit_idx, val_idx = group_holdout(train.groups, 0.2, seed=1)
    fit, val = train.take(fit_idx), train.take(val_idx)
    best, _ = search("mf", fit, val, n_trials, 0)
    router = make_router("mf", **best).fit(fit.X, fit.matrix.quality)
    cost = fit_cost(fit)
    val_q, test_q = router.predict(val.X), router.predict(test.X)
    val_c, test_c = cost.predict(val.input_tokens), cost.predict(test.input_tokens)
    calibration = calibrate(val_q, val_c, val.matrix.quality, val.matrix.cost, "quality_share", 0.95)
    reference = val.matrix.models[best_single_model(val.matrix.quality, val.matrix.cost)]
    return (_stream("mmlu-pro validation", val, val_q, val_c),
            _stream("mmlu-pro: held-out questions", test, test_q, test_c, apply(calibration, test_q, test_c)),
            reference)


def routerbench_streams(outcomes: pl.DataFrame) -> list[tuple[Stream, str]]:
    """RouterBench's test split per task and as a whole (one tenant's mixed traffic), routed by the default
    bundle, reference GPT-4."""
    bundle = load_bundle(DEFAULT_BUNDLE)
    rows = outcomes.filter((pl.col("source") == "routerbench") & (pl.col("split") == "test"))
    per_task = [(rows.filter(pl.col("task") == task), f"routerbench: {task} (test)")
                for task in sorted(rows["task"].unique().to_list())]
    return [(stream_from_outcomes(part, bundle, name), "gpt-4-1106-preview")
            for part, name in [*per_task, (rows, "routerbench: all tasks (test)")]]


def choose_settings(validation: list[tuple[Stream, str]]) -> tuple[Settings, list[dict]]:
    """The grid setting with the best mean net cost cut among those whose target held in at least :data:`HELD` of
    the orders of every validation stream at every judge noise; the first one when none did."""
    tried = []
    for point in GRID:
        reports = [simulate(stream, reference, Settings(**point, flip_rate=flip), ORDERS)
                   for stream, reference in validation for flip in FLIPS]
        tried.append({**point, "held_everywhere": all(r["held_rate"] >= HELD for r in reports),
                      "mean_net_cost_cut": float(np.mean([r["median"]["net_cost_cut"] for r in reports]))})
        print(f"  validation {point}: held everywhere {tried[-1]['held_everywhere']}, "
              f"mean net cut {tried[-1]['mean_net_cost_cut']:.1%}", flush=True)
    passing = [t for t in tried if t["held_everywhere"]] or tried[:1]
    chosen = max(passing, key=lambda t: t["mean_net_cost_cut"])
    return Settings(**{k: chosen[k] for k in GRID[0]}), tried


def main() -> None:
    started = time.perf_counter()
    outcomes_path = get_settings().outcomes_path
    if not Path(outcomes_path).is_file():
        sys.exit(f"no outcomes table at {outcomes_path}: run `make run` (router-ml datasets prepare) first")
    outcomes = pl.read_parquet(outcomes_path)
    static_dir = get_settings().static_encoder
    encoder = StaticEncoder(static_dir) if (static_dir / "model.safetensors").is_file() else \
        build_static_encoder(static_dir)
    featurize = PromptFeaturizer(encoder.encode).transform
    pool = [*modern_pool_streams(outcomes, featurize), mmlu_pro_streams(outcomes, featurize)]
    print(f"modern pool and MMLU-Pro streams in {time.perf_counter() - started:.0f} s", flush=True)
    settings, tried = choose_settings([(val, reference) for val, _, reference in pool])
    print(f"chosen on validation: {settings}", flush=True)
    streams = [(test, reference) for _, test, reference in pool] + routerbench_streams(outcomes)
    reports = []
    for stream, reference in streams:
        for flip in FLIPS:
            report = simulate(stream, reference, dataclasses.replace(settings, flip_rate=flip), ORDERS)
            reports.append(report)
            median = report["median"]
            static = report["baselines"].get("static calibration")
            print(f"{stream.name} ({len(stream)} calls, judge noise {flip:.0%}): held {report['held_rate']:.0%}, "
                  f"kept {median['quality_share']:.1%} (min {report['min_quality_share']:.1%}), net cut "
                  f"{median['net_cost_cut']:.1%}, shadow {median['shadow_share']:.1%}, labels {median['labels']:.0f}"
                  + (f"; static calibration kept {static['quality_share']:.1%} at {static['cost_cut']:.1%} cut"
                     if static else ""), flush=True)
    paced = []
    for stream, reference in streams:
        for cost_target in COST_TARGETS if len(stream) >= PACED_CALLS else ():
            report = simulate(stream, reference, dataclasses.replace(settings, cost_target=cost_target), ORDERS)
            paced.append(report)
            spend = [r["spend_of_cost_target"] for r in report["runs"]]
            print(f"{stream.name}, cost target {cost_target:.0%} of the reference's: spent {np.median(spend):.0%} "
                  f"of it (range {min(spend):.0%}-{max(spend):.0%}), kept {report['median']['quality_share']:.1%} "
                  f"(min {report['min_quality_share']:.1%})", flush=True)
    RESULTS.mkdir(parents=True, exist_ok=True)
    png = plot_operating_point(RESULTS / "online_quality.png", [r for r in reports if r["flip_rate"] == 0.0])
    result = {"benchmark": "online_quality", "orders": ORDERS, "settings": dataclasses.asdict(settings),
              "validation_grid": tried, "streams": [{k: v for k, v in r.items() if k != "level_trace"}
                                                    for r in reports],
              "paced": [{k: v for k, v in r.items() if k != "level_trace"} for r in paced],
              "plot": str(png.relative_to(PROJECT_ROOT)), "runtime_s": round(time.perf_counter() - started, 1)}
    (RESULTS / "online_quality.json").write_text(json.dumps(json_safe(result), indent=1) + "\n")
    print(f"online quality benchmark: {result['runtime_s']} s -> {RESULTS / 'online_quality.json'}")


if __name__ == "__main__":
    main()
