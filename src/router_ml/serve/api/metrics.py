"""GET /metrics: the Prometheus text exposition (:mod:`router_ml.serve.observability.metrics`).

Open, like /healthz and like Prometheus exporters generally: scrapers are configured without keys, and the
metrics name only models, deployments and routes (no prompts, keys or tenants). Where the gateway's port is
public, keep /metrics to the internal network at the proxy in front of it. The exposition is rendered in a worker
thread: with several workers it reads every worker's files.
"""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Request, Response

router = APIRouter()


@router.get("/metrics", include_in_schema=False)
async def metrics(request: Request) -> Response:
    body, content_type = await asyncio.to_thread(request.app.state.metrics.render)
    return Response(body, media_type=content_type)
