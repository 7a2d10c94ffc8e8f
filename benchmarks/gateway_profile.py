"""Where the gateway spends CPU per request under load: py-spy samples of `router-ml serve --workers 1`
behind the same stub upstream and wrk load as benchmarks/gateway_latency.py, grouped by component.

Run (py-spy is not a project dependency; install it anywhere but .venv, e.g. a throwaway venv):
    python3 -m venv /tmp/pyspy && /tmp/pyspy/bin/pip install py-spy
    .venv/bin/python benchmarks/gateway_profile.py --py-spy /tmp/pyspy/bin/py-spy [--connections 1,10,100]

For each connection count: a warm-up, then wrk for ``--seconds`` + 6 s while py-spy records the worker for
``--seconds`` (``--gil``: only samples holding the GIL, i.e. Python-level CPU of the process; ``--threads``:
the call log's writer thread shows apart). The process's CPU time (user + system, from /proc) over the
same window gives CPU per request; a component's samples / rate / requests gives its GIL-held microseconds
per request (their sum is below the CPU per request: kernel time and C code that releases the GIL are not
sampled). Summary: benchmarks/results/gateway_profile.json; raw stacks (collapsed format, for
flamegraph.pl or speedscope; megabytes) only with ``--raw-dir``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gateway_latency import (
    LUA,
    RESULTS,
    _versions,
    run_wrk,
    start_gateway,
    start_stub,
    wait_quiet,
)

# (component, pattern on one frame "function (file:line)"); a sample goes to the innermost frame that matches.
COMPONENTS = [
    ("call log: record() on the request path (journal write, queue)", r"^CallStore\.record "),
    ("routing decision: prompt encoder (model2vec)", r"^StaticEncoder\.encode "),
    ("routing decision: predictors, features, policy", r"^(Bundle\.decide|Gateway\.plan) "),
    ("token counting (o200k)", r"^count_tokens "),
    ("upstream client: aiohttp", r"\((aiohttp|yarl|multidict)/"),
    ("response JSON encoding", r"^(JSONResponse\.render|JSONEncoder)"),
    ("pydantic validation/serialisation", r"\(pydantic|^(BaseModel|model_dump)"),
    ("gateway code (api/chat, gateway/call, tenancy, reliability, providers)", r"\(router_ml/serve/"),
    ("FastAPI/Starlette (routing, middleware, body parsing)", r"\((fastapi|starlette)/"),
    ("HTTP server: uvicorn (httptools, h11)", r"\((uvicorn|h11|httptools)/"),
    ("asyncio event loop and tasks", r"\((asyncio|selectors|uvloop)/|\(selectors\.py"),
]
WRITER = "call log: writer thread (SQLite insert, JSON encoding)"


def components(raw: Path) -> tuple[Counter, Counter, int]:
    """Samples per component, and per leaf function, from py-spy's collapsed output with --threads."""
    by_component, by_leaf, total = Counter(), Counter(), 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        frames, n = stack.split(";"), int(count)
        thread = frames.pop(0) if frames and frames[0].startswith("thread (") else ""
        total += n
        if frames:
            by_leaf[frames[-1]] += n
        if "call-store-writer" in thread:
            by_component[WRITER] += n
            continue
        name = "other"
        for frame in reversed(frames):
            name = next((c for c, pattern in COMPONENTS if re.search(pattern, frame)), None)
            if name:
                break
        by_component[name or "other"] += n
    return by_component, by_leaf, total


def _proc_cpu(pid: int) -> tuple[float, float]:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    tick = os.sysconf("SC_CLK_TCK")
    return int(fields[11]) / tick, int(fields[12]) / tick  # utime, stime


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--py-spy", default=shutil.which("py-spy"), help="py-spy executable")
    parser.add_argument("--connections", default="1,10,100")
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--rate", type=int, default=500, help="py-spy samples per second")
    parser.add_argument("--quiet-wait", type=float, default=60.0)
    parser.add_argument("--raw-dir", type=Path, default=None, help="keep py-spy's raw stacks here")
    parser.add_argument("--out", type=Path, default=RESULTS / "gateway_profile.json")
    args = parser.parse_args()
    if not args.py_spy or not Path(args.py_spy).exists():
        print("py-spy not found: install it outside .venv (see the docstring) and pass --py-spy", file=sys.stderr)
        return 2
    if shutil.which("wrk") is None:
        print("wrk is not installed: `apt-get install -y wrk`", file=sys.stderr)
        return 2
    tmp = Path(tempfile.mkdtemp(prefix="gateway-profile-"))
    stub, upstream = start_stub(tmp)
    gateway, url, info, key = start_gateway(1, upstream, tmp)
    report = {"benchmark": "gateway_profile", "workers": 1, "gateway_command": info["command"],
              "versions": _versions(), "runs": []}
    try:
        gateway.wait_ready()
        pid = gateway.process.pid  # workers=1: uvicorn serves in this process
        for connections in [int(c) for c in args.connections.split(",")]:
            wait_quiet(args.quiet_wait)
            run_wrk(url, "router-ml/auto", connections, 3, key)
            raw = (args.raw_dir or tmp) / f"gateway_profile_c{connections}.txt"
            raw.parent.mkdir(parents=True, exist_ok=True)
            wrk = subprocess.Popen(["wrk", "-t1", f"-c{connections}", f"-d{args.seconds + 6:g}s", "--timeout", "10s",
                                    "-s", str(LUA), url, "--", "router-ml/auto"], stdout=subprocess.PIPE, text=True)
            time.sleep(3)
            cpu0, t0 = _proc_cpu(pid), time.perf_counter()
            subprocess.run([args.py_spy, "record", "--pid", str(pid), "--duration", f"{args.seconds:g}", "--rate",
                            str(args.rate), "--format", "raw", "--gil", "--threads", "--nonblocking", "-o", str(raw)],
                           check=True, capture_output=True)
            cpu1, elapsed = _proc_cpu(pid), time.perf_counter() - t0
            output = wrk.communicate()[0]
            summary = json.loads(next(ln for ln in output.splitlines() if ln.startswith("WRK_JSON "))[9:])
            rps = summary["requests"] / (summary["duration_us"] / 1e6)
            user, system = cpu1[0] - cpu0[0], cpu1[1] - cpu0[1]
            cpu_per_request_us = (user + system) / (rps * elapsed) * 1e6
            by_component, by_leaf, total = components(raw)
            requests = rps * elapsed
            gil_us = sum(by_component.values()) / args.rate / requests * 1e6
            run = {"connections": connections, "throughput_rps": rps, "p50_ms": summary["latency_us"]["p50"] / 1000,
                   "cpu_cores": (user + system) / elapsed, "cpu_user_s": user, "cpu_system_s": system,
                   "cpu_us_per_request": cpu_per_request_us, "samples": total,
                   "gil_held_us_per_request": gil_us,
                   "components": [{"component": c, "share": n / total,
                                   "us_per_request": n / args.rate / requests * 1e6}
                                  for c, n in by_component.most_common()],
                   "top_leaf_functions": [{"function": f, "share": n / total} for f, n in by_leaf.most_common(15)],
                   "raw_stacks": str(raw) if args.raw_dir else None}
            report["runs"].append(run)
            print(f"\n{connections} connection(s): {rps:.0f} req/s, p50 {run['p50_ms']:.1f} ms, gateway CPU "
                  f"{run['cpu_cores']:.2f} cores = {cpu_per_request_us:.0f} us/request "
                  f"(system {system / (user + system):.0%}); holding the GIL {gil_us:.0f} us/request ({total} samples)")
            for row in run["components"]:
                print(f"  {row['share']:6.1%}  {row['us_per_request']:7.0f} us/req  {row['component']}")
    finally:
        gateway.stop()
        stub.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
