"""POST /v1/route: the routing decision alone, no upstream call."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from router_ml.serve.api.auth import Caller, effective_policy
from router_ml.serve.api.errors import APIError
from router_ml.serve.policy import decide
from router_ml.serve.api.schemas import RouteRequest, routing_prompt
from router_ml.tokens import count_tokens

router = APIRouter()


@router.post("/v1/route")
async def route(body: RouteRequest, request: Request, tenant: Caller):
    if body.prompt is None and not body.messages:
        raise APIError(400, "give either prompt or messages", param="prompt")
    prompt = body.prompt if body.prompt is not None else routing_prompt(body.messages)
    bundle = request.app.state.bundles.current
    policy = effective_policy(tenant, body.policy, bundle.models, param="policy")
    try:
        decision = decide(bundle, prompt, count_tokens(prompt), policy)
    except ValueError as exc:
        raise APIError(400, str(exc), param="policy") from exc
    return JSONResponse(decision)  # plain JSON types already: skips FastAPI's generic encoder
