"""One chat call through the gateway, from its candidates to its call-log row: no HTTP here.

:mod:`router_ml.serve.api.chat` turns a request into a :class:`ChatCall` (:meth:`Gateway.plan`) and what
the gateway returns into a response. In between: the routing decision and the models to try (a routed call
that fails upstream before any byte was sent falls back to the next model of the decision's ranking; once
streaming has started it never switches), the response cache, the tenant's rate limits and budget, the
attempts, and one :class:`~router_ml.calllog.record.CallRecord` per attempt for the call log and the metrics.
Errors are the domain's (:mod:`router_ml.serve.gateway.errors`, :mod:`router_ml.serve.tenancy`,
:class:`~router_ml.serve.providers.base.ProviderError`); ``api/`` maps them to HTTP.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field, replace

from router_ml.bundle import Bundle, Decision
from router_ml.calllog.record import CLIENT_CLOSED, CallRecord
from router_ml.pricing import cost_usd_if_priced
from router_ml.routers.policy import Policy
from router_ml.serve.gateway.errors import InvalidCall, ModelNotServed, NoCandidates
from router_ml.serve.providers.base import ChatChunk, ChatRequest, ChatResult, ProviderError, Usage
from router_ml.serve.tenancy.admission import Admission, admit, check_rates
from router_ml.serve.tenancy.rules import check_model, effective_policy
from router_ml.serve.tenancy.tenants import Tenant
from router_ml.tokens import count_tokens

logger = logging.getLogger(__name__)
MAX_ATTEMPTS = 2


@dataclass
class ChatCall:
    """One chat call as the gateway runs it.

    ``request`` is the upstream request as asked: its model is what the caller named (a served model, or
    ``router-ml/auto...``); ``policy`` is the extension field's override as asked (both key the cache);
    ``decision`` is the routing decision of a routed
    call; ``candidates`` the served models it may use, best first (it tries the first :data:`MAX_ATTEMPTS`;
    a tenant over budget may degrade further down); ``admission`` what the tenant's budget reserved.
    """

    call_id: str
    tenant: Tenant | None
    prompt: str
    request: ChatRequest
    policy: dict | None
    stream: bool
    bundle: Bundle
    input_tokens: int
    decision: Decision | None
    candidates: list[str]
    admission: Admission = field(default_factory=lambda: Admission([]))
    started: float = field(default_factory=time.perf_counter)

    @property
    def messages(self) -> list[dict]:
        return self.request.messages

    @property
    def models(self) -> list[str]:
        """The models this call tries, in order."""
        return self.admission.models

    @property
    def degraded_from(self) -> str | None:
        """The model the gateway would have served had the budget allowed; None when the budget changed nothing
        the caller sees (not degraded, or it only dropped the fallback behind the chosen model)."""
        chosen = self.admission.degraded_from
        return chosen[0] if chosen and chosen[0] != self.models[0] else None

    def upstream_request(self, model: str) -> ChatRequest:
        return replace(self.request, model=model)

    def elapsed_ms(self) -> float:
        return (time.perf_counter() - self.started) * 1000

    def record(self, model: str, status: str, http_status: int, call_id: str | None = None,
               **fields) -> CallRecord:
        """The call-log row of one attempt (a failed attempt gets an id of its own: the call's id belongs to
        the row of the attempt that answered, when one did)."""
        return CallRecord(call_id=call_id or self.call_id, prompt=self.prompt, model=model, status=status,
                          http_status=http_status, latency_ms=fields.pop("latency_ms", self.elapsed_ms()),
                          tenant=self.tenant.name if self.tenant is not None else None,
                          routed=self.decision is not None, bundle_version=self.bundle.version,
                          messages=self.messages, degraded_from=self.degraded_from, **fields)

    def cache_scope(self) -> tuple:
        """(tenant, messages, model or policy, sampling): what a cached answer must match."""
        return (self.tenant.name if self.tenant is not None else "", self.messages,
                {"model": self.request.model, "policy": self.policy}, self.request.sampling())

    def output_bounds(self) -> dict[str, int] | None:
        """Each model's predicted upper bound on the answer's length, which a call without ``max_tokens``
        reserves; None when it sets one, the tenant has no budget or token limit, or the bundle has no length
        predictor."""
        if self.request.max_tokens is not None or self.bundle.lengths is None:
            return None
        if self.decision is None:
            t = self.tenant
            if all(limit is None for limit in (t.budget_usd_day, t.budget_usd_month, t.tpm, t.key_tpm)):
                return None  # a pass-through call with nothing to reserve skips the prediction
            return dict(zip(self.bundle.models, self.bundle.length_bounds(self.prompt)))
        return {p["model"]: p["max_output_tokens"] for p in self.decision.predicted}


@dataclass(frozen=True)
class Answer:
    """A completed call: the model that answered, its result, and what it cost (None: the model has no price)."""

    model: str
    result: ChatResult
    cost_usd: float | None
    latency_ms: float


@dataclass(frozen=True)
class StreamEnd:
    """The last item of a relayed stream that ended well: the usage and cost of the whole answer."""

    usage: Usage
    cost_usd: float | None


@dataclass(frozen=True)
class StreamFailed:
    """The last item of a relayed stream the upstream broke after the first byte (it never switches models)."""

    message: str


def call_cost(model: str, usage: Usage) -> float | None:
    """USD of a call at the catalog's prices; None for a model without a price (e.g. self-hosted)."""
    return cost_usd_if_priced(model, usage.input_tokens, usage.output_tokens)


class Gateway:
    """The chat path over the app's parts: the bundles, the providers (model -> provider), the call log, the
    metrics, and optionally the tenants' limits, the response cache and shadow judging."""

    def __init__(self, bundles, providers: dict, store=None, metrics=None, limits=None, cache=None, shadow=None,
                 steering=None):
        self.bundles, self.providers, self.store = bundles, providers, store
        self.metrics, self.limits, self.cache, self.shadow, self.steering = metrics, limits, cache, shadow, steering

    # ----------------------------------------------------------------- before any upstream call
    def plan(self, tenant: Tenant | None, request: ChatRequest, routed: Policy | None, override: Policy | None,
             prompt: str, stream: bool) -> ChatCall:
        """The call and its candidates. ``request`` names the model asked for, ``routed`` the policy that name asks
        for (None: a concrete model), ``override`` the extension field's fields over it; ``prompt`` is the text
        routing and budgets read."""
        bundle = self.bundles.current  # one bundle for the whole call, whatever a reload does meanwhile
        input_tokens = count_tokens(prompt)  # once: routing and the budget reservation both need it
        decision = None
        if routed is None:
            check_model(tenant, request.model)
            if request.model not in self.providers:
                raise ModelNotServed(f"model {request.model!r} is not served here; GET /v1/models lists them",
                                     "model")
            candidates = [request.model]
        else:
            if override is not None:
                routed = Policy(**{**routed.model_dump(exclude_none=True), **override.model_dump(exclude_none=True)})
            effective = effective_policy(tenant, routed, bundle.models)
            policy = self._steered(tenant, bundle, effective)
            decision = self.decide(bundle, prompt, input_tokens, policy)
            candidates = [m for m in decision.ranking if m in self.providers]
            if policy is not effective:
                if self.steering.placed(tenant.name):
                    self.steering.count(tenant.name)
                else:  # a new tenant's first calls
                    self.steering.place(tenant.name, decision, bundle.models, policy.reference)
        if not candidates:
            raise NoCandidates("no provider serves any model the policy allows")
        asked = override.model_dump(exclude_none=True) if override is not None else None
        return ChatCall(uuid.uuid4().hex, tenant, prompt, request, asked, stream, bundle, input_tokens, decision,
                        candidates, Admission(candidates[:MAX_ATTEMPTS]))

    def _steered(self, tenant: Tenant | None, bundle: Bundle, policy: Policy) -> Policy:
        """``policy`` at the tenant's online operating point (:mod:`router_ml.serve.gateway.steering`) when steering
        is on, the tenant's reference model is one of the bundle's, and neither the tenant nor the request chose
        another objective."""
        if (self.steering is None or tenant is None or tenant.reference_model not in bundle.models
                or any(v is not None for v in (policy.quality, policy.lam, policy.margin))):
            return policy
        return policy.model_copy(update={"reference": tenant.reference_model,
                                         "margin": self.steering.margin(tenant.name)})

    @staticmethod
    def decide(bundle: Bundle, prompt: str, input_tokens: int, policy: Policy, param: str = "router_ml") -> Decision:
        """The bundle's decision under ``policy``; InvalidCall names a policy it cannot apply."""
        try:
            return bundle.decide(prompt, input_tokens, policy)
        except ValueError as exc:
            raise InvalidCall(str(exc), param) from exc

    def cached(self, call: ChatCall):
        """The response cache's answer to ``call`` (None when off, streamed, or a miss), logged at cost 0 with
        what it saved under the call's id."""
        if self.cache is None or call.stream:
            return None
        hit = self.cache.lookup(*call.cache_scope())
        if hit is None:
            return None
        usage = hit.payload.get("usage") or {}
        self.log(call.record(hit.payload["model"], "ok", 200, latency_ms=0.0, cost_usd=0.0,
                             response=hit.payload["choices"][0]["message"].get("content"),
                             input_tokens=usage.get("prompt_tokens", 0),
                             output_tokens=usage.get("completion_tokens", 0), cache=hit.kind,
                             saved_usd=hit.saved_usd))
        return hit

    def remember(self, call: ChatCall, payload: dict, cost_usd: float | None) -> None:
        """Keep an answered call's payload for the next identical request (when the cache is on)."""
        if self.cache is not None and not call.stream:
            self.cache.store(*call.cache_scope(), payload, cost_usd or 0.0)

    async def admit(self, call: ChatCall) -> None:
        """The tenant's rate limits and budget (:mod:`router_ml.serve.tenancy.admission`): RateLimited or OverBudget
        when over. A routed call over budget may degrade to the first candidate that fits."""
        tenant = call.tenant
        if tenant is None or self.limits is None:
            return
        budgeted = tenant.budget_usd_day is not None or tenant.budget_usd_month is not None
        if budgeted and not self.limits.primed(tenant.name):  # the period's spend so far: a query, off the loop
            await asyncio.to_thread(self.limits.prime, tenant.name)
        bounds = call.output_bounds()
        max_tokens = call.request.max_tokens
        check_rates(self.limits, tenant, call.input_tokens, max_tokens, call.models, bounds)
        fallbacks = call.candidates if call.decision is not None else []
        call.admission = admit(self.limits, tenant, call.models, fallbacks, call.input_tokens, max_tokens, bounds)

    def settle(self, call: ChatCall, spent_usd: float) -> None:
        """Replace the call's budget reservation by what it cost."""
        if call.admission.reservation is not None:
            self.limits.settle(call.admission.reservation, spent_usd)

    # ----------------------------------------------------------------- upstream
    async def complete(self, call: ChatCall) -> Answer:
        """The answer of the first model that gives one; every attempt logged, the budget settled."""
        spent = 0.0
        try:
            model, result = await self._in_order(call, lambda m: self.providers[m].complete(call.upstream_request(m)))
            cost = call_cost(model, result.usage)
            spent = cost or 0.0
        finally:
            self.settle(call, spent)
        latency = call.elapsed_ms()
        self.log(call.record(model, "ok", 200, latency_ms=latency, response=result.text, cost_usd=cost,
                             input_tokens=result.usage.input_tokens, output_tokens=result.usage.output_tokens))
        answer = Answer(model, result, cost, latency)
        if self.shadow is not None:  # a task of its own: never delays the answer
            self.shadow.consider(call, answer)
        return answer

    async def open_stream(self, call: ChatCall) -> tuple[str, AsyncIterator[ChatChunk], ChatChunk | None]:
        """(model, its stream, the first chunk) of the first model whose stream opens; the budget is settled at
        0 when none does."""

        async def opened(model: str):
            stream = self.providers[model].stream(call.upstream_request(model))
            return stream, await anext(stream, None)

        try:
            model, (stream, first) = await self._in_order(call, opened)
        except BaseException:
            self.settle(call, 0.0)
            raise
        return model, stream, first

    async def relay(self, call: ChatCall, model: str, stream: AsyncIterator[ChatChunk], first: ChatChunk | None):
        """The stream's chunks, then a :class:`StreamEnd` (logged before it is yielded) or :class:`StreamFailed`.
        However this ends (a client that goes away closes this generator), the upstream stream is closed, the
        call is logged and what was streamed is paid for."""
        parts, usage, logged = [], None, False

        def counted() -> Usage:
            return usage or Usage(count_tokens("\n".join(str(m.get("content") or "") for m in call.messages)),
                                  count_tokens("".join(parts)))
        try:
            chunk = first
            while chunk is not None:
                if chunk.text:
                    parts.append(chunk.text)
                yield chunk
                usage = chunk.usage or usage
                chunk = await anext(stream, None)
            usage = counted()
            cost = call_cost(model, usage)
            self.log(call.record(model, "ok", 200, response="".join(parts), cost_usd=cost,
                                 input_tokens=usage.input_tokens, output_tokens=usage.output_tokens))
            logged = True
            if self.shadow is not None:  # judged like a completed call, on the text it streamed
                self.shadow.consider(call, Answer(model, ChatResult("".join(parts), "stop", usage), cost,
                                                  call.elapsed_ms()))
            yield StreamEnd(usage, cost)
        except ProviderError as exc:
            self._log_failure(call, model, exc, response="".join(parts))
            yield StreamFailed(f"upstream: {exc.message}")
        except (asyncio.CancelledError, GeneratorExit):  # the client went away: log what was streamed
            if not logged:
                usage = counted()
                self.log(call.record(model, "error", CLIENT_CLOSED, response="".join(parts),
                                     error="client closed the connection before the answer ended",
                                     cost_usd=call_cost(model, usage), input_tokens=usage.input_tokens,
                                     output_tokens=usage.output_tokens))
            raise
        finally:
            await stream.aclose()
            self.settle(call, call_cost(model, counted()) or 0.0)

    async def _in_order(self, call: ChatCall, attempt: Callable[[str], Awaitable]):
        """``(model, await attempt(model))`` for the first model whose attempt succeeds. Each failure is logged;
        a failure that is not retryable, or the last one, is raised."""
        models = call.models
        for i, model in enumerate(models):
            try:
                return model, await attempt(model)
            except ProviderError as exc:
                self._log_failure(call, model, exc)
                if not exc.retryable or i == len(models) - 1:
                    raise
            except asyncio.CancelledError:  # the client went away while this model was answering
                self.log(call.record(model, "error", CLIENT_CLOSED,
                                     error="client closed the connection before the answer"))
                raise

    # ----------------------------------------------------------------- the log
    def _log_failure(self, call: ChatCall, model: str, exc: ProviderError, response: str | None = None) -> None:
        self.log(call.record(model, "error", exc.status, call_id=uuid.uuid4().hex, error=exc.message,
                             response=response))

    def log(self, record: CallRecord) -> None:
        """Count the call and hand it to the call log. A row the log refuses is counted by the store and
        reported, never allowed to fail the answer."""
        if self.metrics is not None:
            self.metrics.observe_call(record)
        if self.store is None:
            return
        try:
            self.store.record(record)
        except (ValueError, OSError) as exc:  # a row the log rejects, or a journal that cannot be written
            logger.error("call %s not logged: %s", record.call_id, exc)
