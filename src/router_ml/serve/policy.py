"""Per-request routing policy: how a caller says what it wants, and the decision it gives.

A caller picks the policy with the model name (``router-ml/auto`` for the bundle's calibrated
default, ``router-ml/auto:quality=0.9,max_cost=0.002``) or with the ``router_ml`` extension
field of the request body. Fields:

- ``quality``: keep this share of the best predicted model's quality: the cheapest model whose
  predicted quality is at least ``quality`` x the highest predicted quality for this prompt;
- ``lam``: maximize predicted quality - lam x predicted cost (USD);
- ``max_cost``: never choose a model whose predicted cost exceeds this (USD per call);
- ``models``: only these models.

Without ``quality`` or ``lam``, the bundle's calibrated lambda applies.
"""

from __future__ import annotations

import time

import numpy as np
from pydantic import BaseModel, Field

from router_ml.pricing import cost_usd_if_priced

AUTO = "router-ml/auto"


class Policy(BaseModel):
    quality: float | None = Field(default=None, gt=0, le=1)
    lam: float | None = Field(default=None, ge=0)
    max_cost: float | None = Field(default=None, gt=0)
    models: list[str] | None = None


def parse_auto_model(name: str) -> Policy | None:
    """The policy encoded in a ``router-ml/auto[:k=v,...]`` model name, or None for a concrete model."""
    if name != AUTO and not name.startswith(AUTO + ":"):
        return None
    fields = {}
    for part in filter(None, name[len(AUTO) + 1:].split(",")):
        key, sep, value = part.partition("=")
        if not sep:
            raise ValueError(f"model {name!r}: policy field {part!r} must be key=value")
        fields[key.strip()] = [m for m in value.split("|") if m] if key.strip() == "models" else value
    return Policy(**fields)


def decide(bundle, prompt: str, input_tokens: int, policy: Policy) -> dict:
    """The routing decision for one prompt: chosen model, per-model predictions and decision time."""
    started = time.perf_counter()
    quality, cost, lengths = bundle.predict_with_lengths(prompt, input_tokens)
    allowed = np.ones(len(bundle.models), dtype=bool)
    if policy.models is not None:
        unknown = sorted(set(policy.models) - set(bundle.models))
        if unknown:
            raise ValueError(f"models not in the router bundle: {', '.join(unknown)}; known: {', '.join(bundle.models)}")
        allowed &= np.isin(bundle.models, policy.models)
    if policy.max_cost is not None:
        allowed &= cost <= policy.max_cost
        if not allowed.any():  # nothing is cheap enough: the cheapest allowed model, said so in the reason
            allowed = np.isin(bundle.models, policy.models) if policy.models is not None else np.ones_like(allowed)
            allowed &= cost <= cost[allowed].min()
    masked_quality = np.where(allowed, quality, -np.inf)
    if policy.quality is not None:
        ok = allowed & (quality >= policy.quality * masked_quality.max())
        choice = int(np.where(ok, cost, np.inf).argmin())
    else:
        lam = policy.lam if policy.lam is not None else bundle.meta["calibration"]["parameter"]
        score = np.where(allowed, quality - lam * cost, -np.inf)
        top = score >= score.max() - 1e-12
        choice = int(np.where(top, cost, np.inf).argmin())
    predicted = [{"model": m, "quality": float(q), "cost_usd": float(c), "allowed": bool(a)}
                 for m, q, c, a in zip(bundle.models, quality, cost, allowed)]
    if lengths is not None:  # the answer's expected length, its priced estimate, and the bound a reservation holds
        for row, expected, upper in zip(predicted, *lengths):
            row["output_tokens"], row["max_output_tokens"] = round(float(expected), 1), int(upper)
            row["estimated_cost_usd"] = cost_usd_if_priced(row["model"], input_tokens, round(float(expected)))
    return {
        "model": bundle.models[choice],
        "predicted": predicted,
        "decision_ms": (time.perf_counter() - started) * 1000,
        "bundle_version": bundle.version,
    }
