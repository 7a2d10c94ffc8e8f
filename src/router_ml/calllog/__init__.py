"""The call log's database: the tables the gateway owns (``calls``, ``tenants``, ``api_keys``) and their numbered
schema migrations, recorded in ``schema_version``.

:func:`upgrade` brings a database to the newest schema under a lock (two replicas starting together apply each
migration once); ``CallStore`` and ``TenantStore`` call it when they open, ``router-ml db upgrade`` on demand. Only
SQLAlchemy and the standard library are imported here. :mod:`router_ml.calllog.store` holds the ``calls`` table and
:class:`~router_ml.calllog.store.CallStore`, the gateway's writer and the reader that training, forecasts and
analytics share (it needs polars: import it where it is used).
"""

from router_ml.calllog.engine import engine_for
from router_ml.calllog.migrations import (
    MIGRATIONS,
    VERSION_TABLE,
    Migration,
    SchemaTooNew,
    Status,
    Upgrade,
    head,
    status,
    upgrade,
)

__all__ = ["MIGRATIONS", "VERSION_TABLE", "Migration", "SchemaTooNew", "Status", "Upgrade", "engine_for", "head",
           "status", "upgrade"]
