from __future__ import annotations

import os
from pathlib import Path

import pytest

from router_ml.config import PROJECT_ROOT
from router_ml.data.report import ImportReport
from router_ml.data.sources import DataFiles, fetch, load_manifest

import mini_mirror

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def _real_mirror() -> Path | None:
    candidates = [os.environ.get("ROUTER_ML_DATA_MIRROR"), PROJECT_ROOT.parent / "shared" / "datasets"]
    for candidate in candidates:
        if candidate and (Path(candidate) / "routellm").is_dir():
            return Path(candidate)
    return None


REAL_MIRROR = _real_mirror()
MANIFEST = PROJECT_ROOT / "datasets" / "manifest.tsv"
needs_mirror = pytest.mark.skipif(REAL_MIRROR is None, reason="no public datasets mirror (set ROUTER_ML_DATA_MIRROR)")


@pytest.fixture(scope="session")
def real_files(tmp_path_factory) -> DataFiles:
    if REAL_MIRROR is None:
        pytest.skip("no public datasets mirror (set ROUTER_ML_DATA_MIRROR)")
    return fetch(load_manifest(MANIFEST), tmp_path_factory.mktemp("real-cache"), mirror=REAL_MIRROR)


@pytest.fixture(scope="session")
def mini(tmp_path_factory) -> tuple[Path, Path]:
    """(manifest, mirror) of small fixtures cut from the real files."""
    if REAL_MIRROR is None:
        pytest.skip("no public datasets mirror (set ROUTER_ML_DATA_MIRROR)")
    out = tmp_path_factory.mktemp("mini")
    manifest = mini_mirror.build(REAL_MIRROR, MANIFEST, out)
    return manifest, out / "mirror"


@pytest.fixture(scope="session")
def mini_files(mini, tmp_path_factory) -> DataFiles:
    manifest, mirror = mini
    return fetch(load_manifest(manifest), tmp_path_factory.mktemp("mini-cache"), mirror=mirror)


@pytest.fixture
def report() -> ImportReport:
    return ImportReport()


@pytest.fixture(scope="session")
def static_encoder_dir(tmp_path_factory) -> Path:
    """A small static encoder (64 dimensions) distilled once per test session through the CLI."""
    from typer.testing import CliRunner

    from router_ml.cli import app

    out = tmp_path_factory.mktemp("static") / "minilm-static-64"
    result = CliRunner().invoke(app, ["encoders", "build-static", "--out", str(out), "--dims", "64"])
    assert result.exit_code == 0, result.output
    return out


@pytest.fixture(scope="session")
def dedup_static_encoder_dir(tmp_path_factory) -> Path:
    """The static encoder at the dimensions its near-duplicate rule was chosen for (what `make data` uses),
    distilled once per test session."""
    from router_ml.embed import STATIC_DIMS, build_static_encoder

    out = tmp_path_factory.mktemp("static") / f"minilm-static-{STATIC_DIMS}"
    build_static_encoder(out, STATIC_DIMS)
    return out


def _service_url(variable: str, server: str) -> str:
    """The URL of a server `.ci/services` started; skip without one, except in CI, where that is a failure."""
    url = os.environ.get(variable)
    if not url:
        message = f"no {server} server: {variable} is unset (run `eval \"$(.ci/services)\"` to start one)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return url


@pytest.fixture
def postgres_url():
    """A SQLAlchemy URL on the PostgreSQL server of ``.ci/services`` (``ROUTER_ML_TEST_POSTGRES_URL``), confined to a
    fresh schema that is dropped afterwards. Skipped when no server is configured, except in CI, where it fails."""
    import uuid

    import sqlalchemy as sa

    base = _service_url("ROUTER_ML_TEST_POSTGRES_URL", "PostgreSQL")
    schema = f"test_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(base)
    with admin.begin() as conn:
        conn.execute(sa.text(f"CREATE SCHEMA {schema}"))
    yield f"{base}{'&' if '?' in base else '?'}options=-csearch_path%3D{schema}"
    with admin.begin() as conn:
        conn.execute(sa.text(f"DROP SCHEMA {schema} CASCADE"))
    admin.dispose()


@pytest.fixture
def redis_url():
    """(URL, key prefix) on the Redis server of ``.ci/services`` (``ROUTER_ML_TEST_REDIS_URL``); the keys under the
    prefix are deleted afterwards. Skipped when no server is configured, except in CI, where it fails."""
    import uuid

    import redis

    url = _service_url("ROUTER_ML_TEST_REDIS_URL", "Redis")
    prefix = f"test-{uuid.uuid4().hex[:12]}:"
    yield url, prefix
    client = redis.Redis.from_url(url)
    keys = list(client.scan_iter(match=prefix + "*"))
    if keys:
        client.delete(*keys)
    client.close()
