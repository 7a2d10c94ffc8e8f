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
