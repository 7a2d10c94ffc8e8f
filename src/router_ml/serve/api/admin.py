"""``/admin/*``, behind the admin key: bundle reload, tenants and their API keys. Every load and query runs in a
worker thread: the event loop keeps serving calls."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, Field

from router_ml.serve.api.auth import require_admin
from router_ml.serve.api.errors import APIError
from router_ml.serve.tenancy.tenants import SHOWN_CHARS, TenantSettings, TenantStore

router = APIRouter(prefix="/admin", dependencies=[Depends(require_admin)])


class NewTenant(TenantSettings):
    name: str


@router.post("/reload")
async def reload(request: Request):
    try:
        bundle = await asyncio.to_thread(request.app.state.bundles.reload)  # requests go on meanwhile
    except (OSError, ValueError) as exc:
        raise APIError(500, f"reload failed, still serving the previous bundle: {exc}") from exc
    return {"status": "reloaded", "bundle_version": bundle.version}


def _store(request: Request) -> TenantStore:
    if request.app.state.tenants is None:
        raise APIError(503, "this server has no tenant store")
    return request.app.state.tenants


async def _call(method, *args, **kwargs):
    """A TenantStore call, in a worker thread, with its errors as API errors (a bad setting 400, an unknown name or
    key 404)."""
    try:
        return await asyncio.to_thread(method, *args, **kwargs)
    except ValueError as exc:
        raise APIError(400, str(exc)) from exc
    except KeyError as exc:
        raise APIError(404, exc.args[0]) from exc


def _described(store: TenantStore, name: str) -> dict:
    return {**store.require(name).as_dict(), "keys": store.list_keys(name)}


async def _describe(store: TenantStore, name: str) -> dict:
    return await _call(_described, store, name)


@router.post("/tenants", status_code=201)
async def create_tenant(body: NewTenant, request: Request):
    store = _store(request)
    settings = body.model_dump(exclude={"name"}, exclude_unset=True)
    return (await _call(store.create_tenant, body.name, **settings)).as_dict()


@router.get("/tenants")
async def list_tenants(request: Request):
    return {"object": "list", "data": [t.as_dict() for t in await _call(_store(request).list_tenants)]}


@router.get("/tenants/{name}")
async def get_tenant(name: str, request: Request):
    return await _describe(_store(request), name)


@router.patch("/tenants/{name}")
async def update_tenant(name: str, request: Request):
    store = _store(request)
    try:
        changes = await request.json()
    except ValueError:
        changes = None
    if not isinstance(changes, dict):
        raise APIError(400, "the body must be a JSON object of tenant settings")
    await _call(store.update_tenant, name, **changes)
    return await _describe(store, name)


class KeyLimits(BaseModel):
    """A key's own limits, beside its tenant's."""

    rpm: int | None = Field(default=None, ge=1)
    tpm: int | None = Field(default=None, ge=1)


@router.post("/tenants/{name}/keys", status_code=201)
async def issue_key(name: str, request: Request, limits: KeyLimits | None = None):
    key = await _call(_store(request).issue_key, name, **(limits.model_dump() if limits is not None else {}))
    return {"tenant": name, "key": key, "prefix": key[:SHOWN_CHARS], "note": "shown once: only its hash is stored"}


@router.delete("/tenants/{name}/keys/{prefix}")
async def revoke_key(name: str, prefix: str, request: Request):
    return {"tenant": name, "prefix": prefix, "revoked": await _call(_store(request).revoke_key, name, prefix)}
