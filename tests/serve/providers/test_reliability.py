"""Retries, backoff and the circuit breaker around a provider (driven by handler fakes)."""

from __future__ import annotations

import asyncio

import pytest

from router_ml.serve.providers.base import ChatRequest, ProviderError
from router_ml.serve.providers.handler import HandlerProvider
from router_ml.serve.providers.reliability import CircuitBreaker, ReliableProvider

REQUEST = ChatRequest(model="m", messages=[{"role": "user", "content": "hi"}])


def flaky(failures: list[ProviderError]):
    def handler(request):
        if failures:
            raise failures.pop(0)
        return "fine"

    return handler


def _reliable(handler, **kwargs):
    slept = []

    async def sleep(seconds):
        slept.append(seconds)

    inner = HandlerProvider(handler)
    return ReliableProvider(inner, "fake/m", sleep=sleep, **kwargs), inner, slept


def test_retryable_errors_are_retried_with_backoff_and_retry_after():
    errors = [ProviderError("busy", 503, retryable=True), ProviderError("slow down", 429, True, retry_after=1.5)]
    provider, inner, slept = _reliable(flaky(errors), retries=2, backoff=0.1)
    assert asyncio.run(provider.complete(REQUEST)).text == "fine"
    assert len(inner.requests) == 3
    assert 0.05 <= slept[0] <= 0.1 and slept[1] == 1.5


def test_non_retryable_errors_are_not_retried():
    provider, inner, slept = _reliable(flaky([ProviderError("bad", 400, retryable=False)]))
    with pytest.raises(ProviderError) as raised:
        asyncio.run(provider.complete(REQUEST))
    assert raised.value.status == 400 and len(inner.requests) == 1 and not slept


def test_streams_retry_only_before_the_first_chunk():
    provider, inner, _ = _reliable(flaky([ProviderError("busy", 503, retryable=True)]))

    async def collect():
        return [chunk async for chunk in provider.stream(REQUEST)]

    chunks = asyncio.run(collect())
    assert "".join(c.text for c in chunks) == "fine" and len(inner.requests) == 2


def test_breaker_opens_after_consecutive_failures_then_half_opens_after_cooldown():
    now = [0.0]
    breaker = CircuitBreaker(failures=3, cooldown=10, clock=lambda: now[0])
    errors = [ProviderError("down", 502, retryable=True) for _ in range(3)]
    provider, inner, _ = _reliable(flaky(errors), retries=0, breaker=breaker)
    for _ in range(3):
        with pytest.raises(ProviderError):
            asyncio.run(provider.complete(REQUEST))
    assert breaker.state == "open"
    with pytest.raises(ProviderError) as raised:
        asyncio.run(provider.complete(REQUEST))
    assert raised.value.status == 503 and raised.value.retryable and "circuit open" in raised.value.message
    assert len(inner.requests) == 3  # the open breaker did not call upstream
    now[0] = 10.0
    assert breaker.state == "half-open"
    assert asyncio.run(provider.complete(REQUEST)).text == "fine"
    assert breaker.state == "closed"


def test_a_failed_trial_call_reopens_the_breaker():
    now = [0.0]
    breaker = CircuitBreaker(failures=1, cooldown=5, clock=lambda: now[0])
    errors = [ProviderError("down", 502, retryable=True), ProviderError("still down", 502, retryable=True)]
    provider, _, _ = _reliable(flaky(errors), retries=0, breaker=breaker)
    with pytest.raises(ProviderError):
        asyncio.run(provider.complete(REQUEST))
    now[0] = 6.0
    with pytest.raises(ProviderError) as raised:
        asyncio.run(provider.complete(REQUEST))
    assert "still down" in raised.value.message and breaker.state == "open"


def test_one_callers_bad_requests_never_open_the_breaker_for_the_others():
    """Issue 15: upstream 400s caused by one tenant's bad requests counted as failures; five of them shut the model
    for every tenant. A refused request is the caller's fault, and shows the deployment answering."""
    breaker = CircuitBreaker(failures=2, cooldown=30)
    bad = [ProviderError("Invalid value for 'temperature'", 400, retryable=False) for _ in range(5)]
    provider, inner, _ = _reliable(flaky(bad), retries=0, breaker=breaker)
    for _ in range(5):
        with pytest.raises(ProviderError) as raised:
            asyncio.run(provider.complete(REQUEST))
        assert raised.value.status == 400
    assert breaker.state == "closed" and asyncio.run(provider.complete(REQUEST)).text == "fine"
    # A deployment fault still counts, and a 400 between two of them shows the deployment alive again.
    faults = [ProviderError("down", 502, retryable=True), ProviderError("bad", 400), ProviderError("down", 502, True)]
    provider, _, _ = _reliable(flaky(faults), retries=0, breaker=breaker)
    for _ in range(3):
        with pytest.raises(ProviderError):
            asyncio.run(provider.complete(REQUEST))
    assert breaker.state == "closed" and breaker.consecutive == 1
