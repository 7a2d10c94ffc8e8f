"""POST /v1/chat/completions: OpenAI-compatible, routed when the model is ``router-ml/auto``.

The answer says which model served it (the ``model`` field and the ``x-router-ml-model``
header) and what it cost (``x-router-ml-cost-usd`` and the ``router_ml`` field). A routed
request that fails upstream before any byte was sent falls back to the next model in the
policy's ranking; once streaming has started it never switches.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from router_ml.pricing import cost_usd_if_priced
from router_ml.serve.api.auth import Caller, check_model, effective_policy
from router_ml.serve.api.errors import APIError
from router_ml.serve.policy import Policy, decide, parse_auto_model
from router_ml.serve.providers.base import ChatRequest, ProviderError, Usage
from router_ml.serve.api.schemas import ChatCompletionRequest, routing_prompt
from router_ml.serve.tenancy.admission import Admission, OverBudget, RateLimited, admit, check_rates
from router_ml.tokens import count_tokens

router = APIRouter()
logger = logging.getLogger(__name__)
MAX_ATTEMPTS = 2
CLIENT_CLOSED = 499  # logged status of a stream the client abandoned (nginx's convention)


def _candidates(body: ChatCompletionRequest, state, bundle, prompt: str, input_tokens: int,
                tenant) -> tuple[list[str], dict | None]:
    """Every served model the request may use, best first (the call tries the first MAX_ATTEMPTS; a tenant over
    budget may degrade further down), and the routing decision when it was routed (under the tenant's default
    policy and allowed models)."""
    try:
        policy = parse_auto_model(body.model)
    except ValueError as exc:
        raise APIError(400, str(exc), param="model") from exc
    if policy is None:
        check_model(tenant, body.model)
        if body.model not in state.providers:
            raise APIError(404, f"model {body.model!r} is not served here; GET /v1/models lists them", param="model")
        return [body.model], None
    if body.router_ml is not None:  # the body's extension field overrides what the model name says
        policy = Policy(**{**policy.model_dump(exclude_none=True), **body.router_ml.model_dump(exclude_none=True)})
    policy = effective_policy(tenant, policy, bundle.models)
    try:
        decision = decide(bundle, prompt, input_tokens, policy)
    except ValueError as exc:
        raise APIError(400, str(exc), param="router_ml") from exc
    chosen = decision["model"]
    others = sorted((p for p in decision["predicted"] if p["allowed"] and p["model"] != chosen),
                    key=lambda p: (-p["quality"], p["cost_usd"]))
    ranked = [chosen] + [p["model"] for p in others]
    return [m for m in ranked if m in state.providers], decision


def _upstream_request(body: ChatCompletionRequest, messages: list[dict], model: str) -> ChatRequest:
    stop = [body.stop] if isinstance(body.stop, str) else body.stop
    return ChatRequest(model=model, messages=messages,
                       temperature=body.temperature, top_p=body.top_p, max_tokens=body.max_tokens, stop=stop,
                       tools=body.tools, tool_choice=body.tool_choice)


def _cost(model: str, usage: Usage) -> float | None:
    """USD of the call at the catalog's prices; None for a model without a price (e.g. self-hosted)."""
    return cost_usd_if_priced(model, usage.input_tokens, usage.output_tokens)


def _counted_usage(body: ChatCompletionRequest, text: str) -> Usage:
    """Token counts (o200k) for a provider that reported no usage."""
    sent = "\n".join(str(m.content or "") for m in body.messages)
    return Usage(count_tokens(sent), count_tokens(text))


def _log_failure(state, base: dict, model: str, exc: ProviderError, started: float, response: str | None = None):
    """A failed upstream attempt, logged as an error row under its own id (the call's id belongs to
    the row of the attempt that answered, when one did)."""
    _log(state, **{**base, "call_id": uuid.uuid4().hex}, model=model, status="error", error=exc.message,
         http_status=exc.status, response=response, latency_ms=(time.perf_counter() - started) * 1000)


def _log(state, **call) -> None:
    """Hand the call to the call log. An 'ok' call of a model without a price is logged at cost 0 with
    the flag 'unpriced'. A row the log rejects is counted and reported, never allowed to fail the answer."""
    state.metrics.observe_call(call)
    if state.store is None:
        return
    call.setdefault("task", "chat")
    if call.get("status") == "ok":
        call["cost_source"] = "tokens_x_price"
        if call.get("cost_usd") is None:
            call["cost_usd"], call["flags"] = 0.0, ["unpriced"]
    try:
        state.store.record(call)
    except (ValueError, OSError) as exc:  # a row the log rejects, or a journal that cannot be written
        state.log_rejects += 1
        logger.error("call %s not logged: %s", call.get("call_id"), exc)


async def _in_order(state, base: dict, models: list[str], started: float, attempt):
    """``(model, await attempt(model))`` for the first model whose attempt succeeds. Each failure is logged;
    a failure that is not retryable, or the last one, is raised."""
    for i, model in enumerate(models):
        try:
            return model, await attempt(model)
        except ProviderError as exc:
            _log_failure(state, base, model, exc, started)
            if not exc.retryable or i == len(models) - 1:
                raise
        except asyncio.CancelledError:  # the client went away while this model was answering
            _log(state, **base, model=model, status="error", http_status=CLIENT_CLOSED,
                 error="client closed the connection before the answer",
                 latency_ms=(time.perf_counter() - started) * 1000)
            raise


@router.post("/v1/chat/completions")
async def chat_completions(body: ChatCompletionRequest, request: Request, tenant: Caller):
    state = request.app.state
    prompt = routing_prompt(body.messages)
    bundle = state.bundles.current  # one bundle for the whole request, whatever a reload does meanwhile
    input_tokens = count_tokens(prompt)  # once: routing and the budget reservation both need it
    ranked, decision = _candidates(body, state, bundle, prompt, input_tokens, tenant)
    if not ranked:
        raise APIError(503, "no provider serves any model the policy allows")
    messages = [m.model_dump(exclude_none=True) for m in body.messages]
    cache_scope = _cache_scope(state, tenant, body, messages)
    if cache_scope is not None and (hit := state.cache.lookup(*cache_scope)) is not None:
        return _cached_answer(state, hit, prompt, bundle, decision, tenant)
    admission = _admit(state, tenant, body, ranked[:MAX_ATTEMPTS], decision, input_tokens, ranked, bundle, prompt)
    models = admission.models
    call_id = uuid.uuid4().hex
    base = {"call_id": call_id, "prompt": prompt, "routed": decision is not None,
            "bundle_version": bundle.version, "tenant": tenant.name if tenant is not None else None,
            "messages": messages}  # JSON-encoded by the call log's writer thread, off the hot path
    started = time.perf_counter()
    if body.stream:
        return await _stream(state, body, messages, models, base, started, admission)
    spent = 0.0
    try:
        answered = await _unless_client_leaves(request, _in_order(
            state, base, models, started, lambda m: state.providers[m].complete(_upstream_request(body, messages, m))))
        if answered is None:
            return Response(status_code=CLIENT_CLOSED)  # nobody reads it
        model, result = answered
        cost = _cost(model, result.usage)
        spent = cost or 0.0
    finally:
        _settle(state, admission, spent)
    latency = (time.perf_counter() - started) * 1000
    _log(state, **base, model=model, status="ok", http_status=200, response=result.text, latency_ms=latency,
         input_tokens=result.usage.input_tokens, output_tokens=result.usage.output_tokens, cost_usd=cost)
    message = {"role": "assistant", "content": result.text}
    if result.tool_calls:
        message["tool_calls"] = result.tool_calls
    payload = {
        "id": f"chatcmpl-{call_id}", "object": "chat.completion", "created": int(time.time()), "model": model,
        "choices": [{"index": 0, "message": message, "finish_reason": result.finish_reason}],
        "usage": {"prompt_tokens": result.usage.input_tokens, "completion_tokens": result.usage.output_tokens,
                  "total_tokens": result.usage.input_tokens + result.usage.output_tokens},
        "router_ml": {"call_id": call_id, "cost_usd": cost, "latency_ms": latency, "decision": decision},
    }
    if cache_scope is not None:
        state.cache.store(*cache_scope, payload, cost or 0.0)
    return JSONResponse(payload, headers=_headers(model, cost, call_id))


def _cache_scope(state, tenant, body: ChatCompletionRequest, messages: list[dict]) -> tuple | None:
    """(tenant, messages, model or policy, sampling): what a cached answer must match; None when not cached
    (no cache, or a streamed request)."""
    if state.cache is None or body.stream:
        return None
    policy = body.router_ml.model_dump(exclude_none=True) if body.router_ml is not None else None
    sampling = {"temperature": body.temperature, "top_p": body.top_p, "max_tokens": body.max_tokens,
                "stop": body.stop, "tools": body.tools, "tool_choice": body.tool_choice}
    return (tenant.name if tenant is not None else "", messages,
            {"model": body.model, "policy": policy}, sampling)


def _cached_answer(state, hit, prompt: str, bundle, decision: dict | None, tenant) -> JSONResponse:
    """The cached answer under a new call id, logged at zero cost with what it saved."""
    call_id = uuid.uuid4().hex
    payload = {**hit.payload, "id": f"chatcmpl-{call_id}", "created": int(time.time()),
               "router_ml": {"call_id": call_id, "cost_usd": 0.0, "decision": decision,
                             "cache": {"kind": hit.kind, "similarity": hit.similarity, "saved_usd": hit.saved_usd}}}
    usage = payload.get("usage") or {}
    _log(state, call_id=call_id, prompt=prompt, routed=decision is not None, bundle_version=bundle.version,
         tenant=tenant.name if tenant is not None else None, model=payload["model"], status="ok", http_status=200,
         response=payload["choices"][0]["message"].get("content"), latency_ms=0.0, cost_usd=0.0,
         input_tokens=usage.get("prompt_tokens", 0), output_tokens=usage.get("completion_tokens", 0),
         cache=hit.kind, saved_usd=hit.saved_usd)
    return JSONResponse(payload, headers={**_headers(payload["model"], 0.0, call_id), "x-router-ml-cache": hit.kind})


def _output_bounds(tenant, body: ChatCompletionRequest, decision: dict | None, bundle,
                   prompt: str) -> dict[str, int] | None:
    """Each model's predicted upper bound on the answer's length, which a request without ``max_tokens`` reserves;
    None when it sets one, the tenant has no budget or token limit, or the bundle has no length predictor."""
    if body.max_tokens is not None or bundle.lengths is None:
        return None
    if decision is None:
        limited = (tenant.budget_usd_day, tenant.budget_usd_month, tenant.tpm, tenant.key_tpm)
        if all(limit is None for limit in limited):
            return None  # a pass-through call with nothing to reserve skips the prediction
        return dict(zip(bundle.models, bundle.length_bounds(prompt)))
    return {p["model"]: p["max_output_tokens"] for p in decision["predicted"]}


def _admit(state, tenant, body: ChatCompletionRequest, models: list[str], decision: dict | None,
           input_tokens: int, ranked: list[str], bundle, prompt: str) -> Admission:
    """The tenant's rate limits and budget for this call (:mod:`router_ml.serve.tenancy.admission`); 429 when over. A routed
    call over budget may degrade to the first of ``ranked`` (every allowed model, best first) that fits."""
    if tenant is None or state.limits is None:
        return Admission(models)
    fallbacks = ranked if decision is not None else []
    bounds = _output_bounds(tenant, body, decision, bundle, prompt)
    try:
        check_rates(state.limits, tenant, input_tokens, body.max_tokens, models, bounds)
        return admit(state.limits, tenant, models, fallbacks, input_tokens, body.max_tokens, bounds)
    except RateLimited as exc:
        raise APIError(429, str(exc), headers={"retry-after": str(max(1, round(exc.retry_after)))}) from exc
    except OverBudget as exc:
        raise APIError(429, str(exc), param="budget") from exc


def _settle(state, admission: Admission, spent_usd: float) -> None:
    """Replace the call's budget reservation by what it cost."""
    if admission.reservation is not None:
        state.limits.settle(admission.reservation, spent_usd)


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
    task.cancel()  # _in_order logs the abandoned attempt
    await asyncio.wait((task,))
    return None


def _headers(model: str, cost: float | None, call_id: str) -> dict:
    headers = {"x-router-ml-model": model, "x-router-ml-call-id": call_id}
    if cost is not None:
        headers["x-router-ml-cost-usd"] = f"{cost:.8f}"
    return headers


async def _stream(state, body, messages, models, base, started, admission: Admission):
    """Open the upstream stream, falling back while nothing has been sent, then relay it as SSE."""

    async def open_stream(model: str):
        stream = state.providers[model].stream(_upstream_request(body, messages, model))
        return stream, await anext(stream, None)

    try:
        model, (stream, first) = await _in_order(state, base, models, started, open_stream)
    except BaseException:
        _settle(state, admission, 0.0)
        raise
    return StreamingResponse(_relay(state, body, model, stream, first, base, started, admission),
                             media_type="text/event-stream", headers=_headers(model, None, base["call_id"]))


async def _relay(state, body, model, stream, first, base, started, admission: Admission):
    """SSE events of the upstream stream; the upstream request is closed and the budget settled however
    this ends (a client that goes away closes this generator)."""
    created, chunk_id = int(time.time()), f"chatcmpl-{base['call_id']}"
    parts, usage, finish, logged = [], None, None, False

    def event(delta: dict, finish_reason=None, extra: dict | None = None) -> str:
        payload = {"id": chunk_id, "object": "chat.completion.chunk", "created": created, "model": model,
                   "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}], **(extra or {})}
        return f"data: {json.dumps(payload)}\n\n"

    try:
        yield event({"role": "assistant", "content": ""})
        chunk = first
        while chunk is not None:
            if chunk.text:
                parts.append(chunk.text)
                yield event({"content": chunk.text})
            if chunk.tool_calls:
                yield event({"tool_calls": chunk.tool_calls})
            usage, finish = chunk.usage or usage, chunk.finish_reason or finish
            chunk = await anext(stream, None)
        usage = usage or _counted_usage(body, "".join(parts))
        cost = _cost(model, usage)
        extra = {"router_ml": {"call_id": base["call_id"], "cost_usd": cost},
                 "usage": {"prompt_tokens": usage.input_tokens, "completion_tokens": usage.output_tokens,
                           "total_tokens": usage.input_tokens + usage.output_tokens}}
        _log(state, **base, model=model, status="ok", http_status=200, response="".join(parts),
             latency_ms=(time.perf_counter() - started) * 1000, cost_usd=cost,
             input_tokens=usage.input_tokens, output_tokens=usage.output_tokens)  # logged before the answer ends
        logged = True
        yield event({}, finish or "stop", extra)
        yield "data: [DONE]\n\n"
    except ProviderError as exc:  # after the first byte: end the stream with an error event, never switch
        _log_failure(state, base, model, exc, started, response="".join(parts))
        yield f"data: {json.dumps({'error': {'message': f'upstream: {exc.message}', 'type': 'api_error'}})}\n\n"
    except (asyncio.CancelledError, GeneratorExit):  # the client went away: log what was streamed and paid for
        if not logged:
            usage = usage or _counted_usage(body, "".join(parts))
            _log(state, **base, model=model, status="error", http_status=CLIENT_CLOSED, response="".join(parts),
                 error="client closed the connection before the answer ended",
                 latency_ms=(time.perf_counter() - started) * 1000, cost_usd=_cost(model, usage),
                 input_tokens=usage.input_tokens, output_tokens=usage.output_tokens)
        raise
    finally:
        await stream.aclose()
        # What was streamed was paid for, however the stream ended.
        _settle(state, admission, _cost(model, usage or _counted_usage(body, "".join(parts))) or 0.0)
