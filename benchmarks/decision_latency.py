"""Routing decision latency in-process: one prompt at a time, encoder + predictor + cost policy.

Also loads the default bundle (models/default) and times the decision path the gateway runs (Gateway.plan), and
what the online quality loop adds to it (a tenant at its operating point; a call the shadow judge samples).

Trains a kNN quality router on RouteLLM's MMLU and GSM8K prompts (gpt-4-1106 vs
Mixtral, real outcomes) and times `route(prompt)` on held-out prompts, per encoder.
Writes benchmarks/results/decision_latency.json. Run with `make bench`.
"""

from __future__ import annotations

import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import polars as pl

from router_ml.config import PROJECT_ROOT, get_settings
from router_ml.data.importers import routellm
from router_ml.embed import EmbeddingCache, MiniLMEncoder, StaticEncoder, build_static_encoder, embed_cached
from router_ml.label import outcome_matrix
from router_ml.routers import KNNQualityRouter, choose
from router_ml.split import group_holdout

RESULTS = PROJECT_ROOT / "benchmarks" / "results"
STATIC = PROJECT_ROOT / "models" / "minilm-static"
DEFAULT_BUNDLE = PROJECT_ROOT / "models" / "default"
CALLS = {"minilm-l6-v2": 300, "minilm-static-256": 3000}
REFERENCE = "gpt-4-1106-preview"  # the default bundle's strongest model: a steered tenant's reference


def _matrix():
    outcomes_path = get_settings().outcomes_path
    if not Path(outcomes_path).is_file():
        sys.exit(f"no outcomes table at {outcomes_path}: run `make run` (router-ml datasets prepare) first")
    rows = pl.read_parquet(outcomes_path).filter((pl.col("source") == "routellm")
                                                & pl.col("task").is_in(["mmlu", "gsm8k"]))
    return outcome_matrix(rows, list(routellm.MODELS)).complete()


def measure(encoder, matrix, calls: int) -> dict:
    prompts = matrix.prompts["prompt"].to_list()
    train, held = group_holdout(matrix.prompts["group_id"].to_list(), 0.1, seed=0)
    cache = EmbeddingCache(get_settings().cache_dir / "embeddings", encoder.encoder_id)
    X = embed_cached([prompts[i] for i in train], encoder, cache)
    router = KNNQualityRouter(n_neighbors=50).fit(X, matrix.quality[train])
    cost = matrix.cost[train].mean(axis=0, keepdims=True)
    lam = 0.0

    def route(prompt: str) -> int:
        return int(choose(router.predict(encoder.encode([prompt])), cost, lam)[0])

    for i in held[:20]:  # warm up
        route(prompts[i])
    timings = []
    for i in held[:calls]:
        started = time.perf_counter()
        route(prompts[i])
        timings.append((time.perf_counter() - started) * 1000)
    timings = np.array(timings)
    return {"encoder": encoder.encoder_id, "calls": len(timings), "train_prompts": len(train),
            "p50_ms": round(float(np.percentile(timings, 50)), 3), "p99_ms": round(float(np.percentile(timings, 99)), 3),
            "mean_ms": round(float(timings.mean()), 3)}


def measure_bundle(bundle_dir, prompts: list[str], calls: int) -> dict:
    """One decision as the gateway makes it for ``router-ml/auto``: load the bundle, then per prompt
    :meth:`Gateway.plan <router_ml.serve.gateway.call.Gateway.plan>`: count tokens, featurize, predict every
    model's quality and cost, choose under the calibrated policy and rank the fallbacks (no upstream call)."""
    from router_ml.serve.api.schemas import AUTO, parse_auto_model
    from router_ml.serve.gateway.call import Gateway
    from router_ml.serve.providers.base import ChatRequest
    from router_ml.serve.state import BundleHolder

    started = time.perf_counter()
    bundles = BundleHolder(bundle_dir)
    load_s = time.perf_counter() - started
    bundle = bundles.current
    gateway = Gateway(bundles, providers=dict.fromkeys(bundle.models))  # plan() only asks which models are served
    policy = parse_auto_model(AUTO)

    def route(prompt: str) -> str:
        request = ChatRequest(AUTO, [{"role": "user", "content": prompt}])
        return gateway.plan(None, request, policy, None, prompt, False).candidates[0]

    return {"encoder": bundle.meta["encoder"]["id"], "bundle": bundle.version, "models": len(bundle.models),
            "router": bundle.meta["router"]["class"], "load_s": round(load_s, 3), **_timed(route, prompts, calls)}


def _timed(action, items, calls: int) -> dict:
    """p50/p99/mean in ms of ``action(item)`` over the first ``calls`` items, after 20 to warm up."""
    for item in items[:20]:
        action(item)
    timings = []
    for item in items[:calls]:
        started = time.perf_counter()
        action(item)
        timings.append((time.perf_counter() - started) * 1000)
    timings = np.array(timings)
    return {"calls": len(timings), "p50_ms": round(float(np.percentile(timings, 50)), 3),
            "p99_ms": round(float(np.percentile(timings, 99)), 3), "mean_ms": round(float(timings.mean()), 3)}


def measure_steering(bundle_dir, prompts: list[str], calls: int, scratch: Path) -> dict:
    """What the online quality loop adds to a decision (:mod:`router_ml.serve.gateway.steering`): the plan of a
    tenant routed at its operating point beside the plan of the same tenant without steering, and the work a
    call the shadow judge samples adds on the hot path (the probes: the model each graded level would serve).
    Sampling itself is one coin flip; the judging runs after the answer, in a task of its own."""
    import random
    from datetime import datetime, timezone

    from router_ml.calllog.operating_points import OperatingPointStore
    from router_ml.calllog.store import CallStore
    from router_ml.routers.policy import Policy
    from router_ml.serve.api.schemas import AUTO, parse_auto_model
    from router_ml.serve.gateway.call import Gateway
    from router_ml.serve.gateway.steering import Steering
    from router_ml.serve.providers.base import ChatRequest
    from router_ml.serve.state import BundleHolder
    from router_ml.serve.tenancy.tenants import Tenant

    bundles = BundleHolder(bundle_dir)
    bundle = bundles.current
    reference = REFERENCE
    tenant = Tenant(1, "bench", datetime.now(timezone.utc), Policy(), None, None, None, None, None, False, reference)
    store = CallStore(f"sqlite:///{scratch}/calls.db")
    steering = Steering(OperatingPointStore(store.engine), ladder_calls=100)
    plain, steered = (Gateway(bundles, providers=dict.fromkeys(bundle.models), steering=s) for s in (None, steering))
    policy = parse_auto_model(AUTO)

    def plan(gateway):
        return lambda prompt: gateway.plan(tenant, ChatRequest(AUTO, [{"role": "user", "content": prompt}]), policy,
                                           None, prompt, False)

    for prompt in prompts[:100]:  # the tenant's ladder is placed on its first calls, then it moves two levels
        plan(steered)(prompt)
    steering.held["bench"].point.level = 2
    decisions = [plan(steered)(p).decision for p in prompts[:calls]]
    coin = random.Random(0)
    found = {"reference": reference, "plan": _timed(plan(plain), prompts, calls),
            "plan_steered": _timed(plan(steered), prompts, calls),
            "probes_of_a_sampled_call": _timed(lambda d: steering.probes("bench", d, bundle.models, reference),
                                               decisions, calls),
            "sampling_coin_flip": _timed(lambda _: coin.random() < 0.03, prompts, calls)}
    store.close()
    return found


def main() -> None:
    started = time.perf_counter()
    if not (STATIC / "model.safetensors").is_file():
        build_static_encoder(STATIC)
    matrix = _matrix()
    results = [measure(encoder, matrix, CALLS[encoder.encoder_id])
               for encoder in (StaticEncoder(STATIC), MiniLMEncoder())]
    bundle = measure_bundle(DEFAULT_BUNDLE, matrix.prompts["prompt"].to_list(), 3000)
    with tempfile.TemporaryDirectory() as scratch:
        steering = measure_steering(DEFAULT_BUNDLE, matrix.prompts["prompt"].to_list(), 3000, Path(scratch))
    report = {"benchmark": "decision_latency", "machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
              "router": "kNN (k=50) quality router + lambda policy, gpt-4-1106 vs Mixtral", "results": results,
              "default_bundle": bundle, "online_steering": steering,
              "runtime_s": round(time.perf_counter() - started, 1)}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "decision_latency.json").write_text(json.dumps(report, indent=2) + "\n")
    for r in results:
        print(f"{r['encoder']:>18}: p50 {r['p50_ms']:.3f} ms, p99 {r['p99_ms']:.3f} ms over {r['calls']} decisions "
              f"(kNN over {r['train_prompts']} prompts)")
    print(f"default bundle {bundle['bundle']} ({bundle['router']}, {bundle['models']} models, {bundle['encoder']}): "
          f"loads in {bundle['load_s']} s; decision p50 {bundle['p50_ms']:.3f} ms, p99 {bundle['p99_ms']:.3f} ms "
          "(token count, features, predictions, policy)")
    print(f"online steering: plan p50 {steering['plan']['p50_ms']:.3f} ms, steered "
          f"{steering['plan_steered']['p50_ms']:.3f} ms; a sampled call's probes p50 "
          f"{steering['probes_of_a_sampled_call']['p50_ms']:.3f} ms; the coin flip "
          f"{steering['sampling_coin_flip']['p50_ms']:.3f} ms")
    print(f"decision latency benchmark: {report['runtime_s']} s -> {RESULTS / 'decision_latency.json'}")


if __name__ == "__main__":
    main()
