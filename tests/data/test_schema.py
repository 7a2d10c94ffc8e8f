"""The outcomes schema rejects rows that break its rules, naming the column."""

from __future__ import annotations

import polars as pl
import pytest

from router_ml.data import schema


def _row(**overrides):
    row = dict(prompt_id="p1", prompt="What is 2+2?", model="gpt-4o-2024-05-13", quality=1.0, input_tokens=7,
               output_tokens=3, cost_usd=0.0001, cost_source="tokens_x_price", source="zeroeval", task="gsm8k",
               group_id="g1", flags=[])
    row.update(overrides)
    return pl.DataFrame([row])


def test_conform_adds_nullable_columns_in_order():
    frame = schema.conform(_row())
    assert frame.schema == schema.SCHEMA
    assert frame["tenant"].to_list() == [None]


def test_every_column_is_documented():
    assert all(len(c.meaning) > 20 for c in schema.COLUMNS)
    assert set(schema.SCHEMA.names()) >= {"prompt_id", "prompt", "messages", "model", "quality", "input_tokens",
                                          "output_tokens", "cost_usd", "cost_source", "latency_ms", "ts", "source",
                                          "task", "split", "group_id", "tenant"}


@pytest.mark.parametrize(("override", "message"), [
    ({"quality": 1.5}, "quality outside"),
    ({"cost_usd": -0.01}, "negative cost_usd"),
    ({"input_tokens": -1}, "negative input_tokens"),
    ({"cost_source": "guessed"}, "unknown cost_source"),
    ({"model": None}, "'model' has 1 null"),
])
def test_broken_rules_are_named(override, message):
    with pytest.raises(schema.SchemaError, match=message):
        schema.conform(_row(**override))


def test_missing_required_column_is_named():
    with pytest.raises(schema.SchemaError, match="group_id"):
        schema.conform(_row().drop("group_id"))


def test_unknown_quality_is_allowed():
    assert schema.conform(_row(quality=None))["quality"].to_list() == [None]


def test_one_outcome_per_prompt_and_model():
    with pytest.raises(schema.SchemaError, match="occur more than once"):
        schema.conform(pl.concat([_row(), _row()]))
