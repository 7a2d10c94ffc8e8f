"""The one way the gateway opens the call log's database, for every table in it (calls, tenants, keys).

SQLite: connections usable from any thread (the call log's writer, the event loop's worker threads), a 30 s busy
timeout, and on every connection ``journal_mode=WAL`` (readers never block the writer nor it them) with
``synchronous=NORMAL`` (a commit is not fsynced; WAL keeps the file consistent, a power loss may lose the last
commits). Two engines on one file (the call log's and the tenant store's) then agree on both. PostgreSQL and the
rest: a pool that checks a connection before handing it out (``pool_pre_ping``).
"""

from __future__ import annotations

import sqlalchemy as sa

SQLITE_PRAGMAS = ("PRAGMA journal_mode=WAL", "PRAGMA synchronous=NORMAL")


def _sqlite_pragmas(dbapi_conn, _record) -> None:  # noqa: ANN001
    cursor = dbapi_conn.cursor()
    for pragma in SQLITE_PRAGMAS:
        cursor.execute(pragma)
    cursor.close()


def engine_for(url: str) -> sa.Engine:
    """An engine on the call log's database at the SQLAlchemy ``url`` (see the module docstring)."""
    if not url.startswith("sqlite"):
        return sa.create_engine(url, pool_pre_ping=True)
    engine = sa.create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})
    sa.event.listen(engine, "connect", _sqlite_pragmas)
    return engine
