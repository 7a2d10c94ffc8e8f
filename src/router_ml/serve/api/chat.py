"""POST /v1/chat/completions: OpenAI-compatible, routed when the model is ``router-ml/auto``.

The answer says which model served it (the ``model`` field and the ``x-router-ml-model``
header), what it cost (``x-router-ml-cost-usd`` and the ``router_ml`` field) and, when the tenant's
budget made the gateway serve a cheaper model than it chose, which one (``router_ml.degraded_from``
and ``x-router-ml-degraded-from``). The call itself runs in :mod:`router_ml.serve.gateway.call`.
"""

from __future__ import annotations

import asyncio
import json
import time

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from router_ml.calllog.record import CLIENT_CLOSED
from router_ml.serve.api.auth import Caller
from router_ml.serve.api.errors import APIError
from router_ml.serve.api.schemas import ChatCompletionRequest, parse_auto_model, routing_prompt
from router_ml.serve.gateway.call import Answer, ChatCall, StreamEnd, StreamFailed
from router_ml.serve.providers.base import ChatRequest

router = APIRouter()


def _call(body: ChatCompletionRequest, request: Request, tenant) -> ChatCall:
    try:
        routed = parse_auto_model(body.model)
    except ValueError as exc:
        raise APIError(400, str(exc), param="model") from exc
    asked = ChatRequest(body.model, [m.model_dump(exclude_none=True) for m in body.messages],
                        body.temperature, body.top_p, body.max_tokens,
                        [body.stop] if isinstance(body.stop, str) else body.stop, body.tools, body.tool_choice)
    return request.app.state.gateway.plan(tenant, asked, routed, body.router_ml, routing_prompt(body.messages),
                                          body.stream)


@router.post("/v1/chat/completions")
async def chat_completions(body: ChatCompletionRequest, request: Request, tenant: Caller):
    gateway = request.app.state.gateway
    call = _call(body, request, tenant)
    if (hit := gateway.cached(call)) is not None:
        return _cached_answer(call, hit)
    await gateway.admit(call)
    if call.stream:
        model, stream, first = await gateway.open_stream(call)
        return StreamingResponse(_sse(call, model, gateway.relay(call, model, stream, first)),
                                 media_type="text/event-stream", headers=_headers(call, model, None))
    answer = await _unless_client_leaves(request, gateway.complete(call))
    if answer is None:
        return Response(status_code=CLIENT_CLOSED)  # nobody reads it
    payload = _payload(call, answer)
    gateway.remember(call, payload, answer.cost_usd)
    return JSONResponse(payload, headers=_headers(call, answer.model, answer.cost_usd))


def _router_ml(call: ChatCall, cost_usd: float | None, **extra) -> dict:
    """The answer's ``router_ml`` field: the call id, cost, routing decision and budget degradation."""
    decision = call.decision.as_dict() if call.decision is not None else None
    return {"call_id": call.call_id, "cost_usd": cost_usd, **extra, "decision": decision,
            "degraded_from": call.degraded_from}


def _payload(call: ChatCall, answer: Answer) -> dict:
    result = answer.result
    message = {"role": "assistant", "content": result.text}
    if result.tool_calls:
        message["tool_calls"] = result.tool_calls
    return {
        "id": f"chatcmpl-{call.call_id}", "object": "chat.completion", "created": int(time.time()),
        "model": answer.model, "choices": [{"index": 0, "message": message, "finish_reason": result.finish_reason}],
        "usage": {"prompt_tokens": result.usage.input_tokens, "completion_tokens": result.usage.output_tokens,
                  "total_tokens": result.usage.input_tokens + result.usage.output_tokens},
        "router_ml": _router_ml(call, answer.cost_usd, latency_ms=answer.latency_ms),
    }


def _cached_answer(call: ChatCall, hit) -> JSONResponse:
    """The cached answer under the call's id, at zero cost, with what it saved."""
    cache = {"kind": hit.kind, "similarity": hit.similarity, "saved_usd": hit.saved_usd}
    payload = {**hit.payload, "id": f"chatcmpl-{call.call_id}", "created": int(time.time()),
               "router_ml": {**_router_ml(call, 0.0), "cache": cache}}
    return JSONResponse(payload, headers={**_headers(call, payload["model"], 0.0), "x-router-ml-cache": hit.kind})


def _headers(call: ChatCall, model: str, cost: float | None) -> dict:
    headers = {"x-router-ml-model": model, "x-router-ml-call-id": call.call_id}
    if cost is not None:
        headers["x-router-ml-cost-usd"] = f"{cost:.8f}"
    if call.degraded_from is not None:
        headers["x-router-ml-degraded-from"] = call.degraded_from
    return headers


async def _unless_client_leaves(request: Request, work):
    """Await ``work``; None when the client disconnected first, which cancels it (and so the upstream request).

    The body has been read, so the next ASGI message can only be ``http.disconnect``."""
    task = asyncio.ensure_future(work)
    gone = asyncio.ensure_future(request.receive())
    try:
        await asyncio.wait((task, gone), return_when=asyncio.FIRST_COMPLETED)
    finally:
        gone.cancel()
    if task.done():
        return task.result()
    task.cancel()  # the gateway logs the abandoned attempt
    await asyncio.wait((task,))
    return None


async def _sse(call: ChatCall, model: str, relayed):
    """The relayed stream as OpenAI's server-sent events; closing this closes the relay (and so the upstream)."""
    created, chunk_id = int(time.time()), f"chatcmpl-{call.call_id}"
    finish = None

    def event(delta: dict, finish_reason=None, extra: dict | None = None) -> str:
        payload = {"id": chunk_id, "object": "chat.completion.chunk", "created": created, "model": model,
                   "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}], **(extra or {})}
        return f"data: {json.dumps(payload)}\n\n"

    try:
        yield event({"role": "assistant", "content": ""})
        async for item in relayed:
            if isinstance(item, StreamEnd):
                usage = item.usage
                extra = {"router_ml": {"call_id": call.call_id, "cost_usd": item.cost_usd,
                                       "degraded_from": call.degraded_from},
                         "usage": {"prompt_tokens": usage.input_tokens, "completion_tokens": usage.output_tokens,
                                   "total_tokens": usage.input_tokens + usage.output_tokens}}
                yield event({}, finish or "stop", extra)
                yield "data: [DONE]\n\n"
            elif isinstance(item, StreamFailed):
                yield f"data: {json.dumps({'error': {'message': item.message, 'type': 'api_error'}})}\n\n"
            else:
                if item.text:
                    yield event({"content": item.text})
                if item.tool_calls:
                    yield event({"tool_calls": item.tool_calls})
                finish = item.finish_reason or finish
    finally:
        await relayed.aclose()
