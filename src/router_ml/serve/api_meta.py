"""Health, readiness, the model list and the admin reload."""

from __future__ import annotations

import asyncio
import time

from fastapi import APIRouter, Request

from router_ml.serve.errors import APIError
from router_ml.serve.policy import AUTO

router = APIRouter()


@router.get("/healthz")
async def healthz():
    return {"status": "ok"}


@router.get("/readyz")
async def readyz(request: Request):
    bundle = request.app.state.bundles.current
    return {"status": "ready", "bundle_version": bundle.version, "models": len(bundle.models)}


@router.get("/v1/models")
async def models(request: Request):
    created = int(time.time())
    names = [AUTO] + sorted(request.app.state.providers)
    return {"object": "list", "data": [{"id": n, "object": "model", "created": created, "owned_by": "router-ml"}
                                       for n in names]}


@router.post("/admin/reload")
async def reload(request: Request):
    try:
        bundle = await asyncio.to_thread(request.app.state.bundles.reload)  # requests go on meanwhile
    except (OSError, ValueError) as exc:
        raise APIError(500, f"reload failed, still serving the previous bundle: {exc}") from exc
    return {"status": "reloaded", "bundle_version": bundle.version}
