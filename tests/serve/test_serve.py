"""The gateway app driven by the official openai SDK (async, in-process ASGI transport), with fake providers."""

from __future__ import annotations

import asyncio
import json
import threading
import time

import httpx
import openai
import polars as pl
import pytest

from router_ml.calllog.record import CallRecord
from router_ml.data.prepare import prepare
from router_ml.data.report import ImportReport
from router_ml.embed import StaticEncoder
from router_ml.serve.app import create_app
from router_ml.serve.providers.handler import HandlerProvider, failing
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
    """A call log keeping the rows the gateway hands it, as the store would write them."""

    def __init__(self):
        self.calls = []

    def record(self, call: CallRecord) -> None:
        self.calls.append(call.as_row())


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


def test_an_oversized_body_is_413_naming_the_limit(bundle, static_encoder_dir):
    _, meta, _ = bundle
    directory, _, _ = bundle
    app = create_app(directory, {m: HandlerProvider(lambda r: "x") for m in meta["models"]},
                     encoder=StaticEncoder(static_encoder_dir), max_body_bytes=10_000)
    client = _client(app)
    with pytest.raises(openai.APIStatusError) as raised:
        asyncio.run(client.chat.completions.create(model="router-ml/auto",
                                                   messages=[{"role": "user", "content": "x" * 20_000}]))
    assert raised.value.status_code == 413 and "10000 bytes" in raised.value.message

    async def chunked():  # no Content-Length: refused once the body grows past the limit
        async def body():
            yield b'{"model": "router-ml/auto", "messages": [{"role": "user", "content": "'
            for _ in range(20):
                yield b"x" * 1000
            yield b'"}]}'

        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gateway") as c:
            return await c.post("/v1/chat/completions", content=body(), headers={"content-type": "application/json"})

    response = asyncio.run(chunked())
    assert "content-length" not in response.request.headers
    assert response.status_code == 413 and response.json()["error"]["param"] == "body"
    ok = asyncio.run(_client(app).chat.completions.create(model="router-ml/auto",
                                                           messages=[{"role": "user", "content": "x" * 100}]))
    assert ok.choices[0].message.content == "x"


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
    from router_ml.calllog.store import CallStore

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


class SlowUpstream:
    """An OpenAI-compatible upstream (raw ASGI) that answers slowly: a stream of 200 chunks 50 ms apart, or one
    answer after 10 s. It notes when the gateway hangs up on it (the ASGI ``http.disconnect`` message)."""

    def __init__(self):
        self.disconnected = threading.Event()
        self.chunks_sent = 0

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return
        body, more = b"", True
        while more:
            message = await receive()
            body, more = body + message.get("body", b""), message.get("more_body", False)
        request = json.loads(body)
        watch = asyncio.ensure_future(receive())  # after the body, only http.disconnect can arrive
        watch.add_done_callback(lambda _: self.disconnected.set())
        if not request.get("stream"):
            await asyncio.wait((watch,), timeout=10)
            if watch.done():
                return
            answer = {"id": "x", "object": "chat.completion", "created": 0, "model": request["model"],
                      "choices": [{"index": 0, "message": {"role": "assistant", "content": "late"},
                                   "finish_reason": "stop"}]}
            await send({"type": "http.response.start", "status": 200,
                        "headers": [(b"content-type", b"application/json")]})
            await send({"type": "http.response.body", "body": json.dumps(answer).encode()})
            return
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/event-stream")]})
        for i in range(200):
            if watch.done():
                return
            chunk = {"id": "x", "object": "chat.completion.chunk", "created": 0, "model": request["model"],
                     "choices": [{"index": 0, "delta": {"content": f"word{i} "}, "finish_reason": None}]}
            await send({"type": "http.response.body", "body": f"data: {json.dumps(chunk)}\n\n".encode(),
                        "more_body": True})
            self.chunks_sent += 1
            await asyncio.sleep(0.05)
        await send({"type": "http.response.body", "body": b"data: [DONE]\n\n"})


@pytest.mark.parametrize("stream", [True, False])
def test_a_client_that_goes_away_cancels_the_upstream_request(bundle, static_encoder_dir, stream):
    from loopback import serve
    from router_ml.serve.providers import OpenAICompatProvider

    _, meta, prompts = bundle
    upstream, log = SlowUpstream(), Log()
    with serve(upstream) as upstream_url:
        provider = OpenAICompatProvider(upstream_url + "/v1")
        app = _app(bundle, static_encoder_dir, {m: provider for m in meta["models"]}, log)
        with serve(app) as gateway_url:
            client = openai.OpenAI(base_url=gateway_url + "/v1", api_key="unused", max_retries=0, timeout=1.0)
            request = {"model": meta["models"][0], "messages": [{"role": "user", "content": prompts[0]}]}
            if stream:
                with client.chat.completions.create(**request, stream=True) as chunks:
                    next(iter(chunks))  # the first chunk arrived; then the client hangs up
            else:
                with pytest.raises(openai.APITimeoutError):
                    client.chat.completions.create(**request)
            assert upstream.disconnected.wait(5), "the upstream request was not cancelled"
            deadline = time.monotonic() + 5
            while not log.calls and time.monotonic() < deadline:
                time.sleep(0.05)
    assert upstream.chunks_sent < 100
    (call,) = log.calls
    assert call["status"] == "error" and call["http_status"] == 499 and "client closed" in call["error"]


def test_reload_while_requests_are_in_flight_fails_none(bundle, static_encoder_dir):
    _, meta, prompts = bundle
    app = _app(bundle, static_encoder_dir, {m: HandlerProvider(lambda r: "ok") for m in meta["models"]})

    async def go():
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://gateway") as client:
            chats = [client.post("/v1/chat/completions", json={
                "model": "router-ml/auto", "messages": [{"role": "user", "content": prompts[i % len(prompts)]}]})
                for i in range(40)]
            reloads = [client.post("/admin/reload") for _ in range(4)]
            return await asyncio.gather(*chats, *reloads)

    answers = asyncio.run(go())
    assert [r.status_code for r in answers] == [200] * 44
    assert all(r.json().get("router_ml", {}).get("decision") for r in answers[:40])


def test_workers_pick_up_a_bundle_rewritten_on_disk(bundle, mini_files, static_encoder_dir, tmp_path, caplog):
    import shutil

    from router_ml.serve.state import BundleHolder, watch

    directory, meta, _ = bundle
    served = tmp_path / "served"
    shutil.copytree(directory, served)
    encoder = StaticEncoder(static_encoder_dir)
    holder = BundleHolder(served, encoder=encoder)
    outcomes = prepare(mini_files, ImportReport(), encoder=None)
    config = TrainConfig(name="serve-test-2", router="mean", sources=["routerbench"], min_prompts=50, n_trials=0)
    retrained = run(config, outcomes, encoder, tmp_path / "retrained").meta["version"]
    assert retrained != meta["version"] and not holder.changed_on_disk()

    async def watch_for(seconds: float):
        task = asyncio.create_task(watch(holder, every=0.02))
        await asyncio.sleep(seconds)
        task.cancel()

    (served / "predictors.joblib").write_bytes(b"half-written")  # a bundle caught mid-write does not load
    asyncio.run(watch_for(0.2))
    assert holder.current.version == meta["version"] and "does not load" in caplog.text
    for name in ("predictors.joblib", "bundle.json"):
        shutil.copy(tmp_path / "retrained" / name, served / name)
    asyncio.run(watch_for(0.5))
    assert holder.current.version == retrained and not holder.changed_on_disk()


def test_a_repeated_request_is_answered_from_the_cache_at_zero_cost(bundle, static_encoder_dir):
    from router_ml.serve.gateway.cache import ResponseCache
    from router_ml.serve.providers.base import ProviderError

    _, meta, prompts = bundle
    answers = iter(["boom", "first answer", "second answer"])

    def handler(request):
        text = next(answers)
        if text == "boom":
            raise ProviderError("upstream down", status=502, retryable=False)
        return text

    fakes = {m: HandlerProvider(handler) for m in meta["models"]}
    log = Log()
    directory, _, _ = bundle
    app = create_app(directory, fakes, store=log, encoder=StaticEncoder(static_encoder_dir), cache=ResponseCache())
    request = {"model": "router-ml/auto", "messages": [{"role": "user", "content": prompts[0]}]}

    async def go():
        client = _client(app)
        with pytest.raises(openai.APIStatusError):  # an error is never cached
            await client.chat.completions.create(**request)
        first = await client.chat.completions.with_raw_response.create(**request)
        again = await client.chat.completions.with_raw_response.create(**request)
        warmer = await client.chat.completions.create(**request, temperature=0.9)  # another request: a miss
        return first, again, warmer

    first, again, warmer = asyncio.run(go())
    assert again.headers["x-router-ml-cache"] == "exact" and "x-router-ml-cache" not in first.headers
    assert again.parse().choices[0].message.content == first.parse().choices[0].message.content == "first answer"
    assert again.headers["x-router-ml-call-id"] != first.headers["x-router-ml-call-id"]
    assert warmer.choices[0].message.content == "second answer"
    hit = [c for c in log.calls if c.get("cache")]
    assert len(hit) == 1 and hit[0]["cost_usd"] == 0.0 and hit[0]["status"] == "ok"
    assert hit[0]["saved_usd"] == pytest.approx(first.parse().router_ml["cost_usd"])


def test_build_app_loads_the_bundle_and_its_encoder_once(bundle, static_encoder_dir, tmp_path, monkeypatch):
    from router_ml import bundle as bundle_module
    from router_ml.config import get_settings
    from router_ml.serve import main, state

    directory, meta, _ = bundle
    env = {"ROUTER_ML_BUNDLE": str(directory), "ROUTER_ML_STATIC_ENCODER": str(static_encoder_dir),
           "ROUTER_ML_PROVIDER": "openai", "ROUTER_ML_UPSTREAM_BASE_URL": "http://127.0.0.1:9/v1",  # never called
           "ROUTER_ML_STORE_URL": f"sqlite:///{tmp_path / 'calls.db'}", "ROUTER_ML_STORE_JOURNAL": str(tmp_path / "j")}
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    loads, encoders = [], []
    real_load, real_encoder = bundle_module.load_bundle, bundle_module.load_encoder

    def load_bundle(*args, **kwargs):
        loads.append(args)
        return real_load(*args, **kwargs)

    def load_encoder(*args, **kwargs):
        encoders.append(args)
        return real_encoder(*args, **kwargs)

    monkeypatch.setattr(state, "load_bundle", load_bundle)  # what BundleHolder calls
    monkeypatch.setattr(bundle_module, "load_bundle", load_bundle)  # any other path through router_ml.bundle
    monkeypatch.setattr(bundle_module, "load_encoder", load_encoder)
    get_settings.cache_clear()
    try:
        app = main.build_app()
        try:
            assert len(loads) == 1 and len(encoders) == 1
            assert app.state.bundles.current.version == meta["version"]
            assert sorted(app.state.providers) == sorted(meta["models"])
        finally:
            app.state.store.close()
            app.state.tenants.close()
    finally:
        get_settings.cache_clear()
