"""The Anthropic Messages API adapter against a real loopback HTTP server speaking Anthropic's wire format
(JSON bodies, error bodies, and server-sent events with their event names)."""

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

from router_ml.serve.providers.anthropic import AnthropicProvider, convert_messages, convert_tool_choice
from router_ml.serve.providers.base import ChatChunk, ChatRequest, ProviderError
from router_ml.serve.providers.wire import Timeouts, UpstreamPool

SEEN: dict = {}
ANSWER = ["Hello", " there,", " general", " Kenobi."]
WEATHER_TOOL = {"type": "function", "function": {"name": "get_weather", "description": "Weather for a city.",
                                                  "parameters": {"type": "object",
                                                                 "properties": {"city": {"type": "string"}}}}}


def _user(text: str) -> list[dict]:
    return [{"role": "user", "content": text}]


# ---------------------------------------------------------------- the fake Anthropic upstream


def _sse(name: str, payload: dict) -> bytes:
    return f"event: {name}\ndata: {json.dumps(payload)}\n\n".encode()


def _error_body(kind: str, message: str) -> dict:
    return {"type": "error", "error": {"type": kind, "message": message}}


def _message_start(model: str) -> bytes:
    return _sse("message_start", {"type": "message_start", "message": {
        "id": "msg_1", "type": "message", "role": "assistant", "content": [], "model": model, "stop_reason": None,
        "stop_sequence": None, "usage": {"input_tokens": 25, "output_tokens": 1}}})


def _text_delta(index: int, text: str) -> bytes:
    return _sse("content_block_delta", {"type": "content_block_delta", "index": index,
                                        "delta": {"type": "text_delta", "text": text}})


async def _stream(model: str):
    yield _message_start(model)
    if model == "malformed":
        yield b"event: content_block_delta\ndata: {not json\n\n"
        return
    yield _sse("content_block_start", {"type": "content_block_start", "index": 0,
                                       "content_block": {"type": "text", "text": ""}})
    yield _sse("ping", {"type": "ping"})
    if model == "tools":
        yield _text_delta(0, "Let me check.")
        yield _sse("content_block_stop", {"type": "content_block_stop", "index": 0})
        yield _sse("content_block_start", {"type": "content_block_start", "index": 1, "content_block": {
            "type": "tool_use", "id": "toolu_01", "name": "get_weather", "input": {}}})
        for fragment in ["", '{"city": ', '"Paris"}']:
            yield _sse("content_block_delta", {"type": "content_block_delta", "index": 1,
                                               "delta": {"type": "input_json_delta", "partial_json": fragment}})
        yield _sse("content_block_stop", {"type": "content_block_stop", "index": 1})
        stop_reason, output_tokens = "tool_use", 12
    else:
        for i, piece in enumerate(ANSWER):
            yield _text_delta(0, piece)
            await asyncio.sleep(0)
            if i == 1 and model == "cut":
                raise RuntimeError("upstream dies midway")  # uvicorn drops the connection mid-body
            if i == 1 and model == "cut-clean":
                return  # a clean end without message_stop
            if i == 1 and model == "overloaded-midway":
                yield _sse("error", _error_body("overloaded_error", "Overloaded"))
                return
            if i == 1 and model == "invalid-midway":
                yield _sse("error", _error_body("invalid_request_error", "prompt is too long"))
                return
        yield _sse("content_block_stop", {"type": "content_block_stop", "index": 0})
        stop_reason, output_tokens = "end_turn", 4
    yield _sse("message_delta", {"type": "message_delta", "delta": {"stop_reason": stop_reason,
                                                                    "stop_sequence": None},
                                 "usage": {"output_tokens": output_tokens}})
    yield _sse("message_stop", {"type": "message_stop"})


async def messages(request: Request) -> Response:
    body = await request.json()
    SEEN["body"], SEEN["headers"] = body, dict(request.headers)
    model = body["model"]
    if model == "rate-limited":
        return JSONResponse(_error_body("rate_limit_error", "Number of request tokens has exceeded your limit"),
                            429, headers={"retry-after": "7"})
    if model == "overloaded":
        return JSONResponse(_error_body("overloaded_error", "Overloaded"), 529)
    if model == "boom":
        return JSONResponse(_error_body("api_error", "Internal server error"), 500)
    if model == "bad-request":
        return JSONResponse(_error_body("invalid_request_error", "max_tokens: 999999 > 8192, which is the maximum"),
                            400)
    if model == "slow":
        await asyncio.sleep(1.5)
    if body.get("stream"):
        return StreamingResponse(_stream(model), media_type="text/event-stream")
    if model == "malformed":
        return Response(b'{"content": [oops', media_type="application/json")
    usage = {"input_tokens": 11, "output_tokens": 4}
    if model == "tools":
        content = [{"type": "text", "text": "Let me check."},
                   {"type": "tool_use", "id": "toolu_01", "name": "get_weather", "input": {"city": "Paris"}}]
        stop_reason = "tool_use"
        usage = {"input_tokens": 5, "cache_read_input_tokens": 100, "output_tokens": 7}
    else:
        content = [{"type": "text", "text": "".join(ANSWER[:2])}, {"type": "text", "text": "".join(ANSWER[2:])}]
        stop_reason = {"stop": "stop_sequence", "long": "max_tokens"}.get(model, "end_turn")
    return JSONResponse({"id": "msg_1", "type": "message", "role": "assistant", "model": model, "content": content,
                         "stop_reason": stop_reason, "stop_sequence": "\n\n" if model == "stop" else None,
                         "usage": usage})


@pytest.fixture(scope="module")
def upstream() -> str:
    with serve(Starlette(routes=[Route("/v1/messages", messages, methods=["POST"])])) as base_url:
        yield base_url + ""


def _run(upstream: str, call, **kwargs):
    """Run ``call(provider)`` in a fresh event loop with a provider owning its client."""
    async def main():
        async with AnthropicProvider(upstream, **kwargs) as provider:
            return await call(provider)
    return asyncio.run(main())


def _error(upstream: str, model: str, stream: bool, **kwargs) -> ProviderError:
    request = ChatRequest(model=model, messages=_user("hi"))
    with pytest.raises(ProviderError) as caught:
        _run(upstream, lambda p: collect(p.stream(request)) if stream else p.complete(request), **kwargs)
    return caught.value


# ---------------------------------------------------------------- requests as the server received them


def test_system_lifted_and_multi_turn_mapping(upstream):
    conversation = [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "Hi."},
        {"role": "assistant", "content": "Hello."},
        {"role": "developer", "content": [{"type": "text", "text": "Answer in English."}]},
        {"role": "user", "content": "Tell me a joke."},
        {"role": "user", "content": [{"type": "text", "text": "A short one."}]},
    ]
    request = ChatRequest(model="ok", messages=conversation, temperature=0.2, top_p=0.9, stop=["\n\n", "END"])
    result = _run(upstream, lambda p: p.complete(request), api_key="sk-ant-test", default_max_tokens=333)
    assert result.text == "Hello there, general Kenobi."
    assert SEEN["body"] == {
        "model": "ok", "max_tokens": 333, "system": "You are terse.\n\nAnswer in English.",
        "messages": [{"role": "user", "content": "Hi."},
                     {"role": "assistant", "content": "Hello."},
                     {"role": "user", "content": [{"type": "text", "text": "Tell me a joke."},
                                                  {"type": "text", "text": "A short one."}]}],
        "temperature": 0.2, "top_p": 0.9, "stop_sequences": ["\n\n", "END"]}
    headers = SEEN["headers"]
    assert headers["x-api-key"] == "sk-ant-test" and headers["anthropic-version"] == "2023-06-01"
    assert headers["content-type"] == "application/json" and "authorization" not in headers
    # The request's max_tokens wins; no key, no x-api-key; another version; a base URL ending in /v1.
    request = ChatRequest(model="ok", messages=_user("hi"), max_tokens=50)
    _run(upstream + "/v1/", lambda p: p.complete(request), version="2024-01-01")
    assert SEEN["body"] == {"model": "ok", "max_tokens": 50, "messages": _user("hi")}
    assert "x-api-key" not in SEEN["headers"] and SEEN["headers"]["anthropic-version"] == "2024-01-01"
    assert "sk-ant-test" not in repr(AnthropicProvider(upstream, api_key="sk-ant-test"))


def test_complete_text_usage_and_stop_reasons(upstream):
    result = _run(upstream, lambda p: p.complete(ChatRequest(model="ok", messages=_user("hi"))))
    assert result.text == "Hello there, general Kenobi." and result.finish_reason == "stop"
    assert (result.usage.input_tokens, result.usage.output_tokens) == (11, 4) and result.tool_calls is None
    assert SEEN["body"]["max_tokens"] == 1024
    stopped = _run(upstream, lambda p: p.complete(ChatRequest(model="stop", messages=_user("hi"), stop=["\n\n"])))
    assert stopped.finish_reason == "stop" and SEEN["body"]["stop_sequences"] == ["\n\n"]
    long = _run(upstream, lambda p: p.complete(ChatRequest(model="long", messages=_user("hi"), max_tokens=4)))
    assert long.finish_reason == "length"

    # A shared pool passed in is used and left open.
    async def shared():
        pool = UpstreamPool()
        provider = AnthropicProvider(upstream, pool=pool)
        answer = await provider.complete(ChatRequest(model="ok", messages=_user("hi")))
        await provider.aclose()
        assert not pool.session.closed
        await pool.aclose()
        return answer
    assert asyncio.run(shared()).text == "Hello there, general Kenobi."


def test_tool_call_round_trip(upstream):
    # Outbound: tools, tool_choice, an assistant tool call and its result as the server received them.
    conversation = [
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "toolu_00", "type": "function",
             "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}]},
        {"role": "tool", "tool_call_id": "toolu_00", "content": '{"temp_c": 21}'},
        {"role": "user", "content": "And in London?"},
    ]
    request = ChatRequest(model="tools", messages=conversation, tools=[WEATHER_TOOL],
                          tool_choice={"type": "function", "function": {"name": "get_weather"}})
    result = _run(upstream, lambda p: p.complete(request))
    body = SEEN["body"]
    assert body["tools"] == [{"name": "get_weather", "description": "Weather for a city.",
                              "input_schema": WEATHER_TOOL["function"]["parameters"]}]
    assert body["tool_choice"] == {"type": "tool", "name": "get_weather"}
    assert body["messages"] == [
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": [{"type": "tool_use", "id": "toolu_00", "name": "get_weather",
                                           "input": {"city": "Paris"}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_00", "content": '{"temp_c": 21}'},
                                     {"type": "text", "text": "And in London?"}]},
    ]
    # Inbound: tool_use blocks as OpenAI-style tool calls with JSON-string arguments.
    assert result.text == "Let me check." and result.finish_reason == "tool_calls"
    assert result.tool_calls == [{"id": "toolu_01", "type": "function",
                                  "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}]
    assert (result.usage.input_tokens, result.usage.output_tokens) == (105, 7)  # cache reads counted as input
    # The answer goes back in as the next turn (assistant content and tool call in one message).
    follow_up = conversation[:1] + [{"role": "assistant", "content": result.text, "tool_calls": result.tool_calls},
                                    {"role": "tool", "tool_call_id": "toolu_01", "content": "21C"}]
    _run(upstream, lambda p: p.complete(ChatRequest(model="tools", messages=follow_up, tools=[WEATHER_TOOL],
                                                    tool_choice="required")))
    assert SEEN["body"]["tool_choice"] == {"type": "any"}
    assert SEEN["body"]["messages"][1:] == [
        {"role": "assistant", "content": [{"type": "text", "text": "Let me check."},
                                          {"type": "tool_use", "id": "toolu_01", "name": "get_weather",
                                           "input": {"city": "Paris"}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_01", "content": "21C"}]}]


def test_tool_choice_and_message_conversion_edges():
    assert convert_tool_choice("auto") == {"type": "auto"}
    assert convert_tool_choice("required") == {"type": "any"}
    assert convert_tool_choice("none") == {"type": "none"}
    assert convert_tool_choice({"type": "function", "function": {"name": "f"}}) == {"type": "tool", "name": "f"}
    system, turns = convert_messages([{"role": "system", "content": "s"}, {"role": "assistant", "content": ""},
                                      {"role": "user", "content": "u"}])
    assert system == "s" and turns == [{"role": "user", "content": "u"}]  # empty turns dropped
    with pytest.raises(ValueError):
        convert_messages([{"role": "assistant", "tool_calls": [{"id": "x", "function": {"name": "f",
                                                                                        "arguments": "{oops"}}]}])


def test_bad_tool_arguments_are_a_400_before_sending(upstream):
    SEEN.clear()
    bad = [{"role": "assistant", "tool_calls": [{"id": "x", "function": {"name": "f", "arguments": "{oops"}}]}]
    error = _error_request(upstream, ChatRequest(model="ok", messages=bad))
    assert (error.status, error.retryable) == (400, False) and "not JSON" in error.message and not SEEN


def _error_request(upstream: str, request: ChatRequest) -> ProviderError:
    with pytest.raises(ProviderError) as caught:
        _run(upstream, lambda p: p.complete(request))
    return caught.value


# ---------------------------------------------------------------- streaming


def test_stream_text_usage_and_finish(upstream):
    request = ChatRequest(model="ok", messages=_user("hi"), stop=["\n\n"])
    chunks = _run(upstream, lambda p: collect(p.stream(request)))
    assert [c.text for c in chunks[:-1]] == ANSWER
    assert all(c.finish_reason is None and c.usage is None for c in chunks[:-1])
    last = chunks[-1]
    assert last.finish_reason == "stop" and last.text == ""
    assert (last.usage.input_tokens, last.usage.output_tokens) == (25, 4)  # message_start, then message_delta
    assert SEEN["body"]["stream"] is True and SEEN["body"]["stop_sequences"] == ["\n\n"]


def test_stream_tool_use(upstream):
    request = ChatRequest(model="tools", messages=_user("weather in Paris?"), tools=[WEATHER_TOOL],
                          tool_choice="auto")
    chunks = _run(upstream, lambda p: collect(p.stream(request)))
    assert SEEN["body"]["tool_choice"] == {"type": "auto"}
    assert "".join(c.text for c in chunks) == "Let me check."
    deltas = [call for c in chunks if c.tool_calls for call in c.tool_calls]
    assert deltas[0] == {"index": 0, "id": "toolu_01", "type": "function",
                         "function": {"name": "get_weather", "arguments": ""}}
    assert all(d["index"] == 0 and "id" not in d for d in deltas[1:])
    assert "".join(d["function"]["arguments"] for d in deltas) == '{"city": "Paris"}'
    assert chunks[-1].finish_reason == "tool_calls"
    assert (chunks[-1].usage.input_tokens, chunks[-1].usage.output_tokens) == (25, 12)


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


def test_stream_error_events(upstream):
    overloaded = _error(upstream, "overloaded-midway", True)
    assert (overloaded.status, overloaded.retryable) == (503, True) and "Overloaded" in overloaded.message
    invalid = _error(upstream, "invalid-midway", True)
    assert (invalid.status, invalid.retryable) == (400, False) and "prompt is too long" in invalid.message


# ---------------------------------------------------------------- failures


@pytest.mark.parametrize("stream", [False, True])
def test_http_errors(upstream, stream):
    limited = _error(upstream, "rate-limited", stream)
    assert (limited.status, limited.retryable, limited.retry_after) == (429, True, 7.0)
    assert "Number of request tokens has exceeded your limit" in limited.message
    overloaded = _error(upstream, "overloaded", stream)
    assert (overloaded.status, overloaded.retryable) == (503, True) and "overloaded_error" in overloaded.message
    boom = _error(upstream, "boom", stream)
    assert (boom.status, boom.retryable) == (502, True) and "Internal server error" in boom.message
    bad = _error(upstream, "bad-request", stream, name="claude")
    assert (bad.status, bad.retryable, bad.provider) == (400, False, "claude")
    assert "invalid_request_error" in bad.message
    assert "max_tokens: 999999 > 8192, which is the maximum" in bad.message


@pytest.mark.parametrize("stream", [False, True])
def test_timeout_is_retryable_504(upstream, stream):
    error = _error(upstream, "slow", stream, timeout=Timeouts(read=0.3))
    assert (error.status, error.retryable) == (504, True) and "timed out" in error.message


@pytest.mark.parametrize("stream", [False, True])
def test_malformed_json_is_502_not_retryable(upstream, stream):
    error = _error(upstream, "malformed", stream)
    assert (error.status, error.retryable) == (502, False) and "malformed" in error.message


def test_connection_refused_is_retryable_502():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # closed again: nothing listens there
    error = _error(f"http://127.0.0.1:{port}", "ok", False, timeout=Timeouts(connect=2.0))
    assert (error.status, error.retryable) == (502, True)
