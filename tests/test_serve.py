"""The gateway app driven by the official openai SDK (async, in-process ASGI transport), with fake providers."""

from __future__ import annotations

import asyncio

import httpx
import openai
import polars as pl
import pytest

from fake_provider import HandlerProvider, failing
from router_ml.data.prepare import prepare
from router_ml.data.report import ImportReport
from router_ml.embed import StaticEncoder
from router_ml.serve.app import create_app
from router_ml.train import TrainConfig, run


@pytest.fixture(scope="module")
def bundle(mini_files, static_encoder_dir, tmp_path_factory):
    outcomes = prepare(mini_files, ImportReport(), encoder=None)
    out = tmp_path_factory.mktemp("bundle")
    config = TrainConfig(name="serve-test", router="linear", sources=["routerbench"], min_prompts=50, n_trials=0)
    result = run(config, outcomes, StaticEncoder(static_encoder_dir), out)
    prompts = outcomes.filter(pl.col("source") == "routerbench")["prompt"].unique().to_list()
    return out, result.meta, prompts


class Log:
    def __init__(self):
        self.calls = []

    def record(self, call: dict) -> None:
        self.calls.append(call)


def _client(app) -> openai.AsyncOpenAI:
    transport = httpx.ASGITransport(app=app)
    return openai.AsyncOpenAI(api_key="unused", base_url="http://gateway/v1", max_retries=0,
                              http_client=httpx.AsyncClient(transport=transport, base_url="http://gateway"))


def _app(bundle, static_encoder_dir, providers, store=None):
    directory, meta, _ = bundle
    return create_app(directory, providers, store=store, encoder=StaticEncoder(static_encoder_dir))


def test_routed_completion_says_which_model_served_it_and_logs_the_call(bundle, static_encoder_dir):
    _, meta, prompts = bundle
    fakes = {m: HandlerProvider(lambda r, m=m: f"answer from {m}") for m in meta["models"]}
    log = Log()
    app = _app(bundle, static_encoder_dir, fakes, log)

    async def go():
        client = _client(app)
        raw = await client.chat.completions.with_raw_response.create(
            model="router-ml/auto", messages=[{"role": "user", "content": prompts[0]}])
        return raw.headers, raw.parse()

    headers, completion = asyncio.run(go())
    served = completion.model
    assert served in meta["models"] and headers["x-router-ml-model"] == served
    assert completion.choices[0].message.content == f"answer from {served}"
    assert len(fakes[served].requests) == 1
    assert [c["status"] for c in log.calls] == ["ok"] and log.calls[0]["model"] == served
    assert log.calls[0]["routed"] is True


def test_quality_policy_in_the_model_name_and_concrete_models_pass_through(bundle, static_encoder_dir):
    _, meta, prompts = bundle
    fakes = {m: HandlerProvider(lambda r, m=m: m) for m in meta["models"]}
    app = _app(bundle, static_encoder_dir, fakes)

    async def go():
        client = _client(app)
        strict = await client.chat.completions.create(model="router-ml/auto:quality=1.0",
                                                      messages=[{"role": "user", "content": prompts[1]}])
        direct = await client.chat.completions.create(model=meta["models"][0],
                                                      messages=[{"role": "user", "content": "hi"}])
        return strict, direct

    strict, direct = asyncio.run(go())
    transport = httpx.ASGITransport(app=app)

    async def route():
        async with httpx.AsyncClient(transport=transport, base_url="http://gateway") as client:
            return (await client.post("/v1/route", json={"prompt": prompts[1], "policy": {"quality": 1.0}})).json()

    decision = asyncio.run(route())
    best = max(decision["predicted"], key=lambda p: p["quality"])["model"]
    assert strict.model == decision["model"] == best
    assert direct.model == meta["models"][0]


def test_streaming_ends_with_done_and_usage(bundle, static_encoder_dir):
    _, meta, prompts = bundle
    fakes = {m: HandlerProvider(lambda r: "one two three") for m in meta["models"]}
    app = _app(bundle, static_encoder_dir, fakes)

    async def go():
        client = _client(app)
        stream = await client.chat.completions.create(model="router-ml/auto", stream=True,
                                                      messages=[{"role": "user", "content": prompts[2]}])
        return [chunk async for chunk in stream]

    chunks = asyncio.run(go())
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "one two three"
    assert chunks[-1].usage is not None and chunks[-1].choices[0].finish_reason == "stop"


def test_failure_before_the_first_byte_falls_back_and_errors_map_to_openai_errors(bundle, static_encoder_dir):
    _, meta, prompts = bundle
    log = Log()
    fakes = {m: HandlerProvider(failing(503, True)) for m in meta["models"]}
    app = _app(bundle, static_encoder_dir, fakes, log)

    async def go():
        client = _client(app)
        with pytest.raises(openai.APIStatusError) as raised:
            await client.chat.completions.create(model="router-ml/auto",
                                                 messages=[{"role": "user", "content": prompts[3]}])
        return raised.value

    error = asyncio.run(go())
    assert error.status_code == 503 and "upstream" in error.message
    tried = [c["model"] for c in log.calls]
    assert len(tried) == 2 and len(set(tried)) == 2 and all(c["status"] == "error" for c in log.calls)
    assert len({c["call_id"] for c in log.calls}) == 2  # each attempt is its own row in the call log


@pytest.mark.parametrize("body, field", [
    ({"model": "router-ml/auto", "messages": []}, "messages"),
    ({"model": "router-ml/auto"}, "messages"),
    ({"model": "router-ml/auto", "messages": [{"role": "user", "content": "x"}], "temperature": "hot"}, "temperature"),
    ({"model": "no-such-model", "messages": [{"role": "user", "content": "x"}]}, "model"),
    ({"model": "router-ml/auto:quality", "messages": [{"role": "user", "content": "x"}]}, "model"),
])
def test_bad_requests_get_a_4xx_naming_the_field(bundle, static_encoder_dir, body, field):
    _, meta, _ = bundle
    app = _app(bundle, static_encoder_dir, {m: HandlerProvider(lambda r: "x") for m in meta["models"]})
    transport = httpx.ASGITransport(app=app)

    async def go():
        async with httpx.AsyncClient(transport=transport, base_url="http://gateway") as client:
            return await client.post("/v1/chat/completions", json=body)

    response = asyncio.run(go())
    assert 400 <= response.status_code < 500
    error = response.json()["error"]
    assert field in error["message"] or error["param"] == field


def test_models_health_ready_and_reload(bundle, static_encoder_dir):
    _, meta, _ = bundle
    app = _app(bundle, static_encoder_dir, {m: HandlerProvider(lambda r: "x") for m in meta["models"]})
    transport = httpx.ASGITransport(app=app)

    async def go():
        async with httpx.AsyncClient(transport=transport, base_url="http://gateway") as client:
            return [await client.get("/healthz"), await client.get("/readyz"), await client.get("/v1/models"),
                    await client.post("/admin/reload")]

    health, ready, models, reload = asyncio.run(go())
    assert health.json() == {"status": "ok"}
    assert ready.json()["bundle_version"] == meta["version"]
    assert {m["id"] for m in models.json()["data"]} == {"router-ml/auto", *meta["models"]}
    assert reload.json()["bundle_version"] == meta["version"]


def test_fallback_after_a_retryable_failure_is_answered_and_both_attempts_are_logged(bundle, static_encoder_dir,
                                                                                      tmp_path):
    from router_ml.serve.providers.base import ProviderError
    from router_ml.serve.store import CallStore

    _, meta, prompts = bundle
    failures = [ProviderError("overloaded", 503, retryable=True, provider="fake")]

    def first_call_fails(request):
        if failures:
            raise failures.pop()
        return f"answer from {request.model}"

    store = CallStore(f"sqlite:///{tmp_path / 'calls.db'}")
    app = _app(bundle, static_encoder_dir, {m: HandlerProvider(first_call_fails) for m in meta["models"]}, store)

    async def go():
        raw = await _client(app).chat.completions.with_raw_response.create(
            model="router-ml/auto", messages=[{"role": "user", "content": prompts[4]}])
        return raw.headers, raw.parse()

    headers, completion = asyncio.run(go())
    store.flush()
    answered = store.get(headers["x-router-ml-call-id"])
    store.close()
    assert completion.choices[0].message.content == f"answer from {completion.model}"
    assert answered["status"] == "ok" and answered["model"] == completion.model
    assert store.written_rows == 2 and store.lost_rows == 0
