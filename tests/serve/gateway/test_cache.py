"""The response cache: exact keys, TTL, errors, tenant isolation, the near-miss guards, both backends."""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from router_ml.config import PROJECT_ROOT
from router_ml.data.paraphrase import load_pairs, paws_files
from router_ml.serve.gateway.cache import MemoryBackend, RedisBackend, ResponseCache, near_miss_reason, request_key

CONVERSATION = [{"role": "system", "content": "You answer tersely."},
                {"role": "user", "content": "Name a prime number."},
                {"role": "assistant", "content": "7"},
                {"role": "user", "content": "Name  another\n one."}]
SAMPLING = {"temperature": 0.2, "max_tokens": 64}
ANSWER = {"id": "c1", "choices": [{"index": 0, "message": {"role": "assistant", "content": "11"},
                                   "finish_reason": "stop"}]}


class Clock:
    def __init__(self):
        self.now = 1_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory):
    """A Redis URL: ``ROUTER_ML_TEST_REDIS_URL``, else a private redis-server on a unix socket in a temp dir.
    Skipped when neither is available, except in CI, where it fails."""
    if url := os.environ.get("ROUTER_ML_TEST_REDIS_URL"):
        yield url
        return
    binary = shutil.which("redis-server")
    if binary is None:
        message = "no Redis server (set ROUTER_ML_TEST_REDIS_URL or install redis-server)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    directory = tmp_path_factory.mktemp("redis")
    socket = directory / "redis.sock"
    process = subprocess.Popen([binary, "--port", "0", "--unixsocket", str(socket), "--save", "", "--appendonly", "no",
                                "--dir", str(directory)], stdout=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while not socket.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    yield f"unix://{socket}"
    process.terminate()
    process.wait(10)


@pytest.fixture(params=["memory", "redis"])
def backend(request):
    if request.param == "memory":
        yield MemoryBackend()
        return
    import uuid

    redis_backend = RedisBackend(request.getfixturevalue("redis_server"), prefix=f"test-{uuid.uuid4().hex[:12]}:")
    yield redis_backend
    keys = list(redis_backend.client.scan_iter(match=redis_backend.prefix + "*"))
    if keys:
        redis_backend.client.delete(*keys)
    redis_backend.close()


def _paws_rows() -> list[dict]:
    """PAWS-Wiki dev rows, fetched from the mirror through the project's manifest (checksums verified)."""
    mirror = PROJECT_ROOT.parent / "shared" / "paraphrase"
    if not mirror.is_dir():
        pytest.skip(f"no PAWS-Wiki mirror at {mirror}")
    files = paws_files(PROJECT_ROOT / "datasets" / "paraphrase.tsv", Path(tempfile.mkdtemp()), mirror)
    first, second, labels = load_pairs(files["dev"])
    return [{"sentence1": a, "sentence2": b, "label": str(y)} for a, b, y in zip(first, second, labels)]


def _bench_module():
    spec = importlib.util.spec_from_file_location("semantic_cache", PROJECT_ROOT / "benchmarks" / "semantic_cache.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def near_miss(mini_files, tmp_path_factory):
    """Pairs of real prompts (mini outcomes table) with one number changed or one negation added or removed."""
    from router_ml.data.prepare import prepare
    from router_ml.data.report import ImportReport

    path = tmp_path_factory.mktemp("outcomes") / "outcomes.parquet"
    prepare(mini_files, ImportReport(), encoder=None).write_parquet(path)
    return _bench_module().near_miss_pairs(path, 50)


@pytest.fixture(scope="module")
def encode(static_encoder_dir):
    from router_ml.embed import StaticEncoder

    return StaticEncoder(static_encoder_dir).encode


def test_key_ignores_whitespace_only():
    spaced = [{**m, "content": f"  {m['content'].replace(' ', '   ')}\n"} for m in CONVERSATION]
    assert request_key("t1", spaced, "gpt-4o", SAMPLING) == request_key("t1", CONVERSATION, "gpt-4o", SAMPLING)
    assert request_key("t1", CONVERSATION, "gpt-4o", {**SAMPLING, "top_p": None}) == \
        request_key("t1", CONVERSATION, "gpt-4o", SAMPLING)
    assert request_key("t1", CONVERSATION, "m", {"stop": "\n"}) == request_key("t1", CONVERSATION, "m", {"stop": ["\n"]})


@pytest.mark.parametrize("change", ["system", "history", "temperature", "model", "policy", "tenant", "tools"])
def test_key_covers_the_whole_request(change):
    base = ("t1", CONVERSATION, "gpt-4o", SAMPLING)
    tenant, messages, model, sampling = base
    if change == "system":
        messages = [{"role": "system", "content": "You answer at length."}, *CONVERSATION[1:]]
    elif change == "history":
        messages = [CONVERSATION[0], *CONVERSATION[3:]]
    elif change == "temperature":
        sampling = {**SAMPLING, "temperature": 0.7}
    elif change == "model":
        model = "gpt-4o-mini"
    elif change == "policy":
        model = {"max_cost_usd": 0.01}
    elif change == "tenant":
        tenant = "t2"
    else:
        sampling = {**SAMPLING, "tools": [{"type": "function", "function": {"name": "lookup"}}]}
    assert request_key(tenant, messages, model, sampling) != request_key(*base)


def test_exact_hit_and_ttl(backend):
    clock = Clock()
    cache = ResponseCache(backend, ttl_s=60, clock=clock)
    assert cache.lookup("t1", CONVERSATION, "gpt-4o", SAMPLING) is None
    assert cache.store("t1", CONVERSATION, "gpt-4o", SAMPLING, ANSWER, cost_usd=0.002)
    hit = cache.lookup("t1", CONVERSATION, "gpt-4o", SAMPLING)
    assert (hit.payload, hit.kind, hit.saved_usd) == (ANSWER, "exact", 0.002)
    clock.now += 61
    assert cache.lookup("t1", CONVERSATION, "gpt-4o", SAMPLING) is None


@pytest.mark.parametrize("payload", [
    {"error": {"message": "upstream timeout", "type": "upstream_error"}},
    {"choices": []},
    {"choices": [{"index": 0, "message": {"role": "assistant", "content": ""}, "finish_reason": "stop"}]},
    {"choices": [{"index": 0, "message": {"role": "assistant", "content": "x"}, "finish_reason": "content_filter"}]},
])
def test_errors_are_never_cached(backend, payload):
    cache = ResponseCache(backend)
    assert not cache.store("t1", CONVERSATION, "gpt-4o", SAMPLING, payload)
    assert cache.lookup("t1", CONVERSATION, "gpt-4o", SAMPLING) is None


def test_tenants_are_isolated(backend, encode):
    cache = ResponseCache(backend, semantic=True, encode=encode)
    cache.store("t1", CONVERSATION, "gpt-4o", SAMPLING, ANSWER)
    assert cache.lookup("t2", CONVERSATION, "gpt-4o", SAMPLING) is None
    assert cache.lookup("t1", CONVERSATION, "gpt-4o", SAMPLING).kind == "exact"


def test_semantic_is_off_by_default(backend, encode):
    asked = [*CONVERSATION[:-1], {"role": "user", "content": "name another one"}]
    plain = ResponseCache(backend)
    plain.store("t1", CONVERSATION, "gpt-4o", SAMPLING, ANSWER)
    assert plain.lookup("t1", asked, "gpt-4o", SAMPLING) is None
    semantic = ResponseCache(backend, semantic={"t1"}, encode=encode)
    semantic.store("t1", CONVERSATION, "gpt-4o", SAMPLING, ANSWER)
    hit = semantic.lookup("t1", asked, "gpt-4o", SAMPLING)
    assert hit is not None and hit.kind == "semantic" and hit.payload == ANSWER
    assert semantic.lookup("t2", asked, "gpt-4o", SAMPLING) is None  # t2 has no semantic layer, nor t1's entries
    assert semantic.lookup("t1", asked, "gpt-4o-mini", SAMPLING) is None  # another scope


def test_semantic_refuses_real_near_misses(backend, encode, near_miss):
    cache = ResponseCache(backend, semantic=True, encode=encode)
    for kind, (originals, altered) in near_miss.items():
        assert originals, kind
        for original, changed in zip(originals[:10], altered[:10]):
            stored = [{"role": "user", "content": original}]
            cache.store("t1", stored, "gpt-4o", {}, ANSWER)
            assert cache.lookup("t1", [{"role": "user", "content": changed}], "gpt-4o", {}) is None, (kind, changed)
            assert cache.lookup("t1", [{"role": "user", "content": original.lower() + " "}], "gpt-4o", {}) is not None


def test_guards_name_real_near_misses(near_miss):
    numbers, negations = near_miss["one number changed"], near_miss["one negation added or removed"]
    assert all(near_miss_reason(a, b) == "numbers differ" for a, b in zip(*numbers))
    assert all(near_miss_reason(a, b) in ("negation differs", "numbers differ") for a, b in zip(*negations))


def test_guards_on_paws():
    rows = _paws_rows()
    first = rows[0]  # Cumbria and Britain swap places
    assert first["label"] == "0" and near_miss_reason(first["sentence1"], first["sentence2"]) is not None
    negatives = [r for r in rows if r["label"] == "0"]
    flagged = sum(near_miss_reason(r["sentence1"], r["sentence2"]) is not None for r in negatives)
    assert flagged / len(negatives) > 0.95
    assert all(near_miss_reason(r["sentence1"], r["sentence1"]) is None for r in rows[:200])


def test_guards_are_specific():
    assert near_miss_reason("How do I enable 2FA?", "How do I disable 2FA?") == "opposite words"
    assert near_miss_reason("The file does not exist", "The file doesn't exist") is None
    assert near_miss_reason("Is it two apples?", "Is it 2 apples?", min_alignment=0) is None  # same number


def test_semantic_vectors_are_bounded(encode):
    backend = MemoryBackend(max_vectors=2)
    cache = ResponseCache(backend, semantic=True, encode=encode)
    for word in ("alpha", "beta", "gamma"):
        cache.store("t1", [{"role": "user", "content": f"Define {word}"}], "m", {}, ANSWER)
    assert cache.lookup("t1", [{"role": "user", "content": "define  alpha"}], "m", {}) is None  # evicted
    assert cache.lookup("t1", [{"role": "user", "content": "define gamma"}], "m", {}).kind == "semantic"
