"""The gateway's call log: every served call, one row in the outcomes schema plus call metadata.

``CallStore(url)`` keeps a ``calls`` table (SQLAlchemy Core, portable types only) on SQLite
(``sqlite:///path``, the default) or PostgreSQL. Its columns are the outcomes columns of
:mod:`router_ml.data.schema` plus ``call_id`` (uuid4 hex, primary key), ``status`` ('ok' or
'error'), ``error``, ``http_status``, ``bundle_version``, ``routed`` (chosen by the router, not
named by the caller), ``policy`` (JSON text) and ``feedback_at``. ``flags`` and ``messages`` are
JSON text. :meth:`CallStore.outcomes` turns the 'ok' rows back into an outcomes table that
``router-ml train`` can read; failed calls are never outcomes. Opening a store brings the database to the newest
schema (:func:`router_ml.calllog.upgrade`: numbered migrations, under a lock).

Hot path. :meth:`CallStore.record` checks the row's required fields, stamps ``call_id`` and
``ts`` and puts it on an in-memory queue: O(1), no I/O, no lock held against the database. A
single writer thread drains the queue and inserts up to ``batch_size`` rows (500) per
transaction, at the latest ``interval`` seconds (0.05) after the first row of a batch arrived.
Hashing (default ``prompt_id``/``group_id``) and JSON encoding happen in the writer.

Durability. The gateway calls ``record`` before it sends the response, so every answered call
is at least in the queue. A clean :meth:`close` (or :meth:`flush`) writes everything queued.
Against an abrupt kill of the process (SIGKILL, OOM) the store keeps a journal when given
``journal_dir`` (the gateway always does): ``record`` appends the row as one JSON line to the
process's current journal segment with a single unbuffered ``write`` before queueing it. The
kernel keeps written bytes when the process dies, so a killed gateway loses no answered call: the
next ``CallStore`` on that directory replays the segments of dead processes (a live process holds an
exclusive ``flock`` on its segment; the kernel drops it on death), inserting the rows not yet in
the table (idempotent by ``call_id``), then deletes them. Segments rotate at ``segment_bytes``;
the writer deletes a segment once every row in it is committed. Not covered: an operating-system
crash or power loss, which can lose journal bytes and SQLite commits not yet on disk (neither is
fsynced per call; SQLite runs in WAL mode with ``synchronous=NORMAL``). Without a journal the loss
window of a kill is the rows queued and not yet committed: about ``interval`` plus one insert
transaction of traffic. Measured on SQLite (shared 2-core machine, short chat rows): ``record``
~12 us without the journal; a 500-row batch commits in ~17 ms; the writer sustains ~17k rows/s;
above that the (unbounded) queue grows.

Failures. A batch whose insert raises is logged, counted in ``failed_batches`` and retried once;
if the retry fails too, its rows are inserted one by one so that one bad row cannot sink the
others, and rows that still fail are logged with their ``call_id`` at ERROR, counted in
``lost_rows`` and kept in ``dead_letter`` (the rows as queued). A row :meth:`CallStore.record` refuses
is counted in ``rejected_rows``. Nothing is dropped silently: :meth:`CallStore.watch` hands every row counter
(:data:`ROW_OUTCOMES`) to ``/metrics``.
"""

from __future__ import annotations

import fcntl
import json
import logging
import math
import os
import queue
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import polars as pl
import sqlalchemy as sa

from router_ml.calllog.engine import engine_for
from router_ml.calllog.migrations import upgrade
from router_ml.calllog.record import CallRecord
from router_ml.clock import SYSTEM_CLOCK, Clock, as_utc
from router_ml.data import schema
from router_ml.data.ids import group_id
from router_ml.data.ids import prompt_id as stable_prompt_id

log = logging.getLogger(__name__)

STATUSES = ("ok", "error")
EXTRA_COLUMNS = ("call_id", "status", "error", "http_status", "bundle_version", "routed", "policy", "feedback_at",
                 "cache", "saved_usd", "degraded_from", "kind", "judges", "judge_routed", "judge_reference",
                 "graded", "against")
ALL_COLUMNS = tuple(c.name for c in schema.COLUMNS) + EXTRA_COLUMNS
# a client's call; an answer asked for judging (the reference's, a probe's); the verdict on the served answer, on a
# probe's answer
KINDS = (None, "shadow", "judge", "probe")
VERDICT_KINDS = ("judge", "probe")  # rows that hold a judge's scores of two other rows' answers, never an answer
# Fields a caller must give for every call; an 'ok' call must give every non-null outcomes column
# except those the store derives (prompt_id, group_id from the prompt; source, flags by default).
_DERIVED = {"prompt_id", "group_id", "source", "flags"}
REQUIRED_ALWAYS = ("prompt", "model", "task", "http_status")
REQUIRED_OK = tuple(n for n in schema.NON_NULL if n not in _DERIVED and n not in REQUIRED_ALWAYS)
_JSON_COLUMNS = ("flags", "policy", "messages")
# The store's row counters by outcome (attribute names): written (committed by the writer), recovered (replayed from a
# dead process's journal), rejected (refused by record(): never queued), lost (the writer gave up on it after the
# retries; kept in ``dead_letter``, and with a journal its segment is kept for the next recovery).
ROW_OUTCOMES = {"written": "written_rows", "recovered": "recovered_rows", "rejected": "rejected_rows",
                "lost": "lost_rows"}

# What the queries use. A change of these tables needs a new numbered migration in
# router_ml.calllog.migrations (tests/calllog/test_migrations.py checks that its head equals these definitions).
metadata = sa.MetaData()
calls = sa.Table(
    "calls",
    metadata,
    sa.Column("call_id", sa.String(32), primary_key=True),
    # Outcomes columns. Nullable in the database because a failed call may lack tokens or cost;
    # outcomes() only returns 'ok' rows, which record() checked to be complete.
    sa.Column("prompt_id", sa.String(64), nullable=False),
    sa.Column("prompt", sa.Text, nullable=False),
    sa.Column("messages", sa.Text),
    sa.Column("model", sa.String(200), nullable=False),
    sa.Column("quality", sa.Float),
    sa.Column("input_tokens", sa.BigInteger),
    sa.Column("output_tokens", sa.BigInteger),
    sa.Column("cost_usd", sa.Float),
    sa.Column("cost_source", sa.String(32)),
    sa.Column("latency_ms", sa.Float),
    sa.Column("ts", sa.DateTime(timezone=True), nullable=False),
    sa.Column("source", sa.String(32), nullable=False),
    sa.Column("task", sa.String(200), nullable=False),
    sa.Column("split", sa.String(32)),
    sa.Column("group_id", sa.String(64), nullable=False),
    sa.Column("tenant", sa.String(200)),
    sa.Column("response", sa.Text),
    sa.Column("flags", sa.Text, nullable=False),
    # Call metadata.
    sa.Column("status", sa.String(8), nullable=False),
    sa.Column("error", sa.Text),
    sa.Column("http_status", sa.Integer, nullable=False),
    sa.Column("bundle_version", sa.String(200)),
    sa.Column("routed", sa.Boolean, nullable=False, default=False),
    sa.Column("policy", sa.Text),
    sa.Column("feedback_at", sa.DateTime(timezone=True)),
    sa.Column("cache", sa.String(16)),  # 'exact' or 'semantic' when the answer came from the response cache
    sa.Column("saved_usd", sa.Float),  # for a cache hit: what the original call cost
    sa.Column("degraded_from", sa.String(200)),  # over budget: the model the gateway chose before degrading
    sa.Column("kind", sa.String(16)),  # null: a client's call; 'shadow', 'judge', 'probe': the judging of ``judges``
    sa.Column("judges", sa.String(64)),
    sa.Column("judge_routed", sa.Float),  # a judge row: the routed answer's score in [0, 1]
    sa.Column("judge_reference", sa.Float),  # and the reference answer's
    sa.Column("graded", sa.String(32)),  # a verdict row: the call_id of the row whose answer it graded
    sa.Column("against", sa.String(32)),  # and of the row of the reference's answer it was compared with
    sa.CheckConstraint("status IN ('ok', 'error')", name="calls_status"),
    sa.Index("calls_status_feedback", "status", "feedback_at"),
    sa.Index("calls_tenant_ts", "tenant", "ts"),  # a tenant's spend in a budget period, its analytics and forecast
    sa.Index("calls_ts", "ts"),  # analytics over every tenant in a time range
)
# Each tenant's online operating point (router_ml.online.controller.OperatingPoint.state(), as JSON), so that a
# restart resumes where the labels had taken it (router_ml.calllog.operating_points).
operating_points = sa.Table(
    "operating_points",
    metadata,
    sa.Column("tenant", sa.String(200), primary_key=True),
    sa.Column("state", sa.Text, nullable=False),
    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("version", sa.Integer),  # one more at each save: a worker moves the point only from the version it read
)
# One label per level of a tenant's ladder that a judged call graded (router_ml.calllog.online_labels): the judge's
# scores of that level's answer and of the reference's, the rows holding the two answers (their feedback is the
# exact label) and the label's weight (1 / the chance the call was judged).
online_labels = sa.Table(
    "online_labels",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("tenant", sa.String(200), nullable=False),
    sa.Column("ladder", sa.String(32), nullable=False),
    sa.Column("level", sa.Integer, nullable=False),
    sa.Column("judged_call", sa.String(32), nullable=False),
    sa.Column("graded_call", sa.String(32), nullable=False),
    sa.Column("reference_call", sa.String(32), nullable=False),
    sa.Column("routed", sa.Float, nullable=False),
    sa.Column("reference", sa.Float, nullable=False),
    sa.Column("weight", sa.Float, nullable=False),
    sa.Column("ts", sa.DateTime(timezone=True), nullable=False),
    sa.Index("online_labels_ladder", "tenant", "ladder", "level", "id"),
)


class _Flush:
    """Queue marker: the writer sets ``done`` once every row queued before it is written."""

    def __init__(self) -> None:
        self.done = threading.Event()


class _Rotated:
    """Queue marker: every row of the journal segment ``path`` was queued before it. The segment's
    descriptor (and so its lock) stays open until the writer has committed those rows."""

    def __init__(self, path: Path, fd: int) -> None:
        self.path = path
        self.fd = fd


_STOP = object()
_DATETIME_COLUMNS = ("ts", "feedback_at")


def _journal_default(value: Any) -> str:
    if isinstance(value, datetime):
        return value.isoformat()
    raise TypeError(f"call field value {value!r} ({type(value).__name__}) is not JSON serializable")


def _check_quality(quality: Any, name: str = "quality") -> float:
    if isinstance(quality, bool) or not isinstance(quality, (int, float)) or math.isnan(quality):
        raise ValueError(f"{name} must be a number in [0, 1], got {quality!r}")
    if not 0.0 <= quality <= 1.0:
        raise ValueError(f"{name} must be in [0, 1], got {quality!r}")
    return float(quality)


class CallStore:
    """Call log of the gateway; see the module docstring for the write path and its durability."""

    def __init__(self, url: str, batch_size: int = 500, interval: float = 0.05, retry_delay: float = 0.05,
                 journal_dir: Path | str | None = None, segment_bytes: int = 4 << 20, clock: Clock = SYSTEM_CLOCK):
        self.url = url
        self.clock = clock  # stamps ts (when a call gives none) and feedback_at
        self.batch_size = batch_size
        self.interval = interval
        self.retry_delay = retry_delay
        self.failed_batches = 0
        self.lost_rows = 0
        self.written_rows = 0
        self.recovered_rows = 0
        self.corrupt_journal_lines = 0
        self.dead_letter: list[dict] = []
        self.rejected_rows = 0  # rows record() refused: invalid, closed store, journal not writable
        self._count_lock = threading.Lock()
        self._watchers: tuple[Callable[[str, int], None], ...] = ()
        self.engine = engine_for(url)  # WAL and synchronous=NORMAL on SQLite (router_ml.calllog.engine)
        upgrade(self.engine)  # every table of the call log's database at the newest schema (router_ml.calllog)
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._closed = False
        self._close_lock = threading.Lock()
        self.journal_dir = Path(journal_dir) if journal_dir is not None else None
        self.segment_bytes = segment_bytes
        self._journal_lock = threading.Lock()
        self._segment: tuple[Path, int] | None = None  # (path, fd) of this process's open segment
        self._segment_size = 0
        self._segment_seq = 0
        self._lost_at_retire = 0
        if self.journal_dir is not None:
            self.journal_dir.mkdir(parents=True, exist_ok=True)
            self.recover()
            self._segment = self._open_segment()
        self._writer = threading.Thread(target=self._run, name="call-store-writer", daemon=True)
        self._writer.start()

    # ----------------------------------------------------------------- counters
    def _count(self, outcome: str, n: int) -> None:
        """Add ``n`` rows to the counter of ``outcome`` (see :data:`ROW_OUTCOMES`) and tell the watchers."""
        if not n:
            return
        name = ROW_OUTCOMES[outcome]
        with self._count_lock:
            setattr(self, name, getattr(self, name) + n)
            watchers = self._watchers
        for watcher in watchers:
            try:
                watcher(outcome, n)
            except Exception:  # a broken exporter must not stop the writer
                log.exception("call store: a row counter watcher failed")

    def watch(self, watcher: Callable[[str, int], None]) -> None:
        """Call ``watcher(outcome, n)`` for every ``n`` rows counted from now on (outcomes: the keys of
        :data:`ROW_OUTCOMES`), at once for the rows counted so far (each outcome, 0 included); from the thread that
        counts them (the writer's, a request's). How ``/metrics`` exports the counters, live in every worker."""
        with self._count_lock:
            self._watchers = (*self._watchers, watcher)
            so_far = {outcome: getattr(self, name) for outcome, name in ROW_OUTCOMES.items()}
        for outcome, n in so_far.items():
            watcher(outcome, n)

    # ----------------------------------------------------------------- hot path
    def record(self, call: CallRecord | dict) -> str:
        """Queue one call row and return its ``call_id``; never touches the database. The row's contract is
        :meth:`_accept`'s; a row it refuses (it raises) is counted in ``rejected_rows`` before the error goes on."""
        try:
            return self._accept(call)
        except Exception:
            self._count("rejected", 1)
            raise

    def _accept(self, call: CallRecord | dict) -> str:
        """Queue one call row and return its ``call_id``; never touches the database.

        ``call`` is the gateway's :class:`~router_ml.calllog.record.CallRecord`, or a dict of outcomes columns and
        call metadata by name (an import, a test). Required: prompt, model, task,
        http_status; for ``status='ok'`` (the default) also input_tokens, cost_usd, cost_source.
        Defaults: call_id (uuid4 hex), ts (now, UTC), status 'ok', source 'gateway', flags [],
        routed False, prompt_id and group_id derived from the prompt. Unknown keys, a missing
        required field, a bad status or a quality outside [0, 1] raise ValueError naming it.
        """
        if self._closed:
            raise RuntimeError("CallStore is closed")
        row = call.as_row() if isinstance(call, CallRecord) else dict(call)
        unknown = row.keys() - set(ALL_COLUMNS)
        if unknown:
            raise ValueError(f"unknown call field(s): {', '.join(sorted(unknown))}")
        status = row.setdefault("status", "ok")
        if status not in STATUSES:
            raise ValueError(f"status must be one of {STATUSES}, got {status!r}")
        for name in REQUIRED_ALWAYS + (REQUIRED_OK if status == "ok" else ()):
            if row.get(name) is None:
                raise ValueError(f"call field {name!r} is required (status={status!r})")
        if row.get("quality") is not None:
            row["quality"] = _check_quality(row["quality"])
        if row.get("kind") not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {row['kind']!r}")
        if row.get("kind") is not None and row.get("judges") is None:
            raise ValueError(f"call field 'judges' is required (kind={row['kind']!r}): the call id it judges")
        for name in ("judge_routed", "judge_reference"):
            if row.get(name) is not None:
                row[name] = _check_quality(row[name], name)
        cost_source = row.get("cost_source")
        if cost_source is not None and cost_source not in schema.COST_SOURCES:
            raise ValueError(f"cost_source must be one of {schema.COST_SOURCES}, got {cost_source!r}")
        if row.get("call_id") is None:
            row["call_id"] = uuid.uuid4().hex
        if row.get("ts") is None:
            row["ts"] = self.clock.now()
        if self._segment is None:
            self._queue.put(row)
            return row["call_id"]
        line = (json.dumps(row, ensure_ascii=False, default=_journal_default) + "\n").encode()
        with self._journal_lock:  # a row is queued before any rotation marker of the segment that holds it
            os.write(self._segment[1], line)
            self._segment_size += len(line)
            self._queue.put(row)
        return row["call_id"]

    # ----------------------------------------------------------------- journal
    def _open_segment(self) -> tuple[Path, int]:
        """A new segment of this process, locked for as long as the process holds it."""
        assert self.journal_dir is not None
        self._segment_seq += 1
        path = self.journal_dir / f"calls-{os.getpid()}-{uuid.uuid4().hex[:8]}-{self._segment_seq:06d}.jsonl"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        self._segment_size = 0
        return path, fd

    def _rotate(self, final: bool = False) -> None:
        """Start a new segment (none when ``final``) and queue the old one's deletion marker."""
        with self._journal_lock:
            if self._segment is None:
                return
            self._queue.put(_Rotated(*self._segment))
            self._segment = None if final else self._open_segment()

    def recover(self) -> int:
        """Insert the rows of dead processes' journal segments that the table lacks; delete the segments.

        Returns the number of rows inserted. A line that is not a JSON row (a write cut by a crash of
        the machine) is counted in ``corrupt_journal_lines`` and logged, not silently skipped.
        """
        if self.journal_dir is None:
            return 0
        inserted = 0
        for path in sorted(self.journal_dir.glob("calls-*.jsonl")):
            try:
                fd = os.open(path, os.O_RDONLY)
            except FileNotFoundError:  # another process recovered it meanwhile
                continue
            try:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:  # a live process owns it
                    continue
                rows = self._journal_rows(path, fd)
                inserted += self._insert_missing(rows)
                path.unlink(missing_ok=True)
            finally:
                os.close(fd)
        self._count("recovered", inserted)
        if inserted:
            log.warning("call store: recovered %d call(s) from the journal of a process that died", inserted)
        return inserted

    def _journal_rows(self, path: Path, fd: int) -> list[dict]:
        rows = []
        with os.fdopen(os.dup(fd), "rb") as handle:
            for number, line in enumerate(handle, 1):
                try:
                    row = json.loads(line)
                    for name in _DATETIME_COLUMNS:
                        if row.get(name) is not None:
                            row[name] = datetime.fromisoformat(row[name])
                    rows.append(row)
                except (ValueError, TypeError):
                    self.corrupt_journal_lines += 1
                    log.error("call store: %s line %d is not a call row; skipped", path.name, number)
        return rows

    def _insert_missing(self, rows: list[dict]) -> int:
        """Insert the rows whose ``call_id`` the table lacks, in one transaction; return how many."""
        inserted = 0
        with self.engine.begin() as conn:
            for start in range(0, len(rows), 500):
                chunk = rows[start:start + 500]
                ids = [r["call_id"] for r in chunk]
                present = set(conn.execute(sa.select(calls.c.call_id).where(calls.c.call_id.in_(ids))).scalars())
                missing = [self._prepare(r) for r in chunk if r["call_id"] not in present]
                if missing:
                    conn.execute(calls.insert(), missing)
                    inserted += len(missing)
        return inserted

    # ----------------------------------------------------------------- writer
    def _prepare(self, row: dict) -> dict:
        """Complete a queued row into a full ``calls`` row (runs in the writer thread)."""
        out = dict.fromkeys(ALL_COLUMNS)
        out.update(row)
        out["source"] = out["source"] or "gateway"
        out["status"] = out["status"] or "ok"
        out["routed"] = bool(out["routed"])
        out["ts"] = as_utc(out["ts"])
        if out["prompt_id"] is None:
            out["prompt_id"] = stable_prompt_id(out["source"], out["task"], out["prompt"])
        if out["group_id"] is None:
            out["group_id"] = group_id(out["prompt"])
        out["flags"] = out["flags"] if out["flags"] is not None else []
        for name in _JSON_COLUMNS:
            if out[name] is not None and not isinstance(out[name], str):
                out[name] = json.dumps(out[name], ensure_ascii=False)
        return out

    def _insert(self, rows: Sequence[dict]) -> None:
        """Insert ``rows`` in one transaction (the unit a failure retries)."""
        with self.engine.begin() as conn:
            conn.execute(calls.insert(), [self._prepare(r) for r in rows])

    def _write(self, batch: list[dict]) -> None:
        for attempt in (1, 2):
            try:
                self._insert(batch)
                self._count("written", len(batch))
                return
            except Exception:
                self.failed_batches += 1
                log.exception("call store: inserting a batch of %d row(s) failed (attempt %d of 2)",
                              len(batch), attempt)
                if attempt == 1:
                    time.sleep(self.retry_delay)
        for row in batch:  # the batch failed twice: save what can be saved, row by row
            try:
                self._insert([row])
                self._count("written", 1)
            except Exception:
                self.dead_letter.append(row)
                self._count("lost", 1)
                log.exception("call store: call %s could not be written; kept in dead_letter", row.get("call_id"))

    def _retire(self, segment: _Rotated) -> None:
        """Delete a segment whose rows are all committed. If rows failed since the last segment was
        retired, keep it: the next :meth:`recover` retries them."""
        if self.lost_rows == self._lost_at_retire:
            segment.path.unlink(missing_ok=True)
        else:
            log.error("call store: keeping journal segment %s for a later recovery (rows failed)", segment.path)
            self._lost_at_retire = self.lost_rows
        os.close(segment.fd)

    def _run(self) -> None:
        batch: list[dict] = []
        markers: list[_Flush | _Rotated] = []
        stop = False
        while not stop:
            item = self._queue.get()
            deadline = time.monotonic() + self.interval
            while True:
                if item is _STOP:
                    stop = True
                    break
                if isinstance(item, (_Flush, _Rotated)):
                    markers.append(item)
                    break
                batch.append(item)
                if len(batch) >= self.batch_size:
                    break
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                try:
                    item = self._queue.get(timeout=remaining)
                except queue.Empty:
                    break
            if batch:
                try:
                    self._write(batch)
                except Exception:  # _write catches DB errors; this guards against bugs so the thread lives
                    self.dead_letter.extend(batch)
                    self._count("lost", len(batch))
                    log.exception("call store: writer error; %d row(s) kept in dead_letter", len(batch))
                batch = []
            for marker in markers:
                if isinstance(marker, _Rotated):
                    self._retire(marker)
                else:
                    marker.done.set()
            markers = []
            if self._segment is not None and self._segment_size >= self.segment_bytes:
                self._rotate()

    # ----------------------------------------------------------------- control
    def flush(self, timeout: float | None = 60.0) -> None:
        """Block until every call recorded before this call is written (or dead-lettered)."""
        if not self._writer.is_alive():
            return
        marker = _Flush()
        self._queue.put(marker)
        if not marker.done.wait(timeout):
            raise TimeoutError(f"call store flush did not finish within {timeout} s")

    def close(self) -> None:
        """Write everything queued and stop the writer thread. Safe to call more than once."""
        with self._close_lock:
            if self._closed:
                return
            self._closed = True
        self._rotate(final=True)
        self._queue.put(_STOP)
        self._writer.join()
        # A record() racing with close() may have queued a row behind the stop marker: write it too.
        leftover = []
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
            if isinstance(item, _Flush):
                item.done.set()
            elif isinstance(item, dict):
                leftover.append(item)
        if leftover:
            self._write(leftover)
        self.engine.dispose()

    def __enter__(self) -> CallStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ----------------------------------------------------------------- reads and feedback
    @staticmethod
    def _decode(row: sa.Row) -> dict:
        out = dict(row._mapping)
        out["ts"] = as_utc(out["ts"])
        out["feedback_at"] = as_utc(out["feedback_at"])
        out["flags"] = json.loads(out["flags"]) if out["flags"] is not None else []
        if out["policy"] is not None:
            out["policy"] = json.loads(out["policy"])
        return out

    def get(self, call_id: str) -> dict | None:
        """The stored row of ``call_id`` (flags and policy decoded, messages as JSON text), or None."""
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(calls).where(calls.c.call_id == call_id)).first()
        return None if row is None else self._decode(row)

    def feedback(self, call_id: str, quality: float) -> dict:
        """Set the call's quality and ``feedback_at``; return the updated row.

        ValueError when quality is not in [0, 1] or the call failed; KeyError when the id is
        unknown. A call still in the queue is flushed first, so feedback may follow the answer at once.
        """
        quality = _check_quality(quality)
        update = (sa.update(calls).where(calls.c.call_id == call_id, calls.c.status == "ok")
                  .values(quality=quality, feedback_at=self.clock.now()))
        for attempt in (1, 2):
            with self.engine.begin() as conn:
                if conn.execute(update).rowcount:
                    break
            if attempt == 1:
                self.flush()
        else:
            row = self.get(call_id)
            if row is None:
                raise KeyError(f"unknown call_id {call_id!r}")
            raise ValueError(f"call {call_id!r} has status {row['status']!r}; feedback applies to 'ok' calls")
        updated = self.get(call_id)
        assert updated is not None
        return updated

    def spend(self, tenant: str, since: datetime) -> float:
        """USD the tenant's calls cost since ``since`` (failed calls too: an abandoned stream was paid for),
        including calls still queued; what seeds a budget period after a restart."""
        self.flush()
        query = sa.select(sa.func.coalesce(sa.func.sum(calls.c.cost_usd), 0.0)).where(
            calls.c.tenant == tenant, calls.c.ts >= as_utc(since))
        with self.engine.connect() as conn:
            return float(conn.execute(query).scalar_one())

    def usage(self, tenant: str, since: datetime) -> tuple[int, float]:
        """(the tenant's client calls, the USD its rows cost: judging included) since ``since``; what the cost
        pacer of online steering reads."""
        self.flush()
        query = sa.select(sa.func.count(calls.c.call_id).filter(calls.c.kind.is_(None)),
                          sa.func.coalesce(sa.func.sum(calls.c.cost_usd), 0.0)).where(
            calls.c.tenant == tenant, calls.c.ts >= as_utc(since))
        with self.engine.connect() as conn:
            count, spent = conn.execute(query).one()
        return int(count), float(spent)

    def outcomes(self, with_feedback_only: bool = True, judged: bool = False) -> pl.DataFrame:
        """The 'ok' answers as an outcomes table (conformed to :data:`router_ml.data.schema.SCHEMA`).

        Failed calls and verdict rows (kind 'judge', 'probe') are never returned. With ``with_feedback_only``
        (default) only answers that got feedback; with ``judged`` also the answers a shadow judge graded (a
        client's routed answer, the reference's and a probe's shadow answers), whose quality is the mean of the
        judge's scores of that answer (:meth:`_judge_scores`) unless feedback gave one. The schema allows one row
        per (prompt_id, model): repeated calls of one prompt on one model keep the latest by feedback_at, then ts,
        so an answer with feedback wins over judged ones.
        """
        scores = self._judge_scores()
        judge_score = scores.c.score if judged else sa.null()
        source = calls.outerjoin(scores, scores.c.answer == calls.c.call_id) if judged else calls
        quality = sa.case((calls.c.feedback_at.is_(None) & judge_score.is_not(None), judge_score),
                          else_=calls.c.quality).label("quality")
        columns = [quality if c.name == "quality" else calls.c[c.name] for c in schema.COLUMNS]
        query = (sa.select(*columns, calls.c.feedback_at)
                 .select_from(source)
                 .where(calls.c.status == "ok", sa.or_(calls.c.kind.is_(None), calls.c.kind.not_in(VERDICT_KINDS))))
        if with_feedback_only:
            query = query.where(sa.or_(calls.c.feedback_at.is_not(None), judge_score.is_not(None)))
        with self.engine.connect() as conn:
            rows = [dict(r._mapping) for r in conn.execute(query)]
        names = [c.name for c in schema.COLUMNS]
        data: dict[str, list] = {name: [r[name] for r in rows] for name in names + ["feedback_at"]}
        data["flags"] = [json.loads(f) for f in data["flags"]]
        data["ts"] = [as_utc(t) for t in data["ts"]]
        data["feedback_at"] = [as_utc(t) for t in data["feedback_at"]]
        frame = pl.DataFrame(data, schema={**schema.SCHEMA, "feedback_at": pl.Datetime("us", "UTC")}, strict=False)
        frame = (frame.sort("feedback_at", "ts", nulls_last=False)
                 .unique(["prompt_id", "model"], keep="last", maintain_order=True)
                 .drop("feedback_at"))
        return schema.conform(frame)

    def label_counts(self) -> dict[str, int]:
        """The rows by what they can teach a router: 'with_feedback' and 'judged' (graded by an 'ok' verdict, without
        feedback) answers, 'unlabelled' answers, 'verdicts' and 'failed' rows (every kind)."""
        scores = self._judge_scores()
        label = sa.case((calls.c.status != "ok", "failed"), (calls.c.kind.in_(VERDICT_KINDS), "verdicts"),
                        (calls.c.feedback_at.is_not(None), "with_feedback"), (scores.c.score.is_not(None), "judged"),
                        else_="unlabelled").label("label")
        query = (sa.select(label, sa.func.count())
                 .select_from(calls.outerjoin(scores, scores.c.answer == calls.c.call_id)).group_by(label))
        with self.engine.connect() as conn:
            return {name: int(n) for name, n in conn.execute(query)}

    @staticmethod
    def _judge_scores() -> sa.Subquery:
        """(answer: a row's call_id, score: the mean of the judge's scores of its answer) over the 'ok' verdict rows:
        each scores the answer it graded and the one it compared it with (the reference's, compared with several
        answers, has several scores)."""
        ok = (calls.c.status == "ok", calls.c.kind.in_(VERDICT_KINDS))
        scored = sa.union_all(
            sa.select(calls.c.graded.label("answer"), calls.c.judge_routed.label("score")).where(
                *ok, calls.c.graded.is_not(None), calls.c.judge_routed.is_not(None)),
            sa.select(calls.c.against.label("answer"), calls.c.judge_reference.label("score")).where(
                *ok, calls.c.against.is_not(None), calls.c.judge_reference.is_not(None))).subquery()
        return (sa.select(scored.c.answer, sa.func.avg(scored.c.score).label("score"))
                .group_by(scored.c.answer).subquery("judge_scores"))

