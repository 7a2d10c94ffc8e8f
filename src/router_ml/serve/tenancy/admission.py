"""Admission of a tenant's call: its rate limits, then its budget, before anything is sent upstream.

The budget reservation is what the call may cost at most: its counted input tokens at the input
price plus ``max_tokens`` at the output price, of the dearest model the call may fall back to. A request
that sets no ``max_tokens`` reserves the model's predicted upper bound on the answer's length (``bounds``:
the bundle's output-length predictor, 90% quantile calibrated on validation data), or
:data:`DEFAULT_OUTPUT_TOKENS` for a bundle without one. About one answer in ten runs past that bound:
the settlement replaces every reservation by the real cost, so a period can end that much over its budget
by the calls in flight when it ran out, not more. A tenant over budget is refused, or, when its
settings say ``degrade_before_deny``, served by the best model whose reservation still fits.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from router_ml.pricing import UnknownModelError, cost_usd
from router_ml.serve.tenancy.limits import BudgetExceeded, Reservation

DEFAULT_OUTPUT_TOKENS = 1024


def output_allowance(model: str | None, max_tokens: int | None, bounds: dict[str, int] | None = None) -> int:
    """The output tokens a call to ``model`` reserves: ``max_tokens``, else its predicted bound, else the default."""
    return max_tokens or (bounds or {}).get(model) or DEFAULT_OUTPUT_TOKENS


def max_cost_usd(model: str, input_tokens: int, max_tokens: int | None, bounds: dict[str, int] | None = None) -> float:
    """The most one call to ``model`` is expected to cost; 0 for a model without a price (self-hosted)."""
    try:
        return cost_usd(model, input_tokens, output_allowance(model, max_tokens, bounds))
    except UnknownModelError:
        return 0.0


class RateLimited(Exception):
    def __init__(self, message: str, retry_after: float):
        super().__init__(message)
        self.retry_after = retry_after


class OverBudget(Exception):
    pass


@dataclass
class Admission:
    models: list[str]
    reservation: Reservation | None = None
    degraded_from: list[str] = field(default_factory=list)


def check_rates(limits, tenant, input_tokens: int, max_tokens: int | None, models: list[str] | None = None,
                bounds: dict[str, int] | None = None) -> None:
    """Take one request and the call's tokens (input plus its output allowance, the largest of ``models``) from
    the buckets of the calling key and of its tenant; RateLimited names the limit and says how long to wait."""
    tokens = input_tokens + max(output_allowance(m, max_tokens, bounds) for m in models or [None])
    key = getattr(tenant, "key_prefix", None)
    buckets = [(f"rpm:{tenant.name}", tenant.rpm, 1, f"tenant {tenant.name!r}", "requests"),
               (f"tpm:{tenant.name}", tenant.tpm, tokens, f"tenant {tenant.name!r}", "tokens")]
    if key is not None:
        buckets += [(f"rpm:key:{key}", tenant.key_rpm, 1, f"key {key}...", "requests"),
                    (f"tpm:key:{key}", tenant.key_tpm, tokens, f"key {key}...", "tokens")]
    for bucket, per_minute, amount, who, unit in buckets:
        if not per_minute:
            continue
        wait = limits.take(bucket, per_minute, amount=amount)
        if wait is not None:
            counted = f" (this call counts {tokens}: input plus its output allowance)" if unit == "tokens" else ""
            raise RateLimited(f"{who} is over its {per_minute} {unit} per minute{counted}", wait)


def admit(limits, tenant, models: list[str], fallbacks: list[str], input_tokens: int,
          max_tokens: int | None, bounds: dict[str, int] | None = None) -> Admission:
    """Reserve the budget for trying ``models`` in order. Over budget: OverBudget, or with
    ``degrade_before_deny`` the first of ``fallbacks`` (best first) whose own reservation fits."""
    budgets = {"day": tenant.budget_usd_day, "month": tenant.budget_usd_month}
    if budgets["day"] is None and budgets["month"] is None:
        return Admission(models)
    need = max(max_cost_usd(m, input_tokens, max_tokens, bounds) for m in models)
    try:
        return Admission(models, limits.reserve(tenant.name, need, budgets))
    except BudgetExceeded as exc:
        refusal = exc
    if tenant.degrade_before_deny:
        for model in fallbacks:
            try:
                reservation = limits.reserve(tenant.name, max_cost_usd(model, input_tokens, max_tokens, bounds),
                                             budgets)
            except BudgetExceeded:
                continue
            return Admission([model], reservation, degraded_from=list(models))
    raise OverBudget(str(refusal)) from refusal
