"""Budgets and rate limits per tenant, atomic across requests and, on Redis, across server processes.

Budgets. Before a call, :meth:`Limits.reserve` adds the call's largest possible cost to the tenant's
spend of the current UTC day and month, but only if that keeps every period within its budget; the
check and the increment are one atomic step (a lock in process, one Lua script on Redis), so
concurrent requests cannot all pass the same check. After the call, :meth:`Limits.settle` replaces
the reservation by the real cost (a failed call settles at what it cost, usually 0). The spend can
therefore exceed a budget only by what a call costs beyond its own reservation, which the
reservation rule (input tokens x input price + max_tokens x output price) makes zero for priced
models. Amounts are kept in integer nano-dollars, so no rounding drifts.

A period's spend starts from ``initial_spend(tenant, period, start)`` (the call log's sum, say) the
first time it is seen, so restarting a server does not reset a tenant's spend. Redis keys expire a
while after their period ends. That first look is a query: :meth:`Limits.prime` does it for a tenant's
current day and month (blocking: run it in a thread, ``asyncio.to_thread(limits.prime, name)``), and
:meth:`Limits.primed` says, without I/O, whether this process has done it for the current periods, so an
async caller can keep the query off its event loop. An unprimed ``reserve`` still works: it loads lazily.

Rate limits. :meth:`Limits.take` is a token bucket per key (a tenant, an API key) holding
``per_minute`` units that refill continuously; it answers None when ``amount`` units were taken, or
the seconds to wait (for Retry-After) when there are not enough. Requests and tokens per minute are
two buckets.

Backends: :class:`MemoryLimits` (one process: the embedded default) and :class:`RedisLimits` (every
replica shares the same counters), chosen by :func:`limits_for`. The current period comes from the ``now``
a call passes, else from the backend's ``clock`` (:mod:`router_ml.clock`; tests pin it); the buckets refill by
``time.monotonic`` (``monotonic=`` in process) or the Redis server's clock, never the calendar.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

from router_ml.clock import PERIODS, SYSTEM_CLOCK, Clock, period_id, period_starts

NANO = 1_000_000_000
InitialSpend = Callable[[str, str, datetime], float]


def _nano(usd: float) -> int:
    return int(math.ceil(usd * NANO))


@dataclass(frozen=True)
class Reservation:
    tenant: str
    periods: dict[str, str]  # period name -> period id, e.g. {"day": "2026-11-26"}
    nano: int


class BudgetExceeded(Exception):
    """The call would take ``period``'s spend past its budget; ``spent_usd`` is what is spent or reserved."""

    def __init__(self, tenant: str, period: str, budget_usd: float, spent_usd: float, needed_usd: float):
        super().__init__(f"tenant {tenant!r} is over its {period} budget: ${spent_usd:.6f} of ${budget_usd:.2f} "
                         f"spent or reserved, and this call may cost up to ${needed_usd:.6f}")
        self.tenant, self.period, self.budget_usd, self.spent_usd, self.needed_usd = (
            tenant, period, budget_usd, spent_usd, needed_usd)


def _zero(_tenant: str, _period: str, _start: datetime) -> float:
    return 0.0


def _calendar(clock: Clock) -> Clock:
    if not isinstance(clock, Clock):  # e.g. a callable of seconds, which is what the buckets' ``monotonic=`` takes
        raise TypeError(f"clock= is the calendar clock (an object with now(), see router_ml.clock), not {clock!r}; "
                        "the rate buckets' seconds come from monotonic=")
    return clock


class MemoryLimits:
    """Budgets and buckets in this process (one lock); spend starts from ``initial_spend``. Periods follow
    ``clock``, the buckets refill by ``monotonic`` (seconds)."""

    def __init__(self, initial_spend: InitialSpend = _zero, clock: Clock = SYSTEM_CLOCK,
                 monotonic: Callable[[], float] = time.monotonic):
        self._initial, self.clock, self._monotonic = initial_spend, _calendar(clock), monotonic
        self._lock = threading.Lock()
        self._spent: dict[tuple[str, str, str], int] = {}
        self._buckets: dict[str, tuple[float, float]] = {}

    def _load(self, tenant: str, starts: dict[str, datetime]) -> dict[str, tuple[str, str, str]]:
        """The counters of the periods at ``starts``, each seeded from ``initial_spend`` the first time (the query
        runs outside the lock; when two threads race, the first seed stays)."""
        keys = {p: (tenant, p, period_id(p, starts[p])) for p in PERIODS}
        for period, key in keys.items():
            if key not in self._spent:
                initial = _nano(self._initial(tenant, period, starts[period]))
                with self._lock:
                    self._spent.setdefault(key, initial)
        return keys

    def primed(self, tenant: str) -> bool:
        """Whether the tenant's current day and month are loaded (no I/O: a ``reserve`` now runs no query)."""
        starts = period_starts(self.clock.now())
        return all((tenant, p, period_id(p, starts[p])) in self._spent for p in PERIODS)

    def prime(self, tenant: str) -> None:
        """Load the tenant's current day and month spend from ``initial_spend`` where not loaded yet (blocking)."""
        self._load(tenant, period_starts(self.clock.now()))

    def reserve(self, tenant: str, usd: float, budgets: dict[str, float | None],
                now: datetime | None = None) -> Reservation:
        starts = period_starts(now or self.clock.now())
        nano = _nano(usd)
        keys = self._load(tenant, starts)
        with self._lock:
            for period in PERIODS:
                budget = budgets.get(period)
                if budget is not None and self._spent[keys[period]] + nano > _nano(budget):
                    raise BudgetExceeded(tenant, period, budget, self._spent[keys[period]] / NANO, usd)
            for key in keys.values():
                self._spent[key] += nano
        return Reservation(tenant, {p: k[2] for p, k in keys.items()}, nano)

    def settle(self, reservation: Reservation, actual_usd: float) -> None:
        delta = _nano(actual_usd) - reservation.nano
        with self._lock:
            for period, period_id in reservation.periods.items():
                self._spent[(reservation.tenant, period, period_id)] += delta

    def spent(self, tenant: str, now: datetime | None = None) -> dict[str, float]:
        keys = self._load(tenant, period_starts(now or self.clock.now()))
        with self._lock:
            return {p: self._spent[keys[p]] / NANO for p in PERIODS}

    def take(self, key: str, per_minute: float, amount: float = 1.0) -> float | None:
        now = self._monotonic()
        rate = per_minute / 60.0
        with self._lock:
            tokens, last = self._buckets.get(key, (per_minute, now))
            tokens = min(per_minute, tokens + (now - last) * rate)
            if tokens >= amount:
                self._buckets[key] = (tokens - amount, now)
                return None
            self._buckets[key] = (tokens, now)
        return (amount - tokens) / rate if amount <= per_minute else math.inf


# KEYS: the period counters; ARGV: nano to reserve, then per key its budget in nano (-1: none), initial
# spend in nano and expiry in seconds. Returns 0 when reserved, else the 1-based index of the exceeded key
# followed by its spend.
_RESERVE = """
local nano = tonumber(ARGV[1])
for i, key in ipairs(KEYS) do
  local base = 1 + (i - 1) * 3
  redis.call('SET', key, ARGV[base + 2], 'NX', 'EX', ARGV[base + 3])
end
for i, key in ipairs(KEYS) do
  local budget = tonumber(ARGV[1 + (i - 1) * 3 + 1])
  local spent = tonumber(redis.call('GET', key))
  if budget >= 0 and spent + nano > budget then
    return {i, spent}
  end
end
for _, key in ipairs(KEYS) do
  redis.call('INCRBY', key, nano)
end
return {0, 0}
"""

# KEYS[1]: the bucket (a hash of tokens and the last refill in microseconds); ARGV: capacity, refill per
# second, amount. Uses the server's clock, so replicas with skewed clocks agree. Returns the wait in ms
# (0: taken; -1: never, the amount exceeds the capacity).
_TAKE = """
local capacity = tonumber(ARGV[1])
local rate = tonumber(ARGV[2])
local amount = tonumber(ARGV[3])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local state = redis.call('HMGET', KEYS[1], 'tokens', 'at')
local tokens = tonumber(state[1]) or capacity
local at = tonumber(state[2]) or now
tokens = math.min(capacity, tokens + (now - at) / 1000000 * rate)
local wait = 0
if tokens >= amount then
  tokens = tokens - amount
elseif amount > capacity then
  wait = -1
else
  wait = math.ceil((amount - tokens) / rate * 1000)
end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'at', now)
redis.call('EXPIRE', KEYS[1], math.ceil(capacity / rate) + 60)
return wait
"""


class RedisLimits:
    """Budgets and buckets on a Redis server, shared by every replica; ``prefix`` namespaces the keys."""

    def __init__(self, url: str, initial_spend: InitialSpend = _zero, prefix: str = "router-ml:",
                 clock: Clock = SYSTEM_CLOCK):
        import redis

        self.client = redis.Redis.from_url(url)
        self.prefix = prefix
        self.clock = _calendar(clock)
        self._initial = initial_spend
        self._ensured: dict[str, dict[str, str]] = {}  # tenant -> the period ids whose counters this process saw exist
        self._reserve = self.client.register_script(_RESERVE)
        self._take = self.client.register_script(_TAKE)

    def _key(self, tenant: str, period: str, period_id: str) -> str:
        return f"{self.prefix}spend:{tenant}:{period}:{period_id}"

    @staticmethod
    def _expiry(period: str) -> int:
        return int(timedelta(days=3 if period == "day" else 35).total_seconds())

    def primed(self, tenant: str) -> bool:
        """Whether this process has made sure the tenant's counters of the current day and month exist (no I/O)."""
        starts = period_starts(self.clock.now())
        return self._ensured.get(tenant) == {p: period_id(p, starts[p]) for p in PERIODS}

    def prime(self, tenant: str) -> None:
        """Seed the tenant's missing counters of the current day and month from ``initial_spend`` (blocking: a
        Redis round trip, and a query per missing counter). Another replica's seed, when first, stays."""
        starts = period_starts(self.clock.now())
        ids = {p: period_id(p, starts[p]) for p in PERIODS}
        if self._ensured.get(tenant) == ids:
            return
        keys = {p: self._key(tenant, p, ids[p]) for p in PERIODS}
        present = self.client.mget(list(keys.values()))
        missing = {p: _nano(self._initial(tenant, p, starts[p])) for p, v in zip(PERIODS, present) if v is None}
        if missing:
            with self.client.pipeline(transaction=False) as pipe:
                for period, initial in missing.items():
                    pipe.set(keys[period], initial, nx=True, ex=self._expiry(period))
                pipe.execute()
        self._ensured[tenant] = ids

    def reserve(self, tenant: str, usd: float, budgets: dict[str, float | None],
                now: datetime | None = None) -> Reservation:
        starts = period_starts(now or self.clock.now())
        ids = {p: period_id(p, starts[p]) for p in PERIODS}
        keys = [self._key(tenant, p, ids[p]) for p in PERIODS]
        nano = _nano(usd)
        present = self.client.mget(keys)  # the missing counters are seeded (SET NX in the script)
        args: list[int] = [nano]
        for period, value in zip(PERIODS, present):
            budget = budgets.get(period)
            initial = 0 if value is not None else _nano(self._initial(tenant, period, starts[period]))
            args += [_nano(budget) if budget is not None else -1, initial, self._expiry(period)]
        index, spent = self._reserve(keys=keys, args=args)
        self._ensured[tenant] = ids  # the script made sure the counters exist
        if index:
            period = PERIODS[index - 1]
            raise BudgetExceeded(tenant, period, budgets[period], int(spent) / NANO, usd)
        return Reservation(tenant, ids, nano)

    def settle(self, reservation: Reservation, actual_usd: float) -> None:
        delta = _nano(actual_usd) - reservation.nano
        with self.client.pipeline(transaction=False) as pipe:
            for period, period_id in reservation.periods.items():
                pipe.incrby(self._key(reservation.tenant, period, period_id), delta)
            pipe.execute()

    def spent(self, tenant: str, now: datetime | None = None) -> dict[str, float]:
        starts = period_starts(now or self.clock.now())
        values = self.client.mget([self._key(tenant, p, period_id(p, starts[p])) for p in PERIODS])
        return {p: (int(v) if v is not None else _nano(self._initial(tenant, p, starts[p]))) / NANO
                for p, v in zip(PERIODS, values)}

    def take(self, key: str, per_minute: float, amount: float = 1.0) -> float | None:
        wait_ms = int(self._take(keys=[f"{self.prefix}bucket:{key}"], args=[per_minute, per_minute / 60.0, amount]))
        if wait_ms == 0:
            return None
        return math.inf if wait_ms < 0 else wait_ms / 1000

    def close(self) -> None:
        self.client.close()


def limits_for(redis_url: str | None, initial_spend: InitialSpend = _zero,
               clock: Clock = SYSTEM_CLOCK) -> MemoryLimits | RedisLimits:
    """Redis when a URL is configured (several replicas), else this process's memory."""
    return RedisLimits(redis_url, initial_spend, clock=clock) if redis_url else MemoryLimits(initial_spend, clock)
