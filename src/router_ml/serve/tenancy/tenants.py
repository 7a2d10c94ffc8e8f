"""Tenants and their API keys, in the call log's database (``tenants`` and ``api_keys``, SQLAlchemy Core).

A tenant is who pays and whose calls are logged together: its default routing policy (applied to
``router-ml/auto``, request fields override it), the models it may use (null: all), its budgets in USD per
day and month, its rate limits in requests and tokens per minute (null: unlimited; enforced by
:mod:`router_ml.serve.tenancy.limits`), whether to route to cheaper models before refusing a call over budget
(``degrade_before_deny``), the model its savings are measured against (``reference_model``) and the spend per
UTC day that online steering paces its routing to (``spend_target_usd_day``: :mod:`router_ml.online.pacer`; a
target, where a budget is a limit).

Keys are ``rm-`` + 43 url-safe characters (256 random bits); only their SHA-256 is stored, with the first
8 characters (``prefix``) to tell keys apart in listings and to revoke one. The plaintext is returned once,
by :meth:`TenantStore.issue_key`. Looking keys up by hash means the database never compares a secret: a
timing difference can at most reveal a prefix of a hash, which does not help to forge a key.

:meth:`TenantStore.authenticate` is on every request's path: results (found or not) are cached in memory
for ``ttl`` seconds (5), so a key costs one indexed query per process per ``ttl``, and a revoked key or a
changed setting takes effect in every process within ``ttl`` (at once in the process that made the change).
"""

from __future__ import annotations

import hashlib
import re
import secrets
import time
from dataclasses import dataclass, replace
from datetime import datetime

import sqlalchemy as sa
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from router_ml.calllog import engine_for, upgrade
from router_ml.clock import SYSTEM_CLOCK, Clock, as_utc
from router_ml.routers.policy import Policy

KEY_PREFIX = "rm-"
SHOWN_CHARS = 8  # of a key, kept in clear to tell keys apart
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
_CACHE_LIMIT = 10_000  # entries; beyond, the cache starts over (bounds memory under a flood of made-up keys)

# What the queries use. A change of these tables needs a new numbered migration in
# router_ml.calllog.migrations (tests/calllog/test_migrations.py checks that its head equals these definitions).
metadata = sa.MetaData()

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
    sa.Column("spend_target_usd_day", sa.Float),
)

api_keys = sa.Table(
    "api_keys",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("tenant_id", sa.Integer, sa.ForeignKey("tenants.id"), nullable=False, index=True),
    sa.Column("key_hash", sa.String(64), nullable=False, unique=True),
    sa.Column("prefix", sa.String(SHOWN_CHARS), nullable=False),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("revoked_at", sa.DateTime(timezone=True)),
    sa.Column("rpm", sa.Integer),  # the key's own limits, beside the tenant's (null: none)
    sa.Column("tpm", sa.Integer),
)


class TenantSettings(BaseModel):
    """What an operator sets on a tenant; validated before anything is stored."""

    model_config = ConfigDict(extra="forbid")

    policy: Policy = Field(default_factory=Policy)
    allowed_models: list[str] | None = None
    budget_usd_day: float | None = Field(default=None, ge=0)
    budget_usd_month: float | None = Field(default=None, ge=0)
    rpm: int | None = Field(default=None, ge=0)
    tpm: int | None = Field(default=None, ge=0)
    degrade_before_deny: bool = False
    reference_model: str | None = None
    spend_target_usd_day: float | None = Field(default=None, gt=0)


SETTINGS = tuple(TenantSettings.model_fields)


def validate_settings(values: dict) -> TenantSettings:
    """``values`` as TenantSettings; ValueError naming the first bad field otherwise."""
    try:
        settings = TenantSettings.model_validate(values)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "settings"
        raise ValueError(f"tenant setting {where}: {first['msg']}") from None
    if settings.allowed_models is not None and not all(m.strip() for m in settings.allowed_models):
        raise ValueError("tenant setting allowed_models: model names must not be empty")
    return settings


@dataclass(frozen=True)
class Tenant:
    id: int
    name: str
    created_at: datetime
    policy: Policy
    allowed_models: tuple[str, ...] | None
    budget_usd_day: float | None
    budget_usd_month: float | None
    rpm: int | None
    tpm: int | None
    degrade_before_deny: bool
    reference_model: str | None
    spend_target_usd_day: float | None = None
    key_prefix: str | None = None  # the key the tenant called with, and its own limits (see authenticate)
    key_rpm: int | None = None
    key_tpm: int | None = None

    def allows(self, model: str) -> bool:
        return self.allowed_models is None or model in self.allowed_models

    def as_dict(self) -> dict:
        """JSON-ready: the settings plus name and creation time."""
        out = {name: getattr(self, name) for name in SETTINGS}
        out["policy"] = self.policy.model_dump(exclude_none=True)
        out["allowed_models"] = list(self.allowed_models) if self.allowed_models is not None else None
        return {"name": self.name, "created_at": self.created_at.isoformat(), **out}


def _tenant(row) -> Tenant:
    m = row._mapping
    return Tenant(id=m["id"], name=m["name"], created_at=as_utc(m["created_at"]), policy=Policy(**m["policy"]),
                  allowed_models=tuple(m["allowed_models"]) if m["allowed_models"] is not None else None,
                  budget_usd_day=m["budget_usd_day"], budget_usd_month=m["budget_usd_month"], rpm=m["rpm"],
                  tpm=m["tpm"], degrade_before_deny=m["degrade_before_deny"], reference_model=m["reference_model"],
                  spend_target_usd_day=m["spend_target_usd_day"])


def _columns(settings: TenantSettings) -> dict:
    """Column values of validated settings (the policy without its unset fields)."""
    return {**settings.model_dump(mode="json"), "policy": settings.policy.model_dump(exclude_none=True)}


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


class TenantStore:
    """Tenants and keys on the SQLAlchemy ``url`` (the call log's database: SQLite or PostgreSQL)."""

    def __init__(self, url: str, ttl: float = 5.0, clock: Clock = SYSTEM_CLOCK):
        self.url, self.ttl = url, ttl
        self.clock = clock  # stamps created_at and revoked_at
        self.engine = engine_for(url)  # the call log's database, opened as the call log opens it (WAL on SQLite)
        upgrade(self.engine)  # every table of the call log's database at the newest schema (router_ml.calllog)
        self._cache: dict[str, tuple[float, Tenant | None]] = {}

    def close(self) -> None:
        self.engine.dispose()

    # ----------------------------------------------------------------- tenants
    def create_tenant(self, name: str, **settings) -> Tenant:
        """A new tenant named ``name`` (letters, digits, '.', '_', '-'; up to 100) with ``settings``
        (the fields of :class:`TenantSettings`). ValueError for a bad name or setting, or a taken name."""
        if not isinstance(name, str) or not NAME_PATTERN.match(name):
            raise ValueError(f"tenant name {name!r}: use 1 to 100 letters, digits, '.', '_' or '-', "
                             "starting with a letter or digit")
        values = _columns(validate_settings(settings))
        try:
            with self.engine.begin() as conn:
                conn.execute(tenants.insert().values(name=name, created_at=self.clock.now(), **values))
        except sa.exc.IntegrityError as exc:
            raise ValueError(f"tenant name {name!r} is taken") from exc
        return self.get_tenant(name)

    def get_tenant(self, name: str) -> Tenant | None:
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(tenants).where(tenants.c.name == name)).first()
        return None if row is None else _tenant(row)

    def list_tenants(self) -> list[Tenant]:
        with self.engine.connect() as conn:
            return [_tenant(r) for r in conn.execute(sa.select(tenants).order_by(tenants.c.name))]

    def require(self, name: str) -> Tenant:
        """The tenant named ``name``; KeyError when there is none."""
        tenant = self.get_tenant(name)
        if tenant is None:
            raise KeyError(f"no tenant named {name!r}")
        return tenant

    def update_tenant(self, name: str, **changes) -> Tenant:
        """Set the given settings (each replaces the stored value; ``policy`` as a whole); the others stay.
        KeyError for an unknown tenant, ValueError naming a bad setting."""
        tenant = self.require(name)
        current = {n: v for n, v in tenant.as_dict().items() if n in SETTINGS}
        values = {n: v for n, v in _columns(validate_settings({**current, **changes})).items() if n in changes}
        if values:
            with self.engine.begin() as conn:
                conn.execute(tenants.update().where(tenants.c.id == tenant.id).values(**values))
            self._cache.clear()
        return self.require(name)

    # ----------------------------------------------------------------- keys
    def issue_key(self, name: str, rpm: int | None = None, tpm: int | None = None) -> str:
        """A new key for tenant ``name``, with its own requests and tokens per minute if given: the
        plaintext, returned this once (only its hash is stored)."""
        tenant = self.require(name)
        for field_name, value in (("rpm", rpm), ("tpm", tpm)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise ValueError(f"key setting {field_name}: a positive whole number, not {value!r}")
        key = KEY_PREFIX + secrets.token_urlsafe(32)
        with self.engine.begin() as conn:
            conn.execute(api_keys.insert().values(tenant_id=tenant.id, key_hash=hash_key(key), rpm=rpm, tpm=tpm,
                                                  prefix=key[:SHOWN_CHARS], created_at=self.clock.now()))
        return key

    def list_keys(self, name: str) -> list[dict]:
        """The tenant's keys: prefix, created_at, revoked_at (never a secret)."""
        tenant = self.require(name)
        query = (sa.select(api_keys.c.prefix, api_keys.c.created_at, api_keys.c.revoked_at, api_keys.c.rpm,
                           api_keys.c.tpm)
                 .where(api_keys.c.tenant_id == tenant.id).order_by(api_keys.c.id))
        with self.engine.connect() as conn:
            return [{"prefix": r.prefix, "created_at": as_utc(r.created_at).isoformat(),
                     "revoked_at": as_utc(r.revoked_at).isoformat() if r.revoked_at else None,
                     "rpm": r.rpm, "tpm": r.tpm}
                    for r in conn.execute(query)]

    def revoke_key(self, name: str, prefix: str) -> int:
        """Revoke the tenant's active keys starting with ``prefix`` (at least the 8 shown characters); the
        number revoked. KeyError when no active key of the tenant matches."""
        tenant = self.require(name)
        if len(prefix) < SHOWN_CHARS:
            raise ValueError(f"key prefix {prefix!r}: give the first {SHOWN_CHARS} characters of the key")
        update = (api_keys.update()
                  .where(api_keys.c.tenant_id == tenant.id, api_keys.c.prefix == prefix[:SHOWN_CHARS],
                         api_keys.c.revoked_at.is_(None))
                  .values(revoked_at=self.clock.now()))
        with self.engine.begin() as conn:
            revoked = conn.execute(update).rowcount
        if not revoked:
            raise KeyError(f"tenant {name!r} has no active key with prefix {prefix[:SHOWN_CHARS]!r}")
        self._cache.clear()
        return revoked

    # ----------------------------------------------------------------- hot path
    def cached(self, key: str) -> tuple[bool, Tenant | None]:
        """``(True, what authenticate answers)`` when that is known without I/O (a malformed key, a cached one),
        else ``(False, None)``: then :meth:`authenticate` runs a query (from async code: in a thread)."""
        if not key.startswith(KEY_PREFIX):
            return True, None
        hit = self._cache.get(hash_key(key))
        return (True, hit[1]) if hit is not None and hit[0] > time.monotonic() else (False, None)

    def authenticate(self, key: str) -> Tenant | None:
        """The tenant of an active ``key``, or None (unknown, malformed or revoked); cached for ``ttl`` s."""
        if not key.startswith(KEY_PREFIX):
            return None
        digest = hash_key(key)
        now = time.monotonic()
        hit = self._cache.get(digest)
        if hit is not None and hit[0] > now:
            return hit[1]
        query = (sa.select(tenants, api_keys.c.prefix.label("key_prefix"), api_keys.c.rpm.label("key_rpm"),
                           api_keys.c.tpm.label("key_tpm"))
                 .join(api_keys, api_keys.c.tenant_id == tenants.c.id)
                 .where(api_keys.c.key_hash == digest, api_keys.c.revoked_at.is_(None)))
        with self.engine.connect() as conn:
            row = conn.execute(query).first()
        tenant = None if row is None else replace(_tenant(row), key_prefix=row.key_prefix, key_rpm=row.key_rpm,
                                                  key_tpm=row.key_tpm)
        if len(self._cache) >= _CACHE_LIMIT:
            self._cache.clear()
        self._cache[digest] = (now + self.ttl, tenant)
        return tenant
