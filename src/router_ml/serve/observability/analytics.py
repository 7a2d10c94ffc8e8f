"""Spend, savings, traffic, latency, errors and cache figures over the call log, in minute, hour or day buckets.

Every row of the call log counts as a request: an answered call, a cache hit, or a failed upstream attempt
(a call that fell back logs its failed attempt as an error row and its answer as an ok row), so the error
rate is the share of upstream attempts that failed.

Savings are a counterfactual: what the same calls would have cost had every one gone to the tenant's
reference model (its ``reference_model`` setting, else the bundle's best model), priced with the same catalog
(:func:`router_ml.pricing.cost_usd`) at the same token counts. The answer a reference model would have given
is unknown, so its length is taken to be the one that was served; cost is linear in tokens, so the
counterfactual is exact on the SQL sums. A cache hit cost nothing; what it saved beyond routing is what its
original call cost (``saved_usd``). A reference model without a price claims no savings and is named in
``unpriced_reference``. Shadow judging (rows of kind 'shadow' and 'judge') is no client's request: its cost is
spend with no counterfactual, so it comes off the savings, and it is shown as ``judging_usd``.

Sums and counts are aggregated in SQL (SQLite or PostgreSQL); latency percentiles need the latencies of the
range's answered, non-cached calls, read as one float column.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import numpy as np
import sqlalchemy as sa

from router_ml.pricing import UnknownModelError, price_of
from router_ml.calllog.store import calls
from router_ml.clock import as_utc
from router_ml.online.estimate import quality_share

BUCKET_SECONDS = {"minute": 60, "hour": 3600, "day": 86400}
DEFAULT_SPAN = {"minute": timedelta(hours=1), "hour": timedelta(hours=24), "day": timedelta(days=30)}
MAX_BUCKETS = 2000  # a range that would draw more buckets is refused (a year of hours is 8,760)
RECENT_ERRORS = 20
PERCENTILES = (50, 95, 99)


@dataclass(frozen=True)
class Scope:
    """What a viewer may see: one tenant (a tenant's key), or everything (the admin), optionally one model."""

    tenant: str | None
    admin: bool
    model: str | None = None


def _epoch_bucket(engine: sa.Engine, seconds: int):
    """SQL expression: the start of the row's bucket in epoch seconds (UTC), for either dialect."""
    if engine.dialect.name == "sqlite":
        epoch = sa.cast(sa.func.strftime("%s", calls.c.ts), sa.Integer)
    else:
        epoch = sa.cast(sa.func.floor(sa.extract("epoch", calls.c.ts)), sa.BigInteger)
    return (epoch // seconds) * seconds


def _where(scope: Scope, start: datetime, end: datetime) -> list:
    clauses = [calls.c.ts >= start, calls.c.ts < end]
    if scope.tenant is not None:
        clauses.append(calls.c.tenant == scope.tenant)
    if scope.model is not None:
        clauses.append(calls.c.model == scope.model)
    return clauses


def _percentiles(values: list[float]) -> dict[str, float | None]:
    if not values:
        return {f"p{p}": None for p in PERCENTILES}
    found = np.percentile(np.asarray(values, dtype=np.float64), PERCENTILES)
    return {f"p{p}": round(float(v), 3) for p, v in zip(PERCENTILES, found)}


def _rate(part: float, whole: float) -> float | None:
    return part / whole if whole else None


@dataclass(frozen=True)
class _Group:
    bucket: int
    tenant: str | None
    model: str
    status: str
    hit: bool
    n: int
    input_tokens: int
    output_tokens: int
    cost_usd: float
    saved_usd: float
    judging: bool


def _numbers(row) -> _Group:
    """A grouped row with plain numbers (PostgreSQL sums integers as Decimal)."""
    return _Group(int(row.bucket), row.tenant, row.model, row.status, bool(row.hit), int(row.n),
                  int(row.input_tokens or 0), int(row.output_tokens or 0), float(row.cost_usd or 0.0),
                  float(row.saved_usd or 0.0), bool(row.judging))


class _Sums:
    """Running sums of one group of calls (a bucket, a model, a tenant, or all)."""

    __slots__ = ("requests", "ok", "errors", "input_tokens", "output_tokens", "spend_usd", "reference_usd",
                 "cache_hits", "cache_saved_usd", "judging_usd")

    def __init__(self) -> None:
        for name in self.__slots__:
            setattr(self, name, 0)

    def add(self, row: _Group, reference_usd: float) -> None:
        if row.judging:  # shadow and judge calls: spend with no counterfactual, and no client's request
            self.input_tokens += row.input_tokens
            self.output_tokens += row.output_tokens
            self.spend_usd += row.cost_usd
            self.judging_usd += row.cost_usd
            return
        self.requests += row.n
        if row.status == "ok":
            self.ok += row.n
        else:
            self.errors += row.n
        self.input_tokens += row.input_tokens
        self.output_tokens += row.output_tokens
        self.spend_usd += row.cost_usd
        self.reference_usd += reference_usd
        if row.hit:
            self.cache_hits += row.n
            self.cache_saved_usd += row.saved_usd

    def as_dict(self) -> dict:
        saved = self.reference_usd - self.spend_usd
        return {"requests": self.requests, "ok": self.ok, "errors": self.errors,
                "error_rate": _rate(self.errors, self.requests),
                "input_tokens": self.input_tokens, "output_tokens": self.output_tokens,
                "tokens": self.input_tokens + self.output_tokens,
                "spend_usd": self.spend_usd, "reference_usd": self.reference_usd, "saved_usd": saved,
                "saved_fraction": _rate(saved, self.reference_usd),
                "routing_saved_usd": saved - self.cache_saved_usd, "cache_saved_usd": self.cache_saved_usd,
                "cache_hits": self.cache_hits, "cache_hit_rate": _rate(self.cache_hits, self.ok),
                "judging_usd": self.judging_usd}


def _reference_usd(row: _Group, reference: str | None) -> float | None:
    """The row's calls priced at ``reference``; None when the reference has no price."""
    if reference is None:
        return None
    try:
        price = price_of(reference)
    except UnknownModelError:
        return None
    if row.status != "ok":
        return row.cost_usd  # a failed attempt is no answer: the reference would have failed it too
    return (row.input_tokens * price.input_usd_per_mtok + row.output_tokens * price.output_usd_per_mtok) / 1_000_000


def resolve_range(start: datetime | None, end: datetime | None, bucket: str,
                  now: datetime) -> tuple[datetime, datetime]:
    """[start, end) aligned outward to whole buckets, UTC (``end`` defaults to ``now``, the app's clock); ValueError
    naming what is wrong."""
    if bucket not in BUCKET_SECONDS:
        raise ValueError(f"bucket must be 'minute', 'hour' or 'day', not {bucket!r}")
    seconds = BUCKET_SECONDS[bucket]
    end = (end or now).astimezone(UTC)
    start = (start or end - DEFAULT_SPAN[bucket]).astimezone(UTC)
    if start >= end:
        raise ValueError(f"start ({start.isoformat()}) must be before end ({end.isoformat()})")
    first = int(start.timestamp()) // seconds * seconds
    last = -(-int(end.timestamp()) // seconds) * seconds
    if (last - first) // seconds > MAX_BUCKETS:
        raise ValueError(f"the range spans more than {MAX_BUCKETS} {bucket} buckets; use a shorter range or "
                         "bucket=day")
    return datetime.fromtimestamp(first, UTC), datetime.fromtimestamp(last, UTC)


def usage(engine: sa.Engine, scope: Scope, start: datetime, end: datetime, bucket: str,
          references: dict[str, str | None], default_reference: str | None) -> dict:
    """The usage report of the contract ``GET /v1/analytics/usage`` answers (see :mod:`router_ml.serve.api.analytics`).
    ``references`` maps tenant name to its reference model setting; unset falls back to ``default_reference``."""
    seconds = BUCKET_SECONDS[bucket]
    bucket_of = _epoch_bucket(engine, seconds).label("bucket")
    hit = calls.c.cache.is_not(None).label("hit")
    judging = calls.c.kind.is_not(None).label("judging")
    grouped = (sa.select(bucket_of, calls.c.tenant, calls.c.model, calls.c.status, hit, judging,
                         sa.func.count().label("n"),
                         sa.func.sum(calls.c.input_tokens).label("input_tokens"),
                         sa.func.sum(calls.c.output_tokens).label("output_tokens"),
                         sa.func.sum(calls.c.cost_usd).label("cost_usd"),
                         sa.func.sum(calls.c.saved_usd).label("saved_usd"))
               .where(*_where(scope, start, end))
               .group_by(bucket_of, calls.c.tenant, calls.c.model, calls.c.status, hit, judging))
    timed = (sa.select(bucket_of, calls.c.tenant, calls.c.model, calls.c.latency_ms)
             .where(*_where(scope, start, end), calls.c.status == "ok", calls.c.cache.is_(None),
                    calls.c.kind.is_(None),
                    calls.c.latency_ms.is_not(None)))
    errors = (sa.select(calls.c.ts, calls.c.tenant, calls.c.model, calls.c.http_status, calls.c.error)
              .where(*_where(scope, start, end), calls.c.status == "error")
              .order_by(calls.c.ts.desc()).limit(RECENT_ERRORS))
    with engine.connect() as conn:
        groups = conn.execute(grouped).all()
        latencies = conn.execute(timed).all()
        recent = conn.execute(errors).all()

    totals, by_bucket, by_model, by_tenant = _Sums(), defaultdict(_Sums), defaultdict(_Sums), defaultdict(_Sums)
    unpriced: set[str] = set()
    for row in map(_numbers, groups):
        reference = references.get(row.tenant) or default_reference
        counterfactual = _reference_usd(row, reference)
        if counterfactual is None:  # no price for the reference: no savings claimed
            unpriced.add(str(reference))
            counterfactual = row.cost_usd
        for sums in (totals, by_bucket[row.bucket], by_model[row.model], by_tenant[row.tenant]):
            sums.add(row, counterfactual)

    lat_all, lat_bucket, lat_model, lat_tenant = [], defaultdict(list), defaultdict(list), defaultdict(list)
    for row in latencies:
        lat_all.append(row.latency_ms)
        lat_bucket[int(row.bucket)].append(row.latency_ms)
        lat_model[row.model].append(row.latency_ms)
        lat_tenant[row.tenant].append(row.latency_ms)

    series = []
    for epoch in range(int(start.timestamp()), int(end.timestamp()), seconds):
        sums = by_bucket.get(epoch) or _Sums()
        figures = sums.as_dict()
        pct = _percentiles(lat_bucket.get(epoch, []))
        series.append({"start": datetime.fromtimestamp(epoch, UTC).isoformat(),
                       **{k: figures[k] for k in ("requests", "errors", "tokens", "spend_usd", "reference_usd",
                                                  "saved_usd", "cache_hits")},
                       **{f"latency_{k}": v for k, v in pct.items()}})
    models = []
    for model, sums in sorted(by_model.items(), key=lambda kv: (-kv[1].requests, kv[0])):
        figures = sums.as_dict()
        models.append({"model": model, "requests": sums.requests, "share": _rate(sums.requests, totals.requests),
                       "errors": sums.errors, "tokens": figures["tokens"], "spend_usd": sums.spend_usd,
                       **{f"latency_{k}": v for k, v in _percentiles(lat_model.get(model, [])).items()}})
    tenants = []
    for tenant, sums in sorted(by_tenant.items(), key=lambda kv: (-kv[1].spend_usd, str(kv[0]))):
        figures = sums.as_dict()
        tenants.append({"tenant": tenant, "requests": sums.requests, "spend_usd": sums.spend_usd,
                        "reference_usd": sums.reference_usd, "saved_usd": figures["saved_usd"],
                        "error_rate": figures["error_rate"],
                        "reference_model": references.get(tenant) or default_reference,
                        **{f"latency_{k}": v for k, v in _percentiles(lat_tenant.get(tenant, [])).items()}})
    return {
        "scope": {"tenant": scope.tenant, "admin": scope.admin, "model": scope.model},
        "start": start.isoformat(), "end": end.isoformat(), "bucket": bucket,
        "totals": {**totals.as_dict(), "latency_ms": _percentiles(lat_all)},
        "series": series, "models": models, "tenants": tenants,
        "recent_errors": [{"ts": as_utc(r.ts).isoformat(), "tenant": r.tenant, "model": r.model, "http_status": r.http_status,
                           "error": r.error} for r in recent],
        "unpriced_reference": sorted(unpriced),
    }



def quality(engine: sa.Engine, scope: Scope, start: datetime, end: datetime, confidence: float = 0.8) -> dict:
    """The quality routed calls kept of the reference model's, from the shadow judge's verdicts in [start, end)
    (:mod:`router_ml.serve.gateway.shadow`), with its interval (:func:`router_ml.online.estimate.quality_share`),
    overall and per tenant, beside what the judging cost. Judged calls are a uniform sample of the calls that
    another model than the reference answered, so ``judged_away`` is the share those calls kept; the calls the
    reference answered keep all of its quality, so the share of the whole routed traffic is at least that (when
    it is under 1)."""
    verdicts = (sa.select(calls.c.tenant, calls.c.judge_routed, calls.c.judge_reference)
                .where(*_where(scope, start, end), calls.c.kind == "judge", calls.c.status == "ok"))
    judging = (sa.select(calls.c.tenant, sa.func.sum(calls.c.cost_usd).label("usd"))
               .where(*_where(scope, start, end), calls.c.kind.is_not(None)).group_by(calls.c.tenant))
    served = (sa.select(calls.c.tenant, sa.func.count().label("n"))
              .where(*_where(scope, start, end), calls.c.kind.is_(None), calls.c.status == "ok",
                     calls.c.routed.is_(True), calls.c.cache.is_(None))
              .group_by(calls.c.tenant))
    with engine.connect() as conn:
        rows = conn.execute(verdicts).all()
        cost = {r.tenant: float(r.usd or 0.0) for r in conn.execute(judging)}
        routed = {r.tenant: int(r.n) for r in conn.execute(served)}
    by_tenant: dict = defaultdict(list)
    for row in rows:
        by_tenant[row.tenant].append((row.judge_routed, row.judge_reference))

    def estimate(pairs: list) -> dict:
        if not pairs:
            return quality_share([], [], confidence=confidence).as_dict()
        values = np.array(pairs, dtype=float)
        return quality_share(values[:, 0], values[:, 1], confidence=confidence).as_dict()

    tenants = [{"tenant": tenant, "judged_calls": len(by_tenant.get(tenant, [])), "routed_calls": routed.get(tenant, 0),
                "judging_usd": cost.get(tenant, 0.0), "judged_away": estimate(by_tenant.get(tenant, []))}
               for tenant in sorted(set(by_tenant) | set(cost) | set(routed), key=str)]
    return {"scope": {"tenant": scope.tenant, "admin": scope.admin}, "start": start.isoformat(), "end": end.isoformat(),
            "confidence": confidence, "judged_calls": len(rows), "judging_usd": sum(cost.values()),
            "judged_away": estimate([pair for pairs in by_tenant.values() for pair in pairs]), "tenants": tenants}


def recent_quality(engine: sa.Engine, scope: Scope, clock, confidence: float = 0.8) -> dict:
    """:func:`quality` over the default range of ``GET /v1/analytics/quality`` (the last 30 days on ``clock``)."""
    start, end = resolve_range(None, None, "day", clock.now())
    return quality(engine, scope, start, end, confidence)
