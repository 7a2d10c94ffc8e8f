"""Admission of a tenant's call (router_ml.serve.tenancy.admission): rate limits, budget reservation, degrade before deny.
Prices are the catalog's (router_ml.pricing) for two RouterBench models."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from router_ml.pricing import cost_usd
from router_ml.serve.tenancy.limits import MemoryLimits
from router_ml.serve.tenancy.admission import DEFAULT_OUTPUT_TOKENS, OverBudget, RateLimited, admit, check_rates, max_cost_usd

STRONG, CHEAP = "gpt-4-1106-preview", "mistralai/mistral-7b-chat"


@dataclass
class Tenant:
    name: str = "acme"
    budget_usd_day: float | None = None
    budget_usd_month: float | None = None
    rpm: int | None = None
    tpm: int | None = None
    degrade_before_deny: bool = False
    key_prefix: str | None = None
    key_rpm: int | None = None
    key_tpm: int | None = None


def test_the_reservation_covers_max_tokens_or_the_default_and_unpriced_models_reserve_nothing():
    assert max_cost_usd(STRONG, 100, 50) == cost_usd(STRONG, 100, 50)
    assert max_cost_usd(STRONG, 100, None) == cost_usd(STRONG, 100, DEFAULT_OUTPUT_TOKENS)
    assert max_cost_usd("my-self-hosted-llama", 100, 50) == 0.0


def test_admission_reserves_for_the_dearest_fallback_and_refuses_over_budget():
    limits = MemoryLimits()
    need = max(max_cost_usd(m, 200, 100) for m in (STRONG, CHEAP))
    tenant = Tenant(budget_usd_day=need * 1.5)
    first = admit(limits, tenant, [CHEAP, STRONG], [STRONG, CHEAP], 200, 100)
    assert first.reservation.nano >= need * 1e9 - 1 and first.models == [CHEAP, STRONG]
    with pytest.raises(OverBudget, match="day budget"):
        admit(limits, tenant, [STRONG], [STRONG, CHEAP], 200, 100)
    assert admit(limits, Tenant(), [STRONG], [], 200, 100).reservation is None  # no budget: nothing reserved


def test_degrade_before_deny_serves_the_best_model_that_still_fits():
    limits = MemoryLimits()
    strong, cheap = max_cost_usd(STRONG, 200, 100), max_cost_usd(CHEAP, 200, 100)
    assert cheap < strong / 10
    tenant = Tenant(budget_usd_day=strong + 2 * cheap, degrade_before_deny=True)
    assert admit(limits, tenant, [STRONG], [STRONG, CHEAP], 200, 100).models == [STRONG]
    degraded = admit(limits, tenant, [STRONG], [STRONG, CHEAP], 200, 100)
    assert degraded.models == [CHEAP] and degraded.degraded_from == [STRONG]
    admit(limits, tenant, [STRONG], [STRONG, CHEAP], 200, 100)
    with pytest.raises(OverBudget):  # nothing fits any more
        admit(limits, tenant, [STRONG], [STRONG, CHEAP], 200, 100)


def test_rate_limits_per_minute_for_requests_and_tokens():
    clock = [0.0]
    limits = MemoryLimits(monotonic=lambda: clock[0])
    tenant = Tenant(rpm=2, tpm=3000)
    check_rates(limits, tenant, 200, 100)
    check_rates(limits, tenant, 200, 100)
    with pytest.raises(RateLimited, match="2 requests per minute") as raised:
        check_rates(limits, tenant, 200, 100)
    assert raised.value.retry_after == pytest.approx(30.0)
    clock[0] += 60
    with pytest.raises(RateLimited, match="tokens per minute"):  # 200 + the default 1024 output tokens, thrice
        for _ in range(3):
            check_rates(limits, Tenant(name="wordy", tpm=3000), 200, None)


def test_a_key_has_its_own_bucket_beside_its_tenants():
    limits = MemoryLimits(monotonic=lambda: 0.0)
    first, second = Tenant(rpm=10, key_prefix="rm-aaaaa", key_rpm=1), Tenant(rpm=10, key_prefix="rm-bbbbb")
    check_rates(limits, first, 10, 10)
    with pytest.raises(RateLimited, match=r"key rm-aaaaa\.\.\. is over its 1 requests per minute"):
        check_rates(limits, first, 10, 10)
    for _ in range(8):  # the other key has no limit of its own: the tenant's 10 apply to both together
        check_rates(limits, second, 10, 10)
    with pytest.raises(RateLimited, match="tenant 'acme' is over its 10 requests per minute"):
        check_rates(limits, second, 10, 10)
