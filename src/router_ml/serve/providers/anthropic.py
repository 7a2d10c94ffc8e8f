"""A provider speaking the Anthropic Messages API wire format over HTTP (the shared upstream pool).

``POST {base_url}/v1/messages`` with ``x-api-key`` and ``anthropic-version`` headers. The OpenAI-style
:class:`ChatRequest` is translated on the way out:

- ``system`` / ``developer`` messages are lifted into the top-level ``system`` string;
- ``user`` / ``assistant`` turns are kept, consecutive turns of the same role merged (Anthropic wants them
  to alternate); assistant ``tool_calls`` become ``tool_use`` blocks, ``tool`` messages become ``user``
  turns holding ``tool_result`` blocks;
- ``max_tokens`` is required by Anthropic: the request's, else ``default_max_tokens``;
- ``stop`` -> ``stop_sequences``; OpenAI function tools -> ``{name, description, input_schema}``;
  ``tool_choice`` "auto" / "required" / "none" / ``{"type": "function", ...}`` -> auto / any / none / tool.

Answers come back OpenAI-shaped: text blocks joined, ``tool_use`` blocks as ``tool_calls`` (arguments as a
JSON string), ``stop_reason`` end_turn / stop_sequence -> "stop", max_tokens -> "length",
tool_use -> "tool_calls", refusal -> "content_filter". Usage input tokens include cache reads and writes.

Streams are server-sent events (message_start, content_block_start/delta/stop, message_delta,
message_stop, ping, error). Failures are :class:`ProviderError`:

- 429 -> 429, retryable, ``retry_after`` from the retry-after header;
- 529 (overloaded) -> 503, retryable; 503 and 504 kept, other 5xx -> 502, retryable; 408 -> 408, retryable;
- other 4xx -> the same status, not retryable, with Anthropic's error type and message;
- timeouts -> 504, retryable; connection and other transport errors -> 502, retryable;
- a body that is not the expected JSON -> 502, not retryable ("malformed");
- an ``error`` event in a stream -> the status its error type stands for (overloaded_error -> 503,
  retryable; api_error -> 502, retryable; invalid_request_error -> 400, ...);
- a stream that ends without ``message_stop`` -> 502 "stream cut", retryable, raised from the iterator.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Mapping

from router_ml.serve.providers.base import ChatChunk, ChatRequest, ChatResult, ProviderError, Usage
from router_ml.serve.providers.wire import (TRANSPORT_ERRORS, HTTPAdapter, Timeouts, UpstreamPool,
                                             counted_input_tokens, message_text, retry_after_seconds, sse_lines,
                                             tool_arguments)
from router_ml.tokens import count_tokens

DEFAULT_TIMEOUT = Timeouts(connect=10.0, read=120.0)
DEFAULT_VERSION = "2023-06-01"

FINISH_REASONS = {"end_turn": "stop", "stop_sequence": "stop", "max_tokens": "length", "tool_use": "tool_calls",
                  "refusal": "content_filter", "pause_turn": "stop",
                  "model_context_window_exceeded": "length"}

# Anthropic error type -> (status to answer with, retryable).
ERROR_TYPES = {
    "invalid_request_error": (400, False),
    "authentication_error": (401, False),
    "billing_error": (402, False),
    "permission_error": (403, False),
    "not_found_error": (404, False),
    "request_too_large": (413, False),
    "rate_limit_error": (429, True),
    "api_error": (502, True),
    "timeout_error": (504, True),
    "overloaded_error": (503, True),
}


def _finish_reason(stop_reason: str | None, tool_calls: bool) -> str:
    if stop_reason in FINISH_REASONS:
        return FINISH_REASONS[stop_reason]
    return "tool_calls" if tool_calls else "stop"


def _anthropic_error(data) -> tuple[str | None, str | None]:
    """(type, message) from Anthropic's {"type": "error", "error": {"type": ..., "message": ...}}."""
    if isinstance(data, dict):
        error = data.get("error")
        if isinstance(error, dict):
            return (str(error["type"]) if error.get("type") else None,
                    str(error["message"]) if error.get("message") else None)
        if isinstance(error, str):
            return None, error
        if data.get("message"):
            return None, str(data["message"])
    return None, None


def _error_text(body: bytes) -> tuple[str | None, str]:
    text = body.decode("utf-8", errors="replace").strip()
    try:
        kind, message = _anthropic_error(json.loads(text))
    except ValueError:
        return None, text[:500] or "(empty body)"
    return kind, message or text[:500] or "(empty body)"


# ---------------------------------------------------------------- request translation


def _image_block(part: dict) -> dict | None:
    url = part.get("image_url")
    url = url.get("url") if isinstance(url, dict) else url
    if not isinstance(url, str) or not url:
        return None
    if url.startswith("data:") and ";base64," in url:
        media_type, data = url[5:].split(";base64,", 1)
        return {"type": "image", "source": {"type": "base64", "media_type": media_type, "data": data}}
    return {"type": "image", "source": {"type": "url", "url": url}}


def _blocks(content) -> list[dict]:
    """OpenAI message content (a string or content parts) as Anthropic content blocks; empty text dropped
    (Anthropic rejects empty text blocks)."""
    if content is None:
        return []
    if isinstance(content, str):
        return [{"type": "text", "text": content}] if content else []
    if isinstance(content, list):
        blocks: list[dict] = []
        for part in content:
            if isinstance(part, str):
                part = {"type": "text", "text": part}
            if not isinstance(part, dict):
                continue
            kind = part.get("type")
            if kind in ("text", "input_text"):
                if part.get("text"):
                    blocks.append({"type": "text", "text": str(part["text"])})
            elif kind == "image_url":
                if (image := _image_block(part)) is not None:
                    blocks.append(image)
            elif kind in ("image", "document", "tool_use", "tool_result"):
                blocks.append(part)  # already Anthropic-shaped
        return blocks
    return [{"type": "text", "text": str(content)}]


def convert_messages(messages: list[dict]) -> tuple[str | None, list[dict]]:
    """OpenAI-style messages as Anthropic's ``(system, messages)``. Raises ValueError on what cannot be sent."""
    system: list[str] = []
    turns: list[tuple[str, list[dict]]] = []
    for message in messages:
        role = message.get("role")
        content = message.get("content")
        if role in ("system", "developer"):
            if text := message_text(content):
                system.append(text)
            continue
        if role == "user":
            blocks = _blocks(content)
        elif role == "assistant":
            blocks = _blocks(content)
            for call in message.get("tool_calls") or []:
                function = call.get("function") or {}
                blocks.append({"type": "tool_use", "id": call.get("id") or "", "name": function.get("name") or "",
                               "input": tool_arguments(function.get("arguments"))})
        elif role == "tool":
            role = "user"
            result = {"type": "tool_result", "tool_use_id": message.get("tool_call_id") or ""}
            if isinstance(content, list):
                result["content"] = _blocks(content)
            elif content is not None and content != "":
                result["content"] = str(content)
            blocks = [result]
        else:
            raise ValueError(f"unsupported message role {role!r}")
        if not blocks:
            continue
        if turns and turns[-1][0] == role:
            turns[-1][1].extend(blocks)
        else:
            turns.append((role, blocks))
    out = []
    for role, blocks in turns:
        single_text = len(blocks) == 1 and blocks[0]["type"] == "text" and set(blocks[0]) == {"type", "text"}
        out.append({"role": role, "content": blocks[0]["text"] if single_text else blocks})
    return ("\n\n".join(system) or None), out


def convert_tools(tools: list[dict]) -> list[dict]:
    out = []
    for tool in tools:
        if tool.get("type") == "function" and isinstance(tool.get("function"), dict):
            function = tool["function"]
            converted = {"name": function.get("name") or ""}
            if function.get("description"):
                converted["description"] = function["description"]
            converted["input_schema"] = function.get("parameters") or {"type": "object", "properties": {}}
            out.append(converted)
        else:
            out.append(tool)  # already Anthropic-shaped (or a server tool)
    return out


def convert_tool_choice(choice: str | dict) -> dict:
    if isinstance(choice, str):
        return {"type": {"auto": "auto", "required": "any", "any": "any", "none": "none"}.get(choice, choice)}
    if isinstance(choice, dict) and choice.get("type") == "function":
        return {"type": "tool", "name": (choice.get("function") or {}).get("name") or choice.get("name") or ""}
    return choice


def _tool_call(block: dict) -> dict:
    return {"id": block.get("id") or "", "type": "function",
            "function": {"name": block.get("name") or "", "arguments": json.dumps(block.get("input") or {})}}


def _input_tokens(usage: dict) -> int:
    return sum(int(usage.get(key) or 0)
               for key in ("input_tokens", "cache_creation_input_tokens", "cache_read_input_tokens"))


class AnthropicProvider(HTTPAdapter):
    """Messages API against ``base_url`` (``https://api.anthropic.com``; a base ending in ``/v1`` works too)."""

    def __init__(self, base_url: str = "https://api.anthropic.com", api_key: str | None = None,
                 name: str = "anthropic", timeout: Timeouts = DEFAULT_TIMEOUT,
                 pool: UpstreamPool | None = None, default_max_tokens: int = 1024,
                 version: str = DEFAULT_VERSION):
        super().__init__(base_url, api_key, name, timeout, pool)
        self.url = self.base_url + ("/messages" if self.base_url.endswith("/v1") else "/v1/messages")
        self.default_max_tokens = default_max_tokens
        self.version = version

    # ------------------------------------------------------------ request

    def _body(self, request: ChatRequest, stream: bool) -> dict:
        try:
            system, messages = convert_messages(request.messages)
        except ValueError as exc:
            raise self._error(str(exc), 400, False) from exc
        body: dict = {"model": request.model,
                      "max_tokens": request.max_tokens if request.max_tokens is not None else self.default_max_tokens,
                      "messages": messages}
        if system:
            body["system"] = system
        if request.temperature is not None:
            body["temperature"] = request.temperature
        if request.top_p is not None:
            body["top_p"] = request.top_p
        if request.stop:
            body["stop_sequences"] = list(request.stop)
        if request.tools:
            body["tools"] = convert_tools(request.tools)
        if request.tool_choice is not None and request.tools:
            body["tool_choice"] = convert_tool_choice(request.tool_choice)
        if stream:
            body["stream"] = True
        return body

    def _request_headers(self) -> dict[str, str]:
        headers = {"content-type": "application/json", "anthropic-version": self.version}
        if self._api_key:
            headers["x-api-key"] = self._api_key
        return headers

    # ------------------------------------------------------------ errors

    def _http_error(self, status: int, headers: Mapping[str, str], body: bytes) -> ProviderError:
        kind, detail = _error_text(body)
        message = f"upstream HTTP {status}" + (f" {kind}" if kind else "") + f": {detail}"
        # Anthropic's 529 "overloaded" is a 503 to our clients.
        return self._status_error(503 if status == 529 else status, message, retry_after_seconds(headers))

    def _event_error(self, data) -> ProviderError:
        kind, detail = _anthropic_error(data)
        status, retryable = ERROR_TYPES.get(kind or "", (502, True))
        return self._error(f"upstream error in stream: {kind or 'error'}: {detail or '(no message)'}",
                           status, retryable)

    # ------------------------------------------------------------ calls

    async def complete(self, request: ChatRequest) -> ChatResult:
        body = self._body(request, stream=False)
        try:
            async with self._post(self.url, body, self._request_headers()) as response:
                raw = await response.read()
        except TRANSPORT_ERRORS as exc:
            raise self._transport_error(exc) from exc
        if response.status >= 400:
            raise self._http_error(response.status, response.headers, raw)
        try:
            data = json.loads(raw)
            if data.get("type") == "error":
                raise self._event_error(data)
            texts: list[str] = []
            tool_calls: list[dict] = []
            for block in data["content"]:
                if block.get("type") == "text":
                    texts.append(str(block.get("text") or ""))
                elif block.get("type") == "tool_use":
                    tool_calls.append(_tool_call(block))
            text = "".join(texts)
            usage = data["usage"]
            result = ChatResult(text=text, finish_reason=_finish_reason(data.get("stop_reason"), bool(tool_calls)),
                                usage=Usage(_input_tokens(usage), int(usage.get("output_tokens") or 0)),
                                tool_calls=tool_calls or None)
        except (ValueError, KeyError, IndexError, TypeError, AttributeError) as exc:
            raise self._error(f"malformed response from upstream: {raw[:200]!r}", 502, False) from exc
        return result

    async def stream(self, request: ChatRequest) -> AsyncIterator[ChatChunk]:
        """Text deltas and OpenAI-style tool-call deltas (``index``, then ``id`` and name first, then argument
        fragments) as they arrive; the last chunk carries finish_reason and usage."""
        body = self._body(request, stream=True)
        input_tokens: int | None = None
        output_tokens: int | None = None
        stop_reason: str | None = None
        tools: dict[int, int] = {}  # content block index -> OpenAI tool call index
        texts: list[str] = []
        done = False
        in_body = False
        try:
            async with self._post(self.url, body, self._request_headers()) as response:
                if response.status >= 400:
                    raise self._http_error(response.status, response.headers, await response.read())
                in_body = True
                async for event_name, data_lines in self._events(response):
                    payload = "\n".join(data_lines)
                    try:
                        event = json.loads(payload)
                        if not isinstance(event, dict):
                            raise ValueError("not an object")
                    except ValueError as exc:
                        raise self._error(f"malformed stream event from upstream: {payload[:200]!r}", 502,
                                          False) from exc
                    kind = event.get("type") or event_name
                    try:
                        if kind == "message_start":
                            usage = (event.get("message") or {}).get("usage") or {}
                            if usage.get("input_tokens") is not None:
                                input_tokens = _input_tokens(usage)
                            if usage.get("output_tokens") is not None:
                                output_tokens = int(usage["output_tokens"])
                        elif kind == "content_block_start":
                            block = event.get("content_block") or {}
                            if block.get("type") == "text" and block.get("text"):
                                texts.append(block["text"])
                                yield ChatChunk(text=block["text"])
                            elif block.get("type") == "tool_use":
                                tools[event.get("index", 0)] = index = len(tools)
                                arguments = json.dumps(block["input"]) if block.get("input") else ""
                                yield ChatChunk(tool_calls=[{
                                    "index": index, "id": block.get("id") or "", "type": "function",
                                    "function": {"name": block.get("name") or "", "arguments": arguments}}])
                        elif kind == "content_block_delta":
                            delta = event.get("delta") or {}
                            if delta.get("type") == "text_delta" and delta.get("text"):
                                texts.append(delta["text"])
                                yield ChatChunk(text=delta["text"])
                            elif delta.get("type") == "input_json_delta" and delta.get("partial_json"):
                                index = tools.get(event.get("index", 0))
                                if index is not None:
                                    yield ChatChunk(tool_calls=[
                                        {"index": index, "function": {"arguments": delta["partial_json"]}}])
                            # thinking_delta, signature_delta, citations_delta: not forwarded
                        elif kind == "message_delta":
                            stop_reason = (event.get("delta") or {}).get("stop_reason") or stop_reason
                            usage = event.get("usage") or {}
                            if usage.get("output_tokens") is not None:
                                output_tokens = int(usage["output_tokens"])
                            if usage.get("input_tokens") is not None:
                                input_tokens = _input_tokens(usage)
                        elif kind == "message_stop":
                            done = True
                            break
                        elif kind == "error":
                            raise self._event_error(event)
                        # ping, content_block_stop and unknown events: nothing to do
                    except (TypeError, ValueError, AttributeError) as exc:
                        raise self._error(f"malformed stream event from upstream: {payload[:200]!r}", 502,
                                          False) from exc
        except TRANSPORT_ERRORS as exc:
            raise (self._cut(exc) if in_body else self._transport_error(exc)) from exc
        if not done:
            raise self._error("stream cut: upstream ended the stream without message_stop", 502, True)
        if input_tokens is None:
            input_tokens = counted_input_tokens(request.messages)
        if output_tokens is None:
            output_tokens = count_tokens("".join(texts))
        yield ChatChunk(finish_reason=_finish_reason(stop_reason, bool(tools)),
                        usage=Usage(input_tokens, output_tokens))

    @staticmethod
    async def _events(response) -> AsyncIterator[tuple[str | None, list[str]]]:
        """Server-sent events as (event name, data lines), dispatched at each blank line; comments and
        events without data skipped."""
        name: str | None = None
        data: list[str] = []
        async for line in sse_lines(response):
            if not line:
                if data:
                    yield name, data
                name, data = None, []
                continue
            if line.startswith(":"):
                continue
            field, _, value = line.partition(":")
            value = value[1:] if value.startswith(" ") else value
            if field == "event":
                name = value
            elif field == "data":
                data.append(value)
        if data:
            yield name, data
