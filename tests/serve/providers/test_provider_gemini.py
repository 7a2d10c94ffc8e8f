"""What only the Gemini adapter does, against a real loopback HTTP server speaking the Gemini
generateContent wire format (tests/provider_wires.py): the URL, the key header, role and config
translation, thought parts, thought signatures on tool calls, blocked prompts and error events in streams.
What every provider does is the contract suite's (test_provider_contract.py)."""

from __future__ import annotations

import pytest

from loopback import collect
from provider_wires import GEMINI, GEMINI_KEY as KEY, WEATHER_TOOL, user as _user

from router_ml.serve.providers.base import ChatRequest, ProviderError
from router_ml.serve.providers.gemini import GeminiProvider

SEEN = GEMINI.seen


upstream = GEMINI.fixture()


# ---------------------------------------------------------------- requests as Gemini receives them


def test_complete_url_key_header_roles_and_generation_config(upstream):
    messages = [{"role": "system", "content": "You are terse."},
                {"role": "developer", "content": [{"type": "text", "text": "Answer in English."}]},
                {"role": "user", "content": "Hi"},
                {"role": "assistant", "content": "Hello!"},
                {"role": "user", "content": "Who are you?"},
                {"role": "user", "content": [{"type": "text", "text": "Briefly."}]}]
    request = ChatRequest(model="ok", messages=messages, temperature=0.2, top_p=0.9, max_tokens=50, stop=["\n\n"])
    result = GEMINI.run(upstream, lambda p: p.complete(request))
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
    request = ChatRequest(model="models/ok", messages=_user("hi"))
    answer = GEMINI.run(upstream.rstrip("/"), lambda p: p.complete(request), api_key=None)
    assert answer.text == "Hello there, general Kenobi."
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
        GEMINI.run(upstream, lambda p: p.complete(ChatRequest(model="ok", messages=messages, tools=tools)))
    assert (caught.value.status, caught.value.retryable) == (400, False) and expected in caught.value.message
    assert SEEN == {}


def test_finish_reasons_and_thought_parts(upstream):
    length = GEMINI.run(upstream, lambda p: p.complete(ChatRequest(model="length", messages=_user("hi"))))
    assert (length.text, length.finish_reason) == ("Hello", "length")
    safety = GEMINI.run(upstream, lambda p: p.complete(ChatRequest(model="safety", messages=_user("hi"))))
    assert (safety.text, safety.finish_reason) == ("", "content_filter")
    thinking = GEMINI.run(upstream, lambda p: p.complete(ChatRequest(model="thinking", messages=_user("hi"))))
    assert thinking.text == "Hello there, general Kenobi."
    chunks = GEMINI.run(upstream, lambda p: collect(p.stream(ChatRequest(model="thinking", messages=_user("hi")))))
    assert "".join(c.text for c in chunks) == "Hello there, general Kenobi."


# ---------------------------------------------------------------- tool calls, both directions


def test_tool_call_round_trip(upstream):
    request = ChatRequest(model="tools", messages=_user("Weather in Paris?"), tools=[WEATHER_TOOL],
                          tool_choice="auto")
    first = GEMINI.run(upstream, lambda p: p.complete(request))
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
    request = ChatRequest(model="tools", messages=messages, tools=[WEATHER_TOOL], tool_choice=forced)
    second = GEMINI.run(upstream, lambda p: p.complete(request))
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


# ---------------------------------------------------------------- streaming


def test_stream_request_as_sent(upstream):
    request = ChatRequest(model="ok", messages=_user("hi", system="Be brief."), max_tokens=64)
    GEMINI.run(upstream, lambda p: collect(p.stream(request)))
    assert SEEN["path"] == "/v1beta/models/ok:streamGenerateContent" and SEEN["query"] == "alt=sse"
    assert SEEN["headers"]["x-goog-api-key"] == KEY
    assert SEEN["body"]["systemInstruction"] == {"parts": [{"text": "Be brief."}]}
    assert SEEN["body"]["generationConfig"] == {"maxOutputTokens": 64}
    request = ChatRequest(model="tools", messages=_user("Weather in Paris?"), tools=[WEATHER_TOOL])
    GEMINI.run(upstream, lambda p: collect(p.stream(request)))
    assert SEEN["path"] == "/v1beta/models/tools:streamGenerateContent" and SEEN["query"] == "alt=sse"
    assert SEEN["body"]["tools"][0]["functionDeclarations"][0]["name"] == "get_weather"
    assert "toolConfig" not in SEEN["body"]


def test_stream_error_event_midway(upstream):
    error = GEMINI.error(upstream, ChatRequest(model="error-midway", messages=_user("hi")), True)
    assert (error.status, error.retryable) == (503, True) and "overloaded" in error.message


# ---------------------------------------------------------------- failures


@pytest.mark.parametrize("stream", [False, True])
def test_blocked_prompt_is_400(upstream, stream):
    error = GEMINI.error(upstream, ChatRequest(model="blocked", messages=_user("hi")), stream)
    assert (error.status, error.retryable) == (400, False)
    assert ("PROHIBITED_CONTENT" if stream else "SAFETY") in error.message and "blocked" in error.message
