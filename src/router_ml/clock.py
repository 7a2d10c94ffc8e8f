"""The one wall clock of calendar logic: budget periods, forecasts from "today", and the times records are stamped with.

Anything that asks "what time is it?" to decide a UTC day or month (which budget period a call counts in, where a
forecast starts, a call's ``ts``, a key's ``revoked_at``) takes a :class:`Clock` (keyword ``clock=``, default
:data:`SYSTEM_CLOCK`) and calls ``clock.now()``: an aware UTC datetime. Tests pin it with :class:`FixedClock` and
move it across the boundaries they check; ``router-ml forecast --as-of`` is a fixed clock too. Durations and rate
buckets are not calendar logic: they keep ``time.monotonic``.
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


def _aware_utc(at: datetime) -> datetime:
    if at.tzinfo is None or at.utcoffset() is None:
        raise ValueError(f"a clock needs an aware datetime (say tzinfo=UTC), not the naive {at.isoformat()}")
    return at.astimezone(UTC)


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
