"""A small slice of the benchmarks: the decision-latency measurement runs end to end."""

from __future__ import annotations

import importlib.util

import polars as pl

from router_ml.config import PROJECT_ROOT
from router_ml.data.costs import add_tokens_and_costs
from router_ml.data.importers import routellm
from router_ml.embed import StaticEncoder
from router_ml.label import outcome_matrix


def _bench_module():
    spec = importlib.util.spec_from_file_location("decision_latency", PROJECT_ROOT / "benchmarks" / "decision_latency.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_decision_latency_slice(mini_files, report, static_encoder_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("ROUTER_ML_CACHE_DIR", str(tmp_path))
    from router_ml.config import get_settings

    get_settings.cache_clear()
    rows = add_tokens_and_costs(routellm.load(mini_files, report)).with_columns(pl.col("prompt").alias("group_id"))
    matrix = outcome_matrix(rows, list(routellm.MODELS)).complete()
    result = _bench_module().measure(StaticEncoder(static_encoder_dir), matrix, calls=5)
    get_settings.cache_clear()
    assert result["encoder"] == "minilm-static-64" and 0 < result["calls"] <= 5
    assert 0 < result["p50_ms"] <= result["p99_ms"]


def test_default_bundle_decision_slice(mini_files, static_encoder_dir, tmp_path, monkeypatch):
    """A bundle trained on the mini mirror, timed the way the benchmark times the default bundle."""
    from router_ml.config import get_settings
    from router_ml.data.prepare import prepare
    from router_ml.data.report import ImportReport
    from router_ml.train import TrainConfig, run

    monkeypatch.setenv("ROUTER_ML_STATIC_ENCODER", str(static_encoder_dir))
    get_settings.cache_clear()
    outcomes = prepare(mini_files, ImportReport(), encoder=None)
    config = TrainConfig(name="latency", router="linear", sources=["llmrouter"], min_prompts=50, n_trials=0)
    run(config, outcomes, StaticEncoder(static_encoder_dir), tmp_path / "bundle")
    prompts = outcomes.filter(pl.col("source") == "llmrouter")["prompt"].unique().to_list()
    result = _bench_module().measure_bundle(tmp_path / "bundle", prompts, calls=5)
    get_settings.cache_clear()
    assert result["models"] == 9 and result["calls"] == 5 and result["load_s"] > 0
    assert 0 < result["p50_ms"] <= result["p99_ms"]
