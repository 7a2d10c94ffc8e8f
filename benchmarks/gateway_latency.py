"""Added latency of the gateway over calling the same loopback upstream directly.

Starts a stub OpenAI-compatible upstream with a fixed 50 ms delay and `router-ml serve` in front
of it (default bundle, `router-ml/auto`: routing included, call log on), then drives both with
the same async load generator at 1 and 100 concurrent clients. Writes
benchmarks/results/gateway_latency.json. Run: `.venv/bin/python benchmarks/gateway_latency.py`.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
PROMPTS = ["What is 17 * 23?", "Write a haiku about routers.", "Explain TCP slow start in two sentences.",
           "Translate 'good morning' into French.", "Which is larger, 2^10 or 10^3?"]


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def _wait(url: str, process: subprocess.Popen) -> None:
    async with httpx.AsyncClient() as client:
        for _ in range(600):
            if process.poll() is not None:
                raise RuntimeError(f"{process.args} exited: {process.stdout.read() if process.stdout else ''}")
            try:
                await client.get(url)
                return
            except httpx.TransportError:
                await asyncio.sleep(0.2)
    raise RuntimeError(f"{url} did not come up")


async def load(url: str, model: str, clients: int, requests_per_client: int) -> dict:
    """``clients`` concurrent loops, each sending ``requests_per_client`` chat completions one after another."""
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(limits=limits, timeout=60) as client:
        latencies: list[float] = []

        async def one_client(i: int) -> None:
            for j in range(requests_per_client):
                body = {"model": model, "messages": [{"role": "user", "content": PROMPTS[(i + j) % len(PROMPTS)]}]}
                started = time.perf_counter()
                response = await client.post(url, json=body)
                response.raise_for_status()
                latencies.append((time.perf_counter() - started) * 1000)

        started = time.perf_counter()
        await asyncio.gather(*(one_client(i) for i in range(clients)))
        elapsed = time.perf_counter() - started
    values = np.array(latencies)
    return {"clients": clients, "requests": len(values), "p50_ms": float(np.percentile(values, 50)),
            "p99_ms": float(np.percentile(values, 99)), "throughput_rps": len(values) / elapsed}


async def main() -> None:
    upstream_port, gateway_port = _port(), _port()
    tmp = Path(tempfile.mkdtemp())
    upstream = subprocess.Popen([sys.executable, str(ROOT / "benchmarks" / "upstream_stub.py"), str(upstream_port),
                                 "50"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    env = {**os.environ, "ROUTER_ML_PROVIDER": "openai",
           "ROUTER_ML_UPSTREAM_BASE_URL": f"http://127.0.0.1:{upstream_port}/v1",
           "ROUTER_ML_STORE_URL": f"sqlite:///{tmp / 'calls.db'}", "OPENBLAS_NUM_THREADS": "1"}
    gateway = subprocess.Popen([sys.executable, "-m", "router_ml.cli", "serve", "--port", str(gateway_port)],
                               env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        await _wait(f"http://127.0.0.1:{upstream_port}/", upstream)
        await _wait(f"http://127.0.0.1:{gateway_port}/healthz", gateway)
        direct_url = f"http://127.0.0.1:{upstream_port}/v1/chat/completions"
        gateway_url = f"http://127.0.0.1:{gateway_port}/v1/chat/completions"
        rows = []
        for clients, per_client in ((1, 200), (100, 10)):
            await load(gateway_url, "router-ml/auto", min(clients, 10), 2)  # warm up the gateway
            direct = await load(direct_url, "gpt-4-1106-preview", clients, per_client)
            routed = await load(gateway_url, "router-ml/auto", clients, per_client)
            rows.append({"clients": clients, "direct": direct, "gateway": routed,
                         "added_p50_ms": routed["p50_ms"] - direct["p50_ms"],
                         "added_p99_ms": routed["p99_ms"] - direct["p99_ms"]})
            print(f"{clients:>3} clients: direct p50 {direct['p50_ms']:.1f} ms, gateway p50 {routed['p50_ms']:.1f} ms "
                  f"(+{rows[-1]['added_p50_ms']:.1f} ms), p99 +{rows[-1]['added_p99_ms']:.1f} ms, "
                  f"gateway {routed['throughput_rps']:.0f} req/s", flush=True)
    finally:
        for process in (gateway, upstream):
            process.terminate()
            process.wait(timeout=30)
    report = {"benchmark": "gateway_latency", "upstream_delay_ms": 50, "workers": 1, "machine": f"{os.cpu_count()} CPUs",
              "results": rows}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "gateway_latency.json").write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    asyncio.run(main())
