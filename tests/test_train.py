"""The training pipeline, the bundle it writes, MLflow logging and the `train` / `evaluate` commands,
on outcome tables built from fixtures cut from the real public files."""

from __future__ import annotations

import json
import math
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from typer.testing import CliRunner

from router_ml import routers
from router_ml.bundle import (
    META_FILE,
    PREDICTORS_FILE,
    BundleError,
    file_sha256,
    fingerprint,
    load_bundle,
)
from router_ml.cli import app
from router_ml.config import get_settings
from router_ml.data.prepare import prepare
from router_ml.data.report import ImportReport
from router_ml.embed import StaticEncoder
from router_ml.features import PromptFeaturizer
from router_ml.progress import Progress
from router_ml.routers.policy import Policy, choose
from router_ml.train import (
    TrainConfig,
    build_dataset,
    fit_cost,
    make_router,
    run,
    score,
    search,
    select_outcomes,
    split,
)

LLMROUTER_MODELS = [
    "codegemma-7b", "gemma-2-9b-it", "llama-3.1-8b-instruct", "llama-3.1-nemotron-51b-instruct",
    "llama-3.3-nemotron-super-49b-v1", "llama3-chatqa-1.5-70b", "llama3-chatqa-1.5-8b", "mistral-7b-instruct-v0.3",
    "qwen2.5-7b-instruct",
]
ZEROEVAL_MODELS = ["Meta-Llama-3.1-8B-Instruct", "gemma-2-2b-it", "gpt-4o-2024-05-13"]
MMLU_PRO_MODELS = ["Mistral-7B-Instruct-v0.2", "gemini-1.5-flash-002"]
CHECKSUMS = {"outcomes_sha256": "0" * 64, "manifest_sha256": "1" * 64}


def no_features(prompts) -> np.ndarray:
    return np.zeros((len(prompts), 1), dtype=np.float32)


@pytest.fixture(scope="module")
def outcomes(mini_files) -> pl.DataFrame:
    """The outcomes table of the mini mirror: imported, tokens and costs added, grouped by exact duplicates."""
    return prepare(mini_files, ImportReport(), encoder=None)


@pytest.fixture(scope="module")
def outcomes_file(outcomes, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("outcomes") / "outcomes.parquet"
    outcomes.write_parquet(path)
    return path


@pytest.fixture(scope="module")
def encoder(static_encoder_dir) -> StaticEncoder:
    return StaticEncoder(static_encoder_dir)


@pytest.fixture(scope="module")
def stages() -> list[tuple[str, int | None]]:
    return []


@pytest.fixture(scope="module")
def trained(outcomes, encoder, stages, tmp_path_factory):
    """A linear router trained end to end on the LLMRouter slice (80 prompts x 9 models)."""
    config = TrainConfig(name="t", router="linear", sources=["llmrouter"], min_prompts=50, n_trials=2)
    out = tmp_path_factory.mktemp("bundles") / "t"
    progress = Progress(stage=lambda name, total: stages.append((name, total)))
    return run(config, outcomes, encoder, out, progress, data_checksums=CHECKSUMS)


# --- select_outcomes ------------------------------------------------------------------------------------------


def test_pool_is_every_model_with_min_prompts(outcomes):
    config = TrainConfig(sources=["zeroeval", "mmlu_pro"], min_prompts=50)
    rows, models = select_outcomes(outcomes, config)
    assert models == sorted(ZEROEVAL_MODELS)  # 90 outcomes each; the MMLU-Pro models have 30
    assert set(rows["model"]) == set(models) and set(rows["source"]) == {"zeroeval"}
    assert rows.height == 3 * 90

    _, models = select_outcomes(outcomes, TrainConfig(sources=["zeroeval", "mmlu_pro"], min_prompts=30))
    assert models == sorted(ZEROEVAL_MODELS + MMLU_PRO_MODELS)


def test_selection_drops_unknown_quality_and_filters_tasks(outcomes):
    routerbench = outcomes.filter(pl.col("source") == "routerbench")
    assert routerbench["quality"].null_count() == 1  # the duplicate sample id without scores
    rows, models = select_outcomes(outcomes, TrainConfig(sources=["routerbench"], min_prompts=1))
    assert rows.height == routerbench.height - 1 and rows["quality"].null_count() == 0
    assert len(models) == 11

    rows, _ = select_outcomes(outcomes, TrainConfig(tasks=["gsm8k"], min_prompts=1))
    assert set(rows["task"]) == {"gsm8k"} and set(rows["source"]) == {"routellm", "zeroeval"}


def test_configured_models_must_have_outcomes(outcomes):
    rows, models = select_outcomes(outcomes, TrainConfig(sources=["llmrouter"], models=["qwen2.5-7b-instruct",
                                                                                          "codegemma-7b"]))
    assert models == ["codegemma-7b", "qwen2.5-7b-instruct"]  # min_prompts does not apply to a named pool
    assert set(rows["model"]) == set(models)
    with pytest.raises(ValueError, match="no-such-model"):
        select_outcomes(outcomes, TrainConfig(models=["codegemma-7b", "no-such-model"]))
    with pytest.raises(ValueError, match="gpt-4o-2024-05-13") as info:  # known, but not in the selected source
        select_outcomes(outcomes, TrainConfig(sources=["llmrouter"], models=["codegemma-7b", "gpt-4o-2024-05-13"]))
    assert "codegemma-7b" not in str(info.value)


def test_a_router_needs_two_models(outcomes):
    with pytest.raises(ValueError, match="at least two models"):
        select_outcomes(outcomes, TrainConfig(models=["codegemma-7b"]))
    with pytest.raises(ValueError, match="at least two models"):
        select_outcomes(outcomes, TrainConfig(min_prompts=10_000))


# --- split ----------------------------------------------------------------------------------------------------


def test_split_keeps_each_duplicate_group_on_one_side(outcomes):
    config = TrainConfig(min_prompts=1)
    rows, models = select_outcomes(outcomes, config)
    data = build_dataset(rows, models, no_features)
    groups = data.matrix.prompts.group_by("group_id").len()
    assert groups.filter(pl.col("len") > 1).height >= 10  # GSM8K questions asked in RouteLLM and ZeroEval

    fit, val, test = split(data, config)
    sides = [set(part.groups) for part in (fit, val, test)]
    assert not sides[0] & sides[1] and not sides[0] & sides[2] and not sides[1] & sides[2]
    ids = [part.matrix.prompts["prompt_id"].to_list() for part in (fit, val, test)]
    assert sorted(sum(ids, [])) == sorted(data.matrix.prompts["prompt_id"].to_list())
    n = len(data)
    assert 0.1 * n <= len(test) <= 0.3 * n
    assert 0.1 * (n - len(test)) <= len(val) <= 0.3 * (n - len(test))
    for part in (fit, val, test):  # rows stay aligned with their prompts
        assert len(part.X) == len(part.input_tokens) == part.matrix.quality.shape[0] == part.matrix.prompts.height

    again = split(data, config)
    assert [p.matrix.prompts["prompt_id"].to_list() for p in again] == ids  # the same seed, the same split
    other = split(data, TrainConfig(min_prompts=1, seed=1))
    assert other[2].matrix.prompts["prompt_id"].to_list() != ids[2]

    fit, val, test = split(data, TrainConfig(min_prompts=1, test_fraction=0))
    assert test is None and len(fit) + len(val) == n and not set(fit.groups) & set(val.groups)


# --- routers and search ---------------------------------------------------------------------------------------

KINDS = ["linear", "knn", "mean"] + (["mf"] if hasattr(routers, "MatrixFactorizationRouter") else [])


@pytest.mark.parametrize("kind", KINDS)
def test_search_and_fit_each_kind(outcomes, encoder, kind):
    config = TrainConfig(sources=["llmrouter"], min_prompts=50)
    rows, models = select_outcomes(outcomes, config)
    data = build_dataset(rows, models, PromptFeaturizer(encoder.encode).transform)
    fit, val, _ = split(data, config)
    params, study = search(kind, fit, val, n_trials=2, seed=0)
    if kind == "mean":
        assert params == {} and study is None
    else:
        assert len(study.trials) == 2 and params == study.best_params and params
    predicted = make_router(kind, **params).fit(fit.X, fit.matrix.quality).predict(val.X)
    assert predicted.shape == val.matrix.quality.shape
    assert np.isfinite(predicted).all() and (predicted >= 0).all() and (predicted <= 1).all()


def test_unknown_router_kind():
    with pytest.raises(ValueError, match="'forest'"):
        make_router("forest")


# --- run end to end -------------------------------------------------------------------------------------------


def test_run_writes_a_complete_bundle(trained, encoder, stages, outcomes):
    out = trained.bundle_dir
    assert sorted(p.name for p in out.iterdir()) == sorted([META_FILE, PREDICTORS_FILE])
    meta = json.loads((out / META_FILE).read_text())
    assert meta == trained.meta
    assert sum(p.stat().st_size for p in out.iterdir()) < 200_000

    assert meta["name"] == "t" and meta["config"]["router"] == "linear" and meta["config"]["sources"] == ["llmrouter"]
    assert meta["predictors_sha256"] == file_sha256(out / PREDICTORS_FILE)
    assert meta["version"] == f"t-{meta['predictors_sha256'][:12]}"
    assert meta["encoder"]["id"] == encoder.encoder_id == "minilm-static-64"
    assert meta["encoder"]["fingerprint"] == fingerprint(encoder) and len(meta["encoder"]["fingerprint"]) == 16

    assert meta["models"] == LLMROUTER_MODELS
    from router_ml.pricing import price_of

    assert [entry["model"] for entry in meta["catalog"]] == LLMROUTER_MODELS
    for entry in meta["catalog"]:
        price = price_of(entry["model"])
        assert entry["input_usd_per_mtok"] == float(price.input_usd_per_mtok) > 0
        assert entry["output_usd_per_mtok"] == float(price.output_usd_per_mtok) > 0
        assert entry["price_origin"] == price.origin

    assert meta["router"]["kind"] == "linear" and meta["router"]["class"] == "LinearQualityRouter"
    assert 0.1 <= meta["router"]["params"]["alpha"] <= 1000 and trained.router.alpha == meta["router"]["params"]["alpha"]
    assert ("optuna search (linear)", 2) in stages

    calibration = meta["calibration"]
    assert calibration["kind"] == "quality_share" and calibration["target"] == 0.95 and calibration["rule"] == "lambda"
    assert 0 <= calibration["parameter"] < math.inf
    assert 0 <= calibration["reference_model"] < len(LLMROUTER_MODELS)

    data = meta["data"]
    assert data["outcomes_sha256"] == CHECKSUMS["outcomes_sha256"]
    assert data["manifest_sha256"] == CHECKSUMS["manifest_sha256"]
    llmrouter = outcomes.filter(pl.col("source") == "llmrouter")
    assert data["outcomes"] == llmrouter.height
    assert sum(data["prompts"].values()) == llmrouter["prompt_id"].n_unique()
    assert all(n > 0 for n in data["prompts"].values())

    metrics = meta["metrics"]
    assert trained.test is not None and json.loads(json.dumps(trained.test["metrics"])) == metrics
    assert metrics["prompts"] == data["prompts"]["test"]  # every LLMRouter prompt has all 9 outcomes
    for key in ("aiq", "zero_aiq", "oracle_aiq", "gap_closed", "brier"):
        assert math.isfinite(metrics[key])
    assert metrics["zero_aiq"] <= metrics["oracle_aiq"] and metrics["aiq"] <= metrics["oracle_aiq"] + 1e-12
    assert 0 <= metrics["brier"] <= 1
    target = metrics["target"]
    assert target["kind"] == "quality_share" and target["target"] == 0.95
    assert target["parameter"] == calibration["parameter"]
    assert sum(target["model_shares"]) == pytest.approx(1)
    curve = trained.test["curve"]
    assert len(curve["costs"]) == len(curve["qualities"]) >= 2


def test_a_pool_that_never_answered_the_same_prompts_cannot_be_calibrated(outcomes, encoder, tmp_path):
    # RouteLLM and ZeroEval share no model: no prompt has an outcome for all five models of the pool.
    config = TrainConfig(name="sparse", router="mean", sources=["routellm", "zeroeval"], min_prompts=50)
    rows, models = select_outcomes(outcomes, config)
    assert len(models) == 5
    with pytest.raises(ValueError, match="cannot calibrate"):
        run(config, outcomes, encoder, tmp_path / "sparse")
    assert not (tmp_path / "sparse").exists()  # no bundle with a meaningless policy

    data = build_dataset(rows, models, no_features)
    router = make_router("mean").fit(data.X, data.matrix.quality)
    with pytest.raises(ValueError, match="no prompt has outcomes for every model"):
        score(router, fit_cost(data), data)


# --- the bundle -----------------------------------------------------------------------------------------------


def _llmrouter_prompts(outcomes, n: int = 6) -> tuple[list[str], np.ndarray]:
    prompts = (outcomes.filter(pl.col("source") == "llmrouter").group_by("prompt_id", maintain_order=True)
               .agg(pl.col("prompt").first(), pl.col("input_tokens").median()).head(n))
    return prompts["prompt"].to_list(), prompts["input_tokens"].to_numpy()


def test_loaded_bundle_predicts_like_the_trained_router(trained, encoder, outcomes, static_encoder_dir, monkeypatch):
    prompts, tokens = _llmrouter_prompts(outcomes)
    X = PromptFeaturizer(encoder.encode).transform(prompts)
    expected_quality, expected_cost = trained.router.predict(X), trained.cost.predict(tokens)
    assert expected_quality.shape == expected_cost.shape == (len(prompts), len(LLMROUTER_MODELS))

    monkeypatch.setenv("ROUTER_ML_STATIC_ENCODER", str(static_encoder_dir))
    get_settings.cache_clear()
    try:
        loaded = [load_bundle(trained.bundle_dir, encoder=StaticEncoder(static_encoder_dir)),
                  load_bundle(trained.bundle_dir, static_dir=static_encoder_dir),
                  load_bundle(trained.bundle_dir)]  # the encoder found through $ROUTER_ML_STATIC_ENCODER
    finally:
        get_settings.cache_clear()
    for bundle in loaded:
        assert bundle.meta == trained.meta and bundle.models == LLMROUTER_MODELS
        assert bundle.version == trained.meta["version"]
        quality, cost = bundle.predict(prompts, tokens)
        np.testing.assert_array_equal(quality, expected_quality)
        np.testing.assert_array_equal(cost, expected_cost)


def test_choose_uses_the_calibrated_rule_unless_the_policy_sets_one(trained, encoder, outcomes):
    bundle = load_bundle(trained.bundle_dir, encoder=encoder)
    lam = trained.meta["calibration"]["parameter"]
    assert 0 < lam < math.inf
    # Model 1 is 0.5 better than model 0 and costs 1 / lam more (not worth it at lam) or 0.25 / lam (worth it);
    # the bundle's other models answer nothing right, for free.
    quality, cost = np.zeros((2, len(bundle.models))), np.zeros((2, len(bundle.models)))
    quality[:, :2] = [[0.5, 1.0], [0.5, 1.0]]
    cost[:, :2] = [[0.0, 1.0 / lam], [0.0, 0.25 / lam]]
    assert bundle.choose(quality, cost).tolist() == [0, 1]
    assert bundle.choose(quality, cost, Policy(lam=0.0)).tolist() == [1, 1]
    assert bundle.choose(quality, cost, Policy(quality=0.5)).tolist() == [0, 0]  # a share of the best: 0.5 x 1.0
    assert bundle.choose(quality, cost, Policy(quality=0.6)).tolist() == [1, 1]
    assert bundle.choose(quality, cost, Policy(models=[bundle.models[1]])).tolist() == [1, 1]
    # A bundle calibrated with the threshold rule is served by that rule, its parameter an absolute threshold.
    by_threshold = replace(bundle, meta={**bundle.meta, "calibration": {**bundle.meta["calibration"],
                                                                          "rule": "threshold", "parameter": 0.4}})
    assert by_threshold.choose(quality, cost).tolist() == [0, 0]
    assert by_threshold.choose(quality, cost, Policy(lam=0.0)).tolist() == [1, 1]

    prompts, tokens = _llmrouter_prompts(outcomes)
    quality, cost = bundle.predict(prompts, tokens)
    assert bundle.choose(quality, cost).tolist() == choose(quality, cost, lam).tolist()
    decision = bundle.decide(prompts[0], tokens[0])  # the gateway's one-prompt decision makes the same choice
    assert decision.model == bundle.models[choose(quality[:1], cost[:1], lam)[0]] == decision.ranking[0]
    assert sorted(decision.ranking) == sorted(bundle.models)


def test_tampered_predictors_fail_the_checksum(trained, encoder, tmp_path):
    copy = shutil.copytree(trained.bundle_dir, tmp_path / "bundle")
    with open(copy / PREDICTORS_FILE, "ab") as f:
        f.write(b"\0")
    with pytest.raises(BundleError, match="checksum") as info:
        load_bundle(copy, encoder=encoder)
    assert PREDICTORS_FILE in str(info.value)


def test_missing_meta_is_named(trained, encoder, tmp_path):
    copy = shutil.copytree(trained.bundle_dir, tmp_path / "bundle")
    (copy / META_FILE).unlink()
    with pytest.raises(BundleError, match=f"{META_FILE} is missing"):
        load_bundle(copy, encoder=encoder)


class OtherVectors:
    """Claims the bundle's encoder id but encodes differently (a rebuilt encoder, another version)."""

    def __init__(self, encoder):
        self.inner = encoder
        self.encoder_id = encoder.encoder_id

    def encode(self, texts):
        return -self.inner.encode(texts)


def test_encoder_with_other_vectors_fails_the_fingerprint(trained, encoder):
    with pytest.raises(BundleError, match="other vectors"):
        load_bundle(trained.bundle_dir, encoder=OtherVectors(encoder))


def test_missing_static_encoder_is_a_bundle_error(trained, tmp_path):
    with pytest.raises(BundleError, match="minilm-static-64"):
        load_bundle(trained.bundle_dir, static_dir=tmp_path / "nothing")


# --- MLflow ---------------------------------------------------------------------------------------------------


def test_log_training_registers_new_versions(trained, outcomes, encoder, tmp_path):
    import mlflow

    from router_ml.tracking import log_training

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    second = run(TrainConfig(name="t", router="mean", sources=["llmrouter"], min_prompts=50), outcomes, encoder,
                 tmp_path / "second")
    first_log = log_training(trained, uri, tmp_path / "artifacts")
    second_log = log_training(second, uri, tmp_path / "artifacts")
    assert (str(first_log["model_version"]), str(second_log["model_version"])) == ("1", "2")
    assert first_log["run_id"] != second_log["run_id"] and first_log["tracking_uri"] == uri

    client = mlflow.MlflowClient(tracking_uri=uri)
    versions = {v.version: v for v in client.search_model_versions("name = 't'")}
    assert sorted(str(v) for v in versions) == ["1", "2"]
    assert {v.run_id for v in versions.values()} == {first_log["run_id"], second_log["run_id"]}

    logged = client.get_run(first_log["run_id"]).data
    assert logged.params["router.class"] == "LinearQualityRouter"
    assert float(logged.params["router.alpha"]) == pytest.approx(trained.meta["router"]["params"]["alpha"])
    assert logged.params["config.n_trials"] == "2" and logged.params["encoder"] == "minilm-static-64"
    assert logged.params["bundle.version"] == trained.meta["version"]
    assert logged.params["models"] == ",".join(LLMROUTER_MODELS)
    assert logged.metrics["aiq"] == pytest.approx(trained.meta["metrics"]["aiq"])
    assert logged.metrics["gap_closed"] == pytest.approx(trained.meta["metrics"]["gap_closed"])
    assert logged.metrics["target.achieved"] == pytest.approx(trained.meta["metrics"]["target"]["achieved"])
    assert logged.metrics["calibration.parameter"] == pytest.approx(trained.meta["calibration"]["parameter"])
    artifacts = {a.path for a in client.list_artifacts(first_log["run_id"], "bundle")}
    assert artifacts == {f"bundle/{META_FILE}", f"bundle/{PREDICTORS_FILE}"}
    assert client.get_run(second_log["run_id"]).data.params["router.class"] == "MeanQualityRouter"


# --- the command line -----------------------------------------------------------------------------------------


@pytest.fixture
def cli_env(tmp_path, static_encoder_dir, monkeypatch):
    monkeypatch.setenv("ROUTER_ML_MLFLOW_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("ROUTER_ML_MLFLOW_ARTIFACTS", "artifacts")  # relative to the working directory
    monkeypatch.setenv("ROUTER_ML_STATIC_ENCODER", str(static_encoder_dir))
    get_settings.cache_clear()
    yield tmp_path
    get_settings.cache_clear()


def _invoke(*args: str):
    return CliRunner().invoke(app, list(args), env={"COLUMNS": "400"})


def test_train_then_evaluate_from_the_command_line(cli_env, outcomes_file):
    out = cli_env / "bundle"
    result = _invoke("train", "--name", "t", "--router", "linear", "--source", "llmrouter", "--min-prompts", "50",
                     "--trials", "2", "--out", str(out), "--outcomes", str(outcomes_file))
    assert result.exit_code == 0, result.output
    meta = json.loads((out / META_FILE).read_text())
    assert meta["data"]["outcomes_sha256"] == file_sha256(outcomes_file)
    assert meta["encoder"]["id"] == "minilm-static-64"
    assert f"bundle {meta['version']} written to" in result.output
    assert "registered model 't' version 1" in result.output
    assert "aiq" in result.output  # the test metrics table
    logged = list((cli_env / "artifacts").rglob(f"bundle/{META_FILE}"))
    assert len(logged) == 1 and json.loads(logged[0].read_text()) == meta

    report = cli_env / "report"
    result = _invoke("evaluate", "--bundle", str(out), "--outcomes", str(outcomes_file), "--out", str(report))
    assert result.exit_code == 0, result.output
    scored = json.loads((report / "metrics.json").read_text())
    # The same test split and the same predictors as at training time: the same numbers.
    assert scored["metrics"]["prompts"] == meta["metrics"]["prompts"]
    assert scored["metrics"]["aiq"] == pytest.approx(meta["metrics"]["aiq"])
    assert scored["metrics"]["target"]["achieved"] == pytest.approx(meta["metrics"]["target"]["achieved"])
    assert (report / "cost_quality.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # The same bundle routes the llmrouter rows replayed as a tenant's traffic through the online loop.
    simulated = cli_env / "simulated"
    result = _invoke("simulate", "--bundle", str(out), "--outcomes", str(outcomes_file), "--source", "llmrouter",
                     "--orders", "3", "--sample-rate", "0.5", "--out", str(simulated))
    assert result.exit_code == 0, result.output
    replayed = json.loads((simulated / "simulation.json").read_text())
    assert replayed["orders"] == 3 and len(replayed["runs"]) == 3 and replayed["reference"] in meta["models"]
    assert f"held in {replayed['held_rate']:.0%} of 3 orders" in result.output
    assert "static calibration" in replayed["baselines"]
    assert (simulated / "operating_point.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    result = _invoke("simulate", "--bundle", str(out), "--outcomes", str(outcomes_file), "--source", "llmrouter",
                     "--orders", "2", "--cost-target", "0.5", "--out", str(simulated))
    assert result.exit_code == 0, result.output
    paced = json.loads((simulated / "simulation.json").read_text())
    assert paced["cost_target"] == 0.5 and all("spend_of_cost_target" in run for run in paced["runs"])
    assert f"spent {paced['median']['spend_of_cost_target']:.0%} of the cost target (50%" in result.output
    result = _invoke("simulate", "--bundle", str(out), "--outcomes", str(outcomes_file), "--cost-target", "0")
    assert result.exit_code == 1 and "--cost-target" in result.output
    result = _invoke("simulate", "--bundle", str(out), "--outcomes", str(outcomes_file), "--reference", "gpt-5")
    assert result.exit_code == 1 and "reference 'gpt-5' is not a model" in result.output


def test_train_without_outcomes_names_the_path(cli_env):
    missing = cli_env / "absent.parquet"
    result = _invoke("train", "--name", "t", "--router", "linear", "--outcomes", str(missing))
    assert result.exit_code == 1
    assert str(missing) in result.output and "router-ml datasets prepare" in result.output
    assert not (cli_env / "mlflow.db").exists()
