"""The Gemini adapter against a real loopback HTTP server speaking the Gemini generateContent wire format
(JSON answers, server-sent events ``data: {GenerateContentResponse}`` without a ``[DONE]`` sentinel, and
Google's ``{"error": {"code", "message", "status"}}`` error bodies)."""

from __future__ import annotations

import asyncio
import json
import socket

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from loopback import collect, serve

from router_ml.serve.providers.base import ChatChunk, ChatRequest, ProviderError
from router_ml.serve.providers.wire import Timeouts, UpstreamPool
from router_ml.serve.providers.gemini import GeminiProvider

KEY = "AIza-test-key"
SEEN: dict = {}
ANSWER = ["Hello", " there,", " general", " Kenobi."]
USAGE = {"promptTokenCount": 11, "candidatesTokenCount": 4, "thoughtsTokenCount": 3, "totalTokenCount": 18}
WEATHER_TOOL = {"type": "function", "function": {
    "name": "get_weather", "description": "Current weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}


def _user(text, system: str | None = None) -> list[dict]:
    return ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": text}]


# ---------------------------------------------------------------- the fake Gemini upstream


def _candidate(parts: list[dict] | None, finish: str | None) -> dict:
    candidate: dict = {"index": 0}
    if parts is not None:
        candidate["content"] = {"role": "model", "parts": parts}
    if finish:
        candidate["finishReason"] = finish
    return candidate


def _response(parts: list[dict] | None, finish: str | None = "STOP", usage: dict | None = None) -> dict:
    data: dict = {"candidates": [_candidate(parts, finish)], "modelVersion": "gemini-2.5-flash"}
    if usage:
        data["usageMetadata"] = usage
    return data


def _gemini_error(code: int, status: str, message: str, details: list | None = None) -> dict:
    return {"error": {"code": code, "message": message, "status": status, **({"details": details} if details else {})}}


def _tool_parts(body: dict) -> list[dict]:
    """The weather tool: call it, or answer once its functionResponse came back."""
    last = body["contents"][-1]["parts"]
    if any("functionResponse" in p for p in last):
        return [{"text": "It is 18 degrees in Paris."}]
    return [{"functionCall": {"name": "get_weather", "args": {"city": "Paris"}}, "thoughtSignature": "c2lnbmF0dXJl"}]


def _event(payload) -> bytes:
    return b"data: " + (payload if isinstance(payload, bytes) else json.dumps(payload).encode()) + b"\r\n\r\n"


async def _sse(model: str, body: dict):
    if model == "malformed":
        yield _event(_response([{"text": "fine"}], None))
        yield b"data: {not json\r\n\r\n"
        return
    if model == "blocked":
        yield _event({"promptFeedback": {"blockReason": "PROHIBITED_CONTENT"}, "usageMetadata": USAGE})
        return
    if model == "tools":
        yield _event(_response(_tool_parts(body), "STOP", USAGE))
        return
    if model == "error-midway":
        yield _event(_response([{"text": ANSWER[0]}], None))
        yield _event(_gemini_error(503, "UNAVAILABLE", "The model is overloaded. Please try again later."))
        return
    if model == "thinking":
        yield _event(_response([{"text": "Let me think...", "thought": True}], None))
    for i, piece in enumerate(ANSWER):
        last = i == len(ANSWER) - 1
        yield _event(_response([{"text": piece}], "STOP" if last else None,
                               USAGE if last else {"promptTokenCount": 11}))
        await asyncio.sleep(0)
        if model == "cut" and i == 1:
            raise RuntimeError("upstream dies midway")  # uvicorn drops the connection mid-body
        if model == "cut-clean" and i == 1:
            return  # a clean end without any finishReason (no [DONE] in Gemini streams)


async def gemini(request: Request) -> Response:
    target = request.path_params["target"]
    model, _, method = target.rpartition(":")
    body = await request.json()
    SEEN.update(path=request.url.path, query=request.url.query, headers=dict(request.headers), body=body,
                method=method)
    if method not in ("generateContent", "streamGenerateContent"):
        return JSONResponse(_gemini_error(404, "NOT_FOUND", f"unknown method {method}"), 404)
    if model == "rate-limited":
        return JSONResponse(_gemini_error(429, "RESOURCE_EXHAUSTED", "Resource has been exhausted"), 429,
                            headers={"Retry-After": "7"})
    if model == "quota":
        details = [{"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "37s"}]
        return JSONResponse(_gemini_error(429, "RESOURCE_EXHAUSTED", "You exceeded your current quota", details), 429)
    if model == "overloaded":
        return JSONResponse(_gemini_error(503, "UNAVAILABLE", "The model is overloaded. Please try again later."), 503)
    if model == "boom":
        return JSONResponse(_gemini_error(500, "INTERNAL", "An internal error has occurred."), 500)
    if model == "bad-request":
        return JSONResponse(_gemini_error(400, "INVALID_ARGUMENT",
                                          "* GenerateContentRequest.generation_config.temperature: must be <= 2"), 400)
    if model == "slow":
        await asyncio.sleep(1.5)
    if method == "streamGenerateContent":
        if request.query_params.get("alt") != "sse":
            return JSONResponse(_gemini_error(400, "INVALID_ARGUMENT", "this fake only streams SSE"), 400)
        return StreamingResponse(_sse(model, body), media_type="text/event-stream")
    if model == "malformed":
        return Response(b'{"candidates": [oops', media_type="application/json")
    if model == "blocked":
        return JSONResponse({"promptFeedback": {"blockReason": "SAFETY", "safetyRatings": []}, "usageMetadata": USAGE})
    if model == "tools":
        return JSONResponse(_response(_tool_parts(body), "STOP", USAGE))
    if model == "length":
        return JSONResponse(_response([{"text": "Hello"}], "MAX_TOKENS", USAGE))
    if model == "safety":
        return JSONResponse(_response(None, "SAFETY", USAGE))
    if model == "thinking":
        return JSONResponse(_response([{"text": "Let me think...", "thought": True}, {"text": "".join(ANSWER)}],
                                      "STOP", USAGE))
    return JSONResponse(_response([{"text": "".join(ANSWER[:2])}, {"text": "".join(ANSWER[2:])}], "STOP", USAGE))


@pytest.fixture(scope="module")
def upstream() -> str:
    with serve(Starlette(routes=[Route("/v1beta/models/{target}", gemini, methods=["POST"])])) as base_url:
        yield base_url + "/"


def _run(upstream: str, call, **kwargs):
    """Run ``call(provider)`` in a fresh event loop with a provider owning its client."""
    async def main():
        async with GeminiProvider(upstream, **{"api_key": KEY, **kwargs}) as provider:
            return await call(provider)
    return asyncio.run(main())


def _error(upstream: str, model: str, stream: bool, **kwargs) -> ProviderError:
    request = ChatRequest(model=model, messages=_user("hi"))
    with pytest.raises(ProviderError) as caught:
        _run(upstream, lambda p: collect(p.stream(request)) if stream else p.complete(request), **kwargs)
    return caught.value


# ---------------------------------------------------------------- requests as Gemini receives them


def test_complete_url_key_header_roles_and_generation_config(upstream):
    messages = [{"role": "system", "content": "You are terse."},
                {"role": "developer", "content": [{"type": "text", "text": "Answer in English."}]},
                {"role": "user", "content": "Hi"},
                {"role": "assistant", "content": "Hello!"},
                {"role": "user", "content": "Who are you?"},
                {"role": "user", "content": [{"type": "text", "text": "Briefly."}]}]
    request = ChatRequest(model="ok", messages=messages, temperature=0.2, top_p=0.9, max_tokens=50, stop=["\n\n"])
    result = _run(upstream, lambda p: p.complete(request))
    assert result.text == "Hello there, general Kenobi." and result.finish_reason == "stop"
    assert (result.usage.input_tokens, result.usage.output_tokens) == (11, 7)  # 4 candidates + 3 thoughts
    assert result.tool_calls is None
    assert SEEN["path"] == "/v1beta/models/ok:generateContent" and SEEN["query"] == ""
    assert SEEN["headers"]["x-goog-api-key"] == KEY and "authorization" not in SEEN["headers"]
    assert KEY not in SEEN["path"] + SEEN["query"]
    assert SEEN["body"] == {
        "contents": [{"role": "user", "parts": [{"text": "Hi"}]},
                     {"role": "model", "parts": [{"text": "Hello!"}]},
                     {"role": "user", "parts": [{"text": "Who are you?"}, {"text": "Briefly."}]}],
        "systemInstruction": {"parts": [{"text": "You are terse.\n\nAnswer in English."}]},
        "generationConfig": {"temperature": 0.2, "topP": 0.9, "maxOutputTokens": 50, "stopSequences": ["\n\n"]},
    }


def test_defaults_omit_unset_fields_and_key_and_respect_api_version(upstream):
    async def main():
        pool = UpstreamPool()
        provider = GeminiProvider(upstream.rstrip("/"), pool=pool)
        answer = await provider.complete(ChatRequest(model="models/ok", messages=_user("hi")))
        await provider.aclose()
        assert not pool.session.closed  # a shared pool is left open
        await pool.aclose()
        return answer

    assert asyncio.run(main()).text == "Hello there, general Kenobi."
    assert SEEN["path"] == "/v1beta/models/ok:generateContent"
    assert SEEN["body"] == {"contents": [{"role": "user", "parts": [{"text": "hi"}]}]}
    assert "x-goog-api-key" not in SEEN["headers"]
    provider = GeminiProvider(api_key="secret", api_version="v1")
    assert provider.url("gemini-2.5-flash", "generateContent") == (
        "https://generativelanguage.googleapis.com/v1/models/gemini-2.5-flash:generateContent")
    assert "secret" not in repr(provider)


@pytest.mark.parametrize("messages, tools, expected", [
    ([{"role": "tool", "tool_call_id": "nope", "content": "x"}], None, "unknown tool_call_id 'nope'"),
    ([{"role": "assistant", "tool_calls": [{"id": "c", "function": {"name": "f", "arguments": "{oops"}}]}], None,
     "not JSON"),
    (_user("hi"), [{"type": "web_search"}], "only function tools"),
])
def test_untranslatable_request_is_400_before_any_call(upstream, messages, tools, expected):
    SEEN.clear()
    with pytest.raises(ProviderError) as caught:
        _run(upstream, lambda p: p.complete(ChatRequest(model="ok", messages=messages, tools=tools)))
    assert (caught.value.status, caught.value.retryable) == (400, False) and expected in caught.value.message
    assert SEEN == {}


def test_finish_reasons_and_thought_parts(upstream):
    length = _run(upstream, lambda p: p.complete(ChatRequest(model="length", messages=_user("hi"))))
    assert (length.text, length.finish_reason) == ("Hello", "length")
    safety = _run(upstream, lambda p: p.complete(ChatRequest(model="safety", messages=_user("hi"))))
    assert (safety.text, safety.finish_reason) == ("", "content_filter")
    thinking = _run(upstream, lambda p: p.complete(ChatRequest(model="thinking", messages=_user("hi"))))
    assert thinking.text == "Hello there, general Kenobi."
    chunks = _run(upstream, lambda p: collect(p.stream(ChatRequest(model="thinking", messages=_user("hi")))))
    assert "".join(c.text for c in chunks) == "Hello there, general Kenobi."


# ---------------------------------------------------------------- tool calls, both directions


def test_tool_call_round_trip(upstream):
    request = ChatRequest(model="tools", messages=_user("Weather in Paris?"), tools=[WEATHER_TOOL],
                          tool_choice="auto")
    first = _run(upstream, lambda p: p.complete(request))
    assert first.finish_reason == "tool_calls" and first.text == ""
    assert first.tool_calls == [{"id": "call_0", "type": "function",
                                 "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
                                 "extra_content": {"google": {"thought_signature": "c2lnbmF0dXJl"}}}]
    assert SEEN["body"]["tools"] == [{"functionDeclarations": [{
        "name": "get_weather", "description": "Current weather in a city",
        "parameters": WEATHER_TOOL["function"]["parameters"]}]}]
    assert SEEN["body"]["toolConfig"] == {"functionCallingConfig": {"mode": "AUTO"}}

    # The caller runs the tool and sends the OpenAI-style conversation back.
    messages = _user("Weather in Paris?") + [
        {"role": "assistant", "content": None, "tool_calls": first.tool_calls},
        {"role": "tool", "tool_call_id": "call_0", "content": '{"temp_c": 18}'},
        {"role": "tool", "tool_call_id": "call_0", "content": "plain text result"},
    ]
    forced = {"type": "function", "function": {"name": "get_weather"}}
    second = _run(upstream, lambda p: p.complete(ChatRequest(model="tools", messages=messages, tools=[WEATHER_TOOL],
                                                             tool_choice=forced)))
    assert (second.text, second.finish_reason, second.tool_calls) == ("It is 18 degrees in Paris.", "stop", None)
    assert SEEN["body"]["contents"] == [
        {"role": "user", "parts": [{"text": "Weather in Paris?"}]},
        {"role": "model", "parts": [{"functionCall": {"name": "get_weather", "args": {"city": "Paris"}},
                                     "thoughtSignature": "c2lnbmF0dXJl"}]},
        {"role": "user", "parts": [
            {"functionResponse": {"name": "get_weather", "response": {"content": {"temp_c": 18}}}},
            {"functionResponse": {"name": "get_weather", "response": {"content": "plain text result"}}}]},
    ]
    assert SEEN["body"]["toolConfig"] == {
        "functionCallingConfig": {"mode": "ANY", "allowedFunctionNames": ["get_weather"]}}


def test_streamed_tool_call(upstream):
    request = ChatRequest(model="tools", messages=_user("Weather in Paris?"), tools=[WEATHER_TOOL])
    chunks = _run(upstream, lambda p: collect(p.stream(request)))
    deltas = [call for c in chunks if c.tool_calls for call in c.tool_calls]
    assert len(deltas) == 1 and deltas[0]["index"] == 0 and deltas[0]["id"] == "call_0"
    assert deltas[0]["function"] == {"name": "get_weather", "arguments": '{"city": "Paris"}'}
    assert chunks[-1].finish_reason == "tool_calls" and chunks[-1].usage.output_tokens == 7
    assert SEEN["path"] == "/v1beta/models/tools:streamGenerateContent" and SEEN["query"] == "alt=sse"


# ---------------------------------------------------------------- streaming


def test_stream_text_usage_and_finish(upstream):
    request = ChatRequest(model="ok", messages=_user("hi", system="Be brief."), max_tokens=64)
    chunks = _run(upstream, lambda p: collect(p.stream(request)))
    assert [c.text for c in chunks[:-1]] == ANSWER
    assert all(c.finish_reason is None and c.usage is None for c in chunks[:-1])
    last = chunks[-1]
    assert last.text == "" and last.finish_reason == "stop"
    assert (last.usage.input_tokens, last.usage.output_tokens) == (11, 7)  # the last event's usageMetadata
    assert SEEN["path"] == "/v1beta/models/ok:streamGenerateContent" and SEEN["query"] == "alt=sse"
    assert SEEN["headers"]["x-goog-api-key"] == KEY
    assert SEEN["body"]["systemInstruction"] == {"parts": [{"text": "Be brief."}]}
    assert SEEN["body"]["generationConfig"] == {"maxOutputTokens": 64}


@pytest.mark.parametrize("model", ["cut", "cut-clean"])
def test_stream_cut_midway_raises_from_the_iterator(upstream, model):
    received: list[ChatChunk] = []

    async def consume(provider):
        async for chunk in provider.stream(ChatRequest(model=model, messages=_user("hi"))):
            received.append(chunk)

    with pytest.raises(ProviderError) as caught:
        _run(upstream, consume)
    assert [c.text for c in received] == ANSWER[:2]
    assert (caught.value.status, caught.value.retryable) == (502, True) and "stream cut" in caught.value.message


def test_stream_error_event_midway(upstream):
    error = _error(upstream, "error-midway", True)
    assert (error.status, error.retryable) == (503, True) and "overloaded" in error.message


# ---------------------------------------------------------------- failures


@pytest.mark.parametrize("stream", [False, True])
def test_blocked_prompt_is_400(upstream, stream):
    error = _error(upstream, "blocked", stream)
    assert (error.status, error.retryable) == (400, False)
    assert ("PROHIBITED_CONTENT" if stream else "SAFETY") in error.message and "blocked" in error.message


@pytest.mark.parametrize("stream", [False, True])
def test_http_errors(upstream, stream):
    limited = _error(upstream, "rate-limited", stream)
    assert (limited.status, limited.retryable, limited.retry_after) == (429, True, 7.0)
    assert "RESOURCE_EXHAUSTED" in limited.message and "Resource has been exhausted" in limited.message
    quota = _error(upstream, "quota", stream)
    assert (quota.status, quota.retryable, quota.retry_after) == (429, True, 37.0)  # from google.rpc.RetryInfo
    overloaded = _error(upstream, "overloaded", stream)
    assert (overloaded.status, overloaded.retryable) == (503, True) and "overloaded" in overloaded.message
    boom = _error(upstream, "boom", stream)
    assert (boom.status, boom.retryable) == (502, True) and "An internal error has occurred." in boom.message
    bad = _error(upstream, "bad-request", stream, name="google")
    assert (bad.status, bad.retryable, bad.provider) == (400, False, "google")
    assert "INVALID_ARGUMENT" in bad.message
    assert "GenerateContentRequest.generation_config.temperature: must be <= 2" in bad.message


@pytest.mark.parametrize("stream", [False, True])
def test_malformed_json_is_502(upstream, stream):
    error = _error(upstream, "malformed", stream)
    assert (error.status, error.retryable) == (502, False) and "malformed" in error.message


@pytest.mark.parametrize("stream", [False, True])
def test_timeout_is_retryable_504(upstream, stream):
    error = _error(upstream, "slow", stream, timeout=Timeouts(read=0.3))
    assert (error.status, error.retryable) == (504, True) and "timed out" in error.message


def test_connection_refused_is_retryable_502():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # closed again: nothing listens there
    error = _error(f"http://127.0.0.1:{port}", "ok", False, timeout=Timeouts(connect=2.0))
    assert (error.status, error.retryable) == (502, True)
