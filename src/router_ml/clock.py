"""The one wall clock of calendar logic: budget periods, forecasts from "today", and the times records are stamped with.

Anything that asks "what time is it?" to decide a UTC day or month (which budget period a call counts in, where a
forecast starts, a call's ``ts``, a key's ``revoked_at``) takes a :class:`Clock` (keyword ``clock=``, default
:data:`SYSTEM_CLOCK`) and calls ``clock.now()``: an aware UTC datetime. Tests pin it with :class:`FixedClock` and
move it across the boundaries they check; ``router-ml forecast --as-of`` is a fixed clock too. Durations and rate
buckets are not calendar logic: they keep ``time.monotonic``.

The calendar of budget periods (:func:`period_starts`, :func:`period_id`, :func:`period_end`: UTC days and months)
and the one UTC normalisation (:func:`as_utc`, for datetimes read back from a database) live here too, below
everything that uses them (the call log, tenancy, observability, forecasts).
"""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta
from typing import Protocol, runtime_checkable


@runtime_checkable
class Clock(Protocol):
    def now(self) -> datetime:
        """The current time, aware, in UTC."""
        ...


class SystemClock:
    """The operating system's clock."""

    def now(self) -> datetime:
        return datetime.now(UTC)

    def __repr__(self) -> str:
        return "SystemClock()"


SYSTEM_CLOCK = SystemClock()


def utc_now() -> datetime:
    """The system clock's now (aware UTC): for code with no clock to hand, such as a CLI default."""
    return SYSTEM_CLOCK.now()


def as_utc(value: datetime | None) -> datetime | None:
    """``value`` as an aware UTC datetime; a naive one is taken to be UTC already (SQLite gives naive datetimes
    back, and they were written in UTC); None stays None."""
    if value is None:
        return None
    return value.replace(tzinfo=UTC) if value.tzinfo is None or value.utcoffset() is None else value.astimezone(UTC)


def _aware_utc(at: datetime) -> datetime:
    """A clock's time: an aware datetime, in UTC. A naive one is refused (its zone would be a guess)."""
    if at.tzinfo is None or at.utcoffset() is None:
        raise ValueError(f"a clock needs an aware datetime (say tzinfo=UTC), not the naive {at.isoformat()}")
    return as_utc(at)


# ----------------------------------------------------------------- the calendar of budget periods
PERIODS = ("day", "month")


def period_starts(now: datetime) -> dict[str, datetime]:
    """The UTC start of the day and of the month that ``now`` falls in."""
    day = as_utc(now).replace(hour=0, minute=0, second=0, microsecond=0)
    return {"day": day, "month": day.replace(day=1)}


def period_id(period: str, start: datetime) -> str:
    """The period's name in counters and reservations: ``2026-11-26`` for a day, ``2026-11`` for a month."""
    return start.strftime("%Y-%m-%d" if period == "day" else "%Y-%m")


def period_end(period: str, start: datetime) -> datetime:
    """The start of the period after the one that starts at ``start``."""
    if period == "day":
        return start + timedelta(days=1)
    return (start.replace(day=28) + timedelta(days=4)).replace(day=1)


class FixedClock:
    """A clock that stands at ``at`` until :meth:`set` or :meth:`advance` moves it (thread-safe)."""

    def __init__(self, at: datetime):
        self._lock = threading.Lock()
        self._at = _aware_utc(at)

    def now(self) -> datetime:
        with self._lock:
            return self._at

    def set(self, at: datetime) -> datetime:
        with self._lock:
            self._at = _aware_utc(at)
            return self._at

    def advance(self, delta: timedelta | None = None, **parts: float) -> datetime:
        """Move forward by ``delta`` or by ``timedelta(**parts)`` (say ``minutes=1``); returns the new now."""
        step = (delta or timedelta()) + timedelta(**parts)
        with self._lock:
            self._at += step
            return self._at

    def __repr__(self) -> str:
        return f"FixedClock({self._at.isoformat()})"
