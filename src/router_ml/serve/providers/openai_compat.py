"""A provider speaking the OpenAI Chat Completions wire format over HTTP (the shared upstream pool).

Works for OpenAI and any OpenAI-compatible server (vLLM, Ollama's /v1, OpenRouter, LiteLLM, ...):
``POST {base_url}/chat/completions``, streamed as server-sent events (``data: {...}`` lines ending with
``data: [DONE]``). Upstream failures become :class:`ProviderError`:

- 429 -> 429, retryable, ``retry_after`` from the Retry-After (or retry-after-ms) header;
- 5xx -> 502 (503 and 504 kept), retryable; 408 -> 408, retryable;
- other 4xx -> the same status, not retryable, with the upstream error message;
- timeouts -> 504, retryable; connection and other transport errors -> 502, retryable;
- a body that is not the expected JSON -> 502, not retryable ("malformed");
- a stream that ends without ``[DONE]`` or a finish_reason -> 502 "stream cut", retryable, raised from the
  iterator (the caller knows whether it already forwarded part of the answer).

API keys come from the constructor; the caller reads them from its configuration.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Mapping

from router_ml.serve.providers.base import ChatChunk, ChatRequest, ChatResult, ProviderError, Usage
from router_ml.serve.providers.wire import (DEFAULT_TIMEOUT, TRANSPORT_ERRORS, HTTPAdapter, Timeouts, UpstreamPool,
                                             counted_input_tokens, message_text, retry_after_seconds, sse_lines)
from router_ml.tokens import count_tokens

_OPTIONAL = ("temperature", "top_p", "max_tokens", "stop", "tools", "tool_choice")


def _error_message(body: bytes) -> str:
    """The upstream's error message: OpenAI's {"error": {"message": ...}}, or {"error": "..."} (Ollama),
    {"detail": ...}, {"message": ...}; else the start of the body."""
    text = body.decode("utf-8", errors="replace").strip()
    try:
        data = json.loads(text)
    except ValueError:
        return text[:500] or "(empty body)"
    if isinstance(data, dict):
        error = data.get("error")
        if isinstance(error, dict) and error.get("message"):
            return str(error["message"])
        for candidate in (error, data.get("detail"), data.get("message")):
            if candidate:
                return candidate if isinstance(candidate, str) else json.dumps(candidate)[:500]
    return text[:500]


class OpenAICompatProvider(HTTPAdapter):
    """Chat completions against ``base_url`` (e.g. ``https://api.openai.com/v1``, ``http://localhost:8000/v1``).

    ``headers`` are extra headers sent with each request (e.g. OpenRouter's HTTP-Referer); the pool
    handling is :class:`HTTPAdapter`'s.
    """

    def __init__(self, base_url: str, api_key: str | None = None, name: str = "openai",
                 timeout: Timeouts = DEFAULT_TIMEOUT, pool: UpstreamPool | None = None,
                 headers: dict[str, str] | None = None):
        super().__init__(base_url, api_key, name, timeout, pool)
        self.url = self.base_url + "/chat/completions"
        self._headers = dict(headers or {})

    def _body(self, request: ChatRequest, stream: bool) -> dict:
        body: dict = {"model": request.model, "messages": request.messages}
        for key in _OPTIONAL:
            value = getattr(request, key)
            if value is not None:
                body[key] = value
        if stream:
            body["stream"] = True
            body["stream_options"] = {"include_usage": True}
        return body

    def _request_headers(self) -> dict[str, str]:
        headers = {"Content-Type": "application/json", **self._headers}
        if self._api_key:
            headers["Authorization"] = f"Bearer {self._api_key}"
        return headers

    def _http_error(self, status: int, headers: Mapping[str, str], body: bytes) -> ProviderError:
        return self._status_error(status, f"upstream HTTP {status}: {_error_message(body)}",
                                  retry_after_seconds(headers))

    def _usage(self, usage: dict | None, request: ChatRequest, text: str) -> Usage:
        """The upstream's usage; when it reports none, o200k_base counts of what was sent and received."""
        if isinstance(usage, dict) and usage.get("prompt_tokens") is not None:
            return Usage(int(usage.get("prompt_tokens") or 0), int(usage.get("completion_tokens") or 0))
        return Usage(counted_input_tokens(request.messages), count_tokens(text))

    async def complete(self, request: ChatRequest) -> ChatResult:
        try:
            async with self._post(self.url, self._body(request, stream=False), self._request_headers()) as response:
                raw = await response.read()
        except TRANSPORT_ERRORS as exc:
            raise self._transport_error(exc) from exc
        if response.status >= 400:
            raise self._http_error(response.status, response.headers, raw)
        try:
            data = json.loads(raw)
            choice = data["choices"][0]
            message = choice.get("message") or {}
            text = message_text(message.get("content"))
            tool_calls = message.get("tool_calls") or None
            finish_reason = choice.get("finish_reason") or ("tool_calls" if tool_calls else "stop")
            usage = self._usage(data.get("usage"), request, text)
        except (ValueError, KeyError, IndexError, TypeError, AttributeError) as exc:
            raise self._error(f"malformed response from upstream: {raw[:200]!r}", 502, False) from exc
        return ChatResult(text=text, finish_reason=finish_reason, usage=usage, tool_calls=tool_calls)

    async def stream(self, request: ChatRequest) -> AsyncIterator[ChatChunk]:
        """Content and tool-call deltas as they arrive (tool-call deltas passed through as OpenAI sends them,
        with their ``index``); the last chunk carries finish_reason and usage."""
        finish_reason: str | None = None
        usage: dict | None = None
        done = False
        texts: list[str] = []
        in_body = False
        try:
            async with self._post(self.url, self._body(request, stream=True), self._request_headers()) as response:
                if response.status >= 400:
                    raise self._http_error(response.status, response.headers, await response.read())
                in_body = True
                async for line in sse_lines(response):
                    line = line.strip()
                    if not line.startswith("data:"):
                        continue  # blank separators, ": keep-alive" comments, event:/id: fields
                    payload = line[5:].strip()
                    if payload == "[DONE]":
                        done = True
                        break
                    try:
                        event = json.loads(payload)
                        if not isinstance(event, dict):
                            raise ValueError("not an object")
                    except ValueError as exc:
                        raise self._error(f"malformed stream event from upstream: {payload[:200]!r}", 502,
                                          False) from exc
                    if event.get("error"):
                        raise self._error(f"upstream error in stream: {_error_message(payload.encode())}", 502, True)
                    if event.get("usage"):
                        usage = event["usage"]
                    for choice in event.get("choices") or []:
                        if not isinstance(choice, dict) or choice.get("index", 0) != 0:
                            continue
                        delta = choice.get("delta") or {}
                        text = message_text(delta.get("content"))
                        tool_calls = delta.get("tool_calls") or None
                        if text or tool_calls:
                            texts.append(text)
                            yield ChatChunk(text=text, tool_calls=tool_calls)
                        if choice.get("finish_reason"):
                            finish_reason = choice["finish_reason"]
        except TRANSPORT_ERRORS as exc:
            raise (self._cut(exc) if in_body else self._transport_error(exc)) from exc
        if not done and finish_reason is None:
            raise self._error("stream cut: upstream ended the stream without [DONE] or a finish_reason", 502, True)
        yield ChatChunk(finish_reason=finish_reason or "stop", usage=self._usage(usage, request, "".join(texts)))
