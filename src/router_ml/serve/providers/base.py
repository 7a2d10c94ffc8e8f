"""The one small protocol every upstream provider adapter implements.

A provider turns a :class:`ChatRequest` (OpenAI-style messages and sampling settings,
with the provider's own model name) into a :class:`ChatResult`, or into a stream of
:class:`ChatChunk`. Failures are :class:`ProviderError` with the HTTP status to report
and whether a retry may succeed. Nothing here knows about routing, tenants or logging.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Protocol


@dataclass
class ChatRequest:
    model: str
    messages: list[dict]
    temperature: float | None = None
    top_p: float | None = None
    max_tokens: int | None = None
    stop: list[str] | None = None
    tools: list[dict] | None = None
    tool_choice: str | dict | None = None

    def sampling(self) -> dict:
        """The settings that shape the answer, beside the model and messages (part of a response-cache key)."""
        return {"temperature": self.temperature, "top_p": self.top_p, "max_tokens": self.max_tokens,
                "stop": self.stop, "tools": self.tools, "tool_choice": self.tool_choice}


@dataclass
class Usage:
    input_tokens: int
    output_tokens: int


@dataclass
class ChatResult:
    text: str
    finish_reason: str
    usage: Usage
    tool_calls: list[dict] | None = None


@dataclass
class ChatChunk:
    """A piece of a streamed answer; the last one carries ``finish_reason`` and, where the provider
    reports it, ``usage``."""

    text: str = ""
    finish_reason: str | None = None
    usage: Usage | None = None
    tool_calls: list[dict] | None = field(default=None)


class ProviderError(Exception):
    """An upstream failure: ``status`` is the HTTP status to answer with, ``retryable`` whether the same
    request may succeed later (429, 5xx, timeouts), ``retry_after`` seconds when the provider said."""

    def __init__(self, message: str, status: int = 502, retryable: bool = False, retry_after: float | None = None,
                 provider: str = ""):
        super().__init__(message)
        self.message, self.status, self.retryable, self.retry_after, self.provider = (
            message, status, retryable, retry_after, provider)


class Provider(Protocol):
    name: str

    async def complete(self, request: ChatRequest) -> ChatResult: ...

    def stream(self, request: ChatRequest) -> AsyncIterator[ChatChunk]: ...
