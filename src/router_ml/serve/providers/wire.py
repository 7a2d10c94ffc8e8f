"""What the HTTP provider adapters share: the connection pool they send through, timeouts, how failures
map to :class:`ProviderError`, server-sent event lines, message text, Retry-After and token counts when a
provider reports none.

The pool is aiohttp's, not httpx's: on this 2-core machine httpx's connection pool alone spent 7.6 ms of
CPU per request at 100 concurrent requests (it rescans every connection for each request) and topped out
near 126 req/s; aiohttp spent 0.3 ms and reached 1,783 req/s against the same loopback upstream
(benchmarks/gateway_profile.py, benchmarks/results/gateway_profile.json).
"""

from __future__ import annotations

import asyncio
import email.utils
import json
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass

import aiohttp

from router_ml.serve.providers.base import ProviderError
from router_ml.tokens import count_tokens


@dataclass(frozen=True)
class Timeouts:
    """Seconds allowed to connect, between two reads of the answer, and for the whole call."""

    connect: float = 10.0
    read: float = 60.0
    total: float = 600.0

    def client_timeout(self) -> aiohttp.ClientTimeout:
        return aiohttp.ClientTimeout(total=self.total, sock_connect=self.connect, sock_read=self.read)


DEFAULT_TIMEOUT = Timeouts()
# What a failed exchange with an upstream raises: connection, protocol and payload errors, and timeouts.
TRANSPORT_ERRORS = (aiohttp.ClientError, asyncio.TimeoutError)


class UpstreamPool:
    """One keep-alive connection pool (up to ``limit`` connections) shared by every adapter of the app.

    The aiohttp session is opened on first use inside the running event loop (and again if a later call
    runs in another loop, as tests do); :meth:`aclose` closes it at shutdown.
    """

    def __init__(self, limit: int = 1000):
        self.limit = limit
        self._session: aiohttp.ClientSession | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def session(self) -> aiohttp.ClientSession:
        loop = asyncio.get_running_loop()
        if self._session is None or self._session.closed or self._loop is not loop:
            self._session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=self.limit,
                                                                                 limit_per_host=0))
            self._loop = loop
        return self._session

    async def aclose(self) -> None:
        if self._session is not None and not self._session.closed:
            await self._session.close()
        self._session = None


async def sse_lines(response: aiohttp.ClientResponse) -> AsyncIterator[str]:
    """The lines of a streamed answer (no length limit per line, unlike aiohttp's own line reader)."""
    buffer = bytearray()
    async for piece in response.content.iter_any():
        buffer += piece
        start = 0
        while (end := buffer.find(b"\n", start)) != -1:
            yield buffer[start:end].rstrip(b"\r").decode("utf-8", errors="replace")
            start = end + 1
        del buffer[:start]
    if buffer:
        yield buffer.decode("utf-8", errors="replace")


def message_text(content) -> str:
    """The text of an OpenAI message content: a string, or the text parts of a list."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n".join(str(p.get("text", "")) for p in content if isinstance(p, dict) and p.get("type") == "text")
    return str(content)


def retry_after_seconds(headers: Mapping[str, str]) -> float | None:
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
    """Pool handling and error mapping common to the adapters.

    Pass the app's shared :class:`UpstreamPool` as ``pool`` (it is never closed here), or let the adapter
    open its own (closed by :meth:`aclose` or ``async with``). ``timeout`` applies to every request. The
    API key is kept out of ``repr``.
    """

    def __init__(self, base_url: str, api_key: str | None, name: str, timeout: Timeouts,
                 pool: UpstreamPool | None):
        self.base_url = base_url.rstrip("/")
        self.name, self.timeout = name, timeout
        self._client_timeout = timeout.client_timeout()
        self._api_key = api_key
        self._pool, self._owns_pool = pool or UpstreamPool(), pool is None

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, base_url={self.base_url!r})"

    def _post(self, url: str, body: dict, headers: dict[str, str]):
        """``async with self._post(...) as response``: one POST of ``body`` as JSON through the pool."""
        return self._pool.session.post(url, json=body, headers=headers, timeout=self._client_timeout)

    async def aclose(self) -> None:
        if self._owns_pool:
            await self._pool.aclose()

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

    def _transport_error(self, exc: BaseException) -> ProviderError:
        if isinstance(exc, asyncio.TimeoutError):
            return self._error(f"upstream timed out ({type(exc).__name__})", 504, True)
        if isinstance(exc, aiohttp.ClientConnectorError):
            return self._error(f"cannot connect to upstream: {exc}", 502, True)
        return self._error(f"request failed: {type(exc).__name__}: {exc}", 502, True)

    def _cut(self, exc: BaseException) -> ProviderError:
        """A transport failure after the answer began: a timeout as such, anything else a cut stream."""
        if isinstance(exc, asyncio.TimeoutError):
            return self._transport_error(exc)
        return self._error(f"stream cut: {type(exc).__name__}: {exc}", 502, True)
