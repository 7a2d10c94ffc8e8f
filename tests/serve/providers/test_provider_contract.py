"""The provider contract: what every provider promises its caller, checked against each of them.

The HTTP adapters (OpenAI-compatible, Anthropic, Gemini) run against a real loopback upstream speaking
their own wire format; the replay and handler providers run in process. Each is described by a wire
(tests/provider_wires.py) that builds it and says what its upstream answers in each scenario; what only
one provider does is tested in its own file (test_providers.py, test_provider_anthropic.py,
test_provider_gemini.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket

import pytest

from loopback import collect
from provider_wires import ALL_WIRES, ANSWER_TEXT, ARGUMENTS, HTTP_WIRES, WEATHER_TOOL, Wire, user

from router_ml.serve.providers.base import ChatChunk, ChatRequest, ProviderError
from router_ml.serve.providers.wire import Timeouts, UpstreamPool

OK = ChatRequest(model="ok", messages=user("hi"))
TOOLS = ChatRequest(model="tools", messages=user("weather in Paris?"), tools=[WEATHER_TOOL], tool_choice="auto")
TOOL_WIRES = [w for w in ALL_WIRES if w.tool_calls is not None]
STREAM = pytest.mark.parametrize("stream", [False, True], ids=["complete", "stream"])


def _ids(wire: Wire) -> str:
    return wire.name


@pytest.fixture(scope="module")
def upstreams() -> dict[str, str]:
    """Every HTTP wire's loopback upstream, started once for the module: name -> the provider's base URL."""
    with contextlib.ExitStack() as stack:
        yield {wire.name: stack.enter_context(wire.serve()) for wire in HTTP_WIRES}


@pytest.fixture
def upstream(upstreams, wire) -> str | None:
    return upstreams.get(wire.name)


def _usage(usage) -> tuple[int, int]:
    return usage.input_tokens, usage.output_tokens


# ---------------------------------------------------------------- answers


@pytest.mark.parametrize("wire", ALL_WIRES, ids=_ids)
def test_complete_text_and_usage(wire, upstream):
    result = wire.run(upstream, lambda p: p.complete(OK))
    assert result.text == ANSWER_TEXT and result.finish_reason == "stop" and result.tool_calls is None
    assert _usage(result.usage) == wire.complete_usage


@pytest.mark.parametrize("wire", ALL_WIRES, ids=_ids)
def test_stream_text_usage_and_finish(wire, upstream):
    chunks = wire.run(upstream, lambda p: collect(p.stream(OK)))
    assert [c.text for c in chunks[:-1]] == wire.pieces
    assert all(c.finish_reason is None and c.usage is None and not c.tool_calls for c in chunks[:-1])
    last = chunks[-1]
    assert last.text == "" and last.finish_reason == "stop" and _usage(last.usage) == wire.stream_usage


@pytest.mark.parametrize("wire", ALL_WIRES, ids=_ids)
def test_complete_and_stream_agree(wire, upstream):
    async def both(provider):
        return await provider.complete(OK), await collect(provider.stream(OK))

    result, chunks = wire.run(upstream, both)
    assert "".join(c.text for c in chunks) == result.text
    assert chunks[-1].finish_reason == result.finish_reason
    if wire.complete_usage == wire.stream_usage:  # Anthropic's fake reports other counts in its stream
        assert chunks[-1].usage == result.usage


@pytest.mark.parametrize("wire", TOOL_WIRES, ids=_ids)
def test_complete_tool_calls(wire, upstream):
    result = wire.run(upstream, lambda p: p.complete(TOOLS))
    assert result.tool_calls == wire.tool_calls and result.finish_reason == "tool_calls"
    assert result.text == wire.tool_text and _usage(result.usage) == wire.tool_usage
    assert [c["function"]["arguments"] for c in result.tool_calls] == [ARGUMENTS]


@pytest.mark.parametrize("wire", TOOL_WIRES, ids=_ids)
def test_stream_tool_calls(wire, upstream):
    chunks = wire.run(upstream, lambda p: collect(p.stream(TOOLS)))
    assert "".join(c.text for c in chunks) == wire.tool_text
    deltas = [call for c in chunks if c.tool_calls for call in c.tool_calls]
    assert deltas == wire.tool_deltas
    # OpenAI's delta convention: the first delta of a call has its index, id and name, the others only add
    # to its arguments.
    assert deltas[0]["index"] == 0 and deltas[0]["id"] and deltas[0]["function"]["name"] == "get_weather"
    assert all(d["index"] == 0 and "id" not in d for d in deltas[1:])
    assert "".join(d["function"]["arguments"] for d in deltas) == ARGUMENTS
    assert chunks[-1].finish_reason == "tool_calls" and _usage(chunks[-1].usage) == wire.tool_stream_usage


# ---------------------------------------------------------------- failures


@pytest.mark.parametrize("wire, model", [(w, m) for w in ALL_WIRES for m in w.errors],
                         ids=[f"{w.name}-{m}" for w in ALL_WIRES for m in w.errors])
@STREAM
def test_errors_are_provider_errors(wire, upstream, model, stream):
    """Upstream error answers (and an unknown model, for every provider) as the status, retryability and
    Retry-After the caller must act on, with the upstream's message and the provider's name."""
    expected = wire.errors[model]
    error = wire.error(upstream, ChatRequest(model=model, messages=user("hi")), stream, name=f"{wire.name}-x")
    assert (error.status, error.retryable, error.retry_after) == (expected.status, expected.retryable,
                                                                  expected.retry_after)
    assert error.provider == f"{wire.name}-x"
    for fragment in expected.says:
        assert fragment in error.message


@pytest.mark.parametrize("wire", HTTP_WIRES, ids=_ids)
@STREAM
def test_malformed_json_is_502_not_retryable(wire, upstream, stream):
    error = wire.error(upstream, ChatRequest(model="malformed", messages=user("hi")), stream)
    assert (error.status, error.retryable) == (502, False) and "malformed" in error.message


@pytest.mark.parametrize("wire", HTTP_WIRES, ids=_ids)
@STREAM
def test_timeout_is_retryable_504(wire, upstream, stream):
    error = wire.error(upstream, ChatRequest(model="slow", messages=user("hi")), stream, timeout=Timeouts(read=0.3))
    assert (error.status, error.retryable) == (504, True) and "timed out" in error.message


@pytest.mark.parametrize("wire", HTTP_WIRES, ids=_ids)
@STREAM
def test_connection_refused_is_retryable_502(wire, stream):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # closed again: nothing listens there
    error = wire.error(f"http://127.0.0.1:{port}{wire.path}", OK, stream, timeout=Timeouts(connect=2.0))
    assert (error.status, error.retryable) == (502, True) and "connect" in error.message


@pytest.mark.parametrize("wire", HTTP_WIRES, ids=_ids)
@pytest.mark.parametrize("model", ["cut", "cut-clean"])
def test_stream_cut_midway_raises_from_the_iterator(wire, upstream, model):
    received: list[ChatChunk] = []

    async def consume(provider):
        async for chunk in provider.stream(ChatRequest(model=model, messages=user("hi"))):
            received.append(chunk)

    with pytest.raises(ProviderError) as caught:
        wire.run(upstream, consume)
    assert [c.text for c in received] == ["Hello", " there,"]
    assert (caught.value.status, caught.value.retryable) == (502, True) and "stream cut" in caught.value.message


# ---------------------------------------------------------------- the connection pool


@pytest.mark.parametrize("wire", HTTP_WIRES, ids=_ids)
def test_a_shared_pool_is_used_and_left_open(wire, upstream):
    async def main():
        pool = UpstreamPool()
        session = pool.session
        provider = wire.make(upstream, pool=pool)
        answer = await provider.complete(OK)
        await provider.aclose()
        assert not session.closed and pool.session is session
        await pool.aclose()
        assert session.closed
        return answer

    assert asyncio.run(main()).text == ANSWER_TEXT
