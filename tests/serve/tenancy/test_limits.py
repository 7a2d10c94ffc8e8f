"""Budgets and rate limits (router_ml.serve.tenancy.limits): in process and on the Redis server of .ci/services.

Costs are real prices (router_ml.pricing) of a chat call: a prompt's counted tokens plus max_tokens."""

from __future__ import annotations

import multiprocessing
import threading
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta

import pytest

from router_ml.pricing import cost_usd
from router_ml.clock import FixedClock, period_starts
from router_ml.serve.tenancy.limits import BudgetExceeded, MemoryLimits, RedisLimits
from router_ml.tokens import count_tokens

MODEL = "gpt-4-1106-preview"
PROMPT = "Summarize the causes of the French Revolution in three sentences."
RESERVE = cost_usd(MODEL, count_tokens(PROMPT), 256)  # the largest this call can cost
ACTUAL = cost_usd(MODEL, count_tokens(PROMPT), 80)  # what it did cost
NOW = datetime(2026, 11, 26, 15, 30, tzinfo=UTC)
FIT = int(20 * ACTUAL // RESERVE)  # calls allowed for sure in room for 20 real calls: each holds a full reservation


@pytest.fixture(params=["memory", "redis"])
def make_limits(request):
    """A factory of limits backends sharing one set of counters (as replicas do)."""
    if request.param == "memory":
        shared = {}

        def memory(initial=None):
            shared.setdefault("limits", MemoryLimits(initial) if initial else MemoryLimits())
            return shared["limits"]
        yield memory
        return
    url, prefix = request.getfixturevalue("redis_url")
    made = []

    def redis_backend(initial=None):
        made.append(RedisLimits(url, initial, prefix=prefix) if initial else RedisLimits(url, prefix=prefix))
        return made[-1]
    yield redis_backend
    for limits in made:
        limits.close()


def test_reserve_settle_and_the_error_names_the_period(make_limits):
    limits = make_limits()
    budgets = {"day": RESERVE * 2.5, "month": None}
    first = limits.reserve("acme", RESERVE, budgets, NOW)
    second = limits.reserve("acme", RESERVE, budgets, NOW)
    with pytest.raises(BudgetExceeded, match="day budget") as raised:
        limits.reserve("acme", RESERVE, budgets, NOW)
    assert raised.value.period == "day" and raised.value.spent_usd == pytest.approx(2 * RESERVE, abs=1e-9)
    limits.settle(first, ACTUAL)  # the real cost frees what the reservation held beyond it
    limits.settle(second, 0.0)  # a failed call costs nothing
    assert limits.spent("acme", NOW)["day"] == pytest.approx(ACTUAL, abs=1e-9)
    limits.reserve("acme", RESERVE, budgets, NOW)
    assert limits.spent("other", NOW) == {"day": 0.0, "month": 0.0}  # tenants do not share spend


def test_periods_roll_over_and_spend_starts_from_the_log(make_limits):
    seen = []

    def from_log(tenant, period, start):
        seen.append((tenant, period, start))
        return {"day": 1.0, "month": 40.0}[period]

    limits = make_limits(from_log)
    budgets = {"day": 2.0, "month": 41.5}
    limits.reserve("acme", 0.9, budgets, NOW)
    assert ("acme", "month", period_starts(NOW)["month"]) in seen
    with pytest.raises(BudgetExceeded, match="day budget"):
        limits.reserve("acme", 0.2, budgets, NOW)
    tomorrow = NOW + timedelta(days=1)  # a new day: the day's spend starts again, the month's goes on
    limits.reserve("acme", 0.5, budgets, tomorrow)
    with pytest.raises(BudgetExceeded, match="month budget"):
        limits.reserve("acme", 0.2, budgets, tomorrow)
    assert limits.spent("acme", tomorrow) == pytest.approx({"day": 1.5, "month": 41.4})


def _spend_concurrently(limits, requests: int, budgets: dict) -> int:
    """``requests`` concurrent calls (reserve, then settle at the real cost); returns how many were allowed."""
    def one(_):
        try:
            reservation = limits.reserve("acme", RESERVE, budgets, NOW)
        except BudgetExceeded:
            return 0
        limits.settle(reservation, ACTUAL)
        return 1

    with ThreadPoolExecutor(max_workers=50) as pool:
        return sum(pool.map(one, range(requests)))


def test_200_concurrent_calls_never_overspend_a_nearly_spent_budget(make_limits):
    limits = make_limits(lambda tenant, period, start: 10.0 if period == "day" else 0.0)
    budgets = {"day": 10.0 + 20 * ACTUAL, "month": None}  # room for about 20 real calls
    allowed = _spend_concurrently(limits, 200, budgets)
    spent = limits.spent("acme", NOW)["day"]
    assert spent <= budgets["day"] + 1e-9  # reservations cover the real cost: no overspend at all
    assert FIT <= allowed < 200 and spent == pytest.approx(10.0 + allowed * ACTUAL, abs=1e-6)


def _replica(url: str, prefix: str, requests: int, budget: float, out) -> None:
    limits = RedisLimits(url, lambda tenant, period, start: 10.0 if period == "day" else 0.0, prefix=prefix)
    out.put(_spend_concurrently(limits, requests, {"day": budget, "month": None}))
    limits.close()


def test_two_processes_share_one_budget_on_redis(redis_url):
    url, prefix = redis_url
    budget = 10.0 + 20 * ACTUAL
    context = multiprocessing.get_context("spawn")
    out = context.Queue()
    replicas = [context.Process(target=_replica, args=(url, prefix, 100, budget, out)) for _ in range(2)]
    for replica in replicas:
        replica.start()
    allowed = out.get(timeout=120) + out.get(timeout=120)
    for replica in replicas:
        replica.join(timeout=60)
    limits = RedisLimits(url, prefix=prefix)
    spent = limits.spent("acme", NOW)["day"]
    limits.close()
    assert spent <= budget + 1e-9 and allowed >= FIT
    assert spent == pytest.approx(10.0 + allowed * ACTUAL, abs=1e-6)


def test_memory_token_bucket_refills_and_says_how_long_to_wait():
    clock = [0.0]
    limits = MemoryLimits(monotonic=lambda: clock[0])
    assert all(limits.take("key-1", per_minute=6) is None for _ in range(6))
    wait = limits.take("key-1", per_minute=6)
    assert wait == pytest.approx(10.0)  # one request per 10 s
    assert limits.take("key-2", per_minute=6) is None  # buckets are per key
    clock[0] += 10.0
    assert limits.take("key-1", per_minute=6) is None
    assert limits.take("key-1", per_minute=600, amount=601) == float("inf")  # larger than the bucket: never


def test_redis_token_bucket_is_shared_and_says_how_long_to_wait(redis_url):
    url, prefix = redis_url
    a, b = RedisLimits(url, prefix=prefix), RedisLimits(url, prefix=prefix)
    try:
        results = [(a if i % 2 else b).take("tenant-acme", per_minute=60) for i in range(60)]
        assert results.count(None) >= 59  # a full bucket, drained from two replicas
        wait = a.take("tenant-acme", per_minute=60, amount=5)
        assert wait is not None and 3.0 <= wait <= 5.1
        assert a.take("tenant-acme", per_minute=60, amount=61) == float("inf")
    finally:
        a.close()
        b.close()


def test_concurrent_takes_never_exceed_the_bucket(make_limits):
    limits = make_limits()
    taken = []
    lock = threading.Lock()

    def one(_):
        if limits.take("burst", per_minute=30) is None:
            with lock:
                taken.append(1)

    with ThreadPoolExecutor(max_workers=20) as pool:
        list(pool.map(one, range(100)))
    assert 30 <= len(taken) <= 31  # the bucket, plus at most what refilled during the burst


@pytest.fixture(params=["memory", "redis"])
def clocked_limits(request):
    """A factory of one backend on a given calendar clock: ``make(initial_spend, clock)``."""
    made = []

    def make(initial, clock):
        if request.param == "memory":
            made.append(MemoryLimits(initial, clock=clock))
        else:
            url, prefix = request.getfixturevalue("redis_url")
            made.append(RedisLimits(url, initial, prefix=prefix, clock=clock))
        return made[-1]
    yield make
    for limits in made:
        if hasattr(limits, "close"):
            limits.close()


def _logged(seen: list):
    def from_log(tenant, period, start):
        seen.append((tenant, period, start))
        return {"day": 1.0, "month": 40.0}[period]
    return from_log


def test_prime_loads_the_current_periods_once_and_reserve_then_queries_nothing(clocked_limits):
    seen = []
    clock = FixedClock(NOW)
    limits = clocked_limits(_logged(seen), clock)
    assert not limits.primed("acme")
    limits.prime("acme")
    starts = period_starts(NOW)
    assert seen == [("acme", "day", starts["day"]), ("acme", "month", starts["month"])]
    assert limits.primed("acme") and not limits.primed("other")
    limits.prime("acme")  # loaded already: no query
    reservation = limits.reserve("acme", 0.5, {"day": 2.0, "month": None})
    limits.settle(reservation, 0.25)
    assert len(seen) == 2  # the reservation found its periods loaded
    assert limits.spent("acme") == pytest.approx({"day": 1.25, "month": 40.25})
    if isinstance(limits, RedisLimits):  # another replica finds the counters seeded: it primes without a query
        replica = clocked_limits(_logged(seen), clock)
        assert not replica.primed("acme")
        replica.prime("acme")
        assert replica.primed("acme") and len(seen) == 2


def test_a_new_period_is_not_primed_until_loaded(clocked_limits):
    seen = []
    clock = FixedClock(datetime(2026, 11, 30, 23, 59, tzinfo=UTC))
    limits = clocked_limits(_logged(seen), clock)
    limits.prime("acme")
    assert limits.primed("acme") and len(seen) == 2
    december = clock.advance(minutes=2)  # a new day and a new month
    assert not limits.primed("acme")
    limits.prime("acme")
    assert seen[2:] == [("acme", "day", period_starts(december)["day"]),
                        ("acme", "month", period_starts(december)["month"])]
    second = clock.advance(days=1)  # a new day of the same month: only the day is loaded
    assert not limits.primed("acme")
    limits.prime("acme")
    assert seen[4:] == [("acme", "day", period_starts(second)["day"])] and limits.primed("acme")
    clock.advance(days=1)  # unprimed, a reservation still loads its periods itself
    limits.reserve("acme", 0.5, {"day": 2.0, "month": None})
    assert len(seen) == 6 and limits.primed("acme")
