"""A provider speaking Google's Gemini API (``generateContent``) over HTTP (the shared upstream pool).

``POST {base_url}/{api_version}/models/{model}:generateContent`` with the key in the ``x-goog-api-key`` header
(never in the URL); streamed from ``:streamGenerateContent?alt=sse`` as server-sent events, each
``data: {GenerateContentResponse}``. OpenAI-style requests are translated:

- ``system`` and ``developer`` messages -> ``systemInstruction`` (joined with blank lines);
- ``user`` -> role ``user``, ``assistant`` -> role ``model``, consecutive turns of one role merged;
- assistant ``tool_calls`` -> ``functionCall`` parts; ``tool`` messages -> ``user`` turns with a
  ``functionResponse`` part, named after the earlier tool call with that ``tool_call_id``;
- temperature, top_p, max_tokens, stop -> ``generationConfig``; function tools -> ``functionDeclarations``;
  tool_choice -> ``toolConfig.functionCallingConfig``.

Answers come back as OpenAI-style results: text parts joined (``thought`` parts left out), ``functionCall``
parts as tool calls ``call_<n>`` with JSON ``arguments`` (a ``thoughtSignature`` rides along in
``extra_content.google.thought_signature``, Google's own OpenAI-compatibility convention, and is sent back
with the call on the next turn). Finish reasons: STOP -> stop, MAX_TOKENS -> length, SAFETY / RECITATION /
BLOCKLIST / PROHIBITED_CONTENT / SPII / IMAGE_SAFETY -> content_filter, any function call -> tool_calls.
Usage: promptTokenCount, candidatesTokenCount + thoughtsTokenCount.

Failures are :class:`ProviderError`:

- a prompt blocked before any candidate (``promptFeedback.blockReason``) -> 400, not retryable;
- 429 (RESOURCE_EXHAUSTED) -> 429, retryable, ``retry_after`` from Retry-After, else from the error's
  ``google.rpc.RetryInfo`` detail;
- 5xx -> 502 (503 and 504 kept), retryable; 408 -> 408, retryable;
- other 4xx -> the same status, not retryable, with Gemini's message and status (e.g. INVALID_ARGUMENT);
- timeouts -> 504, retryable; connection and other transport errors -> 502, retryable;
- a body that is not the expected JSON -> 502, not retryable ("malformed");
- Gemini streams have no ``[DONE]``: one that ends before an event carrying a finishReason -> 502 "stream cut",
  retryable, raised from the iterator.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Mapping

from router_ml.serve.providers.base import ChatChunk, ChatRequest, ChatResult, ProviderError, Usage
from router_ml.serve.providers.wire import (DEFAULT_TIMEOUT, TRANSPORT_ERRORS, HTTPAdapter, Timeouts, UpstreamPool,
                                             counted_input_tokens, message_text, retry_after_seconds, sse_lines,
                                             tool_arguments)
from router_ml.tokens import count_tokens

DEFAULT_BASE_URL = "https://generativelanguage.googleapis.com"

FINISH_REASONS = {
    "STOP": "stop",
    "MAX_TOKENS": "length",
    "SAFETY": "content_filter",
    "RECITATION": "content_filter",
    "BLOCKLIST": "content_filter",
    "PROHIBITED_CONTENT": "content_filter",
    "SPII": "content_filter",
    "IMAGE_SAFETY": "content_filter",
}
_TOOL_CHOICE_MODES = {"auto": "AUTO", "none": "NONE", "required": "ANY", "any": "ANY"}


def _finish_reason(reason: str | None, has_tool_calls: bool) -> str:
    if has_tool_calls:
        return "tool_calls"
    return FINISH_REASONS.get(reason or "STOP", "stop")


def _tool_response(content) -> dict:
    text = message_text(content)
    try:
        return {"content": json.loads(text)}
    except ValueError:
        return {"content": text}


def to_gemini_body(request: ChatRequest) -> dict:
    """The generateContent body for an OpenAI-style request (ValueError when it cannot be expressed in Gemini's format)."""
    system: list[str] = []
    contents: list[dict] = []
    tool_names: dict[str, str] = {}

    def add(role: str, parts: list[dict]) -> None:
        if not parts:
            return
        if contents and contents[-1]["role"] == role:
            contents[-1]["parts"].extend(parts)
        else:
            contents.append({"role": role, "parts": parts})

    for message in request.messages:
        role = message.get("role")
        if role in ("system", "developer"):
            text = message_text(message.get("content"))
            if text:
                system.append(text)
        elif role == "user":
            text = message_text(message.get("content"))
            add("user", [{"text": text}] if text else [])
        elif role == "assistant":
            text = message_text(message.get("content"))
            parts: list[dict] = [{"text": text}] if text else []
            for call in message.get("tool_calls") or []:
                function = call.get("function") or {}
                name = function.get("name")
                if not name:
                    raise ValueError("assistant tool call without a function name")
                if call.get("id"):
                    tool_names[call["id"]] = name
                part: dict = {"functionCall": {"name": name, "args": tool_arguments(function.get("arguments"))}}
                signature = ((call.get("extra_content") or {}).get("google") or {}).get("thought_signature")
                if signature:
                    part["thoughtSignature"] = signature
                parts.append(part)
            add("model", parts)
        elif role == "tool":
            call_id = message.get("tool_call_id")
            name = tool_names.get(call_id) or message.get("name")
            if not name:
                raise ValueError(f"tool message answers unknown tool_call_id {call_id!r}")
            add("user", [{"functionResponse": {"name": name, "response": _tool_response(message.get("content"))}}])
        else:
            raise ValueError(f"unsupported message role {role!r}")

    body: dict = {"contents": contents}
    if system:
        body["systemInstruction"] = {"parts": [{"text": "\n\n".join(system)}]}
    config = {key: value for key, value in (("temperature", request.temperature), ("topP", request.top_p),
                                            ("maxOutputTokens", request.max_tokens),
                                            ("stopSequences", request.stop)) if value is not None}
    if config:
        body["generationConfig"] = config
    if request.tools:
        declarations = []
        for tool in request.tools:
            if tool.get("type", "function") != "function" or not isinstance(tool.get("function"), dict):
                raise ValueError(f"unsupported tool type {tool.get('type')!r} (only function tools)")
            function = tool["function"]
            declaration = {"name": function.get("name")}
            for key in ("description", "parameters"):
                if function.get(key) is not None:
                    declaration[key] = function[key]
            declarations.append(declaration)
        body["tools"] = [{"functionDeclarations": declarations}]
    if request.tool_choice is not None:
        choice = request.tool_choice
        if isinstance(choice, str):
            if choice not in _TOOL_CHOICE_MODES:
                raise ValueError(f"unsupported tool_choice {choice!r}")
            calling: dict = {"mode": _TOOL_CHOICE_MODES[choice]}
        else:
            name = (choice.get("function") or {}).get("name") if isinstance(choice, dict) else None
            if not name:
                raise ValueError(f"unsupported tool_choice {choice!r}")
            calling = {"mode": "ANY", "allowedFunctionNames": [name]}
        body["toolConfig"] = {"functionCallingConfig": calling}
    return body


def _gemini_error(body: bytes) -> tuple[str, float | None]:
    """(message, retry delay) from Gemini's {"error": {"code", "message", "status", "details"}} (also as the
    one-element list streamed errors come in); else the start of the body."""
    text = body.decode("utf-8", errors="replace").strip()
    try:
        data = json.loads(text)
    except ValueError:
        return text[:500] or "(empty body)", None
    if isinstance(data, list) and data:
        data = data[0]
    error = data.get("error") if isinstance(data, dict) else None
    if not isinstance(error, dict):
        return (str(error) if error else text[:500]), None
    message = str(error.get("message") or "")
    if error.get("status"):
        message = f"{error['status']}: {message}" if message else str(error["status"])
    delay = None
    for detail in error.get("details") or []:
        if isinstance(detail, dict) and str(detail.get("@type", "")).endswith("google.rpc.RetryInfo"):
            try:
                delay = max(float(str(detail.get("retryDelay", "")).rstrip("s")), 0.0)
            except ValueError:
                pass
    return message or text[:500], delay


async def _sse_payloads(response) -> AsyncIterator[str]:
    """The data of each server-sent event (multi-line data joined); an unterminated last event is kept only
    when it is complete JSON (a cut mid-event is then reported as a cut, not as malformed)."""
    data_lines: list[str] = []
    async for line in sse_lines(response):
        if line.strip():
            if line.startswith("data:"):
                data_lines.append(line[5:].removeprefix(" "))
            continue  # ": comments", event:/id: fields
        if data_lines:
            yield "\n".join(data_lines)
            data_lines = []
    if data_lines:
        payload = "\n".join(data_lines)
        try:
            json.loads(payload)
        except ValueError:
            return
        yield payload


class GeminiProvider(HTTPAdapter):
    """Gemini models (``gemini-2.5-flash``, ...) through the Generative Language API."""

    def __init__(self, base_url: str = DEFAULT_BASE_URL, api_key: str | None = None, name: str = "gemini",
                 timeout: Timeouts = DEFAULT_TIMEOUT, pool: UpstreamPool | None = None,
                 api_version: str = "v1beta"):
        super().__init__(base_url, api_key, name, timeout, pool)
        self.api_version = api_version.strip("/")

    def url(self, model: str, method: str) -> str:
        model = model.removeprefix("models/")
        return f"{self.base_url}/{self.api_version}/models/{model}:{method}"

    def _request_headers(self) -> dict[str, str]:
        headers = {"Content-Type": "application/json"}
        if self._api_key:
            headers["x-goog-api-key"] = self._api_key
        return headers

    def _body(self, request: ChatRequest) -> dict:
        try:
            return to_gemini_body(request)
        except ValueError as exc:
            raise self._error(f"cannot translate request for Gemini: {exc}", 400, False) from exc

    def _http_error(self, status: int, headers: Mapping[str, str], body: bytes) -> ProviderError:
        message, delay = _gemini_error(body)
        retry_after = retry_after_seconds(headers)
        return self._status_error(status, f"upstream HTTP {status}: {message}",
                                  delay if retry_after is None else retry_after)

    def _blocked(self, data: dict) -> ProviderError | None:
        feedback = data.get("promptFeedback") or {}
        reason = feedback.get("blockReason") if isinstance(feedback, dict) else None
        if not reason:
            return None
        detail = f" ({feedback['blockReasonMessage']})" if feedback.get("blockReasonMessage") else ""
        return self._error(f"prompt blocked by Gemini: blockReason {reason}{detail}", 400, False)

    def _usage(self, metadata: dict | None, request: ChatRequest, text: str) -> Usage:
        """Gemini's usageMetadata; when it reports none, o200k_base counts of what was sent and received."""
        if isinstance(metadata, dict) and metadata.get("promptTokenCount") is not None:
            output = int(metadata.get("candidatesTokenCount") or 0) + int(metadata.get("thoughtsTokenCount") or 0)
            return Usage(int(metadata["promptTokenCount"]), output)
        return Usage(counted_input_tokens(request.messages), count_tokens(text))

    @staticmethod
    def _parts(candidate: dict) -> list[dict]:
        content = candidate.get("content") or {}
        parts = content.get("parts") or []
        if not isinstance(parts, list):
            raise TypeError("parts is not a list")
        return [p for p in parts if isinstance(p, dict)]

    @staticmethod
    def _tool_call(part: dict, index: int) -> dict:
        call = part["functionCall"]
        tool_call = {"id": f"call_{index}", "type": "function",
                     "function": {"name": call["name"], "arguments": json.dumps(call.get("args") or {})}}
        if part.get("thoughtSignature"):
            tool_call["extra_content"] = {"google": {"thought_signature": part["thoughtSignature"]}}
        return tool_call

    async def complete(self, request: ChatRequest) -> ChatResult:
        body = self._body(request)
        try:
            async with self._post(self.url(request.model, "generateContent"), body,
                                  self._request_headers()) as response:
                raw = await response.read()
        except TRANSPORT_ERRORS as exc:
            raise self._transport_error(exc) from exc
        if response.status >= 400:
            raise self._http_error(response.status, response.headers, raw)
        try:
            data = json.loads(raw)
            if not isinstance(data, dict):
                raise TypeError("not an object")
            candidates = data.get("candidates") or []
            if not candidates:
                blocked = self._blocked(data)
                if blocked is not None:
                    raise blocked
                raise KeyError("candidates")
            candidate = candidates[0]
            texts: list[str] = []
            tool_calls: list[dict] = []
            for part in self._parts(candidate):
                if part.get("functionCall"):
                    tool_calls.append(self._tool_call(part, len(tool_calls)))
                elif isinstance(part.get("text"), str) and not part.get("thought"):
                    texts.append(part["text"])
            text = "".join(texts)
            finish_reason = _finish_reason(candidate.get("finishReason"), bool(tool_calls))
            usage = self._usage(data.get("usageMetadata"), request, text)
        except (ValueError, KeyError, IndexError, TypeError, AttributeError) as exc:
            raise self._error(f"malformed response from upstream: {raw[:200]!r}", 502, False) from exc
        return ChatResult(text=text, finish_reason=finish_reason, usage=usage, tool_calls=tool_calls or None)

    async def stream(self, request: ChatRequest) -> AsyncIterator[ChatChunk]:
        """Text deltas as they arrive and each function call as one complete tool-call delta (with its
        ``index``); the last chunk carries finish_reason and the last event's usage."""
        body = self._body(request)
        finish: str | None = None
        usage: dict | None = None
        texts: list[str] = []
        calls = 0
        in_body = False
        try:
            async with self._post(self.url(request.model, "streamGenerateContent") + "?alt=sse", body,
                                  self._request_headers()) as response:
                if response.status >= 400:
                    raise self._http_error(response.status, response.headers, await response.read())
                in_body = True
                async for payload in _sse_payloads(response):
                    try:
                        event = json.loads(payload)
                        if not isinstance(event, dict):
                            raise ValueError("not an object")
                    except ValueError as exc:
                        raise self._error(f"malformed stream event from upstream: {payload[:200]!r}", 502,
                                          False) from exc
                    if event.get("error"):
                        message, delay = _gemini_error(payload.encode())
                        code = (event["error"] or {}).get("code") if isinstance(event["error"], dict) else None
                        raise self._status_error(code if isinstance(code, int) and code >= 400 else 502,
                                                 f"upstream error in stream: {message}", delay)
                    if event.get("usageMetadata"):
                        usage = event["usageMetadata"]
                    candidates = event.get("candidates") or []
                    if not candidates:
                        blocked = self._blocked(event)
                        if blocked is not None:
                            raise blocked
                        continue
                    candidate = candidates[0]
                    try:
                        text = ""
                        tool_calls: list[dict] = []
                        for part in self._parts(candidate):
                            if part.get("functionCall"):
                                tool_calls.append({"index": calls, **self._tool_call(part, calls)})
                                calls += 1
                            elif isinstance(part.get("text"), str) and not part.get("thought"):
                                text += part["text"]
                    except (KeyError, TypeError, AttributeError) as exc:
                        raise self._error(f"malformed stream event from upstream: {payload[:200]!r}", 502,
                                          False) from exc
                    if text or tool_calls:
                        texts.append(text)
                        yield ChatChunk(text=text, tool_calls=tool_calls or None)
                    if candidate.get("finishReason"):
                        finish = candidate["finishReason"]
        except TRANSPORT_ERRORS as exc:
            if not in_body:
                raise self._transport_error(exc) from exc
            if finish is None:
                raise self._cut(exc) from exc
        if finish is None:
            raise self._error("stream cut: upstream ended the stream before an event with a finishReason", 502, True)
        yield ChatChunk(finish_reason=_finish_reason(finish, calls > 0), usage=self._usage(usage, request,
                                                                                             "".join(texts)))
