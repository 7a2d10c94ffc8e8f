"""Retries with backoff and a circuit breaker around any provider, one wrapper per deployment.

Only retryable failures (429, 5xx, timeouts: ``ProviderError.retryable``) are retried, after
an exponential backoff with jitter, or after the provider's Retry-After when it says (capped).
A stream is retried only while opening it, before its first chunk: once a byte has gone to the
client the gateway never starts over. Only the deployment's own faults count against it (a retryable
failure: 429, 5xx, timeouts, connection errors; or any 5xx): a 4xx that names something wrong in the request is
the caller's fault and shows the deployment answering, so one tenant's bad requests never shut the model for
the others. After ``failures`` consecutive faults the breaker
opens and the deployment is skipped at once (a retryable 503, so the gateway falls back to the
next model) for ``cooldown`` seconds; then one trial call is let through (half-open) and its
outcome closes or re-opens the breaker.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import AsyncIterator
from dataclasses import replace

from router_ml.serve.providers.base import ChatChunk, ChatRequest, ChatResult, ProviderError


def deployment_fault(error: ProviderError) -> bool:
    """Whether ``error`` is the deployment's fault (see the module docstring), not the request's."""
    return error.retryable or error.status >= 500


class CircuitBreaker:
    def __init__(self, failures: int = 5, cooldown: float = 30.0, clock=time.monotonic):
        self.failures, self.cooldown, self.clock = failures, cooldown, clock
        self.consecutive, self.opened_at, self.trial = 0, None, False

    @property
    def state(self) -> str:
        if self.opened_at is None:
            return "closed"
        return "half-open" if self.clock() - self.opened_at >= self.cooldown else "open"

    def allow(self) -> bool:
        """Whether a call may go through now (in half-open state, only one trial at a time)."""
        state = self.state
        if state == "closed":
            return True
        if state == "half-open" and not self.trial:
            self.trial = True
            return True
        return False

    def succeeded(self) -> None:
        self.consecutive, self.opened_at, self.trial = 0, None, False

    def failed(self) -> None:
        self.consecutive += 1
        if self.trial or self.consecutive >= self.failures:
            self.opened_at, self.trial = self.clock(), False


class ReliableProvider:
    """``inner`` behind retries and a breaker; ``name`` is the deployment it guards (e.g. provider/model).
    ``upstream_model``, when given, is the name the provider knows the served model by."""

    def __init__(self, inner, name: str, retries: int = 2, backoff: float = 0.2, max_backoff: float = 5.0,
                 breaker: CircuitBreaker | None = None, sleep=asyncio.sleep, upstream_model: str | None = None):
        self.inner, self.name, self.upstream_model = inner, name, upstream_model
        self.retries, self.backoff, self.max_backoff = retries, backoff, max_backoff
        self.breaker = breaker or CircuitBreaker()
        self._sleep = sleep

    def _check_open(self) -> None:
        if not self.breaker.allow():
            raise ProviderError(f"circuit open for {self.name} after {self.breaker.consecutive} failures; "
                                f"retrying after {self.breaker.cooldown:.0f} s", status=503, retryable=True,
                                provider=self.name)

    def _count(self, error: ProviderError) -> None:
        """A failure counts against the breaker when it is the deployment's; a refused request shows it alive."""
        if deployment_fault(error):
            self.breaker.failed()
        else:
            self.breaker.succeeded()

    def _delay(self, attempt: int, error: ProviderError) -> float:
        if error.retry_after is not None:
            return min(error.retry_after, self.max_backoff)
        return min(self.backoff * 2 ** attempt, self.max_backoff) * random.uniform(0.5, 1.0)

    def _upstream(self, request: ChatRequest) -> ChatRequest:
        return replace(request, model=self.upstream_model) if self.upstream_model else request

    async def complete(self, request: ChatRequest) -> ChatResult:
        request = self._upstream(request)
        for attempt in range(self.retries + 1):
            self._check_open()
            try:
                result = await self.inner.complete(request)
            except ProviderError as exc:
                self._count(exc)
                if not exc.retryable or attempt == self.retries:
                    raise
                await self._sleep(self._delay(attempt, exc))
                continue
            self.breaker.succeeded()
            return result
        raise AssertionError("unreachable")

    async def stream(self, request: ChatRequest) -> AsyncIterator[ChatChunk]:
        request = self._upstream(request)
        for attempt in range(self.retries + 1):
            self._check_open()
            stream = self.inner.stream(request)
            try:
                first = await anext(stream)
            except StopAsyncIteration:
                self.breaker.succeeded()
                return
            except ProviderError as exc:
                self._count(exc)
                if not exc.retryable or attempt == self.retries:
                    raise
                await self._sleep(self._delay(attempt, exc))
                continue
            break
        try:
            yield first
            async for chunk in stream:
                yield chunk
        except ProviderError as exc:
            self._count(exc)
            raise
        finally:  # closed early (the client went away) or done: release the upstream request
            await stream.aclose()
        self.breaker.succeeded()
