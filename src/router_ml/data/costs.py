"""Token counts and USD cost for raw outcome rows.

Billed costs (RouterBench) are kept as reported. Every other row is priced as
o200k_base token counts times the model's price from :mod:`router_ml.pricing`:
input = the billed input text (the whole templated prompt, or every turn of a
multi-turn conversation) or else the prompt; output = the billed output text or
else the response. A row without any response gets a prompt-only cost
(``prompt_x_price``), since the price of output it never published is unknown.
"""

from __future__ import annotations

import polars as pl

from router_ml import pricing
from router_ml.tokens import count_tokens_batch


def _token_counts(texts: pl.Series) -> pl.Series:
    """Count tokens once per distinct text, then map back onto the column."""
    distinct = texts.drop_nulls().unique()
    counts = pl.DataFrame({"text": distinct, "n": count_tokens_batch(distinct.to_list())},
                          schema={"text": pl.String, "n": pl.Int64})
    return (
        pl.DataFrame({"text": texts}).join(counts, on="text", how="left", maintain_order="left")["n"]
    )


def add_tokens_and_costs(raw: pl.DataFrame) -> pl.DataFrame:
    """Fill input/output tokens and cost_usd/cost_source; drop the internal billed_* text columns."""
    input_text = pl.coalesce("billed_input_text", "prompt")
    output_text = pl.coalesce("billed_output_text", "response")
    texts = raw.select(input_text.alias("input_text"), output_text.alias("output_text"))
    frame = raw.with_columns(
        pl.coalesce("input_tokens", _token_counts(texts["input_text"])).alias("input_tokens"),
        pl.coalesce("output_tokens", _token_counts(texts["output_text"])).alias("output_tokens"),
    ).drop("billed_input_text", "billed_output_text")

    models = frame.filter(pl.col("cost_usd").is_null())["model"].unique().to_list()
    prices = pl.DataFrame(
        [(m, p.input_usd_per_mtok, p.output_usd_per_mtok) for m in models for p in [pricing.price_of(m)]],
        schema={"model": pl.String, "in_per_mtok": pl.Float64, "out_per_mtok": pl.Float64},
        orient="row",
    )
    token_cost = (
        pl.col("input_tokens") * pl.col("in_per_mtok") + pl.col("output_tokens").fill_null(0) * pl.col("out_per_mtok")
    ) / 1e6
    return (
        frame.join(prices, on="model", how="left", maintain_order="left")
        .with_columns(
            pl.coalesce("cost_usd", token_cost).alias("cost_usd"),
            pl.coalesce(
                "cost_source",
                pl.when(pl.col("output_tokens").is_null()).then(pl.lit("prompt_x_price")).otherwise(pl.lit("tokens_x_price")),
            ).alias("cost_source"),
        )
        .drop("in_per_mtok", "out_per_mtok")
    )
