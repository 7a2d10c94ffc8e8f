"""What the HTTP provider adapters share: the client they send with, how failures map to
:class:`ProviderError`, message text, Retry-After and token counts when a provider reports none."""

from __future__ import annotations

import email.utils
import json
import time

import httpx

from router_ml.serve.providers.base import ProviderError
from router_ml.tokens import count_tokens

DEFAULT_TIMEOUT = httpx.Timeout(60.0, connect=10.0)


def message_text(content) -> str:
    """The text of an OpenAI message content: a string, or the text parts of a list."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n".join(str(p.get("text", "")) for p in content if isinstance(p, dict) and p.get("type") == "text")
    return str(content)


def retry_after_seconds(headers: httpx.Headers) -> float | None:
    """Seconds from Retry-After (seconds or an HTTP date) or retry-after-ms; None when absent or unreadable."""
    if (ms := headers.get("retry-after-ms")) is not None:
        try:
            return max(float(ms) / 1000, 0.0)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if value is None:
        return None
    try:
        return max(float(value), 0.0)
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(when.timestamp() - time.time(), 0.0)


def tool_arguments(raw) -> dict:
    """An OpenAI tool call's ``arguments`` (a JSON string, or already a dict) as a dict; ValueError when
    they are not a JSON object (the request cannot be translated)."""
    if isinstance(raw, dict):
        return raw
    if raw is None or (isinstance(raw, str) and not raw.strip()):
        return {}
    try:
        value = json.loads(raw)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"tool call arguments are not JSON: {str(raw)[:200]!r}") from exc
    if not isinstance(value, dict):
        raise ValueError(f"tool call arguments are not a JSON object: {str(raw)[:200]!r}")
    return value


def counted_input_tokens(messages: list[dict]) -> int:
    """o200k_base count of what was sent, for a provider that reports no usage."""
    return sum(count_tokens(message_text(m.get("content"))) for m in messages)


class HTTPAdapter:
    """Client handling and error mapping common to the adapters.

    Pass one shared ``httpx.AsyncClient`` as ``client`` (it is never closed here), or let the adapter
    open its own on first use (closed by :meth:`aclose` or ``async with``). ``timeout`` applies to
    every request. The API key is kept out of ``repr``.
    """

    def __init__(self, base_url: str, api_key: str | None, name: str, timeout: httpx.Timeout,
                 client: httpx.AsyncClient | None):
        self.base_url = base_url.rstrip("/")
        self.name, self.timeout = name, timeout
        self._api_key = api_key
        self._client, self._owns_client = client, client is None

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, base_url={self.base_url!r})"

    @property
    def client(self) -> httpx.AsyncClient:
        if self._client is None:
            self._client = httpx.AsyncClient(timeout=self.timeout)
        return self._client

    async def aclose(self) -> None:
        if self._owns_client and self._client is not None:
            await self._client.aclose()
            self._client = None

    async def __aenter__(self):
        return self

    async def __aexit__(self, *exc) -> None:
        await self.aclose()

    def _error(self, message: str, status: int, retryable: bool, retry_after: float | None = None) -> ProviderError:
        return ProviderError(f"{self.name}: {message}", status=status, retryable=retryable, retry_after=retry_after,
                             provider=self.name)

    def _status_error(self, status: int, message: str, retry_after: float | None = None) -> ProviderError:
        """429 and 408 are retryable as they are; a 5xx is retryable as 503/504, or else 502; other 4xx are final."""
        if status in (408, 429):
            return self._error(message, status, True, retry_after)
        if status >= 500:
            return self._error(message, status if status in (503, 504) else 502, True, retry_after)
        return self._error(message, status, False)

    def _transport_error(self, exc: httpx.TransportError) -> ProviderError:
        if isinstance(exc, httpx.TimeoutException):
            return self._error(f"upstream timed out ({type(exc).__name__})", 504, True)
        if isinstance(exc, httpx.ConnectError):
            return self._error(f"cannot connect to upstream: {exc}", 502, True)
        return self._error(f"request failed: {type(exc).__name__}: {exc}", 502, True)
