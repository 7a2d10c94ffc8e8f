"""The web dashboard: committed static files (no build step, nothing from a CDN), served at ``/dashboard``.

The page holds no data and needs no key; its script reads the API key from the URL fragment
(``/dashboard#key=...``, never sent to the server) or a small form, and calls ``/v1/analytics/*`` with it. Files are
read in a worker thread, off the event loop.
"""

from __future__ import annotations

import asyncio
from importlib import resources

from fastapi import APIRouter, HTTPException
from fastapi.responses import RedirectResponse, Response

router = APIRouter(include_in_schema=False)

ASSETS = {"dashboard.html": "text/html; charset=utf-8", "dashboard.js": "text/javascript; charset=utf-8",
          "dashboard.css": "text/css; charset=utf-8"}
# Only this origin's script, styles and API; no frames, no referrer (the key lives in the fragment, never sent).
HEADERS = {"Cache-Control": "no-cache", "X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer",
           "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
                                      "img-src 'self' data:; base-uri 'none'; form-action 'none'; "
                                      "frame-ancestors 'none'"}


async def _asset(name: str) -> Response:
    if name not in ASSETS:
        raise HTTPException(404, f"no dashboard file {name!r}")
    body = await asyncio.to_thread(resources.files("router_ml.serve").joinpath("static", name).read_bytes)
    return Response(body, media_type=ASSETS[name], headers=HEADERS)


@router.get("/dashboard")
async def dashboard() -> Response:
    return await _asset("dashboard.html")


@router.get("/dashboard/")
async def dashboard_slash() -> Response:
    return RedirectResponse("/dashboard", status_code=308)


@router.get("/dashboard/{name}")
async def dashboard_asset(name: str) -> Response:
    return await _asset(name)
