"""The gateway call log (router_ml.calllog.store) on SQLite and on PostgreSQL (the server of .ci/services).

Rows are the gateway call records of tests/call_rows.py (hand-written prompts, real token counts and prices, no
answers); every quality below is test feedback set through CallStore.feedback.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import polars as pl
import pytest
import sqlalchemy as sa

from router_ml.data import schema
from router_ml.pricing import cost_usd
from router_ml.calllog.store import CallStore, calls

import call_rows
from call_rows import MODELS, PROMPTS, call_row

TESTS = Path(call_rows.__file__).resolve().parent  # where the journal test's writer imports call_rows from


def error_row(i: int, **extra) -> dict:
    row = {"prompt": PROMPTS[i % len(PROMPTS)], "model": MODELS[0], "task": "chat", "status": "error",
           "error": "upstream timeout", "http_status": 504, "routed": False, "tenant": "tenant-0"}
    row.update(extra)
    return row


def db_count(url: str) -> int:
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            return conn.execute(sa.text("SELECT count(*) FROM calls")).scalar_one()
    finally:
        engine.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def url(request, tmp_path) -> str:
    if request.param == "postgresql":
        return request.getfixturevalue("postgres_url")
    return f"sqlite:///{tmp_path / 'calls.db'}"


@pytest.fixture
def store(url):
    s = CallStore(url, retry_delay=0.0)
    yield s
    s.close()


def test_concurrent_record_then_flush_writes_every_call(store, url):
    threads, per_thread = 4, 250
    ids: list[list[tuple[str, int]]] = [[] for _ in range(threads)]

    def work(t: int) -> None:
        for k in range(per_thread):
            i = t * per_thread + k
            ids[t].append((store.record(call_row(i)), i))

    workers = [threading.Thread(target=work, args=(t,)) for t in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    store.flush()
    assert db_count(url) == threads * per_thread
    assert store.written_rows == threads * per_thread and store.failed_batches == 0
    for call_id, i in (pair for chunk in ids for pair in chunk[::25]):
        row = store.get(call_id)
        expected = call_row(i)
        assert row is not None and len(call_id) == 32
        for name in ("prompt", "model", "task", "input_tokens", "cost_usd", "cost_source", "latency_ms", "tenant",
                     "http_status", "bundle_version", "routed", "policy", "flags"):
            assert row[name] == expected[name], name
        assert row["status"] == "ok" and row["source"] == "gateway" and row["quality"] is None
        assert row["error"] is None and row["feedback_at"] is None
        assert row["ts"].tzinfo is not None and abs((datetime.now(UTC) - row["ts"]).total_seconds()) < 60
        assert row["prompt_id"] and row["group_id"].startswith("g")


def test_close_flushes_and_is_idempotent(url):
    s = CallStore(url, interval=10.0, batch_size=100_000)
    ids = [s.record(call_row(i)) for i in range(50)]
    s.close()
    s.close()
    assert db_count(url) == 50
    with pytest.raises(RuntimeError):
        s.record(call_row(0))
    reopened = CallStore(url)  # tables exist already: opening again keeps the rows
    assert reopened.get(ids[-1])["latency_ms"] == 149.0
    reopened.close()


def test_record_does_not_touch_the_database(url):
    s = CallStore(url, interval=30.0, batch_size=100_000)
    try:
        rows = [call_row(i) for i in range(10_000)]
        start = time.perf_counter()
        for row in rows:
            s.record(row)
        elapsed = time.perf_counter() - start
        assert elapsed < 1.0, f"10k record() calls took {elapsed:.2f} s"
        assert db_count(url) == 0  # nothing written until the interval, the batch size or a flush
        s.flush()
        assert db_count(url) == 10_000
    finally:
        s.close()


def test_record_rejects_incomplete_rows(store):
    with pytest.raises(ValueError, match="input_tokens"):
        store.record({k: v for k, v in call_row(0).items() if k != "input_tokens"})
    with pytest.raises(ValueError, match="status"):
        store.record(call_row(0, status="maybe"))
    with pytest.raises(ValueError, match="colour"):
        store.record(call_row(0, colour="red"))
    with pytest.raises(ValueError, match="quality"):
        store.record(call_row(0, quality=1.5))
    with pytest.raises(ValueError, match="cost_source"):
        store.record(call_row(0, cost_source="guessed"))
    store.record(error_row(0))  # a failed call needs no tokens or cost
    store.flush()
    assert store.lost_rows == 0 and store.rejected_rows == 5 and store.written_rows == 1
    seen = []
    store.watch(lambda outcome, n: seen.append((outcome, n)))  # catches up, then follows
    with pytest.raises(ValueError):
        store.record(call_row(0, quality=-1))
    assert seen == [("written", 1), ("recovered", 0), ("rejected", 5), ("lost", 0), ("rejected", 1)]


def test_feedback_sets_quality_and_is_validated(store):
    call_id = store.record(call_row(1))
    row = store.feedback(call_id, 0.75)  # still queued: feedback flushes it first
    assert row["quality"] == 0.75 and row["feedback_at"] is not None
    assert store.get(call_id)["quality"] == 0.75
    assert store.feedback(call_id, 1)["quality"] == 1.0
    for bad in (-0.1, 1.01, float("nan"), "0.5", True):
        with pytest.raises(ValueError, match="quality"):
            store.feedback(call_id, bad)
    assert store.get(call_id)["quality"] == 1.0
    with pytest.raises(KeyError, match="no-such-call"):
        store.feedback("no-such-call", 0.5)
    failed = store.record(error_row(2))
    with pytest.raises(ValueError, match="error"):
        store.feedback(failed, 0.5)
    assert store.get("no-such-call") is None


def test_outcomes_only_ok_rows_with_feedback(store):
    ok_ids = {}
    for i, prompt in enumerate(PROMPTS):
        for model in MODELS:
            ok_ids[prompt, model] = store.record(call_row(i, prompt=prompt, model=model))
    error_ids = [store.record(error_row(i)) for i in range(5)]
    store.flush()
    assert store.outcomes().height == 0
    graded = list(ok_ids.items())[:6]
    for k, (_, call_id) in enumerate(graded):
        store.feedback(call_id, k / 5)
    for call_id in error_ids:
        with pytest.raises(ValueError):
            store.feedback(call_id, 1.0)

    out = store.outcomes()
    schema.validate(out)
    assert out.schema == schema.SCHEMA and out.height == 6
    assert set(out["source"]) == {"gateway"} and out["quality"].null_count() == 0
    expected = {(p, m): k / 5 for k, ((p, m), _) in enumerate(graded)}
    got = {(r["prompt"], r["model"]): r["quality"] for r in out.iter_rows(named=True)}
    assert got == pytest.approx(expected)
    assert not set(out["prompt"]) - set(PROMPTS)

    everything = store.outcomes(with_feedback_only=False)
    schema.validate(everything)
    assert everything.height == len(ok_ids)  # the 5 failed calls are never outcomes
    assert everything["quality"].null_count() == len(ok_ids) - 6


def test_outcomes_keep_latest_feedback_of_a_repeated_prompt(store):
    first = store.record(call_row(0, prompt=PROMPTS[0], model=MODELS[0]))
    second = store.record(call_row(1, prompt=PROMPTS[0], model=MODELS[0]))
    store.flush()
    store.feedback(second, 0.2)
    time.sleep(0.01)
    store.feedback(first, 0.9)
    out = store.outcomes()
    schema.validate(out)
    assert out.height == 1 and out["quality"][0] == 0.9
    assert out.filter(pl.col("model") == MODELS[0])["latency_ms"][0] == 100.0


def test_failing_batch_is_retried_and_counted(store, url, monkeypatch, caplog):
    real_insert = store._insert
    calls = {"n": 0}

    def flaky(rows):
        calls["n"] += 1
        if calls["n"] == 1:
            raise sa.exc.OperationalError("INSERT", {}, Exception("database is locked"))
        return real_insert(rows)

    monkeypatch.setattr(store, "_insert", flaky)
    ids = [store.record(call_row(i)) for i in range(20)]
    store.flush()
    assert store.failed_batches == 1 and store.lost_rows == 0
    assert db_count(url) == 20 and all(store.get(c) is not None for c in ids)
    assert "attempt 1 of 2" in caplog.text

    ids = [store.record(call_row(i)) for i in range(20, 30)]  # the writer carries on after the failure
    store.flush()
    assert db_count(url) == 30 and store.failed_batches == 1


def test_a_bad_row_does_not_sink_its_batch(url, caplog):
    s = CallStore(url, interval=10.0, batch_size=100_000, retry_delay=0.0)
    try:
        s.record(call_row(0, call_id="a" * 32))
        s.record(call_row(1))
        s.record(call_row(2, call_id="a" * 32))  # duplicate primary key: the batch fails twice
        s.record(call_row(3))
        s.flush()
        assert s.failed_batches == 2 and s.lost_rows == 1
        assert db_count(url) == 3
        assert [r["latency_ms"] for r in s.dead_letter] == [102.0]
        assert "kept in dead_letter" in caplog.text
    finally:
        s.close()


# ----------------------------------------------------------------- journal: no answered call lost to a kill
_KILLED_WRITER = """
import sys
from router_ml.calllog.store import CallStore, calls
from call_rows import call_row

store = CallStore(sys.argv[1], interval=3600.0, batch_size=10**6, journal_dir=sys.argv[2])
for i in range(300):
    print(store.record(call_row(i)), flush=True)
print("recorded", flush=True)
sys.stdin.read()
"""


def test_a_killed_process_loses_no_recorded_call(url, tmp_path):
    journal = tmp_path / "journal"
    process = subprocess.Popen([sys.executable, "-c", _KILLED_WRITER, url, str(journal)], stdin=subprocess.PIPE,
                               stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(TESTS)})
    ids = []
    for line in process.stdout:
        if line.strip() == "recorded":
            break
        ids.append(line.strip())
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert len(ids) == 300 and db_count(url) == 0  # nothing was committed before the kill

    recovered = CallStore(url, journal_dir=journal)
    try:
        assert recovered.recovered_rows == 300 and recovered.corrupt_journal_lines == 0
        assert db_count(url) == 300
        assert recovered.get(ids[-1])["latency_ms"] == call_row(299)["latency_ms"]
    finally:
        recovered.close()
    assert list(journal.iterdir()) == []  # recovered segments and the store's own are gone after a clean close


def test_journal_segments_rotate_and_are_deleted_once_committed(url, tmp_path):
    journal = tmp_path / "journal"
    s = CallStore(url, interval=0.01, journal_dir=journal, segment_bytes=4000)
    try:
        for i in range(200):
            s.record(call_row(i))
        s.flush()
        s.flush()  # the rotation queued after the first flush's batch is retired by the second
        assert db_count(url) == 200
        assert len(list(journal.iterdir())) == 1  # only the open segment is left
    finally:
        s.close()
    assert list(journal.iterdir()) == []


def test_a_live_process_segment_is_not_replayed_and_replay_is_idempotent(url, tmp_path):
    journal = tmp_path / "journal"
    live = CallStore(url, journal_dir=journal)
    try:
        ids = [live.record(call_row(i)) for i in range(5)]
        live.flush()  # committed, and still in the live segment
        (segment,) = journal.iterdir()
        copy = journal / "calls-1-deadbeef-000001.jsonl"  # as if a process had died after committing these calls
        copy.write_bytes(segment.read_bytes() + b'{"call_id": "cut by a cra')
        other = CallStore(url, journal_dir=journal)
        other.close()
        assert other.recovered_rows == 0 and other.corrupt_journal_lines == 1  # nothing inserted twice
        assert segment.exists() and not copy.exists()  # the live segment is left alone, the dead one retired
        assert db_count(url) == 5 and all(live.get(c) is not None for c in ids)
    finally:
        live.close()
    assert list(journal.iterdir()) == []


def test_spend_sums_a_tenants_costs_since_a_time_failed_calls_included(store):
    start = datetime(2026, 11, 1, tzinfo=UTC)
    rows = [call_row(i, ts=start + timedelta(hours=i)) for i in range(6)]  # tenants 0, 1, 2, 0, 1, 2
    for row in rows:
        store.record(row)
    store.record(error_row(0, ts=start + timedelta(hours=7), cost_usd=0.002, tenant="tenant-0"))  # a paid 499
    tenant0 = [r["cost_usd"] for r in rows if r["tenant"] == "tenant-0"]
    assert store.spend("tenant-0", start) == pytest.approx(sum(tenant0) + 0.002)
    assert store.spend("tenant-0", start + timedelta(hours=1)) == pytest.approx(tenant0[1] + 0.002)
    assert store.spend("nobody", start) == 0.0


def test_a_log_created_before_new_columns_and_indexes_gets_them(url):
    engine = sa.create_engine(url)
    with engine.begin() as conn:  # a calls table as an older release created it: no cache columns, no indexes
        old = sa.Table("calls", sa.MetaData(), *(sa.Column(c.name, c.type) for c in calls.columns
                                                 if c.name not in ("cache", "saved_usd")))
        old.create(conn)
    engine.dispose()
    s = CallStore(url)
    try:
        assert {i["name"] for i in sa.inspect(s.engine).get_indexes("calls")} >= {"calls_tenant_ts", "calls_ts"}
        call_id = s.record(call_row(0, cache="exact", saved_usd=0.01, cost_usd=0.0))
        s.flush()
        assert (s.get(call_id)["cache"], s.get(call_id)["saved_usd"]) == ("exact", 0.01)
    finally:
        s.close()


def test_the_call_log_loads_no_dataset_importer_and_nothing_heavy():
    """The serving process opens the call log; its ids come from router_ml.data.ids, not from the importers."""
    code = ("import sys, router_ml.calllog.store; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in {'torch', 'lightgbm', 'mlflow', 'statsforecast', "
            "'sentence_transformers'} or m.startswith(('router_ml.data.importers', 'router_ml.data.dedup', "
            "'router_ml.embed'))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
