"""A real `router-ml serve` process on loopback for the tests that need one: a free port, a tenant key, the
served bundle and outcomes table (trained on the RouterBench rows of the mini mirror), and the server itself."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time

import openai
import polars as pl
import pytest

from router_ml.data.prepare import prepare
from router_ml.data.report import ImportReport
from router_ml.embed import StaticEncoder
from router_ml.serve.tenancy.tenants import TenantStore
from router_ml.train import TrainConfig, run


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def tenant_key(store_url: str) -> str:
    """A new API key of tenant 'test' on ``store_url`` (created on first use): the served gateway requires one."""
    tenants = TenantStore(store_url)
    if tenants.get_tenant("test") is None:
        tenants.create_tenant("test")
    key = tenants.issue_key("test")
    tenants.close()
    return key


def start_server(tmp, static_encoder_dir, port: int, *args: str, key: str | None = None,
           env_extra: dict | None = None) -> tuple[subprocess.Popen, openai.OpenAI]:
    """`router-ml serve` on the bundle, outcomes and call log under ``tmp`` (``env_extra`` overrides), with ``key``
    or a new key of tenant 'test'; returns once it answers."""
    env = {**os.environ, "ROUTER_ML_BUNDLE": str(tmp / "bundle"), "ROUTER_ML_STATIC_ENCODER": str(static_encoder_dir),
           "ROUTER_ML_OUTCOMES_PATH": str(tmp / "outcomes.parquet"), "ROUTER_ML_REPLAY_SPEED": "0",
           "ROUTER_ML_STORE_URL": f"sqlite:///{tmp / 'calls.db'}", "ROUTER_ML_STORE_JOURNAL": str(tmp / "journal"),
           **(env_extra or {})}
    key = key or tenant_key(env["ROUTER_ML_STORE_URL"])
    process = subprocess.Popen([sys.executable, "-m", "router_ml.cli", "serve", "--port", str(port), *args], env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 120
    client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key=key, max_retries=0)
    while True:
        try:
            client.models.list()
            return process, client
        except openai.APIConnectionError:
            if process.poll() is not None or time.time() > deadline:
                process.kill()
                pytest.fail(f"server did not start: {process.stdout.read()}")
            time.sleep(0.3)


@pytest.fixture(scope="module")
def served(mini_files, static_encoder_dir, tmp_path_factory):
    """A directory with the outcomes table and a bundle trained on its RouterBench rows."""
    tmp = tmp_path_factory.mktemp("serve")
    outcomes = prepare(mini_files, ImportReport(), encoder=None)
    outcomes.write_parquet(tmp / "outcomes.parquet")
    config = TrainConfig(name="serve", router="linear", sources=["routerbench"], min_prompts=50, n_trials=0)
    run(config, outcomes, StaticEncoder(static_encoder_dir), tmp / "bundle")
    return tmp, outcomes.filter(pl.col("source") == "routerbench").select("prompt", "model", "response")


def copy_served(served, tmp_path) -> pl.DataFrame:
    """A private copy of the served bundle and outcomes table under ``tmp_path``; the recorded answers."""
    source, recorded = served
    shutil.copytree(source / "bundle", tmp_path / "bundle")
    shutil.copy(source / "outcomes.parquet", tmp_path / "outcomes.parquet")
    return recorded
