"""POST /v1/feedback: a quality score for a logged call, the label the next router learns from. The call log's
reads, its update and any flush of calls still queued run in a worker thread: the event loop keeps serving calls."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Request
from pydantic import BaseModel, Field, model_validator

from router_ml.serve.api.auth import Caller
from router_ml.serve.api.errors import APIError

router = APIRouter()


class Feedback(BaseModel):
    call_id: str = Field(min_length=1)
    quality: float | None = Field(default=None, ge=0, le=1)
    thumbs: str | None = Field(default=None, pattern="^(up|down)$")

    @model_validator(mode="after")
    def one_score(self):
        if (self.quality is None) == (self.thumbs is None):
            raise ValueError("give exactly one of quality (0 to 1) or thumbs ('up' or 'down')")
        return self


@router.post("/v1/feedback")
async def feedback(body: Feedback, request: Request, tenant: Caller):
    store = request.app.state.store
    if store is None:
        raise APIError(503, "this server keeps no call log, so it takes no feedback")
    unknown = APIError(404, f"no logged call with call_id {body.call_id!r}", param="call_id")
    quality = body.quality if body.quality is not None else float(body.thumbs == "up")

    def label() -> dict:
        if tenant is not None and _tenant_of(store, body.call_id) != tenant.name:
            raise unknown  # another tenant's call looks like no call at all
        return store.feedback(body.call_id, quality)

    try:
        row = await asyncio.to_thread(label)
    except KeyError as exc:
        raise unknown from exc
    except ValueError as exc:
        raise APIError(400, str(exc), param="call_id") from exc
    return {"call_id": body.call_id, "quality": row["quality"], "model": row["model"]}


def _tenant_of(store, call_id: str) -> str | None:
    """The tenant of a logged call (None when unknown); a call still queued is flushed first."""
    row = store.get(call_id)
    if row is None:
        store.flush()
        row = store.get(call_id)
    return None if row is None else row["tenant"]
