"""``router-ml serve --workers N`` for N > 1: N uvicorn processes, each with its own listening socket on the
same port (``SO_REUSEPORT``), so the kernel spreads new connections evenly over them.

uvicorn's own multi-worker mode shares one socket, and whichever worker wakes first accepts a burst of
connections: with 100 clients connecting at once the split was 36/64, then 100/0, then 0/100 (measured
with ss during benchmarks/gateway_latency.py), leaving one core idle. The supervisor here starts the
workers, restarts one that dies, and on SIGTERM or SIGINT passes the signal on and waits for each
worker's graceful shutdown (which flushes its call log).

Metrics: the supervisor gives the workers a fresh ``PROMETHEUS_MULTIPROC_DIR``, where each keeps its values,
so that a scrape of ``/metrics`` on any worker reports the sum over all (:mod:`router_ml.serve.observability.metrics`). A
dead worker's counters stay in the sum (counters never go back); its gauges are dropped.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import shutil
import signal
import socket
import tempfile
import time

from prometheus_client.multiprocess import mark_process_dead

log = logging.getLogger(__name__)
APP = "router_ml.serve.main:build_app"


def listening_socket(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    sock.listen(2048)
    return sock


def _worker(host: str, port: int, log_level: str) -> None:
    import uvicorn

    sock = listening_socket(host, port)
    uvicorn.Server(uvicorn.Config(APP, factory=True, log_level=log_level, backlog=2048)).run(sockets=[sock])


def serve(host: str, port: int, workers: int, log_level: str = "warning") -> None:
    """Run ``workers`` worker processes until SIGTERM or SIGINT; returns once all have shut down."""
    listening_socket(host, port).close()  # fail here, in the foreground, if the port is taken
    metrics_dir = tempfile.mkdtemp(prefix="router-ml-metrics-")
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir  # read by prometheus_client as each worker imports it
    context = multiprocessing.get_context("spawn")
    stopping = False

    def start() -> multiprocessing.Process:
        process = context.Process(target=_worker, args=(host, port, log_level), name="router-ml-worker")
        process.start()
        return process

    def stop(signum, _frame) -> None:
        nonlocal stopping
        stopping = True
        for process in processes:
            if process.is_alive():
                process.terminate()  # SIGTERM: uvicorn's graceful shutdown, then the app's lifespan end

    processes = [start() for _ in range(workers)]
    previous = {s: signal.signal(s, stop) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        while not stopping:
            for i, process in enumerate(processes):
                if not process.is_alive() and not stopping:
                    log.error("worker %d (pid %s) exited with %s; starting another", i, process.pid, process.exitcode)
                    mark_process_dead(process.pid, metrics_dir)
                    processes[i] = start()
            time.sleep(0.5)
        for process in processes:
            process.join()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        shutil.rmtree(metrics_dir, ignore_errors=True)
