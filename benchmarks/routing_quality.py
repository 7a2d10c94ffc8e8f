"""Routing quality benchmark: the RouteLLM, own-logs, RouterBench and modern-pool tracks.

Reads the outcomes table (`make run` builds it), embeds every prompt once with the
static encoder, runs each track of `router_ml.tracks` and writes
benchmarks/results/routing_quality.json, benchmarks/results/REPORT.md and PNG plots.
Run with `make bench` (which also runs the decision-latency benchmark).
"""

from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import polars as pl

from router_ml import tracks
from router_ml.bundle import json_safe
from router_ml.config import PROJECT_ROOT, get_settings
from router_ml.embed import StaticEncoder, build_static_encoder
from router_ml.features import PromptFeaturizer
from router_ml.plots import plot_cost_quality, plot_pgr

RESULTS = PROJECT_ROOT / "benchmarks" / "results"
COLUMNS = ["prompt_id", "prompt", "model", "quality", "source", "task", "group_id", "input_tokens", "cost_usd", "split"]


def _pct(value: float) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return "never reached" if math.isinf(value) else f"{100 * value:.1f}%"


def _num(value: float, digits: int = 3) -> str:
    return "n/a" if value is None or (isinstance(value, float) and not math.isfinite(value)) else f"{value:.{digits}f}"


def routellm_section(cross: dict, own: dict) -> list[str]:
    lines = ["## RouteLLM track: gpt-4-1106 vs Mixtral", "",
             "Trained on the four other sources only (no RouteLLM prompt and no duplicate of one). "
             f"Setting chosen on validation ({cross['validation']}): {cross['chosen']}.", "",
             "| benchmark | router | APGR | CPT(50%) | CPT(80%) |", "|---|---|---|---|---|"]
    for task, routers in cross["tasks"].items():
        if "skipped" in routers:
            lines.append(f"| {task} | skipped: {routers['skipped']} | | | |")
            continue
        for name, r in routers.items():
            ci = f" [{r['apgr_ci95'][0]:.2f}, {r['apgr_ci95'][1]:.2f}]" if "apgr_ci95" in r else ""
            lines.append(f"| {task} | {name} | {_num(r.get('apgr'))}{ci} | {_pct(r.get('cpt50'))} | "
                         f"{_pct(r.get('cpt80'))} |")
    lines += ["", "### Own-logs variant: 5-fold by duplicate group within each benchmark", "",
              "| benchmark | router | APGR [95% bootstrap] | CPT(50%) | CPT(80%) |", "|---|---|---|---|---|"]
    for task, routers in own.items():
        if "skipped" in routers:
            lines.append(f"| {task} | skipped: {routers['skipped']} | | | |")
            continue
        for name, r in routers.items():
            if not isinstance(r, dict):
                continue
            lines.append(f"| {task} | {name} | {_num(r['apgr'])} [{r['apgr_ci95'][0]:.2f}, {r['apgr_ci95'][1]:.2f}] | "
                         f"{_pct(r['cpt50'])} | {_pct(r['cpt80'])} |")
    return lines + [""]


def pool_table(result: dict) -> list[str]:
    lines = ["| router | val. gap closed | test AIQ | gap closed | savings at 95% (hull) | calibrated: quality share "
             "| calibrated: cost cut vs best | target held |", "|---|---|---|---|---|---|---|---|"]
    for name, r in result["routers"].items():
        t, c = r["test"], r["calibrated"]
        cut = 1 - c["mean_cost"] / t["best_model_cost"]
        star = " (headline)" if name == result["headline"] else ""
        lines.append(f"| {name}{star} | {_pct(r['validation_gap_closed'])} | {_num(t['aiq'], 4)} | "
                     f"{_pct(t['gap_closed'])} | {_pct(t['savings_at_95'])} | {_pct(c['quality_share'])} | "
                     f"{_pct(cut)} | {'yes' if c['met'] else 'no'} |")
    lines += ["", f"Calibration targets of the headline router ({result['headline']}), set on validation, checked on test:",
              "", "| target | validation | test | held on test | test quality share | test cost per 1k calls |",
              "|---|---|---|---|---|---|"]
    for t in result["targets"]:
        shown = {"quality_share": f"quality >= {t['target']:.0%} of the best model",
                 "strong_share": f"<= {t['target']:.0%} of calls to the strongest model",
                 "cost_per_1k": f"<= ${t['target']:.3f} per 1k calls"}[t["kind"]]
        fmt = (lambda v: f"${v:.3f}") if t["kind"] == "cost_per_1k" else _pct
        lines.append(f"| {shown} | {fmt(t['validation'])} | {fmt(t['test'])} | {'yes' if t['test_met'] else 'no'} | "
                     f"{_pct(t['test_quality_share'])} | ${t['test_cost_per_1k']:.3f} |")
    any_router = next(iter(result["routers"].values()))["test"]
    lines += ["", f"Zero router AIQ {_num(any_router['zero_aiq'], 4)}, oracle AIQ {_num(any_router['oracle_aiq'], 4)}, "
              f"random AIQ {_num(any_router['random_aiq'], 4)}; best single model "
              f"{any_router.get('best_model_name')} at {_num(any_router['best_model_quality'])} quality, "
              f"${1000 * any_router['best_model_cost']:.3f} per 1k calls; oracle savings at 95%: "
              f"{_pct(any_router['oracle_savings_at_95'])}, zero router: {_pct(any_router['zero_savings_at_95'])}.", ""]
    return lines


def main() -> None:
    started = time.perf_counter()
    outcomes_path = get_settings().outcomes_path
    if not Path(outcomes_path).is_file():
        sys.exit(f"no outcomes table at {outcomes_path}: run `make run` (router-ml datasets prepare) first")
    outcomes = pl.read_parquet(outcomes_path, columns=COLUMNS)
    static_dir = get_settings().static_encoder
    if not (static_dir / "model.safetensors").is_file():
        build_static_encoder(static_dir)
    encoder = StaticEncoder(static_dir)
    featurize = PromptFeaturizer(encoder.encode).transform
    features = tracks.PromptFeatures.of(outcomes, featurize)
    print(f"features of {len(features.index):,} prompts in {time.perf_counter() - started:.0f} s", flush=True)

    timings, results = {}, {}
    for name, run in [("routellm_cross_source", lambda: tracks.routellm_cross_source(outcomes, features)),
                      ("routellm_own_logs", lambda: tracks.routellm_own_logs(outcomes, features)),
                      ("routerbench", lambda: tracks.routerbench(outcomes, featurize)),
                      ("modern_pool", lambda: tracks.modern_pool(outcomes, featurize))]:
        t = time.perf_counter()
        results[name] = run()
        timings[name] = round(time.perf_counter() - t, 1)
        print(f"{name}: {timings[name]} s", flush=True)

    RESULTS.mkdir(parents=True, exist_ok=True)
    pngs = write_plots(results)
    report = {"benchmark": "routing_quality", "encoder": encoder.encoder_id,
              "outcomes_rows": outcomes.height, "track_seconds": timings, "results": results, "plots": pngs,
              "runtime_s": round(time.perf_counter() - started, 1)}
    (RESULTS / "routing_quality.json").write_text(json.dumps(json_safe(report), indent=1, allow_nan=False) + "\n")
    (RESULTS / "REPORT.md").write_text("\n".join(markdown(report)) + "\n")
    print(f"routing quality benchmark: {report['runtime_s']} s -> {RESULTS / 'REPORT.md'}")


def write_plots(results: dict) -> list[str]:
    written = []
    for task, routers in results["routellm_cross_source"]["tasks"].items():
        if "skipped" in routers:
            continue
        curves = {name: (np.linspace(0, 1, len(r["pgr"])), r["pgr"]) for name, r in routers.items() if "pgr" in r}
        path = RESULTS / f"routellm_pgr_{task}.png"
        plot_pgr(path, curves, f"RouteLLM {task}: gpt-4-1106 vs Mixtral (trained on other sources)")
        written.append(path.name)
    for name, result in [("routerbench", results["routerbench"])] + [
            (f"modern_pool_{task}", r) for task, r in results["modern_pool"]["held_out"].items()] + [
            ("modern_pool_within", results["modern_pool"]["within"])]:
        path = RESULTS / f"{name}_cost_quality.png"
        curves = {k: (r["curve"]["costs"], r["curve"]["qualities"]) for k, r in result["routers"].items()}
        plot_cost_quality(path, curves, result["singles"], name.replace("_", " "), oracle=result["oracle"])
        written.append(path.name)
    return written


def markdown(report: dict) -> list[str]:
    r = report["results"]
    lines = ["# router-ml routing quality benchmark", "",
             f"Produced by `make bench` (`benchmarks/routing_quality.py`) in {report['runtime_s']} s on "
             f"{report['outcomes_rows']:,} outcomes; prompt features from `{report['encoder']}` (head and tail views "
             "plus surface statistics). Every hyper-parameter, blend weight and policy setting is chosen on "
             "validation data split from the training data; the figures below are test results.", ""]
    lines += routellm_section(r["routellm_cross_source"], r["routellm_own_logs"])
    rb = r["routerbench"]
    lines += ["## RouterBench track: 11 models, train split -> test split, real USD", "",
              f"GPT-4 on the test split: quality {_num(rb['gpt4']['quality'])} at "
              f"${1000 * rb['gpt4']['cost']:.3f} per 1k calls. Policy calibrated on validation to keep 95% of the best "
              "single model's quality.", ""]
    lines += pool_table(rb)
    lines += ["| router | cost at GPT-4's quality (hull) per 1k calls |", "|---|---|"]
    for name, entry in rb["routers"].items():
        lines.append(f"| {name} | {_money(entry['test']['cost_at_gpt4_quality'])} |")
    lines += ["", "![RouterBench](routerbench_cost_quality.png)", "",
              "## Modern pool: ZeroEval models, each benchmark held out in turn", "",
              f"{len(r['modern_pool']['models'])} models that answered all three benchmarks.", ""]
    for task, result in r["modern_pool"]["held_out"].items():
        lines += [f"### held out: {task}", ""] + pool_table(result) + [f"![{task}](modern_pool_{task}_cost_quality.png)", ""]
    lines += ["### Within the three benchmarks (own-logs case: 25% of duplicate groups held out)", ""]
    lines += pool_table(r["modern_pool"]["within"]) + ["![within](modern_pool_within_cost_quality.png)", ""]
    lines += ["PGR plots: " + ", ".join(f"![{p}]({p})" for p in report["plots"] if p.startswith("routellm")), ""]
    return lines


def _money(value: float) -> str:
    return "never reached" if not math.isfinite(value) else f"${1000 * value:.3f}"


if __name__ == "__main__":
    main()
