"""GET /metrics: what Prometheus scrapes must agree with the call log and the HTTP answers, in one process and
summed over the workers of `router-ml serve --workers 2`."""

from __future__ import annotations

import asyncio
import math
import signal
import time
from collections import Counter
from datetime import datetime, timezone

import httpx
import openai
import pytest

from router_ml.calllog.record import CallRecord
from router_ml.calllog.store import CallStore
from router_ml.data.prepare import prepare
from router_ml.data.report import ImportReport
from router_ml.embed import StaticEncoder
from router_ml.serve.app import create_app
from router_ml.serve.gateway.cache import ResponseCache
from router_ml.serve.observability.metrics import Metrics
from router_ml.serve.providers.handler import HandlerProvider, failing
from router_ml.serve.providers.reliability import CircuitBreaker, ReliableProvider
from router_ml.serve.tenancy.tenants import TenantStore
from router_ml.train import TrainConfig, run
from servers import copy_served, free_port, served, start_server  # noqa: F401 (served: a fixture)
from call_rows import call_row
from scraped_metrics import scrape


@pytest.fixture(scope="module")
def bundle(mini_files, static_encoder_dir, tmp_path_factory):
    outcomes = prepare(mini_files, ImportReport(), encoder=None)
    out = tmp_path_factory.mktemp("bundle")
    config = TrainConfig(name="metrics-test", router="linear", sources=["routerbench"], min_prompts=50, n_trials=0)
    result = run(config, outcomes, StaticEncoder(static_encoder_dir), out)
    return out, result.meta, outcomes["prompt"].unique().sort().to_list()


class Log:
    """A call log keeping the rows the gateway hands it, as the store would write them."""

    def __init__(self):
        self.calls = []

    def record(self, call: CallRecord) -> None:
        self.calls.append(call.as_row())


async def _no_sleep(_seconds: float) -> None:
    return None


def total(samples: dict, name: str, **labels) -> float:
    """The sum of the samples called ``name`` whose labels include ``labels``."""
    return sum(v for (n, items), v in samples.items() if n == name and labels.items() <= dict(items).items())


def test_metrics_agree_with_the_call_log_and_the_answers(bundle, static_encoder_dir, tmp_path):
    directory, meta, prompts = bundle
    broken = meta["models"][0]
    providers = {m: ReliableProvider(HandlerProvider(lambda r, m=m: f"answer from {m}"), f"fake/{m}", retries=0)
                 for m in meta["models"][1:]}
    providers[broken] = ReliableProvider(HandlerProvider(failing(503, retryable=True)), f"fake/{broken}", retries=0,
                                         breaker=CircuitBreaker(failures=2, cooldown=600), sleep=_no_sleep)
    tenants = TenantStore(f"sqlite:///{tmp_path / 'tenants.db'}")
    tenants.create_tenant("acme")
    key = tenants.issue_key("acme")
    log = Log()
    app = create_app(directory, providers, store=log, encoder=StaticEncoder(static_encoder_dir), tenants=tenants,
                     cache=ResponseCache())
    http = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gateway")

    def client(api_key: str) -> openai.AsyncOpenAI:
        return openai.AsyncOpenAI(api_key=api_key, base_url="http://gateway/v1", max_retries=0, http_client=http)

    async def go():
        statuses = Counter()
        sdk = client(key)
        for prompt in prompts[:8] + prompts[:2]:  # the last two again: answered from the cache
            await sdk.chat.completions.create(model="router-ml/auto", messages=[{"role": "user", "content": prompt}])
            statuses[200] += 1
        healthy = meta["models"][1]
        await sdk.chat.completions.create(model=healthy, messages=[{"role": "user", "content": "a concrete model"}])
        statuses[200] += 1
        for i in range(3):  # two failures open the breaker; the third call is refused by it
            with pytest.raises(openai.APIStatusError) as failed:
                await sdk.chat.completions.create(model=broken, messages=[{"role": "user", "content": f"fail {i}"}])
            statuses[failed.value.status_code] += 1
        with pytest.raises(openai.AuthenticationError):
            await client("rk-wrong").chat.completions.create(model=healthy, messages=[{"role": "user", "content": "x"}])
        statuses[401] += 1
        return statuses, (await http.get("/metrics"))

    statuses, response = asyncio.run(go())
    tenants.close()
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/plain")
    samples = scrape(response.text)
    chat = "/v1/chat/completions"
    for status, count in statuses.items():
        assert total(samples, "router_ml_requests_total", endpoint=chat, status=str(status)) == count
    assert total(samples, "router_ml_requests_total", endpoint=chat) == sum(statuses.values())
    assert total(samples, "router_ml_request_duration_seconds_count", endpoint=chat) == sum(statuses.values())

    rows = Counter((c["model"], c["status"], c.get("cache") or "none") for c in log.calls)
    calls = {(dict(items)["model"], dict(items)["status"], dict(items)["cache"]): v
             for (n, items), v in samples.items() if n == "router_ml_calls_total"}
    assert calls == rows
    upstream = [c for c in log.calls if c["status"] == "ok" and c.get("cache") is None]
    hits = [c for c in log.calls if c.get("cache") is not None]
    errors = [c for c in log.calls if c["status"] == "error"]
    assert len(hits) == 2 and len(upstream) == 9 and len(errors) >= 3  # routed calls may have tried it too
    assert total(samples, "router_ml_cost_usd_total") == pytest.approx(sum(c["cost_usd"] for c in upstream))
    assert total(samples, "router_ml_saved_usd_total") == pytest.approx(sum(c["saved_usd"] for c in hits))
    assert total(samples, "router_ml_saved_usd_total") > 0
    for direction in ("input", "output"):
        assert total(samples, "router_ml_tokens_total", direction=direction) == sum(
            c[f"{direction}_tokens"] for c in upstream)
    assert total(samples, "router_ml_call_latency_seconds_count") == len(upstream)
    assert total(samples, "router_ml_call_latency_seconds_sum") == pytest.approx(
        sum(c["latency_ms"] for c in upstream) / 1000)
    routed = Counter(c["model"] for c in upstream if c["routed"])
    assert {dict(items)["model"]: v for (n, items), v in samples.items()
            if n == "router_ml_routing_decisions_total" and v} == routed
    assert total(samples, "router_ml_provider_errors_total", model=broken, http_status="503") == len(errors)
    assert total(samples, "router_ml_circuit_breaker_state", deployment=f"fake/{broken}") == 2
    assert total(samples, "router_ml_circuit_breaker_state", deployment=f"fake/{meta['models'][1]}") == 0
    assert total(samples, "router_ml_bundle_info", version=meta["version"]) == 1
    assert key not in response.text and prompts[0] not in response.text and "acme" not in response.text


def test_metrics_of_two_workers_are_summed_whichever_worker_is_scraped(served, static_encoder_dir, tmp_path):  # noqa: F811
    recorded = copy_served(served, tmp_path)
    process, client = start_server(tmp_path, static_encoder_dir, free_port(), "--workers", "2")
    try:
        prompts = recorded["prompt"].unique().sort().to_list()[:20]
        for prompt in prompts:  # a new connection per call: the kernel spreads them over both workers' sockets
            with openai.OpenAI(base_url=str(client.base_url), api_key=client.api_key, max_retries=0) as fresh:
                fresh.chat.completions.create(model="router-ml/auto", messages=[{"role": "user", "content": prompt}])
        metrics_url = str(client.base_url).removesuffix("/v1/") + "/metrics"
        scrapes = []
        for _ in range(10):  # no key needed; a new connection each, so both workers answer some
            samples = scrape(httpx.get(metrics_url, headers={"connection": "close"}).text)
            scrapes.append((total(samples, "router_ml_calls_total", status="ok"),
                            total(samples, "router_ml_routing_decisions_total"),
                            total(samples, "router_ml_requests_total", endpoint="/v1/chat/completions", status="200")))
        assert set(scrapes) == {(20, 20, 20)}, scrapes
        deadline = time.monotonic() + 10  # every worker's call log commits its rows within its writer's interval
        while total(samples, "router_ml_calllog_rows_total", outcome="written") < 20 and time.monotonic() < deadline:
            time.sleep(0.05)
            samples = scrape(httpx.get(metrics_url, headers={"connection": "close"}).text)
        assert total(samples, "router_ml_calllog_rows_total", outcome="written") == 20
        assert total(samples, "router_ml_calllog_rows_total", outcome="rejected") == 0
        assert total(samples, "router_ml_circuit_breaker_state") == 0
        assert len([k for k in samples if k[0] == "router_ml_circuit_breaker_state"]) > 0
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=60) == 0


def test_rows_the_call_log_rejects_or_loses_are_in_the_metrics(bundle, static_encoder_dir, tmp_path):
    directory, _, _ = bundle
    store = CallStore(f"sqlite:///{tmp_path / 'calls.db'}", interval=10.0, batch_size=100_000, retry_delay=0.0)
    app = create_app(directory, {}, store=store, encoder=StaticEncoder(static_encoder_dir))

    async def scraped() -> dict:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gateway") as http:
            return scrape((await http.get("/metrics")).text)

    try:
        before = asyncio.run(scraped())
        store.record(call_row(0, call_id="a" * 32))
        store.record(call_row(1))
        store.record(call_row(2, call_id="a" * 32))  # the same primary key: the writer gives this one up
        with pytest.raises(ValueError, match="input_tokens"):  # refused by record(): never queued
            store.record({k: v for k, v in call_row(3).items() if k != "input_tokens"})
        store.flush()
        after = asyncio.run(scraped())
    finally:
        store.close()
    rows = {outcome: total(after, "router_ml_calllog_rows_total", outcome=outcome)
            for outcome in ("written", "recovered", "rejected", "lost")}
    assert rows == {"written": 2, "recovered": 0, "rejected": 1, "lost": 1}
    assert rows["lost"] == store.lost_rows and rows["rejected"] == store.rejected_rows
    assert total(after, "router_ml_calllog_dead_letter_rows") == len(store.dead_letter) == 1
    assert total(before, "router_ml_calllog_rows_total") == 0 and ("router_ml_calllog_rows_total",
                                                                   (("outcome", "rejected"),)) in before


def test_a_call_log_that_does_not_answer_leaves_the_quality_gauges_as_they_were(tmp_path):
    import sqlalchemy as sa

    from router_ml.clock import FixedClock
    from router_ml.serve.observability.analytics import Scope, recent_quality

    clock = FixedClock(datetime(2026, 3, 2, tzinfo=timezone.utc))
    store = CallStore(f"sqlite:///{tmp_path / 'calls.db'}", clock=clock)
    reachable = [True]

    def report() -> dict:
        if not reachable[0]:
            raise sa.exc.OperationalError("SELECT", {}, ConnectionRefusedError("connection refused"))
        return recent_quality(store.engine, Scope(None, admin=True), clock)

    metrics = Metrics({})
    metrics.watch_quality(report, clock)
    try:
        first = scrape(metrics.render()[0].decode())
        reachable[0] = False
        clock.advance(seconds=60)
        after = scrape(metrics.render()[0].decode())  # answers, with the last reading
    finally:
        store.close()
    assert first["router_ml_judged_calls", ()] == after["router_ml_judged_calls", ()] == 0
    assert math.isnan(after["router_ml_quality_kept_share", (("bound", "estimate"),)])  # nothing judged yet
