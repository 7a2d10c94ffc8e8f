"""Numbered migrations of the call log's database, and :func:`upgrade`, which applies them under a lock.

Each :class:`Migration` is one released change of the tables the gateway owns, in order: 0001 is the first
released schema (the ``calls`` table), then one per later change. A migration is a few steps, each with
``apply(conn)`` (DDL that works on SQLite and PostgreSQL) and ``present(inspector)`` (whether a database already
has what the step makes). The DDL of a migration is frozen here as it was released; the live table definitions
(:mod:`router_ml.calllog.store`, :mod:`router_ml.serve.tenancy.tenants`) must equal the head of this list, which a test
checks. A new change of those tables therefore comes with a new migration appended here, never an edit of an old one.

``schema_version`` holds one row per migration applied (``version``, ``name``, ``applied_at``, ``stamped``).
A database made before that table existed (releases before numbered migrations) is recognised by what it has:
it is stamped at the highest version N such that every migration up to N is present, then upgraded from there.
Those releases created tables on first use and added some columns ad hoc, so a database may hold a later
change without an earlier one (``calls`` with the time indexes, ``api_keys`` without ``rpm``): the steps of
these early migrations skip what exists, which makes applying them after such a stamp safe.

Concurrency. :func:`upgrade` reads the version and applies what is missing in one transaction that holds a
lock: on PostgreSQL ``pg_advisory_xact_lock`` (released with the transaction; DDL is transactional there), on
SQLite ``BEGIN IMMEDIATE`` (the database's write lock, waited for up to the busy timeout). A second replica
starting at the same time waits, then finds the database at head and changes nothing. A failed migration rolls
the whole upgrade back. A database whose version is newer than the code knows raises :class:`SchemaTooNew`.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Protocol

import sqlalchemy as sa

from router_ml.clock import utc_now

log = logging.getLogger(__name__)

VERSION_TABLE = "schema_version"
# pg_advisory_xact_lock key of the upgrade: a fixed 64-bit number derived from the package name.
LOCK_KEY = int.from_bytes(hashlib.sha256(b"router_ml.calllog.migrations").digest()[:8], "big", signed=True)

_version_metadata = sa.MetaData()
schema_version = sa.Table(
    VERSION_TABLE,
    _version_metadata,
    sa.Column("version", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("name", sa.String(100), nullable=False),
    sa.Column("applied_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("stamped", sa.Boolean, nullable=False),  # found present in a database made before this table
)


class SchemaTooNew(RuntimeError):
    """The database was migrated by a newer router-ml than this one."""

    def __init__(self, version: int, known: int):
        self.version, self.known = version, known
        super().__init__(f"the call log's database is at schema version {version}, newer than this router-ml knows "
                         f"(its newest migration is {known:04d}): run a router-ml at least as new as the one that "
                         f"upgraded it")


# ----------------------------------------------------------------- steps
class Step(Protocol):
    def present(self, inspector: sa.Inspector) -> bool: ...

    def apply(self, conn: sa.Connection) -> None: ...


def _columns(inspector: sa.Inspector, table: str) -> set[str]:
    return {c["name"] for c in inspector.get_columns(table)}


def _indexes(inspector: sa.Inspector, table: str) -> set[str]:
    return {i["name"] for i in inspector.get_indexes(table)}


def _add_column(conn: sa.Connection, table: sa.Table, column: sa.Column) -> None:
    if not column.nullable:
        raise ValueError(f"column {table.name}.{column.name}: only nullable columns can be added to a table")
    prepare = conn.dialect.identifier_preparer
    ddl = sa.schema.CreateColumn(column).compile(dialect=conn.dialect)
    conn.execute(sa.text(f"ALTER TABLE {prepare.format_table(table)} ADD COLUMN {ddl}"))


@dataclass(frozen=True)
class CreateTable:
    """Create ``table`` with its indexes; on a table that exists, add the columns and indexes it lacks."""

    table: sa.Table

    def present(self, inspector: sa.Inspector) -> bool:
        name = self.table.name
        return (inspector.has_table(name) and _columns(inspector, name) >= set(self.table.columns.keys())
                and _indexes(inspector, name) >= {i.name for i in self.table.indexes})

    def apply(self, conn: sa.Connection) -> None:
        if not sa.inspect(conn).has_table(self.table.name):
            self.table.create(conn)
            return
        AddColumns(self.table).apply(conn)
        AddIndexes(tuple(self.table.indexes)).apply(conn)


@dataclass(frozen=True)
class AddColumns:
    """Add the columns of ``table`` (a partial definition: the new columns only, all nullable) it lacks."""

    table: sa.Table

    def present(self, inspector: sa.Inspector) -> bool:
        return inspector.has_table(self.table.name) and _columns(inspector, self.table.name) >= set(
            self.table.columns.keys())

    def apply(self, conn: sa.Connection) -> None:
        present = _columns(sa.inspect(conn), self.table.name)
        for column in self.table.columns:
            if column.name not in present:
                _add_column(conn, self.table, column)


@dataclass(frozen=True)
class AddIndexes:
    """Create the indexes a table lacks (by name)."""

    indexes: tuple[sa.Index, ...]

    def present(self, inspector: sa.Inspector) -> bool:
        return all(inspector.has_table(i.table.name) and i.name in _indexes(inspector, i.table.name)
                   for i in self.indexes)

    def apply(self, conn: sa.Connection) -> None:
        inspector = sa.inspect(conn)
        for index in self.indexes:
            if index.name not in _indexes(inspector, index.table.name):
                index.create(conn)


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    commit: str  # the commit of router-ml that released this change
    steps: tuple[Step, ...] = field(repr=False)

    @property
    def label(self) -> str:
        return f"{self.version:04d} {self.name}"

    def present(self, inspector: sa.Inspector) -> bool:
        return all(step.present(inspector) for step in self.steps)

    def apply(self, conn: sa.Connection) -> None:
        for step in self.steps:
            step.apply(conn)


# ----------------------------------------------------------------- the migrations (frozen as released)
# 0001, commit 57730f6: the calls table as CallStore first created it.
_m0001 = sa.MetaData()
_calls_0001 = sa.Table(
    "calls",
    _m0001,
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
    sa.CheckConstraint("status IN ('ok', 'error')", name="calls_status"),
    sa.Index("calls_status_feedback", "status", "feedback_at"),
)

# 0002, commit 44c098a: tenants and their API keys (hash only).
_m0002 = sa.MetaData()
_tenants_0002 = sa.Table(
    "tenants",
    _m0002,
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
_api_keys_0002 = sa.Table(
    "api_keys",
    _m0002,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("tenant_id", sa.Integer, sa.ForeignKey("tenants.id"), nullable=False, index=True),
    sa.Column("key_hash", sa.String(64), nullable=False, unique=True),
    sa.Column("prefix", sa.String(8), nullable=False),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("revoked_at", sa.DateTime(timezone=True)),
)

# 0003, commit 0342915: response cache columns of calls.
_calls_0003 = sa.Table("calls", sa.MetaData(), sa.Column("cache", sa.String(16)), sa.Column("saved_usd", sa.Float))

# 0004, commit 69c40ef: a key's own rate limits.
_api_keys_0004 = sa.Table("api_keys", sa.MetaData(), sa.Column("rpm", sa.Integer), sa.Column("tpm", sa.Integer))

# 0005, commit b5eb8f3: indexes for budget periods and analytics time ranges.
_calls_0005 = sa.Table("calls", sa.MetaData(), sa.Column("tenant", sa.String(200)),
                       sa.Column("ts", sa.DateTime(timezone=True)))
_indexes_0005 = (sa.Index("calls_tenant_ts", _calls_0005.c.tenant, _calls_0005.c.ts),
                 sa.Index("calls_ts", _calls_0005.c.ts))

# 0006, commit aacd28c: the model a budget-degraded call was degraded from (the gateway's first choice).
_calls_0006 = sa.Table("calls", sa.MetaData(), sa.Column("degraded_from", sa.String(200)))

# 0007, commit 57619b3: shadow judging. ``kind`` is null for a client's call, 'shadow' for an answer asked for
# judging a sampled call, 'judge' and 'probe' for the judge's verdicts on the served answer and on a probe's;
# ``judges`` is the call id they are about; a verdict row holds the two scores in [0, 1].
_calls_0007 = sa.Table("calls", sa.MetaData(), sa.Column("kind", sa.String(16)), sa.Column("judges", sa.String(64)),
                       sa.Column("judge_routed", sa.Float), sa.Column("judge_reference", sa.Float))

# 0008, commit 3be0dd4: each tenant's online operating point.
_operating_points_0008 = sa.Table("operating_points", sa.MetaData(),
                                  sa.Column("tenant", sa.String(200), primary_key=True),
                                  sa.Column("state", sa.Text, nullable=False),
                                  sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False))

# 0009, commit 8f0ff29: the online loop's labels in the database, shared by workers and replicas. A verdict row
# names the rows of the two answers it compared (``graded``, ``against``), so that feedback on either one is an
# exact label of the verdict and training can read judged pairs; ``online_labels`` holds one label per level of
# a tenant's ladder that a judged call graded; ``operating_points.version`` orders concurrent moves.
_calls_0009 = sa.Table("calls", sa.MetaData(), sa.Column("graded", sa.String(32)), sa.Column("against", sa.String(32)))
_operating_points_0009 = sa.Table("operating_points", sa.MetaData(), sa.Column("version", sa.Integer))
_m0009 = sa.MetaData()
_online_labels_0009 = sa.Table(
    "online_labels",
    _m0009,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("tenant", sa.String(200), nullable=False),
    sa.Column("ladder", sa.String(32), nullable=False),
    sa.Column("level", sa.Integer, nullable=False),
    sa.Column("judged_call", sa.String(32), nullable=False),
    sa.Column("graded_call", sa.String(32), nullable=False),
    sa.Column("reference_call", sa.String(32), nullable=False),
    sa.Column("routed", sa.Float, nullable=False),
    sa.Column("reference", sa.Float, nullable=False),
    sa.Column("weight", sa.Float, nullable=False),
    sa.Column("ts", sa.DateTime(timezone=True), nullable=False),
    sa.Index("online_labels_ladder", "tenant", "ladder", "level", "id"),
)

# 0010, commit ad0412e: a tenant's spend target per UTC day, which online steering's cost pacer steers to.
_tenants_0010 = sa.Table("tenants", sa.MetaData(), sa.Column("spend_target_usd_day", sa.Float))

MIGRATIONS: tuple[Migration, ...] = (
    Migration(1, "calls", "57730f6", (CreateTable(_calls_0001),)),
    Migration(2, "tenants_and_api_keys", "44c098a", (CreateTable(_tenants_0002), CreateTable(_api_keys_0002))),
    Migration(3, "calls_cache_columns", "0342915", (AddColumns(_calls_0003),)),
    Migration(4, "api_keys_rate_limits", "69c40ef", (AddColumns(_api_keys_0004),)),
    Migration(5, "calls_time_indexes", "b5eb8f3", (AddIndexes(_indexes_0005),)),
    Migration(6, "calls_degraded_from", "aacd28c", (AddColumns(_calls_0006),)),
    Migration(7, "calls_shadow_judging", "57619b3", (AddColumns(_calls_0007),)),
    Migration(8, "operating_points", "3be0dd4", (CreateTable(_operating_points_0008),)),
    Migration(9, "online_labels", "8f0ff29", (AddColumns(_calls_0009), AddColumns(_operating_points_0009),
                                              CreateTable(_online_labels_0009))),
    Migration(10, "tenants_spend_target", "ad0412e", (AddColumns(_tenants_0010),)),
)


def head() -> int:
    """The newest version this code knows."""
    return MIGRATIONS[-1].version


def _check_numbering(migrations: Sequence[Migration]) -> None:
    numbers = [m.version for m in migrations]
    if numbers != list(range(1, len(numbers) + 1)):
        raise AssertionError(f"migrations must be numbered 1, 2, ... in order, got {numbers}")


_check_numbering(MIGRATIONS)


# ----------------------------------------------------------------- upgrade
@dataclass(frozen=True)
class Upgrade:
    """What :func:`upgrade` did: the version found (``start``), the version left (``end``), the migrations applied."""

    start: int
    end: int
    applied: tuple[int, ...]
    stamped: bool  # the database had no schema_version: ``start`` was recognised from its tables and recorded

    def describe(self) -> str:
        found = f"version {self.start}" + (" (recognised from its tables, stamped)" if self.stamped else "")
        if not self.applied:
            return f"at {found}: nothing to apply"
        return f"from {found} to version {self.end}: applied " + ", ".join(f"{v:04d}" for v in self.applied)


@dataclass(frozen=True)
class Status:
    """Where a database stands: ``version`` (read from schema_version, or recognised when not ``recorded``)."""

    version: int
    recorded: bool
    head: int
    pending: tuple[Migration, ...]


def _recognise(conn: sa.Connection) -> int:
    """The version of a database without schema_version: the highest N with migrations 1..N all present."""
    inspector = sa.inspect(conn)
    version = 0
    for migration in MIGRATIONS:
        if not migration.present(inspector):
            break
        version = migration.version
    return version


def _recorded(conn: sa.Connection) -> int | None:
    """The version in schema_version (0 when empty), or None when the table does not exist."""
    if not sa.inspect(conn).has_table(VERSION_TABLE):
        return None
    return conn.execute(sa.select(sa.func.coalesce(sa.func.max(schema_version.c.version), 0))).scalar_one()


def _record(conn: sa.Connection, migrations: Sequence[Migration], stamped: bool) -> None:
    if migrations:
        now = utc_now()
        conn.execute(schema_version.insert(), [{"version": m.version, "name": m.name, "applied_at": now,
                                                "stamped": stamped} for m in migrations])


@contextmanager
def _locked(engine: sa.Engine) -> Iterator[sa.Connection]:
    """One transaction holding the upgrade lock of the database (see the module docstring); committed on success."""
    if engine.dialect.name == "sqlite":
        with engine.connect() as conn:
            # The driver's own transaction handling would start a deferred transaction (no write lock) and not
            # before DDL; take the write lock first by hand.
            conn.execution_options(isolation_level="AUTOCOMMIT")
            conn.exec_driver_sql("BEGIN IMMEDIATE")
            try:
                yield conn
            except BaseException:
                conn.exec_driver_sql("ROLLBACK")
                raise
            conn.exec_driver_sql("COMMIT")
        return
    with engine.begin() as conn:
        if engine.dialect.name == "postgresql":
            conn.execute(sa.text("SELECT pg_advisory_xact_lock(CAST(:key AS BIGINT))"), {"key": LOCK_KEY})
        else:
            log.warning("call log: no upgrade lock on %s; start one replica at a time", engine.dialect.name)
        yield conn


@contextmanager
def _engine(bind: sa.Engine | str) -> Iterator[sa.Engine]:
    if isinstance(bind, sa.Engine):
        yield bind
        return
    sqlite = bind.startswith("sqlite")
    engine = sa.create_engine(bind, connect_args={"timeout": 30} if sqlite else {}, poolclass=sa.pool.NullPool)
    try:
        yield engine
    finally:
        engine.dispose()


def upgrade(bind: sa.Engine | str) -> Upgrade:
    """Bring the database of ``bind`` (an engine or a SQLAlchemy URL) to :func:`head`, under the upgrade lock.

    Creates every table on an empty database; stamps a database made before ``schema_version`` at the version its
    tables show, then applies the rest. SchemaTooNew when the database is at a version this code does not know.
    """
    with _engine(bind) as engine, _locked(engine) as conn:
        start = _recorded(conn)
        stamped = start is None
        if start is None:
            schema_version.create(conn)
            start = _recognise(conn)
            _record(conn, MIGRATIONS[:start], stamped=True)
            if start:
                log.warning("call log: database without %s recognised at version %d; stamped", VERSION_TABLE, start)
        if start > head():
            raise SchemaTooNew(start, head())
        applied = []
        for migration in MIGRATIONS[start:]:
            migration.apply(conn)
            _record(conn, [migration], stamped=False)
            applied.append(migration.version)
            log.info("call log: applied migration %s", migration.label)
        if applied:
            (log.warning if start else log.info)("call log: schema upgraded from version %d to %d", start, head())
        return Upgrade(start=start, end=head(), applied=tuple(applied), stamped=stamped and start > 0)


def status(bind: sa.Engine | str) -> Status:
    """The version of the database (read, or recognised when it has no schema_version) and what is pending; no lock,
    no change."""
    with _engine(bind) as engine, engine.connect() as conn:
        version = _recorded(conn)
        recorded = version is not None
        if version is None:
            version = _recognise(conn)
    return Status(version=version, recorded=recorded, head=head(), pending=MIGRATIONS[version:])
