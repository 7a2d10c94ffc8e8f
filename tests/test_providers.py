"""Provider adapters: replay of recorded RouterBench answers, and the OpenAI-compatible adapter against a
real loopback HTTP server speaking the OpenAI wire format (JSON and server-sent events)."""

from __future__ import annotations

import asyncio
import json
import socket
import time

import polars as pl
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from loopback import collect, serve

from router_ml.data.costs import add_tokens_and_costs
from router_ml.data.importers import routerbench
from router_ml.serve.providers import (
    ChatChunk,
    ChatRequest,
    OpenAICompatProvider,
    ProviderError,
    ReplayProvider,
)
from router_ml.serve.providers.wire import Timeouts, UpstreamPool
from router_ml.tokens import count_tokens

MODEL = "gpt-4-1106-preview"


def _user(text, system: str | None = None) -> list[dict]:
    return ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": text}]


# ---------------------------------------------------------------- replay


@pytest.fixture(scope="module")
def outcomes(mini_files) -> pl.DataFrame:
    from router_ml.data.report import ImportReport

    return add_tokens_and_costs(routerbench.load(mini_files, ImportReport()))


@pytest.fixture(scope="module")
def replay(outcomes) -> ReplayProvider:
    return ReplayProvider.from_outcomes(outcomes, speed=0)


def test_replay_returns_the_recorded_response(outcomes, replay):
    row = outcomes.filter(pl.col("model") == MODEL).row(3, named=True)
    messages = _user(row["prompt"], system="You are helpful.")
    result = asyncio.run(replay.complete(ChatRequest(model=MODEL, messages=messages)))
    assert result.text == row["response"] and result.finish_reason == "stop"
    assert result.usage.output_tokens == row["output_tokens"]
    assert result.usage.input_tokens == count_tokens(row["prompt"]) + count_tokens("You are helpful.")
    # The same prompt sent as content parts, after an earlier turn: the last user message is the prompt.
    parts = [{"role": "user", "content": "earlier"}, {"role": "assistant", "content": "ok"},
             {"role": "user", "content": [{"type": "text", "text": row["prompt"]}]}]
    assert asyncio.run(replay.complete(ChatRequest(model=MODEL, messages=parts))).text == row["response"]
    # Another model answers that prompt with its own recorded response.
    other = outcomes.filter((pl.col("model") == "claude-v2") & (pl.col("prompt") == row["prompt"])).row(0, named=True)
    assert asyncio.run(replay.complete(ChatRequest(model="claude-v2", messages=messages))).text == other["response"]


def test_replay_unrecorded_prompt_is_a_deterministic_recorded_response(outcomes, replay):
    recorded = set(outcomes.filter(pl.col("model") == MODEL)["response"])
    request = ChatRequest(model=MODEL, messages=_user("What is the capital of Burkina Faso? (never recorded)"))
    first = asyncio.run(replay.complete(request))
    assert first.text in recorded
    again = ReplayProvider.from_outcomes(outcomes, models=[MODEL], speed=0)
    assert asyncio.run(again.complete(request)).text == first.text == asyncio.run(replay.complete(request)).text
    picks = {asyncio.run(replay.complete(ChatRequest(model=MODEL, messages=_user(f"question {i}")))).text
             for i in range(30)}
    assert len(picks) > 1 and picks <= recorded


def test_replay_unknown_model_is_404(replay):
    with pytest.raises(ProviderError) as caught:
        asyncio.run(replay.complete(ChatRequest(model="gpt-9", messages=_user("hi"))))
    assert caught.value.status == 404 and not caught.value.retryable
    assert "gpt-9" in caught.value.message and "claude-v1" in caught.value.message
    restricted = ReplayProvider.from_outcomes(pl.DataFrame({"prompt": ["p"], "model": ["a"], "response": ["r"]}),
                                              models=["a"], speed=0)
    with pytest.raises(ProviderError):
        asyncio.run(collect(restricted.stream(ChatRequest(model=MODEL, messages=_user("p")))))


def _longest(outcomes) -> dict:
    return outcomes.filter(pl.col("model") == MODEL).sort("output_tokens", descending=True).row(0, named=True)


def test_replay_stream_joins_to_the_same_text_and_ends_with_usage(outcomes, replay):
    row = _longest(outcomes)
    assert row["output_tokens"] > 20
    request = ChatRequest(model=MODEL, messages=_user(row["prompt"]))
    chunks = asyncio.run(collect(replay.stream(request)))
    assert len(chunks) > 3
    assert "".join(c.text for c in chunks) == row["response"]
    assert all(c.finish_reason is None and c.usage is None for c in chunks[:-1])
    assert chunks[-1].finish_reason == "stop" and chunks[-1].text == ""
    assert chunks[-1].usage == asyncio.run(replay.complete(request)).usage


def test_replay_max_tokens_truncates_with_length(outcomes, replay):
    row = _longest(outcomes)
    request = ChatRequest(model=MODEL, messages=_user(row["prompt"]), max_tokens=5)
    result = asyncio.run(replay.complete(request))
    assert result.finish_reason == "length" and result.usage.output_tokens == 5
    assert row["response"].startswith(result.text) and count_tokens(result.text) == 5
    chunks = asyncio.run(collect(replay.stream(request)))
    assert "".join(c.text for c in chunks) == result.text
    assert chunks[-1].finish_reason == "length" and chunks[-1].usage.output_tokens == 5
    # A max_tokens above the answer's length changes nothing.
    long_enough = ChatRequest(model=MODEL, messages=_user(row["prompt"]), max_tokens=100_000)
    assert asyncio.run(replay.complete(long_enough)).finish_reason == "stop"


def test_replay_sleeps_recorded_or_modelled_latency_times_speed():
    frame = pl.DataFrame({"prompt": ["p", "q"], "model": ["m", "m"], "response": ["one two three", "x"],
                          "output_tokens": [3, None], "latency_ms": [400.0, None]})
    provider = ReplayProvider.from_outcomes(frame, speed=0.25)
    started = time.perf_counter()
    asyncio.run(provider.complete(ChatRequest(model="m", messages=_user("p"))))
    assert 0.09 <= time.perf_counter() - started < 0.5  # 400 ms x 0.25
    started = time.perf_counter()
    chunks = asyncio.run(collect(provider.stream(ChatRequest(model="m", messages=_user("q")))))
    assert 0.05 <= time.perf_counter() - started < 0.5  # (0.2 s + 10 ms x 1 token) x 0.25
    assert chunks[-1].usage.output_tokens == 1


# ---------------------------------------------------------------- OpenAI-compatible adapter

SEEN: dict = {}
ANSWER = ["Hello", " there,", " general", " Kenobi."]
TOOL_CALL = {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}


def _event(payload) -> bytes:
    return b"data: " + (payload if isinstance(payload, bytes) else json.dumps(payload).encode()) + b"\n\n"


def _delta(delta: dict, finish_reason=None) -> dict:
    return {"id": "c1", "object": "chat.completion.chunk", "model": "m",
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}]}


async def _sse(model: str):
    if model == "malformed":
        yield _event(_delta({"role": "assistant", "content": "fine"}))
        yield b"data: {not json\n\n"
        return
    yield b": keep-alive comment\n\n"
    yield _event(_delta({"role": "assistant", "content": ""}))
    if model == "tools":
        first = {**TOOL_CALL, "index": 0, "function": {"name": "get_weather", "arguments": '{"city": '}}
        yield _event(_delta({"tool_calls": [first]}))
        yield _event(_delta({"tool_calls": [{"index": 0, "function": {"arguments": '"Paris"}'}}]}))
        yield _event(_delta({}, "tool_calls"))
    else:
        for i, piece in enumerate(ANSWER):
            yield _event(_delta({"content": piece}))
            await asyncio.sleep(0)
            if model == "cut" and i == 1:
                raise RuntimeError("upstream dies midway")  # uvicorn drops the connection mid-body
            if model == "cut-clean" and i == 1:
                return  # a clean end without finish_reason or [DONE]
        yield _event(_delta({}, "stop"))
    yield _event({"id": "c1", "object": "chat.completion.chunk", "choices": [],
                  "usage": {"prompt_tokens": 11, "completion_tokens": 4, "total_tokens": 15}})
    yield b"data: [DONE]\n\n"


async def chat_completions(request: Request) -> Response:
    body = await request.json()
    SEEN["body"], SEEN["headers"] = body, dict(request.headers)
    model = body["model"]
    if model == "rate-limited":
        return JSONResponse({"error": {"message": "Rate limit reached", "type": "requests"}}, 429,
                            headers={"Retry-After": "7"})
    if model == "boom":
        return JSONResponse({"error": {"message": "The server had an error", "type": "server_error"}}, 500)
    if model == "bad-request":
        return JSONResponse({"error": {"message": "Invalid value for 'temperature': must be <= 2.",
                                       "type": "invalid_request_error", "param": "temperature"}}, 400)
    if model == "slow":
        await asyncio.sleep(1.5)
    if body.get("stream"):
        return StreamingResponse(_sse(model), media_type="text/event-stream")
    if model == "malformed":
        return Response(b'{"choices": [oops', media_type="application/json")
    message = ({"role": "assistant", "content": None, "tool_calls": [TOOL_CALL]} if model == "tools"
               else {"role": "assistant", "content": "".join(ANSWER)})
    return JSONResponse({"id": "c1", "object": "chat.completion", "model": model,
                         "choices": [{"index": 0, "message": message,
                                      "finish_reason": "tool_calls" if model == "tools" else "stop"}],
                         "usage": {"prompt_tokens": 11, "completion_tokens": 4, "total_tokens": 15}})


@pytest.fixture(scope="module")
def upstream() -> str:
    with serve(Starlette(routes=[Route("/v1/chat/completions", chat_completions, methods=["POST"])])) as base_url:
        yield base_url + "/v1/"


def _run(upstream: str, call, **kwargs):
    """Run ``call(provider)`` in a fresh event loop with a provider owning its client."""
    async def main():
        async with OpenAICompatProvider(upstream, **kwargs) as provider:
            return await call(provider)
    return asyncio.run(main())


def _error(upstream: str, model: str, stream: bool, **kwargs) -> ProviderError:
    request = ChatRequest(model=model, messages=_user("hi"))
    with pytest.raises(ProviderError) as caught:
        _run(upstream, lambda p: collect(p.stream(request)) if stream else p.complete(request), **kwargs)
    return caught.value


def test_openai_complete_answer_and_usage(upstream):
    request = ChatRequest(model="ok", messages=_user("hi"), temperature=0.2, max_tokens=50)
    result = _run(upstream, lambda p: p.complete(request), api_key="sk-test", name="oai")
    assert result.text == "Hello there, general Kenobi." and result.finish_reason == "stop"
    assert (result.usage.input_tokens, result.usage.output_tokens) == (11, 4) and result.tool_calls is None
    assert SEEN["headers"]["authorization"] == "Bearer sk-test"
    assert SEEN["body"] == {"model": "ok", "messages": _user("hi"), "temperature": 0.2, "max_tokens": 50}
    # No key: no Authorization header; a shared pool passed in is used and left open.
    async def shared():
        pool = UpstreamPool()
        provider = OpenAICompatProvider(upstream, pool=pool)
        answer = await provider.complete(ChatRequest(model="ok", messages=_user("hi")))
        await provider.aclose()
        assert not pool.session.closed
        await pool.aclose()
        return answer
    assert asyncio.run(shared()).text == "Hello there, general Kenobi."
    assert "authorization" not in SEEN["headers"]


def test_openai_stream_text_usage_and_done(upstream):
    request = ChatRequest(model="ok", messages=_user("hi"), stop=["\n\n"])
    chunks = _run(upstream, lambda p: collect(p.stream(request)))
    assert [c.text for c in chunks[:-1]] == ANSWER
    assert chunks[-1].finish_reason == "stop" and chunks[-1].usage.output_tokens == 4
    assert chunks[-1].usage.input_tokens == 11
    assert SEEN["body"]["stream"] is True and SEEN["body"]["stream_options"] == {"include_usage": True}
    assert SEEN["body"]["stop"] == ["\n\n"]


def test_openai_tool_calls_pass_through(upstream):
    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}]
    request = ChatRequest(model="tools", messages=_user("weather in Paris?"), tools=tools, tool_choice="auto")
    result = _run(upstream, lambda p: p.complete(request))
    assert result.tool_calls == [TOOL_CALL] and result.finish_reason == "tool_calls" and result.text == ""
    assert SEEN["body"]["tools"] == tools and SEEN["body"]["tool_choice"] == "auto"
    chunks = _run(upstream, lambda p: collect(p.stream(request)))
    deltas = [call for c in chunks if c.tool_calls for call in c.tool_calls]
    assert deltas[0]["id"] == "call_1" and deltas[0]["function"]["name"] == "get_weather"
    assert "".join(d["function"]["arguments"] for d in deltas) == '{"city": "Paris"}'
    assert chunks[-1].finish_reason == "tool_calls" and chunks[-1].usage.output_tokens == 4


@pytest.mark.parametrize("stream", [False, True])
def test_openai_http_errors(upstream, stream):
    limited = _error(upstream, "rate-limited", stream)
    assert (limited.status, limited.retryable, limited.retry_after) == (429, True, 7.0)
    assert "Rate limit reached" in limited.message
    boom = _error(upstream, "boom", stream)
    assert boom.status == 502 and boom.retryable and "The server had an error" in boom.message
    bad = _error(upstream, "bad-request", stream, name="vllm")
    assert (bad.status, bad.retryable, bad.provider) == (400, False, "vllm")
    assert "Invalid value for 'temperature': must be <= 2." in bad.message


@pytest.mark.parametrize("stream", [False, True])
def test_openai_malformed_json_is_502(upstream, stream):
    error = _error(upstream, "malformed", stream)
    assert (error.status, error.retryable) == (502, False) and "malformed" in error.message


@pytest.mark.parametrize("model", ["cut", "cut-clean"])
def test_openai_stream_cut_midway_raises_from_the_iterator(upstream, model):
    received: list[ChatChunk] = []

    async def consume(provider):
        async for chunk in provider.stream(ChatRequest(model=model, messages=_user("hi"))):
            received.append(chunk)

    with pytest.raises(ProviderError) as caught:
        _run(upstream, consume)
    assert [c.text for c in received] == ANSWER[:2]
    assert caught.value.status == 502 and "stream cut" in caught.value.message


@pytest.mark.parametrize("stream", [False, True])
def test_openai_timeout_is_retryable_504(upstream, stream):
    error = _error(upstream, "slow", stream, timeout=Timeouts(read=0.3))
    assert (error.status, error.retryable) == (504, True) and "timed out" in error.message


def test_openai_connection_refused_is_retryable_502():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # closed again: nothing listens there
    error = _error(f"http://127.0.0.1:{port}/v1", "ok", False, timeout=Timeouts(connect=2.0))
    assert (error.status, error.retryable) == (502, True)
