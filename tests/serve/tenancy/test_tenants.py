"""Tenants and API keys: the TenantStore (SQLite and PostgreSQL), auth on the gateway, per-tenant models, policy,
call log and feedback, the admin API and the `router-ml tenants` CLI."""

from __future__ import annotations

import asyncio
import time

import httpx
import openai
import pytest
import sqlalchemy as sa
from typer.testing import CliRunner

from router_ml.cli import _first_start_key, app as cli
from router_ml.data.prepare import prepare
from router_ml.data.report import ImportReport
from router_ml.embed import StaticEncoder
from router_ml.serve.app import create_app
from router_ml.calllog.store import CallStore
from router_ml.serve.providers.handler import HandlerProvider
from router_ml.serve.tenancy.tenants import TenantStore
from router_ml.train import TrainConfig, run

ADMIN = "admin-secret"


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request, tmp_path):
    return request.getfixturevalue("postgres_url") if request.param == "postgresql" else f"sqlite:///{tmp_path}/t.db"


def _all_text(url: str) -> str:
    """Every value of every table in the database, as one string."""
    engine = sa.create_engine(url)
    with engine.connect() as conn:
        names = sa.inspect(conn).get_table_names()
        text = " ".join(str(row) for name in names for row in conn.execute(sa.text(f"SELECT * FROM {name}")))
    engine.dispose()
    return text


def test_store_validates_names_and_settings_naming_the_field(store_url):
    store = TenantStore(store_url)
    tenant = store.create_tenant("acme", allowed_models=["m1", "m2"], budget_usd_day=5, rpm=60,
                                 policy={"quality": 0.9})
    assert tenant.allowed_models == ("m1", "m2") and tenant.policy.quality == 0.9 and tenant.rpm == 60
    bad = {"budget_usd_day": -1, "budget_usd_month": "lots", "allowed_models": [1], "tpm": -5,
           "policy": {"quality": 2}, "colour": "red"}
    for field, value in bad.items():
        with pytest.raises(ValueError, match=field):
            store.update_tenant("acme", **{field: value})
    with pytest.raises(ValueError, match="taken"):
        store.create_tenant("acme")
    with pytest.raises(ValueError, match="tenant name"):
        store.create_tenant("no spaces/please")
    with pytest.raises(KeyError):
        store.update_tenant("nobody", rpm=1)
    updated = store.update_tenant("acme", allowed_models=None, tpm=1000)
    assert updated.allowed_models is None and updated.tpm == 1000 and updated.budget_usd_day == 5  # others stay
    assert [t.name for t in store.list_tenants()] == ["acme"]
    store.close()


def test_the_tenant_store_opens_sqlite_as_the_call_log_does(tmp_path):
    url = f"sqlite:///{tmp_path / 'calls.db'}"
    tenants = TenantStore(url)  # first on a new file: it alone must put the file in WAL mode
    calls = CallStore(url)
    try:
        pragmas = []
        for engine in (tenants.engine, calls.engine):
            with engine.connect() as conn:
                pragmas.append((conn.exec_driver_sql("PRAGMA journal_mode").scalar_one(),
                                conn.exec_driver_sql("PRAGMA synchronous").scalar_one()))
        assert pragmas == [("wal", 1), ("wal", 1)]  # 1: NORMAL (a connection's default is 2, FULL)
    finally:
        calls.close()
        tenants.close()


def test_keys_are_stored_only_as_hashes_and_revocation_reaches_other_processes(store_url):
    issuer = TenantStore(store_url)
    issuer.create_tenant("acme")
    key = issuer.issue_key("acme")
    assert key.startswith("rm-") and len(key) > 40
    gateway = TenantStore(store_url, ttl=0.3)  # another process's view, with its own cache
    assert gateway.authenticate(key).name == "acme"
    assert gateway.authenticate(key[:-1] + ("A" if key[-1] != "A" else "B")) is None
    assert gateway.authenticate("sk-not-ours") is None
    assert key not in _all_text(store_url) and key[:8] in _all_text(store_url)
    assert issuer.revoke_key("acme", key[:8]) == 1
    assert gateway.authenticate(key) is not None  # cached for up to ttl
    time.sleep(0.35)
    assert gateway.authenticate(key) is None
    with pytest.raises(KeyError):
        issuer.revoke_key("acme", key[:8])  # no active key left with that prefix
    issuer.close()
    gateway.close()


# ------------------------------------------------------------------------------------------- the gateway
@pytest.fixture(scope="module")
def bundle(mini_files, static_encoder_dir, tmp_path_factory):
    outcomes = prepare(mini_files, ImportReport(), encoder=None)
    out = tmp_path_factory.mktemp("tenant-bundle")
    config = TrainConfig(name="tenants", router="linear", sources=["routerbench"], min_prompts=50, n_trials=0)
    return out, run(config, outcomes, StaticEncoder(static_encoder_dir), out).meta["models"]


@pytest.fixture
def gateway(bundle, static_encoder_dir, tmp_path):
    """An app with two tenants: 'small' (two models, default policy: only the second) and 'big' (all models)."""
    directory, models = bundle
    url = f"sqlite:///{tmp_path}/calls.db"
    calls, tenants = CallStore(url), TenantStore(url)
    tenants.create_tenant("small", allowed_models=models[:2], policy={"models": [models[1]]})
    tenants.create_tenant("big")
    keys = {name: tenants.issue_key(name) for name in ("small", "big")}
    app = create_app(directory, {m: HandlerProvider(lambda r, m=m: f"from {m}") for m in models}, store=calls,
                     encoder=StaticEncoder(static_encoder_dir), tenants=tenants, admin_key=ADMIN)
    yield app, keys, models
    calls.close()
    tenants.close()


def _requests(app, *calls):
    """Send ``(method, path, key, json)`` requests to the app; their responses."""

    async def go():
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gateway") as client:
            out = []
            for method, path, key, body in calls:
                headers = {"authorization": f"Bearer {key}"} if key else {}
                out.append(await client.request(method, path, headers=headers, json=body))
            return out

    return asyncio.run(go())


def _chat(model: str, **extra) -> dict:
    return {"model": model, "messages": [{"role": "user", "content": "What is 17 * 23?"}], **extra}


def test_v1_needs_an_active_key_and_health_stays_open(gateway):
    app, keys, _ = gateway
    chat = _chat("router-ml/auto")
    missing, wrong, health, ready, ok = _requests(
        app, ("POST", "/v1/chat/completions", None, chat), ("POST", "/v1/chat/completions", "rm-wrong", chat),
        ("GET", "/healthz", None, None), ("GET", "/readyz", None, None), ("POST", "/v1/chat/completions", keys["big"],
                                                                          chat))
    for refused in (missing, wrong):
        assert refused.status_code == 401 and refused.json()["error"]["type"] == "authentication_error"
    assert "Authorization: Bearer" in missing.json()["error"]["message"]
    assert health.status_code == ready.status_code == ok.status_code == 200
    for path in ("/v1/models", "/v1/route", "/v1/feedback"):
        [response] = _requests(app, ("GET" if path == "/v1/models" else "POST", path, None, {}))
        assert response.status_code == 401, path
    app.state.tenants.revoke_key("big", keys["big"][:8])
    [revoked] = _requests(app, ("POST", "/v1/chat/completions", keys["big"], chat))
    assert revoked.status_code == 401


def test_the_openai_sdk_sends_its_api_key_as_the_bearer_key(gateway):
    app, keys, _ = gateway

    def client(key):
        transport = httpx.ASGITransport(app=app)
        return openai.AsyncOpenAI(api_key=key, base_url="http://gateway/v1", max_retries=0,
                                  http_client=httpx.AsyncClient(transport=transport, base_url="http://gateway"))

    async def go():
        reply = await client(keys["big"]).chat.completions.create(**_chat("router-ml/auto"))
        with pytest.raises(openai.AuthenticationError):
            await client("rm-nope").chat.completions.create(**_chat("router-ml/auto"))
        return reply

    assert asyncio.run(go()).choices[0].message.content.startswith("from ")


def test_allowed_models_restrict_routing_pass_through_and_the_model_list(gateway):
    app, keys, models = gateway
    small = keys["small"]
    outside, inside, listed, asked_outside, route = _requests(
        app, ("POST", "/v1/chat/completions", small, _chat(models[2])),
        ("POST", "/v1/chat/completions", small, _chat(models[0])),
        ("GET", "/v1/models", small, None),
        ("POST", "/v1/chat/completions", small, _chat("router-ml/auto", router_ml={"models": [models[3]]})),
        ("POST", "/v1/route", small, {"prompt": "hi", "policy": {"quality": 0.5}}))
    assert outside.status_code == 403 and models[2] in outside.json()["error"]["message"]
    assert inside.status_code == 200 and inside.json()["model"] == models[0]
    assert [m["id"] for m in listed.json()["data"]] == ["router-ml/auto"] + sorted(models[:2])
    assert asked_outside.status_code == 403 and models[3] in asked_outside.json()["error"]["message"]
    assert {p["model"] for p in route.json()["predicted"] if p["allowed"]} == {models[1]}  # the default policy
    [everything] = _requests(app, ("GET", "/v1/models", keys["big"], None))
    assert len(everything.json()["data"]) == len(models) + 1


def test_tenant_default_policy_applies_to_auto_and_request_fields_override_it(gateway):
    app, keys, models = gateway
    default, overridden = _requests(
        app, ("POST", "/v1/chat/completions", keys["small"], _chat("router-ml/auto")),
        ("POST", "/v1/chat/completions", keys["small"], _chat("router-ml/auto", router_ml={"models": [models[0]]})))
    assert default.json()["model"] == models[1]
    assert overridden.json()["model"] == models[0]


def test_call_log_rows_carry_the_tenant_and_feedback_stays_within_the_tenant(gateway):
    app, keys, _ = gateway
    small, big = _requests(app, ("POST", "/v1/chat/completions", keys["small"], _chat("router-ml/auto")),
                           ("POST", "/v1/chat/completions", keys["big"], _chat("router-ml/auto")))
    small_id, big_id = (r.json()["router_ml"]["call_id"] for r in (small, big))
    app.state.store.flush()
    assert app.state.store.get(small_id)["tenant"] == "small" and app.state.store.get(big_id)["tenant"] == "big"
    foreign, own = _requests(app, ("POST", "/v1/feedback", keys["small"], {"call_id": big_id, "quality": 0.0}),
                             ("POST", "/v1/feedback", keys["big"], {"call_id": big_id, "quality": 0.8}))
    assert foreign.status_code == 404 and own.status_code == 200
    assert app.state.store.get(big_id)["quality"] == 0.8  # the other tenant's attempt changed nothing


def test_admin_api_needs_the_admin_key_and_manages_tenants_and_keys(gateway):
    app, keys, models = gateway
    for key in (None, keys["big"], "admin-wrong"):
        [refused] = _requests(app, ("GET", "/admin/tenants", key, None))
        assert refused.status_code == 403
    created, bad, listed, patched, bad_patch, issued = _requests(
        app, ("POST", "/admin/tenants", ADMIN, {"name": "new", "rpm": 10, "allowed_models": [models[0]]}),
        ("POST", "/admin/tenants", ADMIN, {"name": "worse", "budget_usd_day": -3}),
        ("GET", "/admin/tenants", ADMIN, None),
        ("PATCH", "/admin/tenants/new", ADMIN, {"budget_usd_month": 100, "policy": {"quality": 0.8}}),
        ("PATCH", "/admin/tenants/new", ADMIN, {"tpm": -1}),
        ("POST", "/admin/tenants/new/keys", ADMIN, None))
    assert created.status_code == 201 and created.json()["rpm"] == 10
    assert bad.status_code == 400 and "budget_usd_day" in bad.json()["error"]["message"]
    assert [t["name"] for t in listed.json()["data"]] == ["big", "new", "small"]
    assert patched.json()["budget_usd_month"] == 100 and patched.json()["policy"] == {"quality": 0.8}
    assert patched.json()["rpm"] == 10
    assert bad_patch.status_code == 400 and "tpm" in bad_patch.json()["error"]["message"]
    key = issued.json()["key"]
    models_seen, routed, shown, revoked, gone, unknown, reload = _requests(
        app, ("GET", "/v1/models", key, None), ("POST", "/v1/chat/completions", key, _chat("router-ml/auto")),
        ("GET", "/admin/tenants/new", ADMIN, None),
        ("DELETE", f"/admin/tenants/new/keys/{key[:8]}", ADMIN, None), ("GET", "/v1/models", key, None),
        ("GET", "/admin/tenants/nobody", ADMIN, None), ("POST", "/admin/reload", ADMIN, None))
    assert [m["id"] for m in models_seen.json()["data"]] == ["router-ml/auto", models[0]]
    assert routed.json()["model"] == models[0]  # routing confined to the allowed models
    assert shown.json()["keys"][0]["prefix"] == key[:8] and "key" not in shown.json()["keys"][0]
    assert revoked.json()["revoked"] == 1 and gone.status_code == 401
    assert unknown.status_code == 404 and reload.status_code == 200


def test_admin_endpoints_answer_403_saying_how_when_no_admin_key_is_set(bundle, static_encoder_dir, tmp_path):
    directory, models = bundle
    tenants = TenantStore(f"sqlite:///{tmp_path}/t.db")
    app = create_app(directory, {}, encoder=StaticEncoder(static_encoder_dir), tenants=tenants)
    reload, listing = _requests(app, ("POST", "/admin/reload", "anything", None), ("GET", "/admin/tenants", None, None))
    assert reload.status_code == listing.status_code == 403
    assert "ROUTER_ML_ADMIN_KEY" in reload.json()["error"]["message"]
    tenants.close()


# ------------------------------------------------------------------------------------------- the CLI
def test_cli_creates_sets_issues_and_revokes(tmp_path):
    url = f"sqlite:///{tmp_path}/cli.db"
    runner = CliRunner()

    def invoke(*args):
        return runner.invoke(cli, ["tenants", *args, "--store-url", url], env={"COLUMNS": "200"})

    created = invoke("create", "acme", "--budget-day", "2.5", "--rpm", "30", "--models", "m1,m2", "--quality", "0.9")
    assert created.exit_code == 0, created.output
    assert invoke("set", "acme", "--tpm", "5000", "--lam", "10").exit_code == 0
    tenant = TenantStore(url).get_tenant("acme")
    assert (tenant.budget_usd_day, tenant.rpm, tenant.tpm, tenant.allowed_models) == (2.5, 30, 5000, ("m1", "m2"))
    assert tenant.policy.quality == 0.9 and tenant.policy.lam == 10
    bad = invoke("set", "acme", "--budget-month", "-1")
    assert bad.exit_code == 1 and "budget_usd_month" in bad.output
    assert invoke("issue-key", "nobody").exit_code == 1
    issued = invoke("issue-key", "acme")
    key = next(w for w in issued.output.split() if w.startswith("rm-"))
    assert TenantStore(url).authenticate(key).name == "acme"
    assert key[:8] in invoke("list").output
    revoked = invoke("revoke-key", "acme", key[:8])
    assert revoked.exit_code == 0, revoked.output
    assert TenantStore(url).authenticate(key) is None
    assert invoke("revoke-key", "acme", key[:8]).exit_code == 1


def test_first_start_creates_the_demo_tenant_and_its_key_once(tmp_path, capsys):
    url = f"sqlite:///{tmp_path}/calls.db"
    key = _first_start_key(url)
    assert key in capsys.readouterr().out
    assert TenantStore(url).authenticate(key).name == "demo"
    assert _first_start_key(url) is None  # no second key
    assert "router-ml tenants issue-key demo" in capsys.readouterr().out
    assert len(TenantStore(url).list_keys("demo")) == 1


def test_rate_limits_per_key_and_budgets_per_tenant_answer_429(bundle, static_encoder_dir, tmp_path):
    from router_ml.serve.tenancy.limits import MemoryLimits

    directory, models = bundle
    url = f"sqlite:///{tmp_path}/calls.db"
    calls, tenants = CallStore(url), TenantStore(url)
    tenants.create_tenant("limited", rpm=100)
    tenants.create_tenant("broke", budget_usd_day=0.0)
    slow_key, fast_key = tenants.issue_key("limited", rpm=1), tenants.issue_key("limited")
    broke_key = tenants.issue_key("broke")
    assert [k["rpm"] for k in tenants.list_keys("limited")] == [1, None]
    app = create_app(directory, {m: HandlerProvider(lambda r: "ok") for m in models}, store=calls,
                     encoder=StaticEncoder(static_encoder_dir), tenants=tenants, limits=MemoryLimits())
    first, second, other, broke = _requests(app, ("POST", "/v1/chat/completions", slow_key, _chat(models[0])),
                                            ("POST", "/v1/chat/completions", slow_key, _chat(models[0])),
                                            ("POST", "/v1/chat/completions", fast_key, _chat(models[0])),
                                            ("POST", "/v1/chat/completions", broke_key, _chat(models[0])))
    calls.close()
    tenants.close()
    assert first.status_code == 200 and other.status_code == 200
    assert second.status_code == 429 and int(second.headers["retry-after"]) >= 1
    assert "1 requests per minute" in second.json()["error"]["message"]
    assert broke.status_code == 429 and "day budget" in broke.json()["error"]["message"]
    assert broke.json()["error"]["param"] == "budget"


def test_a_call_degraded_by_budget_says_so_in_the_answer_the_call_log_and_the_metrics(bundle, static_encoder_dir,
                                                                                       tmp_path):
    from router_ml.serve.tenancy.admission import max_cost_usd
    from router_ml.serve.tenancy.limits import MemoryLimits

    directory, models = bundle
    url = f"sqlite:///{tmp_path}/calls.db"
    calls, tenants = CallStore(url), TenantStore(url)
    cheapest = min(models, key=lambda m: max_cost_usd(m, 20, 50))
    tenants.create_tenant("probe")
    probe = tenants.issue_key("probe")
    app = create_app(directory, {m: HandlerProvider(lambda r, m=m: f"from {m}") for m in models}, store=calls,
                     encoder=StaticEncoder(static_encoder_dir), tenants=tenants, limits=MemoryLimits())
    others = [m for m in models if m != cheapest]
    [route] = _requests(app, ("POST", "/v1/route", probe,
                              {"prompt": "What is 17 * 23?", "policy": {"lam": 0, "models": others}}))
    chosen = route.json()["model"]  # the best predicted quality among the dearer models
    dear, cheap = max_cost_usd(chosen, 20, 50), max_cost_usd(cheapest, 20, 50)
    assert cheap < dear / 4
    tenants.create_tenant("thrifty", budget_usd_day=(dear * cheap) ** 0.5, degrade_before_deny=True)
    thrifty = tenants.issue_key("thrifty")
    routed = _chat("router-ml/auto", max_tokens=50, router_ml={"lam": 0, "models": [chosen, cheapest]})
    degraded, plain, metrics = _requests(app, ("POST", "/v1/chat/completions", thrifty, routed),
                                         ("POST", "/v1/chat/completions", probe, routed),
                                         ("GET", "/metrics", None, None))
    assert degraded.status_code == 200 and degraded.json()["model"] == cheapest
    assert degraded.json()["router_ml"]["decision"]["model"] == chosen
    assert degraded.json()["router_ml"]["degraded_from"] == chosen
    assert degraded.headers["x-router-ml-degraded-from"] == chosen
    assert plain.json()["model"] == chosen and plain.json()["router_ml"]["degraded_from"] is None
    assert "x-router-ml-degraded-from" not in plain.headers
    calls.flush()
    assert calls.get(degraded.json()["router_ml"]["call_id"])["degraded_from"] == chosen
    assert calls.get(plain.json()["router_ml"]["call_id"])["degraded_from"] is None
    line = f'router_ml_budget_degraded_calls_total{{from_model="{chosen}",model="{cheapest}"}} 1.0'
    assert line in metrics.text
    calls.close()
    tenants.close()


def test_an_empty_models_list_is_refused_not_read_as_no_restriction(gateway):
    """Issue 15: a tenant limited to some models sent ``router_ml: {"models": []}`` (or ``router-ml/auto:models=``)
    and was served by the cheapest model of the bundle, outside its allowed models."""
    app, keys, models = gateway
    empty_field = _chat("router-ml/auto", router_ml={"models": []})
    field, name = _requests(app, ("POST", "/v1/chat/completions", keys["small"], empty_field),
                            ("POST", "/v1/chat/completions", keys["small"], _chat("router-ml/auto:models=")))
    for answer in (field, name):
        assert answer.status_code == 400, answer.text
        assert "models is empty" in answer.json()["error"]["message"]
