"""README.md's quick-start examples, as printed, against a real `router-ml serve` process.

The test reads the ```bash block with the curl call and the ```python block with the openai SDK from the
README's "Quick start" section, so that an edit of those examples is what runs. The only rewrite of the text is
the base URL: ``http://127.0.0.1:8000`` becomes a free port, so that a developer's running server is never
reached. The key placeholders are filled in as the README says ("the key the gateway printed"): ``KEY=rm-...``
in the bash block and ``KEY = "rm-..."`` in the python block get the key. The key is the one the
gateway prints on its first start with an embedded SQLite store (tenant ``demo``), read from its stdout.

The gateway replays RouterBench's recorded answers (the replay slice of the mini fixtures, at
``ROUTER_ML_REPLAY_PATH``) with a small bundle trained on them, so that the test needs no full mirror.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import sqlalchemy as sa

from router_ml.data.prepare import replay_slice
from router_ml.data.report import ImportReport
from router_ml.embed import StaticEncoder
from router_ml.train import TrainConfig, run

README = Path(__file__).resolve().parents[1] / "README.md"
README_BASE_URL = "http://127.0.0.1:8000"
KEY_PLACEHOLDER = re.compile(r"^KEY=rm-\.\.\.", re.MULTILINE)
SDK_KEY_PLACEHOLDER = re.compile(r'^KEY = "rm-\.\.\."', re.MULTILINE)
FENCE = re.compile(r"^([ \t]*)```(\w*)[ \t]*\n(.*?)^\1```[ \t]*$", re.MULTILINE | re.DOTALL)
START_TIMEOUT_S = 60
STOP_TIMEOUT_S = 20


def _quick_start() -> str:
    text = README.read_text(encoding="utf-8")
    match = re.search(r"^## Quick start[ \t]*$(.*?)(?=^## |\Z)", text, re.MULTILINE | re.DOTALL)
    if match is None:
        pytest.fail(f"{README} has no '## Quick start' section")
    return match.group(1)


def _block(language: str, *needles: str) -> str:
    """The one ```language block of the Quick start section that contains every needle (dedented)."""
    found = [textwrap.dedent(body) for _, lang, body in FENCE.findall(_quick_start())
             if lang == language and all(n in body for n in needles)]
    wanted = f"```{language} block containing {' and '.join(repr(n) for n in needles)}"
    if not found:
        pytest.fail(f"README.md's Quick start section has no {wanted}")
    if len(found) > 1:
        pytest.fail(f"README.md's Quick start section has {len(found)} blocks of the kind ({wanted}): which one "
                    "is the example?")
    return found[0]


def _on_port(block: str, port: int) -> str:
    """``block`` calling the gateway on ``port`` instead of README's 8000: the only rewrite of the README's text."""
    if README_BASE_URL not in block:
        pytest.fail(f"the README example no longer calls {README_BASE_URL} (the test rewrites only that base "
                    f"URL, to a free port):\n{block}")
    return block.replace(README_BASE_URL, f"http://127.0.0.1:{port}")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def replay_dir(mini_files, static_encoder_dir, tmp_path_factory) -> Path:
    """RouterBench's replay slice of the mini fixtures (what the replay provider answers from) and a bundle
    trained on it with the session's static encoder."""
    tmp = tmp_path_factory.mktemp("readme")
    table = replay_slice(mini_files, ImportReport())
    table.write_parquet(tmp / "replay.parquet")
    config = TrainConfig(name="readme", router="linear", sources=["routerbench"], min_prompts=50, n_trials=0)
    run(config, table, StaticEncoder(static_encoder_dir), tmp / "bundle")
    return tmp


class Gateway:
    """A `router-ml serve` process on a free port; its output is drained by a thread into ``lines``."""

    def __init__(self, tmp: Path, bundle: Path, replay: Path, static_encoder_dir: Path) -> None:
        self.port = _free_port()
        self.store_url = f"sqlite:///{tmp / 'calls.db'}"
        env = {**os.environ, "ROUTER_ML_BUNDLE": str(bundle), "ROUTER_ML_STATIC_ENCODER": str(static_encoder_dir),
               "ROUTER_ML_PROVIDER": "replay", "ROUTER_ML_REPLAY_PATH": str(replay),
               "ROUTER_ML_OUTCOMES_PATH": str(tmp / "no-outcomes.parquet"), "ROUTER_ML_REPLAY_SPEED": "0",
               "ROUTER_ML_STORE_URL": self.store_url, "ROUTER_ML_STORE_JOURNAL": str(tmp / "journal"),
               "PYTHONUNBUFFERED": "1", "NO_PROXY": "127.0.0.1,localhost", "no_proxy": "127.0.0.1,localhost"}
        script = Path(sys.executable).with_name("router-ml")
        command = [str(script)] if script.is_file() else [sys.executable, "-m", "router_ml.cli"]
        self.lines: list[str] = []
        self.process = subprocess.Popen([*command, "serve", "--port", str(self.port)], env=env, text=True,
                                        stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        self._reader = threading.Thread(target=self._drain, daemon=True)
        self._reader.start()

    def _drain(self) -> None:
        for line in self.process.stdout:
            self.lines.append(line)

    @property
    def output(self) -> str:
        return "".join(self.lines)

    def wait_ready(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/readyz", timeout=2) as response:
                    if response.status == 200:
                        return
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.kill()
                pytest.fail(f"router-ml serve did not get ready in {START_TIMEOUT_S} s:\n{self.output}")
            time.sleep(0.2)

    def demo_key(self) -> str:
        """The key of tenant 'demo' the gateway printed on its first start."""
        match = re.search(r"first start: created tenant 'demo'.*?\n\s*(rm-[A-Za-z0-9_-]+)", self.output)
        if match is None:
            pytest.fail(f"router-ml serve printed no key of a new tenant 'demo':\n{self.output}")
        return match.group(1)

    def stop(self) -> int:
        """SIGTERM, then the exit status (killed after STOP_TIMEOUT_S)."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.kill()
                pytest.fail(f"router-ml serve did not stop within {STOP_TIMEOUT_S} s of SIGTERM:\n{self.output}")
        self._reader.join(timeout=5)
        return self.process.returncode

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)


@pytest.fixture
def gateway(replay_dir, static_encoder_dir, tmp_path):
    """A first start of the gateway on an empty SQLite store (so it creates tenant 'demo'); stopped afterwards."""
    served = Gateway(tmp_path, replay_dir / "bundle", replay_dir / "replay.parquet", static_encoder_dir)
    try:
        served.wait_ready()
        yield served
    finally:
        served.kill()  # a no-op after the test's SIGTERM; never leaves the process behind


def test_readme_quick_start_examples_run_as_printed(gateway, replay_dir, tmp_path):
    curl_block = _block("bash", "curl", "/v1/chat/completions")
    sdk_block = _block("python", "from openai import OpenAI")
    models = json.loads((replay_dir / "bundle" / "bundle.json").read_text())["models"]
    key = gateway.demo_key()
    env = {**os.environ, "NO_PROXY": "127.0.0.1,localhost", "no_proxy": "127.0.0.1,localhost"}

    # The curl example, with the key the gateway printed in place of README's `KEY=rm-...`.
    if shutil.which("curl") is None:
        message = "curl is not installed: the README's curl example cannot run"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    if len(KEY_PLACEHOLDER.findall(curl_block)) != 1:
        pytest.fail(f"the README's curl example no longer sets `KEY=rm-...` (the key the gateway printed):\n"
                    f"{curl_block}")
    script = KEY_PLACEHOLDER.sub(lambda _: f"KEY={key}", _on_port(curl_block, gateway.port))
    curl = subprocess.run(["bash", "-euo", "pipefail", "-c", script], capture_output=True, text=True, timeout=30,
                          env=env, cwd=tmp_path)
    assert curl.returncode == 0, f"the README's curl example failed ({curl.returncode}):\n{curl.stderr}"
    try:
        answer = json.loads(curl.stdout)
    except json.JSONDecodeError:
        pytest.fail(f"the README's curl example printed no JSON:\n{curl.stdout}\n{curl.stderr}")
    assert answer.get("object") == "chat.completion", answer
    content = answer["choices"][0]["message"]["content"]
    assert isinstance(content, str) and content.strip(), answer
    assert answer["model"] in models, f"{answer['model']!r} is not a model of the bundle {models}"
    curl_call = answer["router_ml"]["call_id"]
    assert curl_call

    # The openai SDK example, with the key the gateway printed in place of README's `KEY = "rm-..."`.
    if len(SDK_KEY_PLACEHOLDER.findall(sdk_block)) != 1:
        pytest.fail(f'the README\'s openai SDK example no longer sets `KEY = "rm-..."` (the key the gateway '
                    f"printed):\n{sdk_block}")
    sdk_script = SDK_KEY_PLACEHOLDER.sub(lambda _: f"KEY = {key!r}", _on_port(sdk_block, gateway.port))
    sdk = subprocess.run([sys.executable, "-c", sdk_script],
                         capture_output=True, text=True, timeout=30, env=env, cwd=tmp_path)
    assert sdk.returncode == 0, f"the README's openai SDK example failed ({sdk.returncode}):\n{sdk.stderr}"
    printed = sdk.stdout.strip()
    chosen = next((m for m in models if printed.startswith(m + " ")), None)
    assert chosen is not None, f"the SDK example did not print a model of the bundle first: {printed!r}"
    assert printed[len(chosen):].strip(), f"the SDK example printed no answer: {printed!r}"

    # Both calls are in the call log under tenant 'demo' once the gateway has flushed it on SIGTERM.
    assert gateway.stop() == 0, f"router-ml serve did not exit cleanly on SIGTERM:\n{gateway.output}"
    engine = sa.create_engine(gateway.store_url)
    try:
        with engine.connect() as connection:
            logged = [dict(row._mapping) for row in connection.execute(sa.text(
                "select call_id, tenant, model, status, routed from calls order by ts"))]
    finally:
        engine.dispose()
    assert len(logged) == 2, f"expected the curl and the SDK call in the log, found {logged}"
    assert logged[0]["call_id"] == curl_call and logged[0]["model"] == answer["model"]
    assert logged[1]["model"] == chosen
    assert all(row["tenant"] == "demo" and row["status"] == "ok" and row["routed"] for row in logged), logged

