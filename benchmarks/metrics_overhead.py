"""What the Prometheus metrics add to each call: Metrics.observe_call on a call-log row (an answered call, a cache
hit) and the RequestMetrics middleware around a trivial ASGI app, in one process and in multiprocess mode (what
`router-ml serve --workers N` runs: every value goes to a per-process file).

Run: `.venv/bin/python benchmarks/metrics_overhead.py` (about 30 s). Writes benchmarks/results/metrics_overhead.json.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import tempfile
import timeit

from router_ml.config import PROJECT_ROOT

RESULTS = PROJECT_ROOT / "benchmarks" / "results"
CALLS = 200_000
REQUESTS = 100_000


class _Stub:
    """A provider that is never called: only its circuit breaker is read."""


def measure() -> dict:
    from dataclasses import replace

    from router_ml.calllog.record import CallRecord
    from router_ml.serve.observability.metrics import Metrics, RequestMetrics
    from router_ml.serve.providers.reliability import ReliableProvider

    metrics = Metrics({"gpt-4o-mini": ReliableProvider(_Stub(), "openai/gpt-4o-mini")})
    answered = CallRecord(call_id="0" * 32, prompt="", model="gpt-4o-mini", status="ok", http_status=200,
                          latency_ms=812.0, input_tokens=120, output_tokens=300, cost_usd=0.0002, routed=True,
                          bundle_version="v1", tenant="acme")
    hit = replace(answered, cache="exact", saved_usd=0.0002, cost_usd=0.0)
    out = {}
    for name, call in (("observe_answered_us", answered), ("observe_cache_hit_us", hit)):
        metrics.observe_call(call)
        out[name] = min(timeit.repeat(lambda c=call: metrics.observe_call(c), number=CALLS, repeat=5)) / CALLS * 1e6

    async def app(scope, receive, send):
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"{}"})

    class Route:
        path = "/v1/chat/completions"

    scope = {"type": "http", "path": Route.path, "route": Route()}

    async def receive():
        return {"type": "http.request", "body": b""}

    async def send(_message):
        return None

    async def per_request(target) -> float:
        loop = asyncio.get_running_loop()
        started = loop.time()
        for _ in range(REQUESTS):
            await target(scope, receive, send)
        return (loop.time() - started) / REQUESTS * 1e6

    async def middleware() -> float:
        wrapped = RequestMetrics(app, metrics, [])
        bare = min([await per_request(app) for _ in range(3)])
        return min([await per_request(wrapped) for _ in range(3)]) - bare

    out["middleware_us"] = asyncio.run(middleware())
    return out


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":  # one measurement, in the mode the environment sets
        print(json.dumps(measure()))
        return
    report = {}
    for mode in ("one_process", "multiprocess"):
        env = dict(os.environ)
        env.pop("PROMETHEUS_MULTIPROC_DIR", None)
        with tempfile.TemporaryDirectory() as directory:
            if mode == "multiprocess":
                env["PROMETHEUS_MULTIPROC_DIR"] = directory
            child = subprocess.run([sys.executable, __file__, "--child"], env=env, check=True, capture_output=True,
                                   text=True)
        report[mode] = json.loads(child.stdout)
        print(f"{mode:<13} " + ", ".join(f"{k} {v:.2f}" for k, v in report[mode].items()))
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "metrics_overhead.json").write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {RESULTS / 'metrics_overhead.json'}")


if __name__ == "__main__":
    main()
