"""Prometheus metrics of the gateway: HTTP requests, upstream calls (latency, tokens, cost), the response
cache, routing decisions, provider errors and circuit breakers; scraped from ``GET /metrics``.

Every call the gateway logs (an answer, a failed upstream attempt, a client that left, a cache hit) passes
through :meth:`Metrics.observe_call`, so the metrics count the same rows as the call log. Label values are
model, deployment and endpoint names only, never prompts, keys or tenants: a tenant label would multiply
every series by the number of tenants (and name them to whoever scrapes); per-tenant usage lives in the call
log and the analytics API (``/v1/analytics/usage``). The call log's own row counters (written, recovered,
rejected, lost, and the dead letter) are exported too (:meth:`Metrics.watch_store`), and with shadow judging
the quality the judged calls kept of the reference's, all tenants together (:meth:`Metrics.watch_quality`).

With several worker processes (``router-ml serve --workers N``) each process counts its own calls; the
supervisor sets ``PROMETHEUS_MULTIPROC_DIR`` before spawning the workers, prometheus_client then keeps every
value in a per-process file there, and a scrape of any worker sums the files of all of them
(prometheus_client's multiprocess mode). Gauges there are per process: a breaker's state is the worst one
of any live worker ('livemax').
"""

from __future__ import annotations

import logging
import math
import os
import time

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector

from router_ml.calllog.record import CallRecord

logger = logging.getLogger(__name__)

# An LLM call takes from tens of milliseconds (a cached prefix, a tiny model) to a minute (long generations).
CALL_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0)
REQUEST_BUCKETS = (0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
BREAKER_STATES = {"closed": 0, "half-open": 1, "open": 2}
QUALITY_EVERY_S = 30.0  # the judged quality is a call-log query: read at most this often, at a scrape


def multiprocess_dir() -> str | None:
    """The directory of prometheus_client's multiprocess mode, when this process runs in it."""
    return os.environ.get("PROMETHEUS_MULTIPROC_DIR")


class Metrics:
    """The gateway's metrics in a registry of their own (two apps in one process never share counters).
    ``providers`` (model -> provider) is read for the circuit breakers of the deployments, ``bundles``
    (a :class:`~router_ml.serve.state.BundleHolder`) for the bundle version served."""

    def __init__(self, providers: dict, bundles=None):
        self.providers, self.bundles = providers, bundles
        self.registry = registry = CollectorRegistry()
        self.requests = Counter("router_ml_requests", "HTTP requests by route and status (rejected ones included)",
                                ["endpoint", "status"], registry=registry)
        self.request_seconds = Histogram("router_ml_request_duration_seconds", "HTTP request time, to the last byte",
                                         ["endpoint"], buckets=REQUEST_BUCKETS, registry=registry)
        self.calls = Counter("router_ml_calls", "Logged calls: status ok, error (upstream) or client_closed; cache "
                             "exact, semantic or none", ["model", "status", "cache"], registry=registry)
        self.call_seconds = Histogram("router_ml_call_latency_seconds", "Latency of answered upstream calls "
                                      "(cache hits excluded)", ["model"], buckets=CALL_BUCKETS, registry=registry)
        self.cost = Counter("router_ml_cost_usd", "Upstream spend in USD (0 for unpriced models)", ["model"],
                            registry=registry)
        self.saved = Counter("router_ml_saved_usd", "USD the response cache saved", registry=registry)
        self.tokens = Counter("router_ml_tokens", "Tokens billed upstream (cache hits excluded)",
                              ["model", "direction"], registry=registry)
        self.routed = Counter("router_ml_routing_decisions", "Routed calls answered upstream, by the model that "
                              "answered (after any fallback)", ["model"], registry=registry)
        self.provider_errors = Counter("router_ml_provider_errors", "Failed upstream attempts by HTTP status",
                                       ["model", "http_status"], registry=registry)
        self.breakers = Gauge("router_ml_circuit_breaker_state", "Circuit breaker per deployment: 0 closed, "
                              "1 half-open, 2 open", ["deployment"], multiprocess_mode="livemax", registry=registry)
        self.bundle = Gauge("router_ml_bundle_info", "1 for the bundle version served", ["version"],
                            multiprocess_mode="livemax", registry=registry)
        self.degraded = Counter("router_ml_budget_degraded_calls", "Calls a tenant's budget sent to a cheaper model "
                                "than the gateway chose, by the chosen model and the one that served",
                                ["from_model", "model"], registry=registry)
        self._children: dict[tuple, tuple] = {}  # label values -> bound series: label lookups off the hot path
        self._bundle_version = None
        self._store = None  # the call log whose row counters are exported (watch_store)
        self._quality = None  # (report, clock, seconds between readings) of the judged quality (watch_quality)

    def _series(self, model: str, status: str, cache: str) -> tuple:
        key = (model, status, cache)
        series = self._children.get(key)
        if series is None:
            provider = self.providers.get(model)
            breaker = getattr(provider, "breaker", None)
            gauge = self.breakers.labels(provider.name) if breaker is not None else None
            series = self._children[key] = (
                self.calls.labels(model, status, cache), self.call_seconds.labels(model), self.cost.labels(model),
                self.tokens.labels(model, "input"), self.tokens.labels(model, "output"), self.routed.labels(model),
                breaker, gauge)
        return series

    def observe_call(self, call: CallRecord) -> None:
        """Count one call-log row."""
        status = "client_closed" if call.client_closed else call.status
        cache = call.cache or "none"
        model = call.model or "unknown"
        calls, seconds, cost, tokens_in, tokens_out, routed, breaker, gauge = self._series(model, status, cache)
        calls.inc()
        if status == "ok":
            if cache == "none":
                seconds.observe((call.latency_ms or 0.0) / 1000)
                cost.inc(call.cost_usd or 0.0)
                tokens_in.inc(call.input_tokens or 0)
                tokens_out.inc(call.output_tokens or 0)
                if call.routed:
                    routed.inc()
                if call.degraded_from is not None:
                    self.degraded.labels(call.degraded_from, model).inc()
            else:
                self.saved.inc(call.saved_usd or 0.0)
        elif status == "error":
            self.provider_errors.labels(model, str(call.http_status)).inc()
        if gauge is not None:
            gauge.set(BREAKER_STATES[breaker.state])
        if (version := call.bundle_version) != self._bundle_version:
            self._serving(version)

    def _serving(self, version) -> None:
        if self._bundle_version is not None:
            self.bundle.labels(self._bundle_version).set(0)
        if version is not None:
            self.bundle.labels(version).set(1)
        self._bundle_version = version

    def watch_store(self, store) -> None:
        """Export the row counters of the call log ``store`` (a :class:`~router_ml.calllog.store.CallStore`): rows
        written, recovered from a journal, rejected by ``record`` and lost by the writer, and the lost rows this
        process still holds in its dead letter. The store counts them as they happen (:meth:`CallStore.watch`), so
        in multiprocess mode every worker's file is current and a scrape of any worker sums them all."""
        self.calllog_rows = Counter("router_ml_calllog_rows", "Call-log rows by outcome: written, recovered (from a "
                                    "dead process's journal), rejected (refused by the call log: never stored) or "
                                    "lost (given up after retries; kept in the dead letter and the journal)",
                                    ["outcome"], registry=self.registry)
        self.dead_letter = Gauge("router_ml_calllog_dead_letter_rows", "Lost call-log rows held in the dead letter "
                                 "of the live processes", multiprocess_mode="livesum", registry=self.registry)
        series: dict = {}

        def counted(outcome: str, n: int) -> None:
            if outcome not in series:
                series[outcome] = self.calllog_rows.labels(outcome)
            series[outcome].inc(n)
            if outcome == "lost":
                self.dead_letter.set(len(store.dead_letter))

        self._store = store
        store.watch(counted)

    def watch_quality(self, report, clock, every_s: float = QUALITY_EVERY_S) -> None:
        """Export the judged quality of all tenants together: ``report()`` (an
        :func:`~router_ml.serve.observability.analytics.quality` report) is read at a scrape when the last reading
        is ``every_s`` old on ``clock`` (it queries the call log; scrapes run off the event loop). The share is of
        the routed calls another model than the reference answered (``judged_away``), with its interval."""
        self.quality_kept = Gauge("router_ml_quality_kept_share", "Quality routed calls kept of the reference "
                                  "model's (shadow-judged, last 30 days): the estimate and its interval's bounds",
                                  ["bound"], multiprocess_mode="livemostrecent", registry=self.registry)
        self.judged_calls = Gauge("router_ml_judged_calls", "Shadow-judged calls with a verdict, last 30 days",
                                  multiprocess_mode="livemostrecent", registry=self.registry)
        self.judging_usd = Gauge("router_ml_judging_usd", "USD spent on shadow and judge calls, last 30 days",
                                 multiprocess_mode="livemostrecent", registry=self.registry)
        self._quality = (report, clock, every_s)
        self._quality_read_at: float | None = None

    def _read_quality(self) -> None:
        report, clock, every_s = self._quality
        now = clock.now().timestamp()
        if self._quality_read_at is not None and now - self._quality_read_at < every_s:
            return
        self._quality_read_at = now
        try:
            found = report()
        except Exception:  # the call log is unreachable: the gauges keep their last reading, the scrape answers
            logger.warning("quality kept not refreshed for /metrics: the call log did not answer", exc_info=True)
            return
        self.judged_calls.set(found["judged_calls"])
        self.judging_usd.set(found["judging_usd"])
        estimate = found["judged_away"]
        for bound, key in (("estimate", "share"), ("lower", "lower"), ("upper", "upper")):
            self.quality_kept.labels(bound).set(math.nan if estimate[key] is None else estimate[key])

    def render(self) -> tuple[bytes, str]:
        """The exposition (body, content type): this process's breakers, bundle and judged quality refreshed first,
        then every worker's values summed when in multiprocess mode."""
        if self._quality is not None:
            self._read_quality()
        if self._store is not None:
            self.dead_letter.set(len(self._store.dead_letter))
        for provider in self.providers.values():
            if (breaker := getattr(provider, "breaker", None)) is not None:
                self.breakers.labels(provider.name).set(BREAKER_STATES[breaker.state])
        if self.bundles is not None and self.bundles.current.version != self._bundle_version:
            self._serving(self.bundles.current.version)
        registry = self.registry
        if (directory := multiprocess_dir()) is not None:
            registry = CollectorRegistry()
            MultiProcessCollector(registry, path=directory)
        return generate_latest(registry), CONTENT_TYPE_LATEST


class RequestMetrics:
    """ASGI middleware: counts every HTTP request by route template and status, and times it to its last byte.
    Outermost, so requests refused before routing (413) or by auth (401, 403) and rate limits (429) count too."""

    def __init__(self, app, metrics: Metrics, routes: list):
        self.app, self.metrics, self.routes = app, metrics, routes
        self._series: dict[tuple, tuple] = {}

    def _endpoint(self, scope) -> str:
        route = scope.get("route")
        if route is not None:
            return route.path
        path = scope["path"]  # refused before routing (413): its path, when it is a route's, else "other"
        return path if any(getattr(r, "path", None) == path for r in self.routes) else "other"

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started = time.perf_counter()
        status = 500  # what the client gets when the app raises before it responds

        async def send_status(message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            key = (self._endpoint(scope), status)
            series = self._series.get(key)
            if series is None:
                series = self._series[key] = (self.metrics.requests.labels(key[0], str(status)),
                                              self.metrics.request_seconds.labels(key[0]))
            series[0].inc()
            series[1].observe(time.perf_counter() - started)
