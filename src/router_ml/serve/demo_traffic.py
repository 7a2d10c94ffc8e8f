"""Demo traffic for `make run`: real prompts of the outcomes table sent through the gateway at a steady rate, so
that a new user's dashboard comes alive within a minute. Every tenth request repeats an earlier prompt, which
the response cache answers. It runs in a daemon thread of the `router-ml serve` process, with its own API key
of the demo tenant, revoked when the server stops; its calls are logged like any other, under that tenant."""

from __future__ import annotations

import json
import logging
import random
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import polars as pl

log = logging.getLogger(__name__)
REPEAT_EVERY = 10


def demo_prompts(outcomes_path: Path, count: int = 500, seed: int = 0) -> list[str]:
    """``count`` distinct prompts of the outcomes table (RouterBench's, the default bundle's data), shortest
    quarter left out (bare multiple-choice fragments), in a fixed random order."""
    prompts = (pl.scan_parquet(outcomes_path).filter(pl.col("source") == "routerbench").select("prompt").unique()
               .collect().filter(pl.col("prompt").str.len_chars() >= 40).sort("prompt"))
    return prompts.sample(min(count, prompts.height), seed=seed)["prompt"].to_list()


class DemoTraffic:
    def __init__(self, base_url: str, key: str, prompts: list[str], rate: float, seed: int = 0):
        if rate <= 0:
            raise ValueError(f"demo traffic rate must be > 0 requests per second, got {rate}")
        if not prompts:
            raise ValueError("demo traffic needs at least one prompt")
        self.base_url, self.key, self.prompts, self.rate = base_url.rstrip("/"), key, prompts, rate
        self.random = random.Random(seed)
        self.sent = self.failed = 0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name="demo-traffic", daemon=True)

    def start(self) -> DemoTraffic:
        self.thread.start()
        return self

    def _ready(self) -> bool:
        while not self.stop.is_set():
            try:
                with urllib.request.urlopen(f"{self.base_url}/readyz", timeout=2) as answer:
                    if answer.status == 200:
                        return True
            except OSError:
                pass
            self.stop.wait(0.5)
        return False

    def _send(self, prompt: str) -> None:
        body = json.dumps({"model": "router-ml/auto", "messages": [{"role": "user", "content": prompt}]}).encode()
        request = urllib.request.Request(f"{self.base_url}/v1/chat/completions", data=body, method="POST",
                                         headers={"content-type": "application/json",
                                                  "authorization": f"Bearer {self.key}"})
        try:
            with urllib.request.urlopen(request, timeout=60) as answer:
                answer.read()
        except urllib.error.URLError as exc:
            if isinstance(exc.reason, ConnectionRefusedError):  # the server is stopping (or restarting): wait
                self._ready()
                return
            self.failed += 1
            log.warning("demo traffic: request failed: %s", exc)
        except OSError as exc:  # HTTPError (an error answer) included
            self.failed += 1
            log.warning("demo traffic: request failed: %s", exc)
        self.sent += 1

    def next_prompt(self, position: int) -> tuple[str, int]:
        """The next prompt to send and the next position in the list: the list in order, over and over, and every
        REPEAT_EVERY-th request a prompt already sent (a cache hit)."""
        if self.sent % REPEAT_EVERY == REPEAT_EVERY - 1 and position:
            return self.prompts[self.random.randrange(min(position, len(self.prompts)))], position
        return self.prompts[position % len(self.prompts)], position + 1

    def _run(self) -> None:
        if not self._ready():
            return
        position = 0
        while not self.stop.is_set():
            prompt, position = self.next_prompt(position)
            started = time.monotonic()
            self._send(prompt)
            self.stop.wait(max(0.0, 1.0 / self.rate - (time.monotonic() - started)))
