"""Added latency and throughput of the gateway over calling the same loopback upstream directly, next
to the LiteLLM proxy on the same upstream, with the same load generator.

Run: `make bench-gateway` (installs wrk and the pinned LiteLLM venv .venv-litellm when missing), or
`.venv/bin/python benchmarks/gateway_latency.py [--duration 10] [--warmup 3] [--workers 1,2] [--no-litellm]`.
About 3 minutes with the defaults.

Setup, all on this machine's loopback (the load generator, the upstream and the server under test share
its cores, as they would on a small host):

- Upstream: benchmarks/upstream_stub.py, a raw asyncio OpenAI-compatible server answering every chat
  completion after a fixed 50 ms. A capacity check first drives it at 400 connections (it must do
  far more than the 2,000 req/s that 100 connections at 50 ms can ask of it), so it is never the
  bottleneck.
- Load: wrk (`apt-get install -y wrk`), one thread, closed loop (each connection sends its next request
  when the previous answer arrived: N connections = N concurrent clients), keep-alive,
  benchmarks/wrk_chat.lua POSTing non-streamed chat completions that rotate five prompts; exact
  p50/p99 from wrk's histogram (the script's done() prints them as JSON). For each connection count
  (1 and 100): a warm-up run that is thrown away, then a measured run.
- Direct: wrk straight at the upstream. Gateway: `router-ml serve --workers N` (N = 1 and 2) with
  `model: "router-ml/auto"` (routing with the default bundle included), provider `openai` pointed at
  the upstream, call log on (SQLite file and journal in a temporary directory). LiteLLM: the proxy
  of the pinned `litellm-bench` extra (installed in .venv-litellm, never in .venv), one model on the
  same upstream, one worker, no database, master key set (it refuses to start without one), cost
  map local and telemetry off (it runs offline).
- Added latency = the server's percentile minus the direct percentile at the same connection count.

Output: benchmarks/results/gateway_latency.json (every number, the machine, versions, commands) and
benchmarks/results/gateway_latency.png, and a table on stdout. Each measured run also records the
CPU time the server under test used (its whole process tree: CPU us per request) and the CPU other
processes on the machine used meanwhile: a busy machine (other jobs on the same cores) makes the
numbers worse, and the report says so rather than hiding it.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import secrets
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
LUA = ROOT / "benchmarks" / "wrk_chat.lua"
STUB = ROOT / "benchmarks" / "upstream_stub.py"
LITELLM_VENV = ROOT / ".venv-litellm"
UPSTREAM_DELAY_MS = 50
DIRECT_MODEL = "gpt-4o-mini"  # what the direct runs and LiteLLM's single deployment ask the upstream for
WRK_INSTALL = ("wrk is not installed: `apt-get install -y wrk` (Debian/Ubuntu; `make bench-gateway` does it), "
               "or build it from https://github.com/wg/wrk")
# The issue's target for the gateway (added over direct; throughput at 100 clients).
TARGET = {"added_p50_ms_1": 2.0, "added_p50_ms_100": 5.0, "added_p99_ms_100": 15.0, "throughput_rps_100": 1000.0}


# ----------------------------------------------------------------------------------------- processes
def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url: str, timeout: float = 2.0) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def _post(url: str, body: dict, key: str | None = None, timeout: float = 30.0) -> tuple[int, dict]:
    headers = {"content-type": "application/json", **({"authorization": f"Bearer {key}"} if key else {})}
    request = urllib.request.Request(url, data=json.dumps(body).encode(), headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, {"error": exc.read().decode(errors="replace")[:500]}


class Server:
    """A process (group) we started, its log file, and its readiness URL."""

    def __init__(self, name: str, cmd: list[str], env: dict, log: Path, ready_url: str, cwd: Path = ROOT):
        self.name, self.cmd, self.log, self.ready_url = name, cmd, log, ready_url
        self.started = time.perf_counter()
        self._log_file = log.open("wb")
        self.process = subprocess.Popen(cmd, env=env, cwd=cwd, stdout=self._log_file, stderr=subprocess.STDOUT,
                                        start_new_session=True)

    def wait_ready(self, timeout: float = 240.0) -> float:
        deadline = time.perf_counter() + timeout
        while time.perf_counter() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.name} exited ({self.process.returncode}):\n{self.tail()}")
            try:
                if _get(self.ready_url)[0] == 200:
                    return time.perf_counter() - self.started
            except (OSError, urllib.error.URLError):
                pass
            time.sleep(0.25)
        raise RuntimeError(f"{self.name} not ready after {timeout:.0f} s:\n{self.tail()}")

    def tail(self, lines: int = 40) -> str:
        self._log_file.flush()
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])

    def cpu_times(self) -> dict[int, float]:
        """User + system CPU seconds of the process and each of its children (uvicorn workers), by pid."""
        import psutil

        try:
            parent = psutil.Process(self.process.pid)
            procs = [parent] + parent.children(recursive=True)
        except psutil.NoSuchProcess:
            return {}
        out = {}
        for proc in procs:
            try:
                times = proc.cpu_times()
                out[proc.pid] = times.user + times.system
            except psutil.NoSuchProcess:
                pass
        return out

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)  # the group: uvicorn's workers too
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        self._log_file.close()


def _cpu_used(before: dict[int, float], after: dict[int, float]) -> float:
    """CPU seconds a process tree used between two ``cpu_times`` samples (a process that exited in
    between counts up to its last sample; a new one, e.g. a restarted worker, from zero)."""
    return sum(after.get(pid, start) - start for pid, start in before.items()) + sum(
        cpu for pid, cpu in after.items() if pid not in before)


def wait_quiet(max_wait: float, threshold: float = 0.3) -> float:
    """Wait (up to ``max_wait`` s) until other processes leave the CPUs alone: busy cores over a 1 s
    sample below ``threshold``. Returns the last sample (cores busy)."""
    deadline = time.perf_counter() + max_wait
    warned = False
    while True:
        before, t0 = _machine_busy_seconds(), time.perf_counter()
        time.sleep(1.0)
        busy = (_machine_busy_seconds() - before) / (time.perf_counter() - t0)
        if busy < threshold or time.perf_counter() >= deadline:
            if busy >= threshold:
                print(f"  WARNING: other processes keep {busy:.1f} cores busy; measuring anyway", flush=True)
            return busy
        if not warned:
            print(f"  the machine is busy ({busy:.1f} cores used by other processes): waiting up to "
                  f"{max_wait:.0f} s for it to calm down", flush=True)
            warned = True


def _machine_busy_seconds() -> float:
    """CPU seconds (all cores) the whole machine has spent busy since boot."""
    fields = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


# ------------------------------------------------------------------------------------------------ wrk
def run_wrk(url: str, model: str, connections: int, seconds: float, key: str | None = None) -> dict:
    """One wrk run; the Lua script's JSON summary, wrk's own CPU time and the command line."""
    cmd = ["wrk", "-t1", f"-c{connections}", f"-d{seconds:g}s", "--latency", "--timeout", "10s", "-s", str(LUA),
           url, "--", model] + ([key] if key else [])
    process = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    _, status, usage = os.wait4(process.pid, 0)  # wrk's rusage; its output (~1 KB) waits in the pipe
    process.returncode = os.waitstatus_to_exitcode(status)
    output = process.stdout.read().decode(errors="replace")
    process.stdout.close()
    line = next((ln for ln in output.splitlines() if ln.startswith("WRK_JSON ")), None)
    if process.returncode != 0 or line is None:
        raise RuntimeError(f"wrk failed ({process.returncode}): {shlex.join(cmd)}\n{output}")
    raw = json.loads(line[len("WRK_JSON "):])
    lat = raw["latency_us"]
    seconds_run = raw["duration_us"] / 1e6
    shown = [("$API_KEY" if key and part == key else part) for part in cmd]
    shown[shown.index(str(LUA))] = str(LUA.relative_to(ROOT))
    return {"connections": connections, "duration_s": round(seconds_run, 3), "requests": raw["requests"],
            "throughput_rps": raw["requests"] / seconds_run,
            "p50_ms": lat["p50"] / 1000, "p75_ms": lat["p75"] / 1000, "p90_ms": lat["p90"] / 1000,
            "p99_ms": lat["p99"] / 1000, "p99_9_ms": lat["p99_9"] / 1000, "mean_ms": lat["mean"] / 1000,
            "max_ms": lat["max"] / 1000, "errors": raw["errors"], "error_count": sum(raw["errors"].values()),
            "wrk_cpu_s": usage.ru_utime + usage.ru_stime, "command": shlex.join(shown)}


def measure(name: str, url: str, model: str, connections: int, args, server: Server | None, stub_url: str,
            key: str | None = None) -> dict:
    """Wait for a quiet machine, a warm-up run (discarded), then the measured run with the CPU each party
    used during it."""
    quiet = wait_quiet(args.quiet_wait)
    run_wrk(url, model, connections, args.warmup, key)
    stub_before = json.loads(_get(stub_url + "/stats")[1])
    busy_before, server_before = _machine_busy_seconds(), server.cpu_times() if server else {}
    result = run_wrk(url, model, connections, args.duration, key)
    busy = _machine_busy_seconds() - busy_before
    server_after = server.cpu_times() if server else {}
    server_cpu = _cpu_used(server_before, server_after)
    stub_after = json.loads(_get(stub_url + "/stats")[1])
    elapsed = result["duration_s"]
    result.update({
        "server_cpu_cores": server_cpu / elapsed,
        "server_cpu_us_per_request": server_cpu / max(result["requests"], 1) * 1e6,
        "wrk_cpu_cores": result.pop("wrk_cpu_s") / elapsed,
        "machine_busy_cores": busy / elapsed,
        "upstream_requests": stub_after["requests"] - stub_before["requests"],
        "upstream_connections_opened": stub_after["connections"] - stub_before["connections"],
        "other_cpu_cores_before_run": quiet,
        "server_processes_changed": set(server_before) != set(server_after),
    })
    # machine busy minus server, wrk and a ~30 us/request upstream: other jobs on the same cores
    result["other_cpu_cores_approx"] = max(0.0, result["machine_busy_cores"] - result["server_cpu_cores"]
                                           - result["wrk_cpu_cores"] - 30e-6 * result["throughput_rps"])
    flag = f"  ({result['error_count']} ERRORS: {result['errors']})" if result["error_count"] else ""
    busy_note = (f"  [other processes used ~{result['other_cpu_cores_approx']:.2f} cores meanwhile]"
                 if result["other_cpu_cores_approx"] > 0.25 else "")
    print(f"  {name:<16} c={connections:<3} p50 {result['p50_ms']:8.2f} ms  p99 {result['p99_ms']:8.2f} ms  "
          f"{result['throughput_rps']:7.0f} req/s{flag}{busy_note}", flush=True)
    return result


# ------------------------------------------------------------------------------------------- servers
def start_stub(tmp: Path) -> tuple[Server, str]:
    port = _port()
    stub = Server("upstream stub", [sys.executable, str(STUB), str(port), str(UPSTREAM_DELAY_MS)], dict(os.environ),
                  tmp / "stub.log", f"http://127.0.0.1:{port}/")
    stub.wait_ready(30)
    return stub, f"http://127.0.0.1:{port}"


def start_gateway(workers: int, upstream: str, tmp: Path) -> tuple[Server, str, dict, str]:
    """The gateway on a fresh call log, with a tenant 'bench' and its API key (the served gateway requires one)."""
    from router_ml.serve.tenancy.tenants import TenantStore

    port = _port()
    state = tmp / f"gateway-w{workers}"
    state.mkdir()
    tenants = TenantStore(f"sqlite:///{state / 'calls.db'}")
    tenants.create_tenant("bench")
    key = tenants.issue_key("bench")
    tenants.close()
    env_set = {"ROUTER_ML_PROVIDER": "openai", "ROUTER_ML_UPSTREAM_BASE_URL": f"{upstream}/v1",
               "ROUTER_ML_STORE_URL": f"sqlite:///{state / 'calls.db'}",
               "ROUTER_ML_STORE_JOURNAL": str(state / "journal"),
               "ROUTER_ML_CACHE": "off"}  # wrk repeats five prompts: every call must reach the upstream
    cmd = [sys.executable, "-m", "router_ml.cli", "serve", "--host", "127.0.0.1", "--port", str(port),
           "--workers", str(workers)]
    server = Server(f"gateway w{workers}", cmd, {**os.environ, **env_set}, state / "serve.log",
                    f"http://127.0.0.1:{port}/readyz")
    shown = " ".join(f"{k}={v}" for k, v in env_set.items()) + " " + shlex.join(
        [".venv/bin/python", "-m", "router_ml.cli"] + cmd[3:])
    return server, f"http://127.0.0.1:{port}/v1/chat/completions", {"command": shown, "env": env_set}, key


def litellm_python() -> Path | None:
    python = LITELLM_VENV / "bin" / "python"
    return python if python.is_file() else None


def start_litellm(upstream: str, tmp: Path) -> tuple[Server, str, dict, str]:
    port = _port()
    state = tmp / "litellm"
    state.mkdir()
    config = state / "config.yaml"
    config.write_text(
        "model_list:\n"
        f"  - model_name: {DIRECT_MODEL}\n"
        "    litellm_params:\n"
        f"      model: openai/{DIRECT_MODEL}\n"
        f"      api_base: {upstream}/v1\n"
        "      api_key: sk-stub\n"
        "litellm_settings:\n"
        "  telemetry: false\n"
        "  set_verbose: false\n")
    key = "sk-" + secrets.token_hex(32)  # LiteLLM refuses to start without a strong master key
    env_set = {"LITELLM_LOCAL_MODEL_COST_MAP": "True", "LITELLM_TELEMETRY": "False", "LITELLM_LOG": "ERROR",
               "DISABLE_SCHEMA_UPDATE": "True", "NO_DOCS": "True", "HF_HUB_OFFLINE": "1"}
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "VIRTUAL_ENV")}
    env.update(env_set, LITELLM_MASTER_KEY=key)
    cmd = [str(LITELLM_VENV / "bin" / "litellm"), "--config", str(config), "--host", "127.0.0.1", "--port", str(port),
           "--num_workers", "1"]
    server = Server("litellm", cmd, env, state / "litellm.log", f"http://127.0.0.1:{port}/health/liveliness", cwd=state)
    shown = (" ".join(f"{k}={v}" for k, v in env_set.items()) + " LITELLM_MASTER_KEY=sk-<64 hex> "
             + shlex.join([".venv-litellm/bin/litellm", "--config", "config.yaml"] + cmd[3:]))
    return server, f"http://127.0.0.1:{port}/v1/chat/completions", {"command": shown, "env": env_set,
                                                                     "config": config.read_text()}, key


# ------------------------------------------------------------------------------------------- report
def _versions() -> dict:
    from importlib import metadata

    def version(name: str) -> str | None:
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            return None

    def importable(name: str) -> bool:
        import importlib.util
        return importlib.util.find_spec(name) is not None

    out = {"python": platform.python_version(),
           "gateway_venv": {n: version(n) for n in ("router-ml", "uvicorn", "fastapi", "starlette", "aiohttp", "uvloop",
                                                     "httptools", "pydantic", "numpy")},
           "gateway_event_loop": "uvloop" if importable("uvloop") else "asyncio",
           "gateway_http_parser": "httptools" if importable("httptools") else "h11"}
    wrk = subprocess.run(["wrk", "--version"], capture_output=True, text=True, check=False)
    out["wrk"] = (wrk.stdout + wrk.stderr).splitlines()[0].strip()
    python = litellm_python()
    if python is not None:
        probe = ("import importlib.metadata as m, importlib.util as u, json\n"
                 "v = lambda n: m.version(n) if u.find_spec(n.replace('-', '_')) else None\n"
                 "print(json.dumps({n: v(n) for n in ('litellm', 'uvicorn', 'fastapi', 'httpx', 'openai', 'uvloop',"
                 " 'httptools', 'aiohttp')}))")
        out["litellm_venv"] = json.loads(subprocess.run([str(python), "-c", probe], capture_output=True,
                                                        text=True, check=True).stdout)
    git = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True,
                         check=False).stdout.strip()
    dirty = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "--untracked-files=no"],
                           capture_output=True, text=True, check=False).stdout.strip()
    out["git_commit"] = git + ("+uncommitted changes" if dirty else "")
    return out


def _machine() -> dict:
    cpuinfo = Path("/proc/cpuinfo").read_text()
    model = next((ln.split(":", 1)[1].strip() for ln in cpuinfo.splitlines() if ln.startswith("model name")), "?")
    mem = next(ln.split()[1] for ln in Path("/proc/meminfo").read_text().splitlines() if ln.startswith("MemTotal"))
    return {"cpu": model, "cores": os.cpu_count(), "memory_gib": round(int(mem) / 2**20, 1),
            "kernel": platform.release(), "load_average_at_start": os.getloadavg()}


def _added(row: dict, direct: dict) -> None:
    row["added_p50_ms"] = row["p50_ms"] - direct["p50_ms"]
    row["added_p99_ms"] = row["p99_ms"] - direct["p99_ms"]


def _verdict(rows: dict[int, dict]) -> dict:
    one, hundred = rows.get(1), rows.get(100)
    checks = {}
    if one:
        checks["added_p50_ms_1"] = one["added_p50_ms"] <= TARGET["added_p50_ms_1"]
    if hundred:
        checks["added_p50_ms_100"] = hundred["added_p50_ms"] <= TARGET["added_p50_ms_100"]
        checks["added_p99_ms_100"] = hundred["added_p99_ms"] <= TARGET["added_p99_ms_100"]
        checks["throughput_rps_100"] = hundred["throughput_rps"] >= TARGET["throughput_rps_100"]
    return {"checks": checks, "meets_target": bool(checks) and all(checks.values())}


def plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    servers = [s for s in report["servers"] if s["results"]]
    colors = ["#1f77b4", "#6baed6", "#d62728", "#ff9896", "#2ca02c"][:len(servers)]
    conns = report["connections"]
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.8))
    width = 0.8 / max(len(servers), 1)
    x = np.arange(len(conns))
    for ax, key, title, targets in (
            (axes[0], "added_p50_ms", "added p50 latency (ms, symlog)", {1: TARGET["added_p50_ms_1"],
                                                                      100: TARGET["added_p50_ms_100"]}),
            (axes[1], "added_p99_ms", "added p99 latency (ms, symlog)", {100: TARGET["added_p99_ms_100"]})):
        for i, (server, color) in enumerate(zip(servers, colors)):
            values = [next((r[key] for r in server["results"] if r["connections"] == c), np.nan) for c in conns]
            bars = ax.bar(x + (i - (len(servers) - 1) / 2) * width, values, width, label=server["label"], color=color)
            ax.bar_label(bars, fmt="%.1f", fontsize=7)
        for j, c in enumerate(conns):
            if c in targets:
                ax.hlines(targets[c], j - 0.45, j + 0.45, colors="k", linestyles="--", linewidth=1)
        ax.set_yscale("symlog", linthresh=1)
        ax.set_xticks(x, [f"{c} connection{'s' if c > 1 else ''}" for c in conns])
        ax.set_title(title + "\n(dashed: gateway target)", fontsize=10)
    axes[0].legend(fontsize=8, loc="upper left")
    ax = axes[2]
    for i, (server, color) in enumerate(zip(servers, colors)):
        values = [next((r["throughput_rps"] for r in server["results"] if r["connections"] == c), np.nan)
                  for c in conns]
        bars = ax.bar(x + (i - (len(servers) - 1) / 2) * width, values, width, color=color)
        ax.bar_label(bars, fmt="%.0f", fontsize=7)
    for j, c in enumerate(conns):
        direct = next(r["throughput_rps"] for r in report["direct"] if r["connections"] == c)
        ax.hlines(direct, j - 0.45, j + 0.45, colors="gray", linestyles=":", linewidth=1.5)
        if c == 100:
            ax.hlines(TARGET["throughput_rps_100"], j - 0.45, j + 0.45, colors="k", linestyles="--", linewidth=1)
    ax.set_xticks(x, [f"{c} connection{'s' if c > 1 else ''}" for c in conns])
    ax.set_title("throughput (req/s)\n(dotted: direct to upstream; dashed: gateway target)", fontsize=10)
    fig.suptitle(f"Gateway vs LiteLLM over a loopback upstream with a fixed {UPSTREAM_DELAY_MS} ms delay "
                 f"({report['machine']['cores']} cores shared with wrk and the upstream)", fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def print_table(report: dict) -> None:
    print("\n{:<20} {:>5} {:>9} {:>9} {:>10} {:>10} {:>9} {:>11} {:>7}".format(
        "server", "conns", "p50 ms", "p99 ms", "+p50 ms", "+p99 ms", "req/s", "CPU us/req", "errors"))
    for row in report["direct"]:
        print(f"{'direct (upstream)':<20} {row['connections']:>5} {row['p50_ms']:>9.2f} {row['p99_ms']:>9.2f} "
              f"{'':>10} {'':>10} {row['throughput_rps']:>9.0f} {'':>11} {row['error_count']:>7}")
    for server in report["servers"]:
        for row in server["results"]:
            print(f"{server['label']:<20} {row['connections']:>5} {row['p50_ms']:>9.2f} {row['p99_ms']:>9.2f} "
                  f"{row['added_p50_ms']:>10.2f} {row['added_p99_ms']:>10.2f} {row['throughput_rps']:>9.0f} "
                  f"{row['server_cpu_us_per_request']:>11.0f} {row['error_count']:>7}")
    for server in report["servers"]:
        if "verdict" in server:
            failed = [k for k, ok in server["verdict"]["checks"].items() if not ok]
            verdict = "meets the target" if server["verdict"]["meets_target"] else "misses " + ", ".join(failed)
            print(f"{server['label']}: {verdict}")


# --------------------------------------------------------------------------------------------- main
def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=10.0, help="seconds of each measured wrk run")
    parser.add_argument("--warmup", type=float, default=3.0, help="seconds of the discarded warm-up run before each")
    parser.add_argument("--connections", default="1,100", help="comma-separated connection counts")
    parser.add_argument("--workers", default="1,2", help="comma-separated gateway worker counts")
    parser.add_argument("--no-litellm", action="store_true", help="skip the LiteLLM proxy")
    parser.add_argument("--quiet-wait", type=float, default=60.0,
                        help="before each measured run, wait up to this many seconds for other processes to "
                             "leave the CPUs idle (the run is measured anyway after that, with a warning)")
    parser.add_argument("--keep-logs", action="store_true", help="keep the servers' logs (temporary directory)")
    parser.add_argument("--out", type=Path, default=RESULTS / "gateway_latency.json")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        print(WRK_INSTALL, file=sys.stderr)
        return 2
    connections = [int(c) for c in args.connections.split(",")]
    workers = [int(w) for w in args.workers.split(",")]
    if not args.no_litellm and litellm_python() is None:
        print("the LiteLLM venv .venv-litellm is missing: `make bench-gateway` creates it (or pass --no-litellm)",
              file=sys.stderr)
        return 2
    started = time.perf_counter()
    tmp = Path(tempfile.mkdtemp(prefix="gateway-bench-"))
    report = {"benchmark": "gateway_latency", "upstream_delay_ms": UPSTREAM_DELAY_MS, "machine": _machine(),
              "versions": _versions(), "target": TARGET, "connections": connections,
              "settings": {"duration_s": args.duration, "warmup_s": args.warmup, "wrk_threads": 1,
                           "quiet_wait_s": args.quiet_wait,
                           "load": "closed loop, keep-alive, non-streamed chat completions, 5 prompts rotated"},
              "commands": {"benchmark": shlex.join(["make", "bench-gateway"]),
                           "upstream": f".venv/bin/python benchmarks/upstream_stub.py PORT {UPSTREAM_DELAY_MS}"},
              "servers": []}
    stub, upstream = start_stub(tmp)
    servers: list[Server] = [stub]
    try:
        print(f"upstream stub on {upstream} ({UPSTREAM_DELAY_MS} ms); capacity check at 400 connections:", flush=True)
        capacity = run_wrk(f"{upstream}/v1/chat/completions", DIRECT_MODEL, 400, 3)
        print(f"  {capacity['throughput_rps']:.0f} req/s, p50 {capacity['p50_ms']:.1f} ms "
              f"(needs > 2000 req/s at ~{UPSTREAM_DELAY_MS} ms)", flush=True)
        if capacity["throughput_rps"] < 2000 or capacity["error_count"]:
            print("  WARNING: the upstream stub may be a bottleneck on this machine", flush=True)
        report["upstream_capacity_check"] = capacity
        print("direct:", flush=True)
        report["direct"] = [measure("direct", f"{upstream}/v1/chat/completions", DIRECT_MODEL, c, args, None, upstream)
                            for c in connections]
        direct = {row["connections"]: row for row in report["direct"]}
        plans = [("gateway", w) for w in workers] + ([] if args.no_litellm else [("litellm", 1)])
        for kind, n in plans:
            if kind == "gateway":
                server, url, info, key = start_gateway(n, upstream, tmp)
                label, model = f"router-ml w{n}", "router-ml/auto"
            else:
                server, url, info, key = start_litellm(upstream, tmp)
                label, model = f"LiteLLM {report['versions']['litellm_venv']['litellm']} w1", DIRECT_MODEL
            servers.append(server)
            ready_s = server.wait_ready()
            status, answer = _post(url, {"model": model, "messages": [{"role": "user", "content": "What is 17 * 23?"}]},
                                   key)
            if status != 200 or not answer.get("choices"):
                raise RuntimeError(f"{label}: a test request failed ({status}): {answer}\n{server.tail()}")
            print(f"{label} (ready in {ready_s:.1f} s; answered by {answer.get('model')}):", flush=True)
            rows = [measure(label, url, model, c, args, server, upstream, key) for c in connections]
            for row in rows:
                _added(row, direct[row["connections"]])
            entry = {"label": label, "kind": kind, "workers": n, "ready_s": round(ready_s, 1), **info,
                     "example_answer_model": answer.get("model"), "results": rows}
            if kind == "gateway":
                entry["verdict"] = _verdict({r["connections"]: r for r in rows})
            report["servers"].append(entry)
            server.stop()
            servers.remove(server)
    finally:
        for server in reversed(servers):
            server.stop()
        if args.keep_logs:
            print(f"server logs kept in {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    report["machine"]["load_average_at_end"] = os.getloadavg()
    report["wall_s"] = round(time.perf_counter() - started, 1)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    plot(report, args.out.with_suffix(".png"))
    print_table(report)
    print(f"\nwrote {args.out} and {args.out.with_suffix('.png')} ({report['wall_s']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
