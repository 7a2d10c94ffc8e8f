"""The providers under the contract suite (tests/serve/providers/test_provider_contract.py), one :class:`Wire` each.

An HTTP adapter's wire holds a loopback upstream (a Starlette app speaking that provider's real wire format,
served by :mod:`loopback`) that plays a scenario named by the request's model:

- ``ok``: the answer ``ANSWER`` (as two text parts where the format has parts; streamed piece by piece);
- ``tools``: a call of ``get_weather`` with ``{"city": "Paris"}``;
- ``cut`` / ``cut-clean``: a stream that dies after two pieces of ``ANSWER`` (the connection dropped mid-body
  / a clean end without the format's end marker);
- ``malformed``: a body (or stream event) that is not JSON;
- ``slow``: answers after 1.5 s (or as soon as the client hangs up);
- the names in ``Wire.errors`` (``rate-limited``, ``boom``, ``bad-request``, ``unknown``, ...): that error
  answer, in the provider's own error format.

Each wire also says what the caller must get back: usage, tool calls, errors. The in-process providers
(replay, handler) get a wire too, without an upstream, for the contracts that apply to them. What a fake
received last is in ``Wire.seen`` (body, headers, path, query).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field

import polars as pl
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

import loopback

from router_ml.serve.providers.anthropic import AnthropicProvider
from router_ml.serve.providers.base import ChatRequest, ChatResult, ProviderError, Usage
from router_ml.serve.providers.gemini import GeminiProvider
from router_ml.serve.providers.handler import HandlerProvider
from router_ml.serve.providers.openai_compat import OpenAICompatProvider
from router_ml.serve.providers.replay import ReplayProvider

ANSWER = ["Hello", " there,", " general", " Kenobi."]
ANSWER_TEXT = "".join(ANSWER)
ARGUMENTS = '{"city": "Paris"}'
WEATHER_TOOL = {"type": "function", "function": {
    "name": "get_weather", "description": "Current weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}
GEMINI_KEY = "AIza-test-key"


def user(text, system: str | None = None) -> list[dict]:
    return ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": text}]


@dataclass(frozen=True)
class Expected:
    """A failure as the provider must report it: status, retryable, Retry-After, and what the message says."""

    status: int
    retryable: bool
    says: tuple[str, ...] = ()
    retry_after: float | None = None


@dataclass
class Wire:
    name: str
    make: Callable[..., object]  # make(base_url, **kwargs) -> a provider
    routes: list[Route] | None = None  # the fake upstream; None for an in-process provider
    path: str = ""  # what follows the upstream's address in the provider's base URL
    seen: dict = field(default_factory=dict)
    complete_usage: tuple[int, int] = (11, 4)
    stream_usage: tuple[int, int] = (11, 4)
    pieces: list[str] = field(default_factory=lambda: list(ANSWER))  # the streamed text chunks of ``ok``
    errors: dict[str, Expected] = field(default_factory=dict)  # model -> how its failure is reported
    tool_text: str = ""
    tool_calls: list[dict] | None = None  # None: no tool calls on this wire
    tool_deltas: list[dict] | None = None
    tool_usage: tuple[int, int] = (11, 4)
    tool_stream_usage: tuple[int, int] = (11, 4)

    @property
    def http(self) -> bool:
        return self.routes is not None

    @contextlib.contextmanager
    def serve(self) -> Iterator[str | None]:
        """The base URL to build the provider with while its upstream runs (None without one)."""
        if self.routes is None:
            yield None
            return
        with loopback.serve(Starlette(routes=self.routes)) as base_url:
            yield base_url + self.path

    def fixture(self):
        """A module-scoped pytest fixture of :meth:`serve`'s base URL (``upstream = OPENAI.fixture()``)."""
        @pytest.fixture(scope="module")
        def upstream() -> Iterator[str | None]:
            with self.serve() as base_url:
                yield base_url
        return upstream

    def run(self, base_url: str | None, call, **kwargs):
        """``call(provider)`` in a fresh event loop, with a provider built for this call and closed after it."""
        async def main():
            provider = self.make(base_url, **kwargs)
            try:
                return await call(provider)
            finally:
                if hasattr(provider, "aclose"):
                    await provider.aclose()
        return asyncio.run(main())

    def error(self, base_url: str | None, request: ChatRequest, stream: bool = False, **kwargs) -> ProviderError:
        """The :class:`ProviderError` that ``complete`` (or collecting ``stream``) raises."""
        with pytest.raises(ProviderError) as caught:
            self.run(base_url, lambda p: loopback.collect(p.stream(request)) if stream else p.complete(request),
                     **kwargs)
        return caught.value


# ---------------------------------------------------------------- what every fake upstream shares


async def received(request: Request, seen: dict) -> dict:
    """The request's JSON body, kept in ``seen`` with its headers, path and query."""
    body = await request.json()
    seen.update(body=body, headers=dict(request.headers), path=request.url.path, query=request.url.query)
    return body


async def hold(request: Request, seconds: float = 1.5) -> None:
    """Answer late (past the client's read timeout), but stop waiting once the client hung up, so that the
    server can shut down at once."""
    with contextlib.suppress(asyncio.TimeoutError):
        await asyncio.wait_for(request.receive(), seconds)


def canned(model: str, errors: dict[str, tuple]) -> Response | None:
    """The error answer ``errors[model]`` (status, JSON body[, headers]), or None when the model names none."""
    if model not in errors:
        return None
    status, body, *headers = errors[model]
    return JSONResponse(body, status, headers=headers[0] if headers else None)


async def play(events: list[bytes], model: str, cut_after: int | None = None) -> AsyncIterator[bytes]:
    """Stream ``events``; after event ``cut_after`` the ``cut`` scenario dies (uvicorn drops the connection
    mid-body) and ``cut-clean`` ends cleanly without the rest."""
    for i, event in enumerate(events):
        yield event
        await asyncio.sleep(0)
        if i == cut_after and model == "cut":
            raise RuntimeError("upstream dies midway")
        if i == cut_after and model == "cut-clean":
            return


def _fragments(*arguments: str) -> list[dict]:
    """Tool-call deltas continuing the first one's arguments."""
    return [{"index": 0, "function": {"arguments": a}} for a in arguments]


# ---------------------------------------------------------------- OpenAI chat completions

OPENAI_TOOL_CALL = {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": ARGUMENTS}}
OPENAI_USAGE = {"prompt_tokens": 11, "completion_tokens": 4, "total_tokens": 15}


def _openai_errors(model: str) -> dict[str, tuple]:
    return {
        "rate-limited": (429, {"error": {"message": "Rate limit reached", "type": "requests"}}, {"Retry-After": "7"}),
        "boom": (500, {"error": {"message": "The server had an error", "type": "server_error"}}),
        "bad-request": (400, {"error": {"message": "Invalid value for 'temperature': must be <= 2.",
                                        "type": "invalid_request_error", "param": "temperature"}}),
        "unknown": (404, {"error": {"message": f"The model `{model}` does not exist or you do not have access to it.",
                                    "type": "invalid_request_error", "param": None, "code": "model_not_found"}}),
    }


def _openai_event(payload) -> bytes:
    return b"data: " + (payload if isinstance(payload, bytes) else json.dumps(payload).encode()) + b"\n\n"


def _openai_delta(delta: dict, finish_reason=None) -> bytes:
    return _openai_event({"id": "c1", "object": "chat.completion.chunk", "model": "m",
                          "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}]})


def _openai_stream(model: str) -> AsyncIterator[bytes]:
    if model == "malformed":
        return play([_openai_delta({"role": "assistant", "content": "fine"}), b"data: {not json\n\n"], model)
    events = [b": keep-alive comment\n\n", _openai_delta({"role": "assistant", "content": ""})]
    if model == "tools":
        first = {**OPENAI_TOOL_CALL, "index": 0, "function": {"name": "get_weather", "arguments": '{"city": '}}
        events += [_openai_delta({"tool_calls": [first]}),
                   _openai_delta({"tool_calls": [{"index": 0, "function": {"arguments": '"Paris"}'}}]}),
                   _openai_delta({}, "tool_calls")]
    else:
        events += [_openai_delta({"content": piece}) for piece in ANSWER] + [_openai_delta({}, "stop")]
    events += [_openai_event({"id": "c1", "object": "chat.completion.chunk", "choices": [], "usage": OPENAI_USAGE}),
               b"data: [DONE]\n\n"]
    return play(events, model, cut_after=3)


async def _chat_completions(request: Request) -> Response:
    body = await received(request, OPENAI.seen)
    model = body["model"]
    if (failure := canned(model, _openai_errors(model))) is not None:
        return failure
    if model == "slow":
        await hold(request)
    if body.get("stream"):
        return StreamingResponse(_openai_stream(model), media_type="text/event-stream")
    if model == "malformed":
        return Response(b'{"choices": [oops', media_type="application/json")
    message = ({"role": "assistant", "content": None, "tool_calls": [OPENAI_TOOL_CALL]} if model == "tools"
               else {"role": "assistant", "content": ANSWER_TEXT})
    return JSONResponse({"id": "c1", "object": "chat.completion", "model": model,
                         "choices": [{"index": 0, "message": message,
                                      "finish_reason": "tool_calls" if model == "tools" else "stop"}],
                         "usage": OPENAI_USAGE})


OPENAI = Wire(
    "openai_compat", lambda base_url, **kwargs: OpenAICompatProvider(base_url, **kwargs),
    routes=[Route("/v1/chat/completions", _chat_completions, methods=["POST"])], path="/v1/",
    errors={"rate-limited": Expected(429, True, ("Rate limit reached",), 7.0),
            "boom": Expected(502, True, ("The server had an error",)),
            "bad-request": Expected(400, False, ("Invalid value for 'temperature': must be <= 2.",)),
            "unknown": Expected(404, False, ("The model `unknown` does not exist",))},
    tool_calls=[OPENAI_TOOL_CALL],
    tool_deltas=[{**OPENAI_TOOL_CALL, "index": 0, "function": {"name": "get_weather", "arguments": '{"city": '}},
                 *_fragments('"Paris"}')])


# ---------------------------------------------------------------- Anthropic messages


def anthropic_error(kind: str, message: str) -> dict:
    return {"type": "error", "error": {"type": kind, "message": message}}


def _anthropic_errors(model: str) -> dict[str, tuple]:
    return {
        "rate-limited": (429, anthropic_error("rate_limit_error", "Number of request tokens has exceeded your limit"),
                         {"retry-after": "7"}),
        "overloaded": (529, anthropic_error("overloaded_error", "Overloaded")),
        "boom": (500, anthropic_error("api_error", "Internal server error")),
        "bad-request": (400, anthropic_error("invalid_request_error",
                                             "max_tokens: 999999 > 8192, which is the maximum")),
        "unknown": (404, anthropic_error("not_found_error", f"model: {model}")),
    }


def _anthropic_event(name: str, payload: dict) -> bytes:
    return f"event: {name}\ndata: {json.dumps(payload)}\n\n".encode()


def _anthropic_block(index: int, delta: dict) -> bytes:
    return _anthropic_event("content_block_delta", {"type": "content_block_delta", "index": index, "delta": delta})


def _anthropic_stream(model: str) -> AsyncIterator[bytes]:
    events = [_anthropic_event("message_start", {"type": "message_start", "message": {
        "id": "msg_1", "type": "message", "role": "assistant", "content": [], "model": model, "stop_reason": None,
        "stop_sequence": None, "usage": {"input_tokens": 25, "output_tokens": 1}}})]
    if model == "malformed":
        return play(events + [b"event: content_block_delta\ndata: {not json\n\n"], model)
    events += [_anthropic_event("content_block_start", {"type": "content_block_start", "index": 0,
                                                        "content_block": {"type": "text", "text": ""}}),
               _anthropic_event("ping", {"type": "ping"})]
    if model == "tools":
        events += [_anthropic_block(0, {"type": "text_delta", "text": "Let me check."}),
                   _anthropic_event("content_block_stop", {"type": "content_block_stop", "index": 0}),
                   _anthropic_event("content_block_start", {"type": "content_block_start", "index": 1,
                                                            "content_block": {"type": "tool_use", "id": "toolu_01",
                                                                              "name": "get_weather", "input": {}}})]
        events += [_anthropic_block(1, {"type": "input_json_delta", "partial_json": fragment})
                   for fragment in ["", '{"city": ', '"Paris"}']]
        events.append(_anthropic_event("content_block_stop", {"type": "content_block_stop", "index": 1}))
        stop_reason, output_tokens = "tool_use", 12
    else:
        events += [_anthropic_block(0, {"type": "text_delta", "text": piece}) for piece in ANSWER]
        midway = {"overloaded-midway": ("overloaded_error", "Overloaded"),
                  "invalid-midway": ("invalid_request_error", "prompt is too long")}
        if model in midway:  # an error event after two pieces, and nothing more
            return play(events[:5] + [_anthropic_event("error", anthropic_error(*midway[model]))], model)
        events.append(_anthropic_event("content_block_stop", {"type": "content_block_stop", "index": 0}))
        stop_reason, output_tokens = "end_turn", 4
    events += [_anthropic_event("message_delta", {"type": "message_delta",
                                                  "delta": {"stop_reason": stop_reason, "stop_sequence": None},
                                                  "usage": {"output_tokens": output_tokens}}),
               _anthropic_event("message_stop", {"type": "message_stop"})]
    return play(events, model, cut_after=4)


async def _messages(request: Request) -> Response:
    body = await received(request, ANTHROPIC.seen)
    model = body["model"]
    if (failure := canned(model, _anthropic_errors(model))) is not None:
        return failure
    if model == "slow":
        await hold(request)
    if body.get("stream"):
        return StreamingResponse(_anthropic_stream(model), media_type="text/event-stream")
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


ANTHROPIC_TOOL_CALL = {"id": "toolu_01", "type": "function",
                       "function": {"name": "get_weather", "arguments": ARGUMENTS}}
ANTHROPIC = Wire(
    "anthropic", lambda base_url, **kwargs: AnthropicProvider(base_url, **kwargs),
    routes=[Route("/v1/messages", _messages, methods=["POST"])],
    stream_usage=(25, 4),  # input from message_start, output from message_delta
    errors={"rate-limited": Expected(429, True, ("Number of request tokens has exceeded your limit",), 7.0),
            "overloaded": Expected(503, True, ("overloaded_error",)),  # Anthropic's 529
            "boom": Expected(502, True, ("Internal server error",)),
            "bad-request": Expected(400, False, ("invalid_request_error",
                                                 "max_tokens: 999999 > 8192, which is the maximum")),
            "unknown": Expected(404, False, ("not_found_error", "model: unknown"))},
    tool_text="Let me check.", tool_calls=[ANTHROPIC_TOOL_CALL],
    tool_deltas=[{"index": 0, **ANTHROPIC_TOOL_CALL, "function": {"name": "get_weather", "arguments": ""}},
                 *_fragments('{"city": ', '"Paris"}')],
    tool_usage=(105, 7),  # cache reads counted as input
    tool_stream_usage=(25, 12))


# ---------------------------------------------------------------- Gemini generateContent

GEMINI_USAGE = {"promptTokenCount": 11, "candidatesTokenCount": 4, "thoughtsTokenCount": 3, "totalTokenCount": 18}
OVERLOADED = "The model is overloaded. Please try again later."


def gemini_response(parts: list[dict] | None, finish: str | None = "STOP", usage: dict | None = None) -> dict:
    candidate: dict = {"index": 0}
    if parts is not None:
        candidate["content"] = {"role": "model", "parts": parts}
    if finish:
        candidate["finishReason"] = finish
    data: dict = {"candidates": [candidate], "modelVersion": "gemini-2.5-flash"}
    if usage:
        data["usageMetadata"] = usage
    return data


def gemini_error(code: int, status: str, message: str, details: list | None = None) -> dict:
    return {"error": {"code": code, "message": message, "status": status, **({"details": details} if details else {})}}


def _gemini_errors(model: str, method: str) -> dict[str, tuple]:
    quota = [{"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "37s"}]
    return {
        "rate-limited": (429, gemini_error(429, "RESOURCE_EXHAUSTED", "Resource has been exhausted"),
                         {"Retry-After": "7"}),
        "quota": (429, gemini_error(429, "RESOURCE_EXHAUSTED", "You exceeded your current quota", quota)),
        "overloaded": (503, gemini_error(503, "UNAVAILABLE", OVERLOADED)),
        "boom": (500, gemini_error(500, "INTERNAL", "An internal error has occurred.")),
        "bad-request": (400, gemini_error(400, "INVALID_ARGUMENT",
                                          "* GenerateContentRequest.generation_config.temperature: must be <= 2")),
        "unknown": (404, gemini_error(404, "NOT_FOUND", f"models/{model} is not found for API version v1beta, "
                                                        f"or is not supported for {method}.")),
    }


def _gemini_tool_parts(body: dict) -> list[dict]:
    """The weather tool: call it, or answer once its functionResponse came back."""
    last = body["contents"][-1]["parts"]
    if any("functionResponse" in p for p in last):
        return [{"text": "It is 18 degrees in Paris."}]
    return [{"functionCall": {"name": "get_weather", "args": {"city": "Paris"}}, "thoughtSignature": "c2lnbmF0dXJl"}]


def _gemini_event(payload) -> bytes:
    return b"data: " + (payload if isinstance(payload, bytes) else json.dumps(payload).encode()) + b"\r\n\r\n"


def _gemini_stream(model: str, body: dict) -> AsyncIterator[bytes]:
    scripted = {
        "malformed": [gemini_response([{"text": "fine"}], None), b"{not json"],
        "blocked": [{"promptFeedback": {"blockReason": "PROHIBITED_CONTENT"}, "usageMetadata": GEMINI_USAGE}],
        "tools": [gemini_response(_gemini_tool_parts(body), "STOP", GEMINI_USAGE)],
        "error-midway": [gemini_response([{"text": ANSWER[0]}], None), gemini_error(503, "UNAVAILABLE", OVERLOADED)],
    }
    if model in scripted:
        return play([_gemini_event(e) for e in scripted[model]], model)
    events = [gemini_response([{"text": "Let me think...", "thought": True}], None)] if model == "thinking" else []
    events += [gemini_response([{"text": piece}], "STOP" if i == len(ANSWER) - 1 else None,
                               GEMINI_USAGE if i == len(ANSWER) - 1 else {"promptTokenCount": 11})
               for i, piece in enumerate(ANSWER)]
    # A clean end before any finishReason is a cut: Gemini streams have no [DONE].
    return play([_gemini_event(e) for e in events], model, cut_after=1)


async def _generate_content(request: Request) -> Response:
    model, _, method = request.path_params["target"].rpartition(":")
    body = await received(request, GEMINI.seen)
    if method not in ("generateContent", "streamGenerateContent"):
        return JSONResponse(gemini_error(404, "NOT_FOUND", f"unknown method {method}"), 404)
    if (failure := canned(model, _gemini_errors(model, method))) is not None:
        return failure
    if model == "slow":
        await hold(request)
    if method == "streamGenerateContent":
        if request.query_params.get("alt") != "sse":
            return JSONResponse(gemini_error(400, "INVALID_ARGUMENT", "this fake only streams SSE"), 400)
        return StreamingResponse(_gemini_stream(model, body), media_type="text/event-stream")
    if model == "malformed":
        return Response(b'{"candidates": [oops', media_type="application/json")
    if model == "blocked":
        return JSONResponse({"promptFeedback": {"blockReason": "SAFETY", "safetyRatings": []},
                             "usageMetadata": GEMINI_USAGE})
    parts = {"length": [{"text": "Hello"}], "safety": None,
             "thinking": [{"text": "Let me think...", "thought": True}, {"text": ANSWER_TEXT}]}.get(
        model, [{"text": "".join(ANSWER[:2])}, {"text": "".join(ANSWER[2:])}])
    if model == "tools":
        parts = _gemini_tool_parts(body)
    finish = {"length": "MAX_TOKENS", "safety": "SAFETY"}.get(model, "STOP")
    return JSONResponse(gemini_response(parts, finish, GEMINI_USAGE))


GEMINI_TOOL_CALL = {"id": "call_0", "type": "function", "function": {"name": "get_weather", "arguments": ARGUMENTS},
                    "extra_content": {"google": {"thought_signature": "c2lnbmF0dXJl"}}}
GEMINI = Wire(
    "gemini", lambda base_url, **kwargs: GeminiProvider(base_url, **{"api_key": GEMINI_KEY, **kwargs}),
    routes=[Route("/v1beta/models/{target}", _generate_content, methods=["POST"])], path="/",
    complete_usage=(11, 7), stream_usage=(11, 7),  # output: 4 candidates + 3 thoughts tokens
    errors={"rate-limited": Expected(429, True, ("RESOURCE_EXHAUSTED", "Resource has been exhausted"), 7.0),
            "quota": Expected(429, True, ("You exceeded your current quota",), 37.0),  # from google.rpc.RetryInfo
            "overloaded": Expected(503, True, ("overloaded",)),
            "boom": Expected(502, True, ("An internal error has occurred.",)),
            "bad-request": Expected(400, False, ("INVALID_ARGUMENT",
                                                 "GenerateContentRequest.generation_config.temperature: must be <= 2")),
            "unknown": Expected(404, False, ("NOT_FOUND", "models/unknown is not found"))},
    tool_calls=[GEMINI_TOOL_CALL], tool_deltas=[{"index": 0, **GEMINI_TOOL_CALL}],
    tool_usage=(11, 7), tool_stream_usage=(11, 7))


# ---------------------------------------------------------------- in-process providers

REPLAY = Wire(
    "replay", lambda base_url, **kwargs: ReplayProvider.from_outcomes(
        pl.DataFrame({"prompt": ["hi"], "model": ["ok"], "response": [ANSWER_TEXT], "output_tokens": [4]}),
        speed=0, **kwargs),
    complete_usage=(1, 4), stream_usage=(1, 4),  # "hi" is one o200k_base token; the recorded output tokens
    pieces=[ANSWER_TEXT],  # a few words a piece
    errors={"unknown": Expected(404, False, ("no recorded responses for model 'unknown'",))})

HANDLER_TOOL_CALL = {"id": "call_7", "type": "function", "function": {"name": "get_weather", "arguments": ARGUMENTS}}


def _handler(request: ChatRequest) -> str | ChatResult:
    """Plain text for ``ok``, a whole result for ``tools``, an error for any other model."""
    if request.model == "ok":
        return ANSWER_TEXT
    if request.model == "tools":
        return ChatResult("", "tool_calls", Usage(11, 4), tool_calls=[HANDLER_TOOL_CALL])
    raise ProviderError(f"no model {request.model!r}", status=404, retryable=False)


async def _async_handler(request: ChatRequest) -> ChatResult:
    await asyncio.sleep(0)
    answer = _handler(request)
    return answer if isinstance(answer, ChatResult) else ChatResult(answer, "stop", Usage(11, 4))


_HANDLER_EXPECTED = dict(errors={"unknown": Expected(404, False, ("no model 'unknown'",))},
                         tool_calls=[HANDLER_TOOL_CALL], tool_deltas=[{"index": 0, **HANDLER_TOOL_CALL}])
HANDLER = Wire("handler", lambda base_url, **kwargs: HandlerProvider(_handler, **kwargs),
               complete_usage=(8, 4), stream_usage=(8, 4),  # a quarter of the messages' characters; words
               **_HANDLER_EXPECTED)
ASYNC_HANDLER = Wire("handler-async", lambda base_url, **kwargs: HandlerProvider(_async_handler, **kwargs),
                     **_HANDLER_EXPECTED)

HTTP_WIRES = [OPENAI, ANTHROPIC, GEMINI]
ALL_WIRES = [*HTTP_WIRES, REPLAY, HANDLER, ASYNC_HANDLER]
