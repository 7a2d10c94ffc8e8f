"""Budgets, the call log and forecasts at the calendar's edges, on a pinned clock (router_ml.clock.FixedClock): the
first and last minute of a month, a UTC day boundary while local time is 14 hours ahead, the leap day 2028-02-29,
and a new month whose history lies wholly in the month before.

Every call below is a real RouterBench outcome row of the mini mirror (its model, tokens and billed cost); only
its time and tenant are set here. Every test runs twice, with the process's local time zone at UTC+14 and at UTC-12,
so that a period, a period's name or a "today" taken from local time instead of UTC lands on another date (ahead in
one run, behind in the other) and fails an assertion.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta, timezone

import polars as pl
import pytest

from router_ml.clock import SYSTEM_CLOCK, FixedClock, period_starts
from router_ml.data.prepare import prepare
from router_ml.data.report import ImportReport
from router_ml.forecast import forecast_usage
from router_ml.serve.observability import budget_outlook
from router_ml.serve.observability.analytics import Scope
from router_ml.serve.tenancy.limits import BudgetExceeded, MemoryLimits, RedisLimits
from router_ml.serve.tenancy.admission import OverBudget, admit, max_cost_usd
from router_ml.calllog.store import CallStore
from router_ml.serve.tenancy.tenants import TenantStore

SLACK = 1e-8  # above the rounding of a few costs to whole nano-dollars


@pytest.fixture(autouse=True, params=[("XST-14", 14), ("YST+12", -12)], ids=["local=utc+14", "local=utc-12"])
def local_hours(request, monkeypatch) -> int:
    """The local zone (POSIX TZ strings: no tz database needed) far from UTC; its offset in hours."""
    zone, hours = request.param
    monkeypatch.setenv("TZ", zone)
    time.tzset()
    yield hours
    monkeypatch.undo()
    time.tzset()


@pytest.fixture(scope="module")
def priced(mini_files) -> list[dict]:
    """Real outcome rows (RouterBench, billed costs), in the order of the mirror."""
    outcomes = prepare(mini_files, ImportReport(), encoder=None)
    rows = outcomes.filter((pl.col("source") == "routerbench") & (pl.col("cost_usd") > 0)).head(60)
    return rows.select("prompt", "model", "input_tokens", "output_tokens", "cost_usd", "cost_source").to_dicts()


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request, tmp_path):
    return request.getfixturevalue("postgres_url") if request.param == "postgresql" else f"sqlite:///{tmp_path}/c.db"


@pytest.fixture(params=["memory", "redis"])
def limits_on(request):
    """A factory: limits on ``clock`` in this process or on the Redis server of .ci/services."""
    if request.param == "memory":
        yield lambda clock, initial=None: MemoryLimits(initial, clock=clock) if initial else MemoryLimits(clock=clock)
        return
    url, prefix = request.getfixturevalue("redis_url")
    made = []

    def redis_limits(clock, initial=None):
        made.append(RedisLimits(url, initial, prefix=prefix, clock=clock) if initial
                    else RedisLimits(url, prefix=prefix, clock=clock))
        return made[-1]
    yield redis_limits
    for limits in made:
        limits.close()


def _call(row: dict, tenant: str = "acme", ts: datetime | None = None) -> dict:
    """The call-log record of one outcome row; without ``ts`` the store stamps it from its clock."""
    call = {"prompt": row["prompt"], "model": row["model"], "task": "chat", "tenant": tenant, "http_status": 200,
            "input_tokens": row["input_tokens"], "output_tokens": row["output_tokens"], "cost_usd": row["cost_usd"],
            "cost_source": row["cost_source"], "latency_ms": 300.0 + 20.0 * row["output_tokens"]}
    return call if ts is None else {**call, "ts": ts}


def _at(*parts: int) -> datetime:
    return datetime(*parts, tzinfo=UTC)


def _projection(report: dict, now: datetime, end: str, extra: list[dict] = ()) -> list[tuple[str, float]]:
    """(day, spend still to come) for each forecast day from today to ``end`` (exclusive), computed here: today's
    share is the fraction of the UTC day left."""
    left_today = 1 - (now - now.replace(hour=0, minute=0, second=0, microsecond=0)) / timedelta(days=1)
    days = [*report["forecast"], *extra]
    today = now.date().isoformat()
    return [(d["day"], d["spend_usd"] * (left_today if d["day"] == today else 1.0)) for d in days if d["day"] < end]


def test_the_clocks_give_aware_utc_and_a_fixed_one_moves_only_when_told(local_hours):
    assert time.localtime().tm_gmtoff == local_hours * 3600  # the local zone is in force
    assert SYSTEM_CLOCK.now().tzinfo == UTC
    with pytest.raises(ValueError, match="aware"):
        FixedClock(datetime(2026, 12, 1))
    sydney = FixedClock(datetime(2026, 12, 1, 10, 30, tzinfo=timezone(timedelta(hours=11))))
    assert sydney.now() == _at(2026, 11, 30, 23, 30) and sydney.now().tzinfo == UTC
    assert period_starts(sydney.now()) == {"day": _at(2026, 11, 30), "month": _at(2026, 11, 1)}  # still November
    assert sydney.advance(minutes=30) == _at(2026, 12, 1) == sydney.now()
    assert sydney.set(_at(2028, 2, 29, 12)) == sydney.now()
    with pytest.raises(TypeError, match="monotonic="):  # the bucket's seconds are not the calendar
        MemoryLimits(clock=lambda: 0.0)


def test_a_month_budget_resets_at_midnight_utc_on_the_first_and_the_last_minute_stays_in_its_month(priced, limits_on):
    costs = [r["cost_usd"] for r in priced[:4]]
    clock = FixedClock(_at(2026, 11, 30, 23, 59))
    limits = limits_on(clock)
    budgets = {"day": None, "month": sum(costs[:3]) + SLACK}
    november = [limits.reserve("acme", usd, budgets) for usd in costs[:3]]  # no `now` given: the clock's
    assert {tuple(r.periods.items()) for r in november} == {(("day", "2026-11-30"), ("month", "2026-11"))}
    with pytest.raises(BudgetExceeded, match="month budget"):
        limits.reserve("acme", costs[3], budgets)
    clock.set(_at(2026, 11, 30, 23, 59, 59, 999999))  # the last microsecond is still November's
    with pytest.raises(BudgetExceeded, match="month budget"):
        limits.reserve("acme", costs[3], budgets)

    clock.set(_at(2026, 12, 1))  # 00:00:00 UTC on the 1st: a new month with nothing spent
    assert limits.spent("acme") == {"day": 0.0, "month": 0.0}
    december = limits.reserve("acme", costs[3], budgets)
    assert december.periods == {"day": "2026-12-01", "month": "2026-12"}
    clock.advance(seconds=59)  # the first minute of the month
    assert limits.spent("acme") == pytest.approx({"day": costs[3], "month": costs[3]}, abs=1e-9)
    limits.settle(november[0], 0.0)  # a November call settling late frees November's budget, not December's
    assert limits.spent("acme") == pytest.approx({"day": costs[3], "month": costs[3]}, abs=1e-9)
    assert limits.spent("acme", _at(2026, 11, 30, 23, 59, 30))["month"] == pytest.approx(sum(costs[1:3]), abs=1e-9)


def test_a_day_budget_resets_at_midnight_utc_not_at_local_midnight(priced, limits_on):
    row = next(r for r in priced if max_cost_usd(r["model"], r["input_tokens"], r["output_tokens"]) > 0)
    need = max_cost_usd(row["model"], row["input_tokens"], row["output_tokens"])

    class Tenant:
        name, budget_usd_day, budget_usd_month, degrade_before_deny = "acme", need * 1.5, need * 10, False

    # 23:59 UTC on 26 November; a minute later it is a new UTC day but, 14 hours ahead or 12 behind, the same local one.
    clock = FixedClock(datetime(2026, 11, 27, 13, 59, tzinfo=timezone(timedelta(hours=14))))
    limits = limits_on(clock)
    first = admit(limits, Tenant, [row["model"]], [row["model"]], row["input_tokens"], row["output_tokens"])
    assert first.reservation.periods == {"day": "2026-11-26", "month": "2026-11"}
    with pytest.raises(OverBudget, match="day budget"):
        admit(limits, Tenant, [row["model"]], [row["model"]], row["input_tokens"], row["output_tokens"])
    clock.advance(minutes=1)
    local_days = {time.localtime((clock.now() - timedelta(minutes=m)).timestamp()).tm_mday for m in (0, 1)}
    assert len(local_days) == 1  # the same local day on both sides of the UTC midnight
    second = admit(limits, Tenant, [row["model"]], [row["model"]], row["input_tokens"], row["output_tokens"])
    assert second.reservation.periods == {"day": "2026-11-27", "month": "2026-11"}
    assert limits.spent("acme") == pytest.approx({"day": need, "month": 2 * need}, abs=1e-8)


def test_the_leap_day_is_a_day_of_its_own_and_february_2028_has_29(priced, limits_on):
    costs = [r["cost_usd"] for r in priced[:1]]
    clock = FixedClock(_at(2028, 2, 28, 23, 59, 59))
    limits = limits_on(clock)
    budgets = {"day": costs[0] + SLACK, "month": None}
    assert limits.reserve("acme", costs[0], budgets).periods == {"day": "2028-02-28", "month": "2028-02"}
    clock.advance(seconds=1)
    leap = limits.reserve("acme", costs[0], budgets)  # the budget of the 28th is full; the 29th's is not
    assert leap.periods == {"day": "2028-02-29", "month": "2028-02"}  # not 1 March
    clock.set(_at(2028, 2, 29, 23, 59, 59))
    with pytest.raises(BudgetExceeded, match="day budget"):
        limits.reserve("acme", costs[0], budgets)
    clock.advance(seconds=1)
    assert limits.reserve("acme", costs[0], budgets).periods == {"day": "2028-03-01", "month": "2028-03"}
    assert limits.spent("acme") == pytest.approx({"day": costs[0], "month": costs[0]}, abs=1e-9)


def test_the_call_log_stamps_from_its_clock_and_the_last_minute_of_a_month_counts_in_that_month(priced, store_url):
    clock = FixedClock(_at(2026, 11, 30, 23, 59))
    store, tenants = CallStore(store_url, clock=clock), TenantStore(store_url, clock=clock)
    try:
        tenants.create_tenant("acme", budget_usd_month=1.0)
        key = tenants.issue_key("acme")
        stamps, ids = [], []
        for row, at in zip(priced, (_at(2026, 11, 30, 23, 59), _at(2026, 11, 30, 23, 59, 30),
                                    _at(2026, 11, 30, 23, 59, 59, 999999), _at(2026, 12, 1), _at(2026, 12, 1, 0, 0, 59))):
            clock.set(at)
            ids.append(store.record(_call(row)))  # no ts: the store's clock stamps it
            stamps.append(at)
        store.flush()
        assert [store.get(i)["ts"] for i in ids] == stamps
        november, december = sum(r["cost_usd"] for r in priced[:3]), sum(r["cost_usd"] for r in priced[3:5])
        assert store.spend("acme", _at(2026, 12, 1)) == pytest.approx(december, rel=1e-9)
        assert store.spend("acme", _at(2026, 11, 1)) == pytest.approx(november + december, rel=1e-9)
        # A gateway (re)started in the first minutes of December seeds its counters from December's calls only.
        clock.set(_at(2026, 12, 1, 0, 1))
        limits = MemoryLimits(lambda tenant, _period, start: store.spend(tenant, start), clock=clock)
        assert limits.spent("acme") == pytest.approx({"day": december, "month": december}, rel=1e-9)

        clock.set(_at(2026, 12, 1, 8))
        assert store.feedback(ids[0], 0.5)["feedback_at"] == _at(2026, 12, 1, 8)
        assert tenants.require("acme").created_at == _at(2026, 11, 30, 23, 59)
        clock.set(_at(2026, 12, 1, 9))
        tenants.revoke_key("acme", key[:12])
        shown, = tenants.list_keys("acme")
        assert datetime.fromisoformat(shown["created_at"]) == _at(2026, 11, 30, 23, 59)
        assert datetime.fromisoformat(shown["revoked_at"]) == _at(2026, 12, 1, 9)
    finally:
        store.close()
        tenants.close()


def test_a_new_month_starts_from_nothing_spent_and_projects_from_last_months_history(priced, store_url):
    """History 25-30 November; on 1 December at 00:05 the month spent nothing, and its projection (from November's
    days) covers all 31 days of December, though the dashboard asks for 30 days of forecast."""
    clock = FixedClock(_at(2026, 11, 30, 23, 59, 30))
    store, tenants = CallStore(store_url, clock=clock), TenantStore(store_url, clock=clock)
    try:
        days = [_at(2026, 11, 25) + timedelta(days=n) for n in range(6)]
        offsets = (timedelta(hours=9), timedelta(hours=15), timedelta(hours=23, minutes=59))  # the last at 23:59
        logged = [(row, day + offset) for i, day in enumerate(days)
                  for row, offset in zip(priced[3 * i:3 * i + 3], offsets)]
        for row, ts in logged:
            store.record(_call(row, ts=ts))
        store.flush()
        november = sum(r["cost_usd"] for r, _ in logged)
        tenants.create_tenant("acme", budget_usd_month=1e6, budget_usd_day=1e6)
        acme = Scope(tenant="acme", admin=False)

        # The last 30 seconds of November: its spend is the whole history, and only today is left to project.
        before = budget_outlook.report(store, tenants, acme, clock.now(), horizon=30)
        month, = (b for b in before["budgets"] if b["period"] == "month")
        assert month["spent_usd"] == pytest.approx(november, rel=1e-9)
        assert month["period_end"] == "2026-12-01T00:00:00+00:00"
        assert month["projected_usd"] == pytest.approx(
            november + sum(usd for _, usd in _projection(before, clock.now(), "2026-12-01")), rel=1e-9)

        clock.set(_at(2026, 12, 1, 0, 5))
        report = budget_outlook.report(store, tenants, acme, clock.now(), horizon=30)
        assert [h["day"] for h in report["history"]] == [d.date().isoformat() for d in days]
        assert [h["requests"] for h in report["history"]] == [3] * 6
        assert len(report["forecast"]) == 30 and report["forecast"][0]["day"] == "2026-12-01"
        assert report["forecast"][-1]["day"] == "2026-12-30"
        month, = (b for b in report["budgets"] if b["period"] == "month")
        day, = (b for b in report["budgets"] if b["period"] == "day")
        assert month["spent_usd"] == 0.0 and day["spent_usd"] == 0.0  # the 23:59 calls stayed in November
        assert month["period_end"] == "2027-01-01T00:00:00+00:00" and day["period_end"] == "2026-12-02T00:00:00+00:00"
        # The projection, from November's days: December 1 (all but five minutes) to 31, the 31st included.
        history = pl.DataFrame(report["history"]).with_columns(pl.col("day").str.to_date())
        full = forecast_usage(history, horizon=31)
        assert full.head(30)["spend_usd"].to_list() == pytest.approx([d["spend_usd"] for d in report["forecast"]])
        last = {"day": "2026-12-31", "spend_usd": full["spend_usd"][30]}
        projection = _projection(report, clock.now(), "2027-01-01", [last])
        assert len(projection) == 31 and projection[-1][1] > 0
        assert month["projected_usd"] == pytest.approx(sum(usd for _, usd in projection), rel=1e-9)
        assert day["projected_usd"] == pytest.approx(projection[0][1], rel=1e-9)

        # A month budget that only the 31st's forecast takes past: it runs out on the 31st.
        through_30th = sum(usd for _, usd in projection[:30])
        tenants.update_tenant("acme", budget_usd_month=(through_30th + month["projected_usd"]) / 2)
        month, = (b for b in budget_outlook.report(store, tenants, acme, clock.now(), horizon=30)["budgets"]
                  if b["period"] == "month")
        assert month["runs_out"] and month["runs_out_on"] == "2026-12-31"
    finally:
        store.close()
        tenants.close()


def test_a_forecast_across_the_leap_day_projects_the_29th_and_counts_it_in_the_history(priced, store_url):
    clock = FixedClock(_at(2028, 2, 27, 10))
    store, tenants = CallStore(store_url, clock=clock), TenantStore(store_url, clock=clock)
    try:
        days = [_at(2028, 2, 22) + timedelta(days=n) for n in range(5)]
        logged = [(row, day + timedelta(hours=6 * k + 1)) for i, day in enumerate(days)
                  for k, row in enumerate(priced[3 * i:3 * i + 3])]
        for row, ts in logged:
            store.record(_call(row, ts=ts))
        store.flush()
        spent = sum(r["cost_usd"] for r, _ in logged)
        tenants.create_tenant("acme", budget_usd_month=1e6, budget_usd_day=1e6)
        acme = Scope(tenant="acme", admin=False)

        report = budget_outlook.report(store, tenants, acme, clock.now(), horizon=7)
        assert [d["day"] for d in report["forecast"][:4]] == ["2028-02-27", "2028-02-28", "2028-02-29", "2028-03-01"]
        month, = (b for b in report["budgets"] if b["period"] == "month")
        assert month["period_end"] == "2028-03-01T00:00:00+00:00" and month["spent_usd"] == pytest.approx(spent)
        projection = _projection(report, clock.now(), "2028-03-01")  # 27 (14 hours of it), 28 and the 29th
        assert [d for d, _ in projection] == ["2028-02-27", "2028-02-28", "2028-02-29"]
        assert month["projected_usd"] == pytest.approx(spent + sum(usd for _, usd in projection), rel=1e-9)

        # On the leap day itself: the day period ends on 1 March, and so does the month.
        clock.set(_at(2028, 2, 29, 18))
        on_leap = budget_outlook.report(store, tenants, acme, clock.now(), horizon=7)
        day, = (b for b in on_leap["budgets"] if b["period"] == "day")
        month, = (b for b in on_leap["budgets"] if b["period"] == "month")
        assert day["period_end"] == month["period_end"] == "2028-03-01T00:00:00+00:00"
        assert on_leap["forecast"][0]["day"] == "2028-02-29" and day["spent_usd"] == 0.0
        assert month["projected_usd"] == pytest.approx(spent + on_leap["forecast"][0]["spend_usd"] / 4, rel=1e-9)

        # Two calls on 1 March; on the 2nd the history runs through the leap day (a day without calls: 0).
        clock.set(_at(2028, 3, 1, 12))
        for row in priced[15:17]:
            store.record(_call(row))
        store.flush()  # as the endpoint does before it reports
        clock.set(_at(2028, 3, 2, 6))
        after = budget_outlook.report(store, tenants, acme, clock.now(), horizon=7)
        assert [h["day"] for h in after["history"]][-4:] == ["2028-02-27", "2028-02-28", "2028-02-29", "2028-03-01"]
        assert [h["requests"] for h in after["history"]][-4:] == [0, 0, 0, 2]
        march, = (b for b in after["budgets"] if b["period"] == "month")
        assert march["spent_usd"] == pytest.approx(sum(r["cost_usd"] for r in priced[15:17]), rel=1e-9)
        assert march["period_end"] == "2028-04-01T00:00:00+00:00"
    finally:
        store.close()
        tenants.close()
