"""The outcomes table: one row per (prompt, model) outcome.

Every stage of router-ml reads and writes this one table: the importers turn each
public dataset into it, training reads only it, and the serving layer writes its
call log in it. Columns and their meaning are listed in ``COLUMNS``; the README of
``datasets/`` renders the same list.
"""

from __future__ import annotations

from dataclasses import dataclass

import polars as pl

COST_SOURCES = ("billed", "tokens_x_price", "prompt_x_price")


@dataclass(frozen=True)
class Column:
    name: str
    dtype: pl.DataType
    nullable: bool
    meaning: str


COLUMNS: tuple[Column, ...] = (
    Column("prompt_id", pl.String(), False,
           "Stable id of the prompt within its source: sha1 of source, task and the upstream item id or text."),
    Column("prompt", pl.String(), False,
           "The text a router sees: the user's (first) message as sent to the model."),
    Column("messages", pl.String(), True,
           "The full conversation as an OpenAI-style JSON list of {role, content} when it is more than the prompt "
           "(multi-turn MT-Bench); null otherwise."),
    Column("model", pl.String(), False, "Model name as the source names it (priced through router_ml.pricing)."),
    Column("quality", pl.Float64(), True,
           "Outcome quality in [0, 1]: correctness as 0/1, judge scores mapped linearly to [0, 1]; null when unknown."),
    Column("input_tokens", pl.Int64(), False,
           "Input tokens of the call(s), counted with o200k_base (bpe-openai) over what was sent: the templated "
           "prompt where the source logs it, every turn of a multi-turn conversation, else the prompt."),
    Column("output_tokens", pl.Int64(), True,
           "Output tokens counted with o200k_base over every stored answer of the call(s); null when the source "
           "publishes no response."),
    Column("cost_usd", pl.Float64(), False, "Cost of the call in US dollars, never negative."),
    Column("cost_source", pl.String(), False,
           "How cost_usd was obtained: 'billed' (USD reported by the source), 'tokens_x_price' (input and output "
           "tokens times the model's price), 'prompt_x_price' (no response was published: prompt tokens times the "
           "input price, a lower bound)."),
    Column("latency_ms", pl.Float64(), True, "End-to-end latency in milliseconds; null when the source did not log it."),
    Column("ts", pl.Datetime("us", "UTC"), True, "When the call was made (UTC); null when the source did not log it."),
    Column("source", pl.String(), False, "Where the row comes from: routellm, routerbench, llmrouter, zeroeval, "
           "mmlu_pro, or gateway for the serving call log."),
    Column("task", pl.String(), False, "Benchmark or task name (mmlu, gsm8k, mt_bench, arc-challenge, ...)."),
    Column("split", pl.String(), True, "The upstream split label (train or test) where the source defines one."),
    Column("group_id", pl.String(), False,
           "Duplicate group: prompts equal after normalization or near-duplicates by embedding share it, across "
           "sources, so a split by group never puts copies of one prompt on both sides."),
    Column("tenant", pl.String(), True, "Tenant that made the call (serving log); null for public datasets."),
    Column("response", pl.String(), True, "The model's answer text when the source publishes it."),
    Column("flags", pl.List(pl.String()), False,
           "Caveats on the row: 'contaminated' (RouteLLM found the prompt in its training data), 'no_answer' (no "
           "answer could be extracted from the output; counted wrong), 'unpriced' (gateway call of a model "
           "without a price: cost_usd is 0, not known)."),
)

SCHEMA = pl.Schema({c.name: c.dtype for c in COLUMNS})
NON_NULL = tuple(c.name for c in COLUMNS if not c.nullable)


class SchemaError(ValueError):
    """The table does not follow the outcomes schema."""


def conform(frame: pl.DataFrame) -> pl.DataFrame:
    """Return ``frame`` with exactly the schema's columns, in order, cast to their types.

    Missing nullable columns are added as nulls. Missing required columns, nulls in
    required columns, quality outside [0, 1], negative costs or token counts and
    unknown cost sources raise :class:`SchemaError` naming the column.
    """
    missing = [c.name for c in COLUMNS if c.name not in frame.columns and not c.nullable]
    if missing:
        raise SchemaError(f"outcomes table lacks required column(s): {', '.join(missing)}")
    frame = frame.with_columns(
        pl.lit(None, dtype=c.dtype).alias(c.name) for c in COLUMNS if c.name not in frame.columns
    )
    frame = frame.select(pl.col(c.name).cast(c.dtype, strict=True) for c in COLUMNS)
    validate(frame)
    return frame


def validate(frame: pl.DataFrame) -> None:
    """Check the value rules of the schema; raise :class:`SchemaError` on the first broken rule."""
    if frame.schema != SCHEMA:
        raise SchemaError(f"outcomes schema mismatch: expected {dict(SCHEMA)}, got {dict(frame.schema)}")
    for name in NON_NULL:
        nulls = frame[name].null_count()
        if nulls:
            raise SchemaError(f"column {name!r} has {nulls} null value(s)")
    checks = {
        "quality outside [0, 1]": ~pl.col("quality").is_between(0.0, 1.0),
        "negative cost_usd": pl.col("cost_usd") < 0,
        "negative input_tokens": pl.col("input_tokens") < 0,
        "negative output_tokens": pl.col("output_tokens") < 0,
        "unknown cost_source": ~pl.col("cost_source").is_in(COST_SOURCES),
    }
    doubled = frame.group_by("prompt_id", "model").len().filter(pl.col("len") > 1)
    if doubled.height:
        raise SchemaError(f"{doubled.height} (prompt_id, model) pair(s) occur more than once, first: "
                          f"prompt_id={doubled['prompt_id'][0]} model={doubled['model'][0]}")
    for problem, expr in checks.items():
        bad = frame.filter(expr.fill_null(False))
        if bad.height:
            row = bad.row(0, named=True)
            raise SchemaError(
                f"{problem} in {bad.height} row(s), first: source={row['source']} model={row['model']} "
                f"prompt_id={row['prompt_id']}"
            )

