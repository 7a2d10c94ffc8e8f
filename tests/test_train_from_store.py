"""`router-ml train --from-store`: a router trained on the gateway's call log, where the logged calls are
real outcomes of the mini mirror (ZeroEval: 90 prompts x 3 models) recorded as the gateway records an
answered call and given their real quality as feedback."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from typer.testing import CliRunner

from router_ml.bundle import META_FILE, load_bundle
from router_ml.cli import app
from router_ml.config import get_settings
from router_ml.data.ids import group_id
from router_ml.data.prepare import prepare
from router_ml.data.report import ImportReport
from router_ml.calllog.store import CallStore
from router_ml.split import group_holdout

ZEROEVAL_MODELS = ["Meta-Llama-3.1-8B-Instruct", "gemma-2-2b-it", "gpt-4o-2024-05-13"]
TRAIN = ("train", "--name", "logged", "--router", "linear", "--trials", "2", "--min-prompts", "20", "--no-mlflow")


@pytest.fixture(scope="module")
def outcomes(mini_files) -> pl.DataFrame:
    """The outcomes table of the mini mirror."""
    return prepare(mini_files, ImportReport(), encoder=None)


@pytest.fixture(scope="module")
def zeroeval(outcomes) -> pl.DataFrame:
    rows = outcomes.filter(pl.col("source") == "zeroeval").sort("prompt_id", "model")
    assert sorted(rows["model"].unique()) == ZEROEVAL_MODELS and rows.height == 3 * 90
    assert rows["quality"].null_count() == 0 and rows["quality"].n_unique() > 1
    return rows


@pytest.fixture
def env(tmp_path, static_encoder_dir, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("ROUTER_ML_STATIC_ENCODER", str(static_encoder_dir))
    monkeypatch.setenv("ROUTER_ML_MLFLOW_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.setenv("ROUTER_ML_STORE_URL", f"sqlite:///{tmp_path / 'calls.db'}")
    get_settings.cache_clear()
    yield tmp_path
    get_settings.cache_clear()


def _call(row: dict, **extra) -> dict:
    """An outcome row as the gateway logs the call that produced it (prompt id and group derived by the store)."""
    call = {name: row[name] for name in ("prompt", "model", "task", "input_tokens", "output_tokens", "cost_usd",
                                         "cost_source", "latency_ms", "response")}
    return {**call, "status": "ok", "http_status": 200, "routed": False, **extra}


def record(url: str, rows: pl.DataFrame, feedback: bool = True, failed: pl.DataFrame | None = None) -> list[str]:
    """Log ``rows`` as answered calls (and ``failed`` as failed ones); give each answered call its real quality."""
    with CallStore(url) as store:
        ids = [store.record(_call(row)) for row in rows.iter_rows(named=True)]
        for row in (failed.iter_rows(named=True) if failed is not None else ()):
            store.record({"prompt": row["prompt"], "model": row["model"], "task": row["task"], "status": "error",
                          "http_status": 502, "error": "upstream unavailable"})
        store.flush()
        if feedback:
            for call_id, quality in zip(ids, rows["quality"]):
                store.feedback(call_id, quality)
    return ids


def one_model_per_prompt(rows: pl.DataFrame) -> pl.DataFrame:
    """Each prompt's outcome on one model only, the models taking turns: what routed traffic logs."""
    prompts = rows["prompt_id"].unique(maintain_order=True).to_list()
    turn = {p: ZEROEVAL_MODELS[i % len(ZEROEVAL_MODELS)] for i, p in enumerate(prompts)}
    return rows.filter(pl.struct("prompt_id", "model").map_elements(lambda r: turn[r["prompt_id"]] == r["model"],
                                                                     return_dtype=pl.Boolean))


def invoke(*args: str):
    return CliRunner().invoke(app, list(args), env={"COLUMNS": "400"})


def writer_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "call-store-writer"]


def test_a_router_trained_on_the_call_log_loads_and_decides(env, zeroeval, outcomes, static_encoder_dir):
    url = f"sqlite:///{env / 'calls.db'}"
    others = outcomes.filter(pl.col("source") == "routerbench").head(10)
    record(url, zeroeval, failed=others.head(2))
    record(url, others, feedback=False)  # answered, no feedback yet
    record(url, zeroeval.head(1))  # the same prompt and model asked again: the later call wins
    threads_before = len(writer_threads())

    result = invoke(*TRAIN, "--from-store", "--store-url", url, "--out", str(env / "bundle"))
    assert result.exit_code == 0, result.output
    assert len(writer_threads()) == threads_before  # the store was closed
    assert (f"call log {url}: 270 outcome(s) from 271 answer(s) with feedback, 0 judged without feedback (0 "
            "verdict(s)); not used: 10 answered without feedback or a verdict yet, 2 failed, 1 superseded"
            ) in result.output
    assert "trained on 270 of 270 outcomes" in result.output
    assert "aiq" in result.output  # every logged prompt has all three models: the test split is scored

    meta = json.loads((env / "bundle" / META_FILE).read_text())
    store = meta["data"]["store"]
    assert store["url"] == url and store["outcomes"] == 270 and store["calls_with_feedback"] == 271
    assert (store["calls_unlabelled"], store["failed_calls"], store["superseded_calls"]) == (10, 2, 1)
    assert len(store["outcomes_sha256"]) == 64 and "outcomes_sha256" not in meta["data"]  # no parquet table read
    assert meta["models"] == ZEROEVAL_MODELS
    n_val = meta["data"]["prompts"]["validation"]
    assert meta["data"]["coverage"]["validation"] == {"prompts": n_val, "outcomes": 3 * n_val, "complete": n_val}
    assert meta["notes"] == [f"the policy is calibrated on only {n_val} validation prompt(s) with outcomes for "
                             f"every model (of {n_val}: {n_val} with 3 models); its quality target is a rough guess"]
    assert meta["data"]["coverage"]["test"]["complete"] == meta["metrics"]["prompts"] > 0

    bundle = load_bundle(env / "bundle", static_dir=static_encoder_dir)
    prompts = zeroeval["prompt"].unique(maintain_order=True).head(5).to_list()
    quality, cost = bundle.predict(prompts, [100] * len(prompts))
    choice = bundle.choose(quality, cost)
    assert quality.shape == cost.shape == (5, 3) and np.isfinite(quality).all()
    assert choice.shape == (5,) and set(choice.tolist()) <= {0, 1, 2}

    # `evaluate` reads the outcomes table, not the call log: it says so instead of scoring other prompts.
    result = invoke("evaluate", "--bundle", str(env / "bundle"))
    assert result.exit_code == 1 and "was trained on the call log" in result.output


def test_the_configured_call_log_is_the_default(env, zeroeval):
    record(get_settings().store_url, zeroeval)
    result = invoke(*TRAIN, "--from-store", "--out", str(env / "bundle"))
    assert result.exit_code == 0, result.output
    assert json.loads((env / "bundle" / META_FILE).read_text())["data"]["store"]["url"] == get_settings().store_url


def test_sparse_test_prompts_are_reported_not_scored(env, zeroeval, static_encoder_dir):
    # The prompts the test split holds out get one model each, as routed traffic would; the others all three.
    groups = zeroeval["prompt"].map_elements(group_id, return_dtype=pl.String)
    distinct = groups.unique().to_list()
    _, held = group_holdout(distinct, 0.2, seed=0)
    test_groups = {distinct[i] for i in held}
    in_test = groups.is_in(test_groups)
    rows = pl.concat([zeroeval.filter(~in_test), one_model_per_prompt(zeroeval.filter(in_test))])
    n_test = zeroeval.filter(in_test)["prompt_id"].n_unique()
    assert 0 < n_test < 90
    record(f"sqlite:///{env / 'calls.db'}", rows)

    result = invoke(*TRAIN, "--from-store", "--out", str(env / "bundle"))
    assert result.exit_code == 0, result.output
    assert f"not scored: {n_test} of the {n_test} test prompts lack an outcome for some model" in result.output
    assert f"per prompt: {n_test} with 1 model)" in result.output
    meta = json.loads((env / "bundle" / META_FILE).read_text())
    assert meta["metrics"] == {} and any(note.startswith("not scored") for note in meta["notes"])
    assert meta["data"]["coverage"]["test"] == {"prompts": n_test, "outcomes": n_test, "complete": 0}
    assert meta["data"]["coverage"]["validation"]["complete"] > 0  # the policy is calibrated there
    assert 0 <= meta["calibration"]["parameter"]
    bundle = load_bundle(env / "bundle", static_dir=static_encoder_dir)
    assert bundle.choose(*bundle.predict(["What is 17 * 23?"], [12])).shape == (1,)


def test_one_model_per_prompt_cannot_be_calibrated_and_says_why(env, zeroeval):
    record(f"sqlite:///{env / 'calls.db'}", one_model_per_prompt(zeroeval))
    result = invoke(*TRAIN, "--from-store", "--out", str(env / "bundle"))
    assert result.exit_code == 1
    output = " ".join(result.output.split())
    assert "training on the call log" in output and "(90 labelled outcome(s) on 3 models)" in output
    assert "cannot calibrate the policy" in output and "with 1 model" in output
    assert not (env / "bundle").exists()


def test_the_outcomes_table_can_fill_in_what_the_log_lacks(env, zeroeval, outcomes):
    table = env / "outcomes.parquet"
    outcomes.write_parquet(table)
    record(f"sqlite:///{env / 'calls.db'}", one_model_per_prompt(zeroeval))
    models = [arg for m in ZEROEVAL_MODELS for arg in ("--model", m)]
    result = invoke(*TRAIN, "--from-store", "--with-outcomes", "--outcomes", str(table), *models,
                    "--out", str(env / "bundle"))
    assert result.exit_code == 0, result.output
    output = " ".join(result.output.split())
    assert f"with the outcomes table {table}: {outcomes.height} rows" in output
    # 90 logged + 270 public outcomes of the pool; the rest of the table is counted, not silently dropped.
    left_out = outcomes.filter(~pl.col("model").is_in(ZEROEVAL_MODELS) & pl.col("quality").is_not_null()).height
    assert f"trained on 360 of {outcomes.height + 90} outcomes" in output
    assert f"{left_out} of" in output and "not in the pool named by --model" in output
    meta = json.loads((env / "bundle" / META_FILE).read_text())
    assert meta["data"]["store"]["outcomes"] == 90 and len(meta["data"]["outcomes_sha256"]) == 64
    assert meta["data"]["outcomes"] == 360


def test_too_little_feedback_names_what_is_missing(env, zeroeval):
    url = f"sqlite:///{env / 'calls.db'}"
    gpt4o = zeroeval.filter(pl.col("model") == "gpt-4o-2024-05-13").head(12)
    record(url, gpt4o)
    record(url, zeroeval.filter(pl.col("model") == "gemma-2-2b-it").head(5), feedback=False)
    result = invoke(*TRAIN, "--from-store", "--min-prompts", "200", "--out", str(env / "bundle"))
    assert result.exit_code == 1
    output = " ".join(result.output.split())
    assert (f"training on the call log {url} (12 labelled outcome(s) on 1 model): a router needs at least "
            "two models with at least 200 outcomes each (--min-prompts); the selection holds 12 outcomes with a "
            "known quality on 1 model(s): gpt-4o-2024-05-13 (12)") in output
    assert "5 answered without feedback or a verdict yet" in output
    assert not (env / "bundle").exists()


def test_a_call_log_without_feedback_or_without_a_file(env, zeroeval):
    url = f"sqlite:///{env / 'calls.db'}"
    record(url, zeroeval.head(4), feedback=False)
    result = invoke(*TRAIN, "--from-store")
    assert result.exit_code == 1
    output = " ".join(result.output.split())
    assert "holds no labelled answer (4 answered call(s) without feedback, none judged" in output
    assert "ROUTER_ML_JUDGE_MODEL" in output and "POST /v1/feedback" in output and "0 failed)" in output

    missing = env / "absent.db"
    result = invoke(*TRAIN, "--from-store", "--store-url", f"sqlite:///{missing}")
    assert result.exit_code == 1 and "no call log at" in result.output
    assert not missing.exists()  # reading never creates a log


def test_store_options_need_from_store(env):
    for args in (("--store-url", "sqlite:///x.db"), ("--with-outcomes",), ("--no-judged",)):
        result = invoke(*TRAIN, *args)
        assert result.exit_code == 2 and "needs --from-store" in result.output
    assert not Path("x.db").exists()


def test_a_postgresql_call_log(postgres_url, zeroeval, outcomes):
    from router_ml.train import outcomes_from_store

    record(postgres_url, zeroeval.head(30), failed=zeroeval.head(1))
    record(postgres_url, outcomes.filter(pl.col("source") == "routerbench").head(4), feedback=False)
    table, info = outcomes_from_store(postgres_url)
    assert table.height == 30 and sorted(table["quality"]) == sorted(zeroeval.head(30)["quality"])
    assert (info["calls_with_feedback"], info["calls_unlabelled"], info["failed_calls"]) == (30, 4, 1)
    assert "router_ml:router_ml@" not in info["url"] and "***" in info["url"]  # the password is not kept


REFERENCE, CHEAP = "gpt-4o-2024-05-13", ("Meta-Llama-3.1-8B-Instruct", "gemma-2-2b-it")


def record_judged(url: str, rows: pl.DataFrame, misjudged: int) -> dict:
    """Log ``rows`` as the gateway logs routed traffic that its shadow judge graded: each prompt's call served by
    one cheap model (taking turns), the reference's shadow answer, a probe's shadow answer of the other cheap model,
    and the two verdicts (routed against reference, probe against reference) whose scores are the recorded
    qualities. The first ``misjudged`` prompts get a wrong verdict on the routed answer (its score flipped), which
    feedback then corrects, and a reference score flipped in the probe's comparison (the two verdicts disagree).
    Also a failed shadow answer and a failed verdict. Returns (prompt, model) -> the expected label."""
    by_prompt = rows.partition_by("prompt_id", as_dict=True, maintain_order=True)  # the store derives its own ids
    expected, feedback = {}, []
    with CallStore(url) as store:
        for i, answers in enumerate(by_prompt.values()):
            answer = {r["model"]: r for r in answers.iter_rows(named=True)}
            served, probe = CHEAP[i % 2], CHEAP[1 - i % 2]
            call_id = store.record(_call(answer[served], routed=True))
            ref_id = store.record(_call(answer[REFERENCE], kind="shadow", judges=call_id))
            probe_id = store.record(_call(answer[probe], kind="shadow", judges=call_id))
            q_served, q_ref, q_probe = (answer[m]["quality"] for m in (served, REFERENCE, probe))
            wrong = i < misjudged
            verdict = {"prompt": answer[served]["prompt"], "model": REFERENCE, "task": answer[served]["task"],
                       "input_tokens": 900, "output_tokens": 40, "cost_usd": 0.01, "cost_source": "tokens_x_price",
                       "latency_ms": 800.0, "status": "ok", "http_status": 200, "judges": call_id}
            store.record({**verdict, "kind": "judge", "graded": call_id, "against": ref_id,
                          "judge_routed": 1 - q_served if wrong else q_served, "judge_reference": q_ref})
            store.record({**verdict, "kind": "probe", "graded": probe_id, "against": ref_id,
                          "judge_routed": q_probe, "judge_reference": 1 - q_ref if wrong else q_ref})
            if wrong:
                feedback.append((call_id, q_served))
            prompt = answer[served]["prompt"]
            expected[prompt, served], expected[prompt, probe] = q_served, q_probe
            expected[prompt, REFERENCE] = (q_ref + (1 - q_ref)) / 2 if wrong else q_ref
        first = answers.row(0, named=True)
        store.record({**_call(first, kind="shadow", judges=call_id), "status": "error", "http_status": 502,
                      "error": "gpt-4o answer failed"})
        store.record({"prompt": first["prompt"], "model": REFERENCE, "task": first["task"], "kind": "judge",
                      "judges": call_id, "graded": call_id, "against": ref_id, "status": "error",
                      "http_status": 502, "error": "judge timed out"})
        store.flush()
        for call_id, quality in feedback:
            store.feedback(call_id, quality)
    return expected


def test_shadow_judged_pairs_train_the_next_router(env, zeroeval, static_encoder_dir):
    from router_ml.train import outcomes_from_store

    url = f"sqlite:///{env / 'calls.db'}"
    assert set(zeroeval["quality"].unique()) <= {0.0, 1.0}
    expected = record_judged(url, zeroeval, misjudged=5)
    assert sum(0 < q < 1 for q in expected.values()) == 5  # the disagreeing verdicts' mean

    table, info = outcomes_from_store(url)
    got = {(r["prompt"], r["model"]): r["quality"] for r in table.iter_rows(named=True)}
    assert got == pytest.approx(expected) and table.height == 270  # verdict rows are never outcomes
    assert (info["calls_with_feedback"], info["calls_judged"], info["verdicts"]) == (5, 265, 180)
    assert (info["calls_unlabelled"], info["failed_calls"], info["superseded_calls"]) == (0, 2, 0)
    feedback_only, info = outcomes_from_store(url, judged=False)
    assert feedback_only.height == 5 and info["calls_judged"] == 265 and not info["judged_used"]

    result = invoke(*TRAIN, "--from-store", "--out", str(env / "bundle"))
    assert result.exit_code == 0, result.output
    output = " ".join(result.output.split())
    assert (f"call log {url}: 270 outcome(s) from 5 answer(s) with feedback, 265 judged without feedback (180 "
            "verdict(s)); not used: 0 answered without feedback or a verdict yet, 2 failed, 0 superseded") in output
    assert "trained on 270 of 270 outcomes" in output
    meta = json.loads((env / "bundle" / META_FILE).read_text())
    assert meta["models"] == ZEROEVAL_MODELS and meta["data"]["store"]["calls_judged"] == 265
    bundle = load_bundle(env / "bundle", static_dir=static_encoder_dir)
    assert bundle.choose(*bundle.predict(["What is 17 * 23?"], [12])).shape == (1,)

    result = invoke(*TRAIN, "--from-store", "--no-judged", "--out", str(env / "feedback-only"))
    assert result.exit_code == 1
    output = " ".join(result.output.split())
    assert "5 outcome(s) from 5 answer(s) with feedback; not used: 265 judged only (--no-judged)" in output
    assert "(5 labelled outcome(s) on 2 models)" in output and not (env / "feedback-only").exists()


def test_a_postgresql_call_log_with_judged_pairs(postgres_url, zeroeval):
    from router_ml.train import outcomes_from_store

    expected = record_judged(postgres_url, zeroeval.head(30), misjudged=2)
    table, info = outcomes_from_store(postgres_url)
    assert {(r["prompt"], r["model"]): r["quality"] for r in table.iter_rows(named=True)} == pytest.approx(expected)
    assert (info["calls_with_feedback"], info["calls_judged"], info["verdicts"], info["failed_calls"]) == (2, 28, 20, 2)
