"""Helpers shared by the importers: row construction (stable ids come from :mod:`router_ml.data.ids`).

An importer returns raw outcome rows: the schema's columns that it knows, plus two
internal columns consumed by the labeling stage: ``billed_input_text`` (the text
whose tokens were billed as input, when it is more than ``prompt``) and
``billed_output_text`` (when the billed output is more than ``response``).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import polars as pl

from router_ml.data import schema
from router_ml.data.report import ImportReport
from router_ml.data.sources import DataFiles

T = TypeVar("T")

# Columns set later (group_id by deduplication) or only by the serving log are left out.
_LATER = {"group_id", "latency_ms", "ts", "tenant"}
RAW_SCHEMA = pl.Schema(
    [(name, dtype) for name, dtype in schema.SCHEMA.items() if name not in _LATER]
    + [("billed_input_text", pl.String()), ("billed_output_text", pl.String())]
)


def outcome(**values: Any) -> dict[str, Any]:
    row = dict.fromkeys(RAW_SCHEMA.names())
    unknown = set(values) - set(row)
    if unknown:
        raise KeyError(f"not outcome columns: {sorted(unknown)}")
    row.update(values)
    if row["flags"] is None:
        row["flags"] = []
    return row


def frame(rows: list[dict[str, Any]]) -> pl.DataFrame:
    return pl.DataFrame(rows, schema=RAW_SCHEMA)


def jsonl_records(
    files: DataFiles, source: str, path: str, report: ImportReport, fields: Callable[[dict], T], what: str
) -> Iterator[tuple[int, T]]:
    """(line number, ``fields(record)``) for each non-blank line; a line that is not JSON or lacks
    a field is a counted skip naming the file and line."""
    with files.open_text(source, path) as handle:
        for line_no, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                value = fields(json.loads(line))
            except (ValueError, KeyError, TypeError) as exc:
                report.skip(source, path, line_no, f"malformed {what}: {exc!r}")
                continue
            yield line_no, value


def messages_json(messages: list[dict[str, str]]) -> str:
    return json.dumps(messages, ensure_ascii=False)
