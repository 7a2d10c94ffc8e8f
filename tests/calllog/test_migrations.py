"""Numbered migrations of the call log's database (router_ml.calllog), on SQLite and PostgreSQL: every schema an
earlier release left is recognised, stamped and upgraded with its rows intact (an old key still authenticates and
is served, old calls read back); two upgrades at once apply each migration once; a newer schema is refused."""

from __future__ import annotations

import asyncio
import json
import secrets
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import httpx
import polars as pl
import pytest
import sqlalchemy as sa
from typer.testing import CliRunner

from router_ml.calllog import MIGRATIONS, SchemaTooNew, head, migrations, status, upgrade
from router_ml.cli import app as cli_app
from router_ml.data.ids import group_id
from router_ml.data.ids import prompt_id as stable_prompt_id
from router_ml.data.prepare import prepare
from router_ml.data.report import ImportReport
from router_ml.calllog import store as store_module
from router_ml.serve.providers.handler import HandlerProvider
from router_ml.serve.tenancy import tenants as tenants_module
from router_ml.calllog.store import CallStore
from router_ml.serve.tenancy.tenants import KEY_PREFIX, TenantStore, hash_key

START = datetime(2026, 11, 20, tzinfo=UTC)


# ----------------------------------------------------------------- the released schemas, as each commit defined them
def _calls_57730f6(metadata: sa.MetaData, *extra) -> sa.Table:
    """``calls`` of commit 57730f6 (unchanged through 639e4bf and 4743d70), created by ``metadata.create_all``."""
    return sa.Table(
        "calls",
        metadata,
        sa.Column("call_id", sa.String(32), primary_key=True),
        sa.Column("prompt_id", sa.String(64), nullable=False),
        sa.Column("prompt", sa.Text, nullable=False),
        sa.Column("messages", sa.Text),
        sa.Column("model", sa.String(200), nullable=False),
        sa.Column("quality", sa.Float),
        sa.Column("input_tokens", sa.BigInteger),
        sa.Column("output_tokens", sa.BigInteger),
        sa.Column("cost_usd", sa.Float),
        sa.Column("cost_source", sa.String(32)),
        sa.Column("latency_ms", sa.Float),
        sa.Column("ts", sa.DateTime(timezone=True), nullable=False),
        sa.Column("source", sa.String(32), nullable=False),
        sa.Column("task", sa.String(200), nullable=False),
        sa.Column("split", sa.String(32)),
        sa.Column("group_id", sa.String(64), nullable=False),
        sa.Column("tenant", sa.String(200)),
        sa.Column("response", sa.Text),
        sa.Column("flags", sa.Text, nullable=False),
        sa.Column("status", sa.String(8), nullable=False),
        sa.Column("error", sa.Text),
        sa.Column("http_status", sa.Integer, nullable=False),
        sa.Column("bundle_version", sa.String(200)),
        sa.Column("routed", sa.Boolean, nullable=False, default=False),
        sa.Column("policy", sa.Text),
        sa.Column("feedback_at", sa.DateTime(timezone=True)),
        *extra,
        sa.CheckConstraint("status IN ('ok', 'error')", name="calls_status"),
        sa.Index("calls_status_feedback", "status", "feedback_at"),
    )


def _calls_0342915(metadata: sa.MetaData, *extra) -> sa.Table:
    """``calls`` of commit 0342915 (and 69c40ef): the response cache's two columns."""
    return _calls_57730f6(metadata, sa.Column("cache", sa.String(16)), sa.Column("saved_usd", sa.Float), *extra)


def _calls_b5eb8f3(metadata: sa.MetaData) -> sa.Table:
    """``calls`` of commit b5eb8f3 (and 5ebad3a, the last release before numbered migrations): two indexes."""
    return _calls_0342915(metadata, sa.Index("calls_tenant_ts", "tenant", "ts"), sa.Index("calls_ts", "ts"))


def _tenants_44c098a(metadata: sa.MetaData, *key_columns) -> tuple[sa.Table, sa.Table]:
    """``tenants`` and ``api_keys`` of commit 44c098a (and 0342915)."""
    tenants = sa.Table(
        "tenants",
        metadata,
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("name", sa.String(100), nullable=False, unique=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("policy", sa.JSON, nullable=False),
        sa.Column("allowed_models", sa.JSON),
        sa.Column("budget_usd_day", sa.Float),
        sa.Column("budget_usd_month", sa.Float),
        sa.Column("rpm", sa.Integer),
        sa.Column("tpm", sa.Integer),
        sa.Column("degrade_before_deny", sa.Boolean, nullable=False),
        sa.Column("reference_model", sa.String(200)),
    )
    api_keys = sa.Table(
        "api_keys",
        metadata,
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("tenant_id", sa.Integer, sa.ForeignKey("tenants.id"), nullable=False, index=True),
        sa.Column("key_hash", sa.String(64), nullable=False, unique=True),
        sa.Column("prefix", sa.String(8), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("revoked_at", sa.DateTime(timezone=True)),
        *key_columns,
    )
    return tenants, api_keys


def _tenants_69c40ef(metadata: sa.MetaData) -> tuple[sa.Table, sa.Table]:
    """``tenants`` and ``api_keys`` of commit 69c40ef (unchanged through 5ebad3a): a key's own rate limits."""
    return _tenants_44c098a(metadata, sa.Column("rpm", sa.Integer), sa.Column("tpm", sa.Integer))


def _add_missing_like_b5eb8f3(engine: sa.Engine) -> None:
    """What CallStore._add_missing_columns of commit b5eb8f3 did when it opened an older log: the calls columns and
    indexes it lacked, added ad hoc (TenantStore of that commit only ran create_all, which alters nothing)."""
    calls = _calls_b5eb8f3(sa.MetaData())
    inspector = sa.inspect(engine)
    present = {c["name"] for c in inspector.get_columns("calls")}
    indexed = {i["name"] for i in inspector.get_indexes("calls")}
    with engine.begin() as conn:
        for column in calls.columns:
            if column.name not in present:
                conn.execute(sa.text(f"ALTER TABLE calls ADD COLUMN {column.name} "
                                     f"{column.type.compile(dialect=engine.dialect)}"))
        for index in calls.indexes:
            if index.name not in indexed:
                index.create(conn)


# name -> (the calls table, the tenant tables or None, whether b5eb8f3 opened it afterwards, version recognised)
RELEASED = {
    "57730f6": (_calls_57730f6, None, False, 1),  # first call log (also 639e4bf, 4743d70): no tenants yet
    "44c098a": (_calls_57730f6, _tenants_44c098a, False, 2),  # tenants and keys
    "0342915": (_calls_0342915, _tenants_44c098a, False, 3),  # cache columns
    "69c40ef": (_calls_0342915, _tenants_69c40ef, False, 4),  # a key's own rpm/tpm
    "b5eb8f3": (_calls_b5eb8f3, _tenants_69c40ef, False, 5),  # calls indexes (also 5ebad3a)
    # The bug of issue 12: made by 44c098a, then served by b5eb8f3, which added the calls columns and indexes but not
    # api_keys.rpm/tpm, so every /v1/* call failed with "no such column: api_keys.rpm". 0005 present, 0004 not.
    "44c098a+b5eb8f3": (_calls_57730f6, _tenants_44c098a, True, 3),
    # `router-ml tenants create` of 44c098a on a new database, before the gateway ever started: no calls table.
    "44c098a-tenants-only": (None, _tenants_44c098a, False, 0),
}


# ----------------------------------------------------------------- fixtures
@pytest.fixture(params=["sqlite", "postgresql"])
def url(request, tmp_path):
    return request.getfixturevalue("postgres_url") if request.param == "postgresql" else f"sqlite:///{tmp_path}/c.db"


@pytest.fixture(scope="module")
def outcome_rows(mini_files) -> list[dict]:
    """Real outcome rows (RouterBench prompts, models, tokens, costs, qualities) to log as calls."""
    outcomes = prepare(mini_files, ImportReport(), encoder=None)
    return outcomes.filter(pl.col("source") == "routerbench").head(6).to_dicts()


def _call(r: dict, i: int, tenant: str | None, with_cache: bool) -> dict:
    """A calls row of outcome ``r`` as CallStore._prepare of those releases wrote it (JSON as text, derived ids)."""
    row = {"call_id": uuid.uuid4().hex, "prompt_id": stable_prompt_id("gateway", "chat", r["prompt"]),
           "prompt": r["prompt"], "messages": json.dumps([{"role": "user", "content": r["prompt"]}]),
           "model": r["model"], "quality": None, "input_tokens": r["input_tokens"], "output_tokens": r["output_tokens"],
           "cost_usd": r["cost_usd"], "cost_source": "tokens_x_price", "latency_ms": 300.0 + 20 * r["output_tokens"],
           "ts": START + timedelta(minutes=i), "source": "gateway", "task": "chat", "split": None,
           "group_id": group_id(r["prompt"]), "tenant": tenant, "response": "an answer",
           "flags": "[]", "status": "ok", "error": None, "http_status": 200, "bundle_version": "default",
           "routed": True, "policy": json.dumps({"quality": 0.9}), "feedback_at": None}
    if i == 0:  # feedback on the first call: the outcome's own quality
        row.update(quality=r["quality"], feedback_at=START + timedelta(hours=1))
    if i == 1:  # a failed attempt
        row.update(status="error", error="upstream said 503", http_status=503, output_tokens=None, cost_usd=None,
                   response=None)
    if with_cache:
        row.update(cache="exact" if i == 2 else None, saved_usd=r["cost_usd"] if i == 2 else None)
        if i == 2:
            row["cost_usd"] = 0.0
    return row


def _old_database(url: str, release: str, rows: list[dict]) -> dict:
    """The database ``release`` left, with a tenant, an active and a revoked key and calls as it wrote them."""
    calls_of, tenants_of, reopened, _ = RELEASED[release]
    metadata = sa.MetaData()
    calls = calls_of(metadata) if calls_of is not None else None
    engine = sa.create_engine(url)
    metadata.create_all(engine)  # how CallStore (and TenantStore) of that release created its tables
    made: dict = {"keys": {}, "calls": []}
    with engine.begin() as conn:
        tenant = None
        if tenants_of is not None:
            tenants, api_keys = tenants_of(sa.MetaData())
            tenants.create(conn)
            api_keys.create(conn)
            tenant = "acme"
            conn.execute(tenants.insert().values(  # TenantStore.create_tenant: validated settings as JSON
                name=tenant, created_at=START, policy={"quality": 0.9}, allowed_models=None, budget_usd_day=50.0,
                budget_usd_month=None, rpm=600, tpm=None, degrade_before_deny=False, reference_model=None))
            tenant_id = conn.execute(sa.select(tenants.c.id)).scalar_one()
            for state in ("active", "revoked"):  # TenantStore.issue_key: only the hash and 8 shown characters
                key = KEY_PREFIX + secrets.token_urlsafe(32)
                conn.execute(api_keys.insert().values(
                    tenant_id=tenant_id, key_hash=hash_key(key), prefix=key[:8], created_at=START,
                    revoked_at=START + timedelta(days=1) if state == "revoked" else None))
                made["keys"][state] = key
        if calls is not None:
            made["calls"] = [_call(r, i, tenant, "cache" in calls.c) for i, r in enumerate(rows)]
            conn.execute(calls.insert(), made["calls"])
    if reopened:
        _add_missing_like_b5eb8f3(engine)
    engine.dispose()
    return made


def _schema(url: str) -> dict:
    """What reflection sees of the gateway's tables: columns, keys, indexes, constraints."""
    engine = sa.create_engine(url)
    inspector = sa.inspect(engine)
    out = {}
    for table in ("calls", "tenants", "api_keys"):
        out[table] = {
            "columns": sorted((c["name"], str(c["type"]), c["nullable"]) for c in inspector.get_columns(table)),
            "primary_key": inspector.get_pk_constraint(table)["constrained_columns"],
            "indexes": sorted((i["name"], tuple(i["column_names"]), bool(i["unique"]))
                              for i in inspector.get_indexes(table)),
            "unique": sorted(tuple(u["column_names"]) for u in inspector.get_unique_constraints(table)),
            "foreign_keys": sorted((tuple(f["constrained_columns"]), f["referred_table"],
                                    tuple(f["referred_columns"])) for f in inspector.get_foreign_keys(table)),
            "checks": sorted(c["name"] or "" for c in inspector.get_check_constraints(table)),
        }
    engine.dispose()
    return out


def _versions(url: str) -> list[tuple[int, str, bool]]:
    engine = sa.create_engine(url)
    with engine.connect() as conn:
        rows = conn.execute(sa.text("SELECT version, name, stamped FROM schema_version ORDER BY version")).all()
    engine.dispose()
    return [(v, n, bool(s)) for v, n, s in rows]


@pytest.fixture
def reference_url(request, url, tmp_path):
    """A second, empty database on the same backend as ``url``."""
    if not url.startswith("postgresql"):
        yield f"sqlite:///{tmp_path}/reference.db"
        return
    base, _, _ = url.partition("?options=")
    schema = f"test_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(base)
    with admin.begin() as conn:
        conn.execute(sa.text(f"CREATE SCHEMA {schema}"))
    yield f"{base}?options=-csearch_path%3D{schema}"
    with admin.begin() as conn:
        conn.execute(sa.text(f"DROP SCHEMA {schema} CASCADE"))
    admin.dispose()


# ----------------------------------------------------------------- tests
def test_migrations_are_numbered_in_order_and_name_their_commits():
    assert [m.version for m in MIGRATIONS] == list(range(1, head() + 1))
    assert [m.commit for m in MIGRATIONS] == ["57730f6", "44c098a", "0342915", "69c40ef", "b5eb8f3", "aacd28c",
                                              "57619b3", "3be0dd4", "8f0ff29", "ad0412e"]
    for migration in MIGRATIONS:  # each commit is in this repository's history
        found = subprocess.run(["git", "cat-file", "-t", migration.commit], capture_output=True, text=True)
        if found.returncode == 0:
            assert found.stdout.strip() == "commit"


def test_head_equals_the_table_definitions_the_stores_query(url, reference_url):
    """A fresh database migrated to head has exactly the schema of the live table definitions (store.py, tenants.py):
    a change there without a migration fails here."""
    done = upgrade(url)
    assert (done.start, done.end, done.applied, done.stamped) == (0, head(), tuple(range(1, head() + 1)), False)
    engine = sa.create_engine(reference_url)
    store_module.metadata.create_all(engine)
    tenants_module.metadata.create_all(engine)
    engine.dispose()
    assert _schema(url) == _schema(reference_url)
    assert _versions(url) == [(m.version, m.name, False) for m in MIGRATIONS]


@pytest.mark.parametrize("release", list(RELEASED))
def test_every_released_schema_is_recognised_upgraded_and_keeps_its_rows(url, reference_url, release, outcome_rows):
    made = _old_database(url, release, outcome_rows)
    recognised = RELEASED[release][3]
    before = status(url)
    assert (before.version, before.recorded) == (recognised, False)

    done = upgrade(url)
    assert (done.start, done.end, done.stamped) == (recognised, head(), recognised > 0)
    assert done.applied == tuple(range(recognised + 1, head() + 1))
    assert _versions(url) == [(m.version, m.name, m.version <= recognised) for m in MIGRATIONS]
    engine = sa.create_engine(reference_url)
    store_module.metadata.create_all(engine)
    tenants_module.metadata.create_all(engine)
    engine.dispose()
    assert _schema(url) == _schema(reference_url)  # the same tables as a database made today

    again = upgrade(url)  # a second upgrade changes nothing
    assert (again.start, again.end, again.applied, again.stamped) == (head(), head(), (), False)
    assert _versions(url) == [(m.version, m.name, m.version <= recognised) for m in MIGRATIONS]

    tenants = TenantStore(url)
    calls = CallStore(url)
    try:
        if made["keys"]:
            tenant = tenants.authenticate(made["keys"]["active"])
            assert tenant is not None and tenant.name == "acme"
            assert (tenant.policy.quality, tenant.budget_usd_day, tenant.rpm) == (0.9, 50.0, 600)
            assert (tenant.key_prefix, tenant.key_rpm, tenant.key_tpm) == (made["keys"]["active"][:8], None, None)
            assert tenants.authenticate(made["keys"]["revoked"]) is None
            new_key = tenants.issue_key("acme", rpm=60)  # the new columns work on the old table
            assert tenants.authenticate(new_key).key_rpm == 60
        for old in made["calls"]:
            got = calls.get(old["call_id"])
            assert got is not None
            for name in ("prompt", "model", "input_tokens", "output_tokens", "cost_usd", "status", "tenant",
                         "http_status", "quality", "messages", "routed"):
                assert got[name] == old[name], name
            assert got["ts"] == old["ts"] and got["policy"] == {"quality": 0.9}
            assert (got["cache"], got["saved_usd"]) == (old.get("cache"), old.get("saved_usd"))
        out = calls.outcomes()
        if made["calls"]:
            first = made["calls"][0]
            assert out.height == 1 and out["prompt"][0] == first["prompt"] and out["quality"][0] == first["quality"]
        else:
            assert out.height == 0
        call_id = calls.record({"prompt": outcome_rows[0]["prompt"], "model": outcome_rows[0]["model"], "task": "chat",
                                "http_status": 200, "input_tokens": outcome_rows[0]["input_tokens"],
                                "cost_usd": 0.0, "cost_source": "tokens_x_price", "cache": "exact",
                                "saved_usd": outcome_rows[0]["cost_usd"], "tenant": "acme"})
        calls.flush()
        assert calls.get(call_id)["saved_usd"] == outcome_rows[0]["cost_usd"]
    finally:
        calls.close()
        tenants.close()


@pytest.fixture(scope="module")
def bundle(mini_files, static_encoder_dir, tmp_path_factory):
    from router_ml.embed import StaticEncoder
    from router_ml.train import TrainConfig, run

    outcomes = prepare(mini_files, ImportReport(), encoder=None)
    out = tmp_path_factory.mktemp("migrations-bundle")
    config = TrainConfig(name="migrations", router="linear", sources=["routerbench"], min_prompts=50, n_trials=0)
    return out, run(config, outcomes, StaticEncoder(static_encoder_dir), out).meta


def test_the_old_key_of_the_issue_12_database_is_served_not_500(url, outcome_rows, bundle, static_encoder_dir):
    """The database of issue 12 (api_keys without rpm/tpm) opened the way the gateway opens it: the stores upgrade it
    at start, and a /v1/chat/completions with the key issued by the old release is answered and logged."""
    from router_ml.embed import StaticEncoder
    from router_ml.serve.app import create_app

    made = _old_database(url, "44c098a+b5eb8f3", outcome_rows)
    directory, meta = bundle
    store, tenants = CallStore(url), TenantStore(url)
    try:
        app = create_app(directory, {m: HandlerProvider(lambda r, m=m: f"from {m}") for m in meta["models"]},
                         store=store, encoder=StaticEncoder(static_encoder_dir), tenants=tenants, admin_key="admin")

        async def go():
            async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gateway") as client:
                return await client.post("/v1/chat/completions",
                                         headers={"authorization": f"Bearer {made['keys']['active']}"},
                                         json={"model": "router-ml/auto",
                                               "messages": [{"role": "user", "content": outcome_rows[3]["prompt"]}]})

        answer = asyncio.run(go())
        assert answer.status_code == 200, answer.text
        served = answer.json()["model"]
        assert served in meta["models"] and answer.json()["choices"][0]["message"]["content"] == f"from {served}"
        store.flush()
        logged = store.get(answer.json()["id"].removeprefix("chatcmpl-"))
        assert (logged["tenant"], logged["model"], logged["status"]) == ("acme", served, "ok")
    finally:
        store.close()
        tenants.close()


class _Slow:
    """A migration step that takes a while, so that two upgrades surely overlap."""

    def present(self, inspector) -> bool:
        return True

    def apply(self, conn) -> None:
        time.sleep(0.4)


@pytest.mark.parametrize("start", ["fresh", "44c098a+b5eb8f3"])
def test_two_upgrades_at_once_apply_each_migration_once(url, start, outcome_rows, monkeypatch):
    if start != "fresh":
        _old_database(url, start, outcome_rows)
    slowed = tuple(replace(m, steps=(_Slow(), *m.steps)) for m in MIGRATIONS)
    monkeypatch.setattr(migrations, "MIGRATIONS", slowed)
    barrier = threading.Barrier(2)
    results, errors = [], []

    def replica() -> None:
        barrier.wait()
        try:
            results.append(upgrade(url))  # each with its own engine, as two processes would
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=replica) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert errors == [] and len(results) == 2
    first, second = sorted(results, key=lambda r: -len(r.applied))
    recognised = 0 if start == "fresh" else RELEASED[start][3]
    assert (first.start, first.applied) == (recognised, tuple(range(recognised + 1, head() + 1)))
    assert (second.start, second.applied, second.stamped) == (head(), (), False)
    assert [v for v, _, _ in _versions(url)] == list(range(1, head() + 1))


def test_a_database_newer_than_the_code_is_refused_naming_its_version(url):
    upgrade(url)
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        conn.execute(sa.text("INSERT INTO schema_version (version, name, applied_at, stamped) "
                             "VALUES (:v, 'from the future', :t, :s)"), {"v": head() + 1, "t": START, "s": False})
    engine.dispose()
    with pytest.raises(SchemaTooNew, match=f"schema version {head() + 1}, newer than this router-ml knows"):
        upgrade(url)
    with pytest.raises(SchemaTooNew):
        CallStore(url)
    with pytest.raises(SchemaTooNew):
        TenantStore(url)
    result = CliRunner().invoke(cli_app, ["db", "upgrade", "--store-url", url])
    assert result.exit_code == 1 and f"schema version {head() + 1}" in result.output
    result = CliRunner().invoke(cli_app, ["db", "current", "--store-url", url])
    assert result.exit_code == 0 and f"version {head() + 1}" in result.output and "newer than this" in result.output


def test_db_current_and_db_upgrade_commands(url, outcome_rows):
    _old_database(url, "44c098a+b5eb8f3", outcome_rows)
    runner = CliRunner()
    current = runner.invoke(cli_app, ["db", "current", "--store-url", url])
    assert current.exit_code == 0, current.output
    assert "no schema_version table; its tables are those of version 3" in current.output
    assert "pending 0004 api_keys_rate_limits" in current.output and "pending 0005 calls_time_indexes" in current.output
    done = runner.invoke(cli_app, ["db", "upgrade", "--store-url", url])
    assert done.exit_code == 0, done.output
    applied = ", ".join(f"{v:04d}" for v in range(4, head() + 1))
    assert f"from version 3 (recognised from its tables, stamped) to version {head()}: applied {applied}" in done.output
    assert ":***@" in done.output if url.startswith("postgresql") else True  # no password printed
    again = runner.invoke(cli_app, ["db", "upgrade", "--store-url", url])
    assert again.exit_code == 0 and f"at version {head()}: nothing to apply" in again.output
    current = runner.invoke(cli_app, ["db", "current", "--store-url", url])
    assert f"version {head()} (newest known: {head()})" in current.output and "pending" not in current.output


def test_calllog_imports_nothing_heavy():
    code = ("import sys, router_ml.calllog; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in {'polars', 'numpy', 'torch', 'lightgbm', "
            "'mlflow', 'statsforecast', 'pydantic'} or m.startswith(('router_ml.data', 'router_ml.serve'))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
