"""Helpers shared by the importers: row construction and stable ids.

An importer returns raw outcome rows: the schema's columns that it knows, plus two
internal columns consumed by the labeling stage: ``billed_input_text`` (the text
whose tokens were billed as input, when it is more than ``prompt``) and
``billed_output_text`` (when the billed output is more than ``response``).
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

import polars as pl

RAW_SCHEMA = pl.Schema(
    {
        "prompt_id": pl.String(),
        "prompt": pl.String(),
        "messages": pl.String(),
        "model": pl.String(),
        "quality": pl.Float64(),
        "input_tokens": pl.Int64(),
        "output_tokens": pl.Int64(),
        "cost_usd": pl.Float64(),
        "cost_source": pl.String(),
        "source": pl.String(),
        "task": pl.String(),
        "split": pl.String(),
        "response": pl.String(),
        "flags": pl.List(pl.String()),
        "billed_input_text": pl.String(),
        "billed_output_text": pl.String(),
    }
)


def prompt_id(source: str, task: str, key: str) -> str:
    """Stable id from the source, task and the upstream item id (or the prompt text when there is none)."""
    return hashlib.sha1(f"{source}\x1f{task}\x1f{key}".encode()).hexdigest()[:16]


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


def messages_json(messages: list[dict[str, str]]) -> str:
    return json.dumps(messages, ensure_ascii=False)
