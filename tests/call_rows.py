"""Gateway call records for the call-log tests: a few hand-written prompts, token counts from router_ml.tokens and
costs from router_ml.pricing. They carry no model answer and no quality of their own."""

from __future__ import annotations

from router_ml.pricing import cost_usd
from router_ml.tokens import count_tokens

PROMPTS = (
    "What is the capital of Australia?",
    "Write a Python function that returns the n-th Fibonacci number.",
    "Summarize the causes of the French Revolution in three sentences.",
    "A train travels 120 km in 1.5 hours. What is its average speed in km/h?",
    "Translate 'good morning' into Spanish and German.",
)
MODELS = ("Meta-Llama-3-8B-Instruct", "Meta-Llama-3-70B-Instruct")
TOKENS = {p: count_tokens(p) for p in PROMPTS}


def call_row(i: int, prompt: str | None = None, model: str | None = None, **extra) -> dict:
    prompt = prompt or PROMPTS[i % len(PROMPTS)]
    model = model or MODELS[i % len(MODELS)]
    tokens = TOKENS.get(prompt) or count_tokens(prompt)
    row = {
        "prompt": prompt,
        "model": model,
        "task": "chat",
        "input_tokens": tokens,
        "cost_usd": cost_usd(model, tokens, None),
        "cost_source": "prompt_x_price",
        "latency_ms": 100.0 + i,
        "tenant": f"tenant-{i % 3}",
        "http_status": 200,
        "bundle_version": "bundle-test-1",
        "routed": i % 2 == 0,
        "policy": {"max_cost_usd": 0.01} if i % 2 == 0 else None,
        "flags": [],
    }
    row.update(extra)
    return row
