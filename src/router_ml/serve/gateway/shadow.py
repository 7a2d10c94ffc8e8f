"""Shadow judging: after a client has its answer, a sampled share of routed calls is also sent to the tenant's
reference model, and a judge (:mod:`router_ml.serve.gateway.judge`) scores the routed answer against the
reference's. Every extra answer is logged as a row of kind 'shadow', the verdict on the served answer as kind
'judge' (``judges`` = the call's id), so that their cost counts against the savings and the judge's scores feed
the quality estimate (:func:`router_ml.serve.observability.analytics.quality`).

With online steering (:mod:`router_ml.serve.gateway.steering`) a sampled call also gets *probes*: the models the
levels near the tenant's operating point would have served. Those answers are asked for and judged against the
reference's too (verdicts of kind 'probe'), and every level's label goes to the tenant's operating point, stored
beside it (:meth:`~router_ml.serve.gateway.steering.Steering.judged`).

It never delays or changes an answer: the work runs in a task of its own, started after the call was logged.
A call is considered when its tenant has a reference model the gateway serves and another model answered it or
a probe would; it is sampled with probability ``rate`` (for a steered tenant: on the online loop's front-loaded
schedule of mean ``rate``, :meth:`~router_ml.serve.gateway.steering.Steering.chance`), while the tenant's judging
spend of the UTC day (in this process) is under ``cap_usd_day``. Calls answered from the cache are not judged.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
import uuid
from dataclasses import dataclass

from router_ml.calllog.operating_points import Label
from router_ml.calllog.record import CallRecord
from router_ml.clock import SYSTEM_CLOCK, Clock
from router_ml.serve.gateway.judge import JudgeError, judge
from router_ml.serve.gateway.steering import Probes
from router_ml.serve.providers.base import ProviderError

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ShadowSettings:
    """``judge_model``: a served model that judges; ``rate``: the share of eligible calls judged;
    ``cap_usd_day``: a tenant's judging spend per UTC day; ``timeout_s``: per shadow or judge call."""

    judge_model: str
    rate: float = 0.03
    cap_usd_day: float = 1.0
    timeout_s: float = 60.0

    def __post_init__(self):
        if not 0 <= self.rate <= 1:
            raise ValueError(f"shadow rate must be a share in [0, 1], not {self.rate}")
        if self.cap_usd_day < 0:
            raise ValueError(f"shadow cap_usd_day must be >= 0, not {self.cap_usd_day}")


class ShadowJudge:
    """Samples answered calls and judges them in background tasks (see the module docstring). ``cost(model,
    usage)`` prices a call (None: unpriced); ``store`` receives the rows."""

    def __init__(self, settings: ShadowSettings, providers: dict, store, cost, clock: Clock = SYSTEM_CLOCK,
                 rng: random.Random | None = None, steering=None):
        if settings.judge_model not in providers:
            raise ValueError(f"judge model {settings.judge_model!r} is not served here: {', '.join(providers)}")
        self.settings, self.providers, self.store, self.cost, self.clock = settings, providers, store, cost, clock
        self.rng, self.steering = rng or random.Random(), steering
        self._spent: dict[tuple[str, str], float] = {}
        self._tasks: set[asyncio.Task] = set()

    def consider(self, call, answer) -> asyncio.Task | None:
        """Start judging ``call`` (a :class:`~router_ml.serve.gateway.call.ChatCall`) answered by ``answer`` when it
        is eligible and sampled; the task, or None."""
        tenant = call.tenant
        reference = tenant.reference_model if tenant is not None else None
        if reference is None or reference not in self.providers:
            return None
        steered = self.steering is not None and call.decision is not None and reference in call.bundle.models
        chance = self.steering.chance(tenant.name, self.settings.rate) if steered else self.settings.rate
        if self.rng.random() >= chance or self._spent_today(tenant.name) >= self.settings.cap_usd_day:
            return None
        probes = self.steering.probes(tenant.name, call.decision, call.bundle.models, reference) if steered else None
        if answer.model == reference and (probes is None or all(m == reference for m in probes.models.values())):
            return None  # nothing to compare
        task = asyncio.get_running_loop().create_task(self._judge(call, answer, reference, probes, chance))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def drain(self) -> None:
        """Wait for the judging in flight (at shutdown, and in tests)."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    def _spent_today(self, tenant: str) -> float:
        return self._spent.get((tenant, self.clock.now().date().isoformat()), 0.0)

    def _add_spend(self, tenant: str, usd: float | None) -> None:
        key = (tenant, self.clock.now().date().isoformat())
        self._spent[key] = self._spent.get(key, 0.0) + (usd or 0.0)

    async def _answer(self, call, model: str) -> tuple[str, str] | None:
        """``model``'s answer to the call and the id of its shadow row; None when it failed (logged too)."""
        started = time.perf_counter()
        try:
            result = await asyncio.wait_for(self.providers[model].complete(call.upstream_request(model)),
                                            self.settings.timeout_s)
        except (ProviderError, TimeoutError) as exc:
            self._log(call, model, "shadow", started, error=f"{model} answer failed: {exc!r}")
            return None
        cost = self.cost(model, result.usage)
        self._add_spend(call.tenant.name, cost)
        row = self._log(call, model, "shadow", started, response=result.text, usage=result.usage, cost_usd=cost)
        return result.text, row

    async def _verdict(self, call, kind: str, graded: tuple[str, str], reference: tuple[str, str]):
        """The judge's Judgment of the ``graded`` answer against the ``reference`` one (each (text, the id of its
        row)), logged as a row of ``kind`` naming both rows; None on failure."""
        settings, started = self.settings, time.perf_counter()
        ids = {"graded": graded[1], "against": reference[1]}
        try:
            verdict = await judge(self.providers[settings.judge_model], settings.judge_model, call.prompt, graded[0],
                                  reference[0], settings.timeout_s)
        except JudgeError as exc:
            self._log(call, settings.judge_model, kind, started, error=str(exc), **ids)
            return None
        cost = self.cost(settings.judge_model, verdict.usage)
        self._add_spend(call.tenant.name, cost)
        self._log(call, settings.judge_model, kind, started, usage=verdict.usage, cost_usd=cost,
                  response=f"routed {verdict.routed:.3f}, reference {verdict.reference:.3f}, "
                           f"{'consistent' if verdict.consistent else 'the two orders disagree'}",
                  judge_routed=verdict.routed, judge_reference=verdict.reference, **ids)
        return verdict

    async def _judge(self, call, answer, reference: str, probes: Probes | None, chance: float) -> None:
        served = answer.model
        answers = {served: (answer.result.text, call.call_id)}  # model -> (its answer, the id of its row)
        for model in {reference, *(probes.models.values() if probes else ())} - {served}:
            answers[model] = await self._answer(call, model)
        if answers[reference] is None:
            return
        verdicts = {}  # model -> (its score, the reference's score in the same comparison)
        for model in sorted(m for m in answers if m != reference and answers[m] is not None):
            verdict = await self._verdict(call, "judge" if model == served else "probe", answers[model],
                                          answers[reference])
            if verdict is not None:
                verdicts[model] = (verdict.routed, verdict.reference)
        if probes is None or not verdicts:
            return
        reference_score = next(iter(verdicts.values()))[1]  # a level that serves the reference keeps its score
        labels = []
        for level, model in probes.models.items():
            same = (reference_score, reference_score) if model == reference else (None, None)
            routed, ref = verdicts.get(model, same)
            if routed is not None:
                labels.append(Label(level, call.call_id, answers[model][1], answers[reference][1], routed, ref,
                                    1.0 / chance))
        try:
            await asyncio.to_thread(self.steering.judged, call.tenant.name, probes.ladder, labels)
        except Exception:  # the labels of this call are lost to the operating point; the verdict rows are logged
            logger.exception("labels of call %s not stored for tenant %s's operating point", call.call_id,
                             call.tenant.name)

    def _log(self, call, model: str, kind: str, started: float, error: str | None = None, usage=None,
             **fields) -> str:
        """Log one judging row; its call id."""
        record = CallRecord(call_id=uuid.uuid4().hex, prompt=call.prompt, model=model,
                            status="error" if error else "ok", http_status=502 if error else 200,
                            latency_ms=(time.perf_counter() - started) * 1000, tenant=call.tenant.name,
                            messages=call.messages, error=error, kind=kind, judges=call.call_id,
                            input_tokens=usage.input_tokens if usage else None,
                            output_tokens=usage.output_tokens if usage else None, **fields)
        if error:
            logger.warning("shadow judging of call %s: %s", call.call_id, error)
        if self.store is not None:
            try:
                self.store.record(record)
            except (ValueError, OSError) as exc:  # counted by the store as rejected
                logger.error("shadow judging row of call %s not logged: %s", call.call_id, exc)
        return record.call_id
