"""What only the Anthropic Messages API adapter does, against a real loopback HTTP server speaking
Anthropic's wire format (tests/provider_wires.py): system lifting, turn merging, tool conversions, default
max_tokens, stop reasons and error events in streams. What every provider does is the contract suite's
(test_provider_contract.py)."""

from __future__ import annotations

import pytest

from loopback import collect
from provider_wires import ANTHROPIC, WEATHER_TOOL, user as _user

from router_ml.serve.providers.anthropic import AnthropicProvider, convert_messages, convert_tool_choice
from router_ml.serve.providers.base import ChatRequest

SEEN = ANTHROPIC.seen


upstream = ANTHROPIC.fixture()


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
    result = ANTHROPIC.run(upstream, lambda p: p.complete(request), api_key="sk-ant-test", default_max_tokens=333)
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
    ANTHROPIC.run(upstream + "/v1/", lambda p: p.complete(request), version="2024-01-01")
    assert SEEN["body"] == {"model": "ok", "max_tokens": 50, "messages": _user("hi")}
    assert "x-api-key" not in SEEN["headers"] and SEEN["headers"]["anthropic-version"] == "2024-01-01"
    assert "sk-ant-test" not in repr(AnthropicProvider(upstream, api_key="sk-ant-test"))


def test_default_max_tokens_and_stop_reasons(upstream):
    result = ANTHROPIC.run(upstream, lambda p: p.complete(ChatRequest(model="ok", messages=_user("hi"))))
    assert result.finish_reason == "stop" and SEEN["body"]["max_tokens"] == 1024
    request = ChatRequest(model="stop", messages=_user("hi"), stop=["\n\n"])
    stopped = ANTHROPIC.run(upstream, lambda p: p.complete(request))
    assert stopped.finish_reason == "stop" and SEEN["body"]["stop_sequences"] == ["\n\n"]
    long = ANTHROPIC.run(upstream, lambda p: p.complete(ChatRequest(model="long", messages=_user("hi"), max_tokens=4)))
    assert long.finish_reason == "length"


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
    result = ANTHROPIC.run(upstream, lambda p: p.complete(request))
    body = SEEN["body"]
    assert body["tools"] == [{"name": "get_weather", "description": "Current weather in a city",
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
    ANTHROPIC.run(upstream, lambda p: p.complete(ChatRequest(model="tools", messages=follow_up, tools=[WEATHER_TOOL],
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
    error = ANTHROPIC.error(upstream, ChatRequest(model="ok", messages=bad))
    assert (error.status, error.retryable) == (400, False) and "not JSON" in error.message and not SEEN


# ---------------------------------------------------------------- streaming


def test_stream_request_as_sent(upstream):
    ANTHROPIC.run(upstream, lambda p: collect(p.stream(ChatRequest(model="ok", messages=_user("hi"), stop=["\n\n"]))))
    assert SEEN["body"]["stream"] is True and SEEN["body"]["stop_sequences"] == ["\n\n"]
    request = ChatRequest(model="tools", messages=_user("weather in Paris?"), tools=[WEATHER_TOOL],
                          tool_choice="auto")
    ANTHROPIC.run(upstream, lambda p: collect(p.stream(request)))
    assert SEEN["body"]["tool_choice"] == {"type": "auto"} and SEEN["body"]["stream"] is True


def test_stream_error_events(upstream):
    overloaded = ANTHROPIC.error(upstream, ChatRequest(model="overloaded-midway", messages=_user("hi")), True)
    assert (overloaded.status, overloaded.retryable) == (503, True) and "Overloaded" in overloaded.message
    invalid = ANTHROPIC.error(upstream, ChatRequest(model="invalid-midway", messages=_user("hi")), True)
    assert (invalid.status, invalid.retryable) == (400, False) and "prompt is too long" in invalid.message
