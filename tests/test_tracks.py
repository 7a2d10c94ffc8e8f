"""A small slice of `make bench`: each routing-quality track runs end to end on the mini mirror.

The figures on a few dozen prompts mean nothing; what is checked is that every track trains
only outside its test prompts, reports every baseline and writes a report with its plots.
"""

from __future__ import annotations

import importlib.util
import math

import numpy as np
import polars as pl
import pytest

from router_ml import tracks
from router_ml.config import PROJECT_ROOT
from router_ml.data.prepare import prepare
from router_ml.data.report import ImportReport
from router_ml.embed import StaticEncoder
from router_ml.features import PromptFeaturizer


@pytest.fixture(scope="module")
def outcomes(mini_files) -> pl.DataFrame:
    return prepare(mini_files, ImportReport(), encoder=None)


@pytest.fixture(scope="module")
def featurize(static_encoder_dir):
    return PromptFeaturizer(StaticEncoder(static_encoder_dir).encode).transform


@pytest.fixture(scope="module")
def features(outcomes, featurize) -> tracks.PromptFeatures:
    return tracks.PromptFeatures.of(outcomes, featurize)


def test_difficulty_labels_center_each_model_within_its_source(outcomes):
    rows = outcomes.filter(pl.col("quality").is_not_null() & (pl.col("source") == "zeroeval"))
    labels = tracks.difficulty_labels(rows)
    assert labels.height == rows["prompt_id"].n_unique()
    # Residuals around each model's mean average to zero over that model's rows, so the
    # per-prompt means weighted by their outcome counts do too.
    counts = rows.group_by("prompt_id").len()
    weighted = labels.join(counts, on="prompt_id").select((pl.col("ease") * pl.col("len")).sum())[0, 0]
    assert abs(weighted) < 1e-9


def test_choose_blend_prefers_the_informative_signal():
    rng = np.random.default_rng(0)
    strong = rng.integers(0, 2, 400).astype(float)
    weak = strong * rng.integers(0, 2, 400)  # the weak model fails on some of what the strong one solves
    informative, noise = strong - weak + rng.normal(0, 0.1, 400), rng.normal(0, 1, 400)
    assert tracks.choose_blend(strong, weak, [noise, informative]) == (0.0, 1.0)


def test_routellm_tracks_never_train_on_their_test_prompts(outcomes, features):
    cross = tracks.routellm_cross_source(outcomes, features, alphas=(10.0,), boot=20, min_pair_prompts=3)
    scored = {task: routers for task, routers in cross["tasks"].items() if "skipped" not in routers}
    assert scored and set(cross["tasks"]) == set(tracks.ROUTELLM_TASKS)
    for task, routers in scored.items():
        for name in ("random", "length rule", "router-ml (difficulty + length)"):
            assert 0 <= routers[name]["cpt50"] <= 1 or math.isnan(routers[name]["cpt50"]), (task, name)
            assert len(routers[name]["pgr"]) == 101
        assert routers["published RouteLLM"]["cpt50"] > 0
    own = tracks.routellm_own_logs(outcomes, features, k=2, boot=20)
    assert any("skipped" not in routers for routers in own.values())
    for routers in own.values():
        if "skipped" in routers:
            assert "prompts" in routers["skipped"] or "better" in routers["skipped"]
            continue
        router = routers["router-ml (gain + difficulty + length, out-of-fold)"]
        low, high = router["apgr_ci95"]
        assert low <= high
        assert len(routers["weights chosen per fold (gain, difficulty, length)"]) == 2


def test_routerbench_and_modern_pool_tracks_score_every_router_beside_the_baselines(outcomes, featurize):
    result = tracks.routerbench(outcomes, featurize, kinds=("linear",), n_trials=1)
    assert set(result["routers"]) == {"task name only", "linear"} and result["headline"] == "linear"
    test = result["routers"]["linear"]["test"]
    assert test["zero_aiq"] <= test["oracle_aiq"] + 1e-12 and test["aiq"] <= test["oracle_aiq"] + 1e-12
    assert result["gpt4"]["quality"] == pytest.approx(result["singles"][tracks.STRONG][1])
    pool = tracks.modern_pool(outcomes, featurize, kinds=("linear",), n_trials=1)
    assert set(pool["held_out"]) == set(outcomes.filter(pl.col("source") == "zeroeval")["task"].unique())
    for task, held in pool["held_out"].items():
        assert held["routers"]["linear"]["calibrated"]["kind"] == "quality_share", task
    assert [t["kind"] for t in pool["within"]["targets"]] == ["quality_share", "strong_share", "cost_per_1k"]


def test_report_and_plots_are_written(outcomes, features, featurize, tmp_path, monkeypatch):
    spec = importlib.util.spec_from_file_location("routing_quality", PROJECT_ROOT / "benchmarks" / "routing_quality.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    monkeypatch.setattr(bench, "RESULTS", tmp_path)
    results = {
        "routellm_cross_source": tracks.routellm_cross_source(outcomes, features, alphas=(10.0,), boot=20, min_pair_prompts=3),
        "routellm_own_logs": tracks.routellm_own_logs(outcomes, features, k=2, boot=20),
        "routerbench": tracks.routerbench(outcomes, featurize, kinds=("linear",), n_trials=1),
        "modern_pool": tracks.modern_pool(outcomes, featurize, kinds=("linear",), n_trials=1),
    }
    plots = bench.write_plots(results)
    assert all((tmp_path / p).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in plots)
    report = {"runtime_s": 1.0, "outcomes_rows": outcomes.height, "encoder": "minilm-static-64", "results": results,
              "plots": plots}
    text = "\n".join(bench.markdown(report))
    assert "## RouteLLM track" in text and "## RouterBench track" in text and "## Modern pool" in text
    assert "(headline)" in text
