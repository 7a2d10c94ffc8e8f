"""Health, readiness (both open) and the model list (the caller's allowed models)."""

from __future__ import annotations

import time

from fastapi import APIRouter, Request

from router_ml.serve.api.auth import Caller
from router_ml.serve.api.schemas import AUTO

router = APIRouter()


@router.get("/healthz")
async def healthz():
    return {"status": "ok"}


@router.get("/readyz")
async def readyz(request: Request):
    bundle = request.app.state.bundles.current
    return {"status": "ready", "bundle_version": bundle.version, "models": len(bundle.models)}


@router.get("/v1/models")
async def models(request: Request, tenant: Caller):
    created = int(time.time())
    served = request.app.state.providers
    names = [AUTO] + sorted(m for m in served if tenant is None or tenant.allows(m))
    return {"object": "list", "data": [{"id": n, "object": "model", "created": created, "owned_by": "router-ml"}
                                       for n in names]}
