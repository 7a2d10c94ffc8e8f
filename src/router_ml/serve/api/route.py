"""POST /v1/route: the routing decision alone, no upstream call."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from router_ml.serve.api.auth import Caller
from router_ml.serve.api.errors import APIError
from router_ml.serve.api.schemas import RouteRequest, routing_prompt
from router_ml.serve.gateway.call import Gateway
from router_ml.serve.tenancy.rules import effective_policy
from router_ml.tokens import count_tokens

router = APIRouter()


@router.post("/v1/route")
async def route(body: RouteRequest, request: Request, tenant: Caller):
    if body.prompt is None and not body.messages:
        raise APIError(400, "give either prompt or messages", param="prompt")
    prompt = body.prompt if body.prompt is not None else routing_prompt(body.messages)
    bundle = request.app.state.bundles.current
    policy = effective_policy(tenant, body.policy, bundle.models, param="policy")
    decision = Gateway.decide(bundle, prompt, count_tokens(prompt), policy, param="policy")
    return JSONResponse(decision.as_dict())  # plain JSON types already: skips FastAPI's generic encoder
