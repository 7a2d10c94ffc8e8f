"""Who is calling: the tenant of a ``/v1/*`` request's API key, the admin key of ``/admin/*``.

Auth is on when the app has a tenant store (``create_app(tenants=...)``, as ``build_app`` always does): every
``/v1/*`` endpoint then needs ``Authorization: Bearer <key>`` (how the openai SDK sends ``api_key``), and
``/admin/*`` needs the admin key (``ROUTER_ML_ADMIN_KEY``). Without a tenant store (library use) requests run
as tenant None, and ``/admin/*`` is open unless an admin key was given.
"""

from __future__ import annotations

import asyncio
import hmac
from typing import Annotated

from fastapi import Depends, Request

from router_ml.serve.observability.analytics import Scope
from router_ml.serve.api.errors import APIError
from router_ml.serve.tenancy.tenants import Tenant

def _bearer(request: Request) -> str | None:
    scheme, _, token = (request.headers.get("authorization") or "").partition(" ")
    return (token.strip() or None) if scheme.lower() == "bearer" else None


async def caller(request: Request) -> Tenant | None:
    """FastAPI dependency: the calling tenant (None when auth is off); 401 without an active key.

    Async on purpose: FastAPI would run a plain function in its thread pool, a hop per request. A cached key
    costs a SHA-256 and a dict lookup, on the loop; a miss (once per key per process per TTL) an indexed query, in a
    worker thread."""
    tenants = request.app.state.tenants
    if tenants is None:
        return None
    key = _bearer(request)
    if key is None:
        raise APIError(401, "missing API key: send it as 'Authorization: Bearer <key>' (the openai SDK's api_key)")
    known, tenant = tenants.cached(key)
    if not known:
        tenant = await asyncio.to_thread(tenants.authenticate, key)
    if tenant is None:
        raise APIError(401, "invalid or revoked API key")
    return tenant


Caller = Annotated[Tenant | None, Depends(caller)]


async def require_admin(request: Request) -> None:
    """FastAPI dependency of ``/admin/*``: 403 unless the request carries the admin key."""
    admin_key = request.app.state.admin_key
    if admin_key is None:
        if request.app.state.tenants is None:
            return  # library use without auth
        raise APIError(403, "admin endpoints are disabled: set ROUTER_ML_ADMIN_KEY and send it as "
                            "'Authorization: Bearer <admin key>'")
    if not hmac.compare_digest((_bearer(request) or "").encode(), admin_key.encode()):
        raise APIError(403, "admin endpoints need the admin key (ROUTER_ML_ADMIN_KEY) as 'Authorization: Bearer'")


async def viewer(request: Request) -> Scope:
    """FastAPI dependency of the analytics API: the admin key sees every tenant, a tenant's key its own tenant
    only (a ``tenant`` query naming another one is 403); without auth (library use) everything is visible."""
    asked = request.query_params.get("tenant") or None
    model = request.query_params.get("model") or None
    admin_key = request.app.state.admin_key
    if request.app.state.tenants is None and admin_key is None:
        return Scope(tenant=asked, admin=True, model=model)
    key = _bearer(request)
    if admin_key is not None and key is not None and hmac.compare_digest(key.encode(), admin_key.encode()):
        return Scope(tenant=asked, admin=True, model=model)
    tenant = await caller(request)
    if tenant is None:  # no tenant store, but an admin key: only the admin reads
        raise APIError(401, "analytics need the admin key (ROUTER_ML_ADMIN_KEY) as 'Authorization: Bearer'")
    if asked is not None and asked != tenant.name:
        raise APIError(403, f"this key reads tenant {tenant.name!r} only, not {asked!r}", param="tenant")
    return Scope(tenant=tenant.name, admin=False, model=model)


Viewer = Annotated[Scope, Depends(viewer)]
