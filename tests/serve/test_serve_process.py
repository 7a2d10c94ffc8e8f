"""`router-ml serve` as a real process on loopback: the openai SDK (sync) talks to it, the replay
provider answers from RouterBench's recorded responses, and the call log survives shutdown."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import openai
import polars as pl
import pytest
import sqlalchemy as sa

from router_ml.data.prepare import prepare
from router_ml.data.report import ImportReport
from router_ml.embed import StaticEncoder
from router_ml.serve.demo_traffic import DemoTraffic
from router_ml.serve.tenancy.tenants import TenantStore
from router_ml.train import TrainConfig, run

from servers import copy_served, free_port, served, start_server  # noqa: F401 (served: a fixture)


@pytest.fixture(scope="module")
def server(served, static_encoder_dir):
    tmp, recorded = served
    process, client = start_server(tmp, static_encoder_dir, free_port())
    yield process, client, recorded, tmp / "calls.db"
    if process.poll() is None:
        process.kill()


def test_sdk_gets_the_recorded_answer_of_the_model_the_router_chose(server):
    _, client, recorded, _ = server
    prompt = recorded["prompt"][0]
    reply = client.chat.completions.create(model="router-ml/auto", messages=[{"role": "user", "content": prompt}])
    expected = recorded.filter((pl.col("prompt") == prompt) & (pl.col("model") == reply.model))["response"][0]
    assert reply.choices[0].message.content == expected
    assert reply.usage.completion_tokens > 0
    streamed = client.chat.completions.create(model=reply.model, stream=True,
                                              messages=[{"role": "user", "content": prompt}])
    assert "".join(c.choices[0].delta.content or "" for c in streamed if c.choices) == expected


HEAVY = ("torch", "lightgbm", "mlflow", "statsforecast", "sentence_transformers", "optuna", "matplotlib")
OFFLINE = ("router_ml.data.importers", "router_ml.data.dedup", "router_ml.train", "router_ml.forecast",
           "router_ml.evaluate", "router_ml.label", "router_ml.tracking", "router_ml.plots")


def test_the_serving_app_loads_nothing_heavy_and_nothing_offline(served, static_encoder_dir, tmp_path):
    """The app the server runs (``build_app``, bundle, encoder, replay provider, call log, tenants) leaves the
    training stack and the dataset importers unimported: they cost start time and memory in every worker."""
    copy_served(served, tmp_path)
    env = {**os.environ, "ROUTER_ML_BUNDLE": str(tmp_path / "bundle"),
           "ROUTER_ML_STATIC_ENCODER": str(static_encoder_dir),
           "ROUTER_ML_OUTCOMES_PATH": str(tmp_path / "outcomes.parquet"),
           "ROUTER_ML_STORE_URL": f"sqlite:///{tmp_path / 'calls.db'}", "ROUTER_ML_STORE_JOURNAL": str(tmp_path / "j")}
    code = ("import sys; from router_ml.serve.main import build_app; app = build_app(); "
            f"print(sorted(m for m in sys.modules if m.split('.')[0] in {HEAVY!r} or m.startswith({OFFLINE!r})))")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "[]"


def test_every_answered_call_is_in_the_log_after_shutdown(server):
    process, client, recorded, db = server
    prompts = recorded["prompt"].unique().to_list()[:20]
    ids = []
    for prompt in prompts:
        raw = client.chat.completions.with_raw_response.create(model="router-ml/auto",
                                                               messages=[{"role": "user", "content": prompt}])
        ids.append(raw.headers["x-router-ml-call-id"])
    process.send_signal(signal.SIGTERM)
    process.wait(timeout=30)
    with sa.create_engine(f"sqlite:///{db}").connect() as connection:
        logged = {row[0]: row[1:] for row in connection.execute(
            sa.text("select call_id, status, model, cost_usd, input_tokens, cache, saved_usd from calls"))}
    missing = [i for i in ids if i not in logged]
    assert not missing, f"{len(missing)} answered calls missing from the log"
    assert all(logged[i][0] == "ok" and logged[i][3] > 0 for i in ids)
    # A prompt answered by an earlier test comes from the response cache: free, with what it saved.
    assert all((logged[i][2] > 0) if logged[i][4] is None else (logged[i][2] == 0 and logged[i][5] > 0) for i in ids)


def test_feedback_labels_a_logged_call_and_errors_name_the_field(mini_files, static_encoder_dir, tmp_path):
    import asyncio

    import httpx

    from router_ml.serve.providers.handler import HandlerProvider
    from router_ml.serve.app import create_app
    from router_ml.calllog.store import CallStore

    outcomes = prepare(mini_files, ImportReport(), encoder=None)
    config = TrainConfig(name="fb", router="linear", sources=["routerbench"], min_prompts=50, n_trials=0)
    meta = run(config, outcomes, StaticEncoder(static_encoder_dir), tmp_path / "bundle").meta
    store = CallStore(f"sqlite:///{tmp_path / 'calls.db'}")
    app = create_app(tmp_path / "bundle", {m: HandlerProvider(lambda r: "four") for m in meta["models"]}, store=store,
                     encoder=StaticEncoder(static_encoder_dir))

    async def go():
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://gateway") as client:
            answer = await client.post("/v1/chat/completions", json={
                "model": "router-ml/auto", "messages": [{"role": "user", "content": "2 + 2?"}]})
            call_id = answer.headers["x-router-ml-call-id"]
            return [await client.post("/v1/feedback", json={"call_id": call_id, "thumbs": "up"}),
                    await client.post("/v1/feedback", json={"call_id": "nope", "quality": 0.5}),
                    await client.post("/v1/feedback", json={"call_id": call_id, "quality": 1.5}),
                    await client.post("/v1/feedback", json={"call_id": call_id})]

    ok, unknown, out_of_range, neither = asyncio.run(go())
    assert ok.status_code == 200 and ok.json()["quality"] == 1.0
    assert unknown.status_code == 404 and "call_id" in unknown.json()["error"]["message"]
    assert out_of_range.status_code == 400 and "quality" in out_of_range.json()["error"]["message"]
    assert neither.status_code == 400 and "thumbs" in neither.json()["error"]["message"]
    labeled = store.outcomes()
    store.close()
    assert labeled.height == 1 and labeled["quality"][0] == 1.0 and labeled["source"][0] == "gateway"


def test_sigkill_mid_load_loses_no_answered_call(served, static_encoder_dir, tmp_path):
    """Eight clients send calls as fast as they can; the server is killed (SIGKILL) mid-load. Every call that
    got an answer must be in the log once a new store has replayed the dead process's journal."""
    import threading

    from router_ml.calllog.store import CallStore

    recorded = copy_served(served, tmp_path)
    process, client = start_server(tmp_path, static_encoder_dir, free_port())
    prompts = recorded["prompt"].unique().to_list()
    answered: list[str] = []
    stop = threading.Event()

    def load(k: int) -> None:
        own = openai.OpenAI(base_url=str(client.base_url), api_key=client.api_key, max_retries=0, timeout=10)
        i = k
        while not stop.is_set():
            try:
                raw = own.chat.completions.with_raw_response.create(
                    model="router-ml/auto", messages=[{"role": "user", "content": prompts[i % len(prompts)]}])
            except openai.APIConnectionError:
                return  # the server is gone
            answered.append(raw.headers["x-router-ml-call-id"])
            i += 8

    threads = [threading.Thread(target=load, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    while len(answered) < 150:
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=30)
    stop.set()
    for t in threads:
        t.join(timeout=30)
    url = f"sqlite:///{tmp_path / 'calls.db'}"
    with sa.create_engine(url).connect() as connection:
        committed = {row[0] for row in connection.execute(sa.text("select call_id from calls"))}
    store = CallStore(url, journal_dir=tmp_path / "journal")
    store.close()
    with sa.create_engine(url).connect() as connection:
        logged = {row[0] for row in connection.execute(sa.text("select call_id from calls where status = 'ok'"))}
    missing = [i for i in answered if i not in logged]
    print(f"SIGKILL mid-load: {len(answered)} answered calls, {len(answered) - len(committed & set(answered))} "
          f"not yet committed at the kill, {store.recovered_rows} recovered from the journal, {len(missing)} missing")
    assert not missing, f"{len(missing)} of {len(answered)} answered calls missing from the log after SIGKILL"


def test_two_workers_answer_and_flush_their_logs_on_sigterm(served, static_encoder_dir, tmp_path):
    recorded = copy_served(served, tmp_path)
    process, client = start_server(tmp_path, static_encoder_dir, free_port(), "--workers", "2")
    prompts = recorded["prompt"].unique().to_list()[:30]
    ids = []
    for prompt in prompts:  # a new connection per call: the kernel spreads them over both workers' sockets
        fresh = openai.OpenAI(base_url=str(client.base_url), api_key=client.api_key, max_retries=0)
        raw = fresh.chat.completions.with_raw_response.create(model="router-ml/auto",
                                                              messages=[{"role": "user", "content": prompt}])
        ids.append(raw.headers["x-router-ml-call-id"])
        fresh.close()
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=60) == 0
    with sa.create_engine(f"sqlite:///{tmp_path / 'calls.db'}").connect() as connection:
        logged = {row[0] for row in connection.execute(sa.text("select call_id from calls where status = 'ok'"))}
    assert not [i for i in ids if i not in logged]
    assert list((tmp_path / "journal").iterdir()) == []  # both workers closed their journals cleanly


def _replicas(tmp_path, static_encoder_dir, key: str, store_url: str, redis_url: str, cache: str) -> list:
    """Two `router-ml serve` processes sharing one PostgreSQL call log and one Redis, each with its journal."""
    shared = {"ROUTER_ML_STORE_URL": store_url, "ROUTER_ML_REDIS_URL": redis_url, "ROUTER_ML_CACHE": cache}
    return [start_server(tmp_path, static_encoder_dir, free_port(), key=key,
                   env_extra={**shared, "ROUTER_ML_STORE_JOURNAL": str(tmp_path / f"journal-{i}")}) for i in range(2)]


def _stop_replicas(servers: list, redis_url: str, tenants: list[str]) -> None:
    """SIGTERM both and wait; then delete the Redis keys (budgets, buckets, cache) of ``tenants``."""
    import redis

    for process, _ in servers:
        process.send_signal(signal.SIGTERM)
    for process, _ in servers:
        process.wait(timeout=60)
    client = redis.Redis.from_url(redis_url)
    for tenant in tenants:
        stale = client.keys(f"router-ml:*{tenant}*")
        if stale:
            client.delete(*stale)
    client.close()


def test_two_servers_never_overspend_a_tenants_budget(served, static_encoder_dir, tmp_path, postgres_url, redis_url):
    """200 concurrent calls, spread over two server processes sharing PostgreSQL and Redis, against a day budget
    with room for about ten: the tenant's logged spend never passes the budget by more than one reservation."""
    import uuid
    from concurrent.futures import ThreadPoolExecutor
    from datetime import UTC, datetime, timedelta

    from router_ml.clock import period_starts
    from router_ml.serve.tenancy.admission import max_cost_usd
    from router_ml.calllog.store import CallStore
    from router_ml.tokens import count_tokens

    recorded = copy_served(served, tmp_path)
    prompts = recorded["prompt"].unique().to_list()[:50]
    models = recorded["model"].unique().to_list()
    reservations = [max(max_cost_usd(m, count_tokens(p), 64) for m in models) for p in prompts]
    budget = 10 * sorted(reservations)[len(reservations) // 2]
    tenant = f"budget-{uuid.uuid4().hex[:8]}"
    tenants = TenantStore(postgres_url)
    tenants.create_tenant(tenant, budget_usd_day=budget)
    key = tenants.issue_key(tenant)
    tenants.close()
    servers = _replicas(tmp_path, static_encoder_dir, key, postgres_url, redis_url[0], cache="off")

    def call(i: int) -> int:
        client = servers[i % 2][1]
        try:
            client.chat.completions.create(model="router-ml/auto", max_tokens=64,
                                           messages=[{"role": "user", "content": prompts[i % len(prompts)]}])
            return 200
        except openai.RateLimitError as exc:
            assert "day budget" in exc.message
            return 429

    first_day = period_starts(datetime.now(UTC))["day"]
    try:
        with ThreadPoolExecutor(max_workers=40) as pool:
            statuses = list(pool.map(call, range(200)))
    finally:
        _stop_replicas(servers, redis_url[0], [tenant])
    # The servers run on the real clock: should the run cross 00:00 UTC, each UTC day is a budget period of its own.
    last_day = period_starts(datetime.now(UTC))["day"]
    days = [first_day + timedelta(days=n) for n in range((last_day - first_day).days + 1)]
    store = CallStore(postgres_url)
    since = [store.spend(tenant, day) for day in days] + [0.0]
    store.close()
    spent = [since[n] - since[n + 1] for n in range(len(days))]  # the spend logged in each day
    answered, refused = statuses.count(200), statuses.count(429)
    print(f"budget ${budget:.6f} a day: {answered} answered, {refused} refused, ${sum(spent):.6f} spent "
          f"over {len(days)} UTC day(s)")
    assert answered + refused == 200 and answered >= 5 and refused >= 100 // len(days)
    assert all(usd <= budget + max(reservations) for usd in spent), spent


def test_replicas_share_the_response_cache_on_redis_but_never_across_tenants(served, static_encoder_dir, tmp_path,
                                                                            postgres_url, redis_url):
    import uuid


    recorded = copy_served(served, tmp_path)
    tenants = TenantStore(postgres_url)
    names = [f"cache-{uuid.uuid4().hex[:8]}" for _ in range(2)]
    for name in names:
        tenants.create_tenant(name)
    keys = [tenants.issue_key(name) for name in names]
    tenants.close()
    servers = _replicas(tmp_path, static_encoder_dir, keys[0], postgres_url, redis_url[0], cache="exact")
    request = {"model": "router-ml/auto", "messages": [{"role": "user", "content": recorded["prompt"][0]}]}
    try:
        first = servers[0][1].chat.completions.with_raw_response.create(**request)
        again = servers[1][1].chat.completions.with_raw_response.create(**request)  # the other replica
        other = openai.OpenAI(base_url=str(servers[1][1].base_url), api_key=keys[1], max_retries=0)
        stranger = other.chat.completions.with_raw_response.create(**request)  # same request, other tenant
    finally:
        _stop_replicas(servers, redis_url[0], names)
    assert "x-router-ml-cache" not in first.headers
    assert again.headers["x-router-ml-cache"] == "exact"
    assert again.parse().choices[0].message.content == first.parse().choices[0].message.content
    assert "x-router-ml-cache" not in stranger.headers  # never another tenant's cached answer


def test_demo_traffic_sends_real_prompts_as_the_demo_tenant_and_revokes_its_key(served, static_encoder_dir,
                                                                                 tmp_path):
    """`router-ml serve --demo-traffic` (what `make run` shows on the dashboard): real prompts of the outcomes
    table through the gateway under tenant 'demo', repeats answered by the cache, its key revoked at exit."""
    recorded = copy_served(served, tmp_path)
    url = f"sqlite:///{tmp_path / 'calls.db'}"
    tenants = TenantStore(url)
    tenants.create_tenant("demo")
    tenants.close()
    process, _ = start_server(tmp_path, static_encoder_dir, free_port(), "--demo-traffic", "20")
    engine = sa.create_engine(url)
    deadline = time.time() + 60
    query = sa.text("SELECT prompt, cache, status FROM calls WHERE tenant = 'demo'")
    while time.time() < deadline:
        with engine.connect() as conn:
            rows = conn.execute(query).all()
        if len(rows) >= 25:
            break
        time.sleep(0.5)
    process.send_signal(signal.SIGTERM)
    output, _ = process.communicate(timeout=60)
    assert len(rows) >= 25, output
    assert all(status == "ok" for _, _, status in rows)
    assert {prompt for prompt, _, _ in rows} <= set(recorded["prompt"].to_list())  # real prompts only
    assert sum(cache == "exact" for _, cache, _ in rows) >= 2  # every tenth a repeat, answered by the cache
    assert "/dashboard#range=1h&key=rm-" in output and ", 0 failed; its key is revoked" in output
    with engine.connect() as conn:
        keys = conn.execute(sa.text("SELECT k.revoked_at FROM api_keys k JOIN tenants t ON t.id = k.tenant_id "
                                    "WHERE t.name = 'demo'")).all()
    engine.dispose()
    assert len(keys) == 1 and keys[0][0] is not None


def test_demo_traffic_goes_on_after_its_last_prompt():
    """The demo sends its prompts over and over (`make run` runs for hours): a repeat past the end of the list
    is still one of its prompts."""
    prompts = ["first real prompt", "second real prompt", "third real prompt"]
    traffic = DemoTraffic("http://127.0.0.1:1", "rm-unused", prompts, rate=1.0)
    position, sent = 0, []
    for _ in range(100):
        prompt, position = traffic.next_prompt(position)
        sent.append(prompt)
        traffic.sent += 1
    assert set(sent) == set(prompts) and position == 90  # every tenth a repeat, the rest in order
