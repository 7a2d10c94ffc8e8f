"""What only one provider does: replay of recorded RouterBench answers, the handler provider, and the
OpenAI-compatible adapter's requests as a loopback upstream speaking the OpenAI wire format received them.
What every provider does is the contract suite's (test_provider_contract.py)."""

from __future__ import annotations

import asyncio
import time

import polars as pl
import pytest

from loopback import collect
from provider_wires import OPENAI, WEATHER_TOOL

from router_ml.data.costs import add_tokens_and_costs
from router_ml.data.importers import routerbench
from router_ml.serve.providers import ChatRequest, ChatResult, ProviderError, ReplayProvider, Usage
from router_ml.serve.providers.handler import HandlerProvider, failing
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


# ---------------------------------------------------------------- handler provider


def test_handler_text_answers_stream_as_words_that_join_back():
    provider = HandlerProvider(lambda request: f"  echo {request.model}:  {request.messages[-1]['content']}  ")
    request = ChatRequest(model="m", messages=_user("one two"))
    result = asyncio.run(provider.complete(request))
    assert (result.text, result.finish_reason, result.tool_calls) == ("  echo m:  one two  ", "stop", None)
    assert (result.usage.input_tokens, result.usage.output_tokens) == (len(str(request.messages)) // 4, 4)
    chunks = asyncio.run(collect(provider.stream(request)))
    assert [c.text for c in chunks[:-1]] == ["  echo", " m:", "  one", " two  "]
    assert chunks[-1].finish_reason == "stop" and chunks[-1].usage == result.usage
    assert provider.requests == [request, request] and provider.name == "fake"
    # No text: only the closing chunk; white space alone is one piece.
    assert [c.text for c in asyncio.run(collect(HandlerProvider(lambda r: "").stream(request)))] == [""]
    assert [c.text for c in asyncio.run(collect(HandlerProvider(lambda r: " \n").stream(request)))] == [" \n", ""]


def test_handler_results_pass_through_and_tool_calls_stream_with_their_index():
    calls = [{"id": f"c{i}", "type": "function", "function": {"name": "f", "arguments": "{}"}} for i in range(2)]

    async def handler(request):
        return ChatResult("Calling.", "tool_calls", Usage(3, 5), tool_calls=calls)

    provider = HandlerProvider(handler, name="mine")
    request = ChatRequest(model="m", messages=_user("x"))
    assert asyncio.run(provider.complete(request)) == ChatResult("Calling.", "tool_calls", Usage(3, 5), calls)
    chunks = asyncio.run(collect(provider.stream(request)))
    assert [c.text for c in chunks] == ["Calling.", "", ""]
    assert chunks[1].tool_calls == [{"index": 0, **calls[0]}, {"index": 1, **calls[1]}]
    assert (chunks[2].finish_reason, chunks[2].usage) == ("tool_calls", Usage(3, 5))


@pytest.mark.parametrize("stream", [False, True])
def test_handler_errors_are_raised_before_any_chunk(stream):
    provider = HandlerProvider(failing(503, retryable=True))
    request = ChatRequest(model="m", messages=_user("x"))
    received = []

    async def call():
        if not stream:
            return await provider.complete(request)
        async for chunk in provider.stream(request):
            received.append(chunk)

    with pytest.raises(ProviderError) as caught:
        asyncio.run(call())
    assert (caught.value.status, caught.value.retryable, caught.value.provider) == (503, True, "fake")
    assert "503" in caught.value.message and received == [] and provider.requests == [request]

    def unnamed(request):
        raise ProviderError("no", status=400)

    with pytest.raises(ProviderError) as caught:
        asyncio.run(HandlerProvider(unnamed, name="mine").complete(request))
    assert caught.value.provider == "mine"  # an error without a provider is the handler provider's


# ---------------------------------------------------------------- OpenAI-compatible adapter


upstream = OPENAI.fixture()


def test_openai_request_as_sent(upstream):
    request = ChatRequest(model="ok", messages=_user("hi"), temperature=0.2, max_tokens=50)
    OPENAI.run(upstream, lambda p: p.complete(request), api_key="sk-test", name="oai")
    assert OPENAI.seen["headers"]["authorization"] == "Bearer sk-test"
    assert OPENAI.seen["body"] == {"model": "ok", "messages": _user("hi"), "temperature": 0.2, "max_tokens": 50}
    # No key: no Authorization header; extra headers (OpenRouter's HTTP-Referer) are sent.
    OPENAI.run(upstream, lambda p: p.complete(ChatRequest(model="ok", messages=_user("hi"))),
               headers={"HTTP-Referer": "https://example.org"})
    assert "authorization" not in OPENAI.seen["headers"]
    assert OPENAI.seen["headers"]["http-referer"] == "https://example.org"
    assert "sk-test" not in repr(OPENAI.make(upstream, api_key="sk-test"))


def test_openai_stream_and_tools_as_sent(upstream):
    OPENAI.run(upstream, lambda p: collect(p.stream(ChatRequest(model="ok", messages=_user("hi"), stop=["\n\n"]))))
    body = OPENAI.seen["body"]
    assert body["stream"] is True and body["stream_options"] == {"include_usage": True}
    assert body["stop"] == ["\n\n"]
    request = ChatRequest(model="tools", messages=_user("weather in Paris?"), tools=[WEATHER_TOOL], tool_choice="auto")
    OPENAI.run(upstream, lambda p: p.complete(request))
    assert OPENAI.seen["body"]["tools"] == [WEATHER_TOOL] and OPENAI.seen["body"]["tool_choice"] == "auto"
    assert "stream" not in OPENAI.seen["body"]
