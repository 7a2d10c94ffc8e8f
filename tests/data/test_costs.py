"""Token counts and costs against hand-checked rows of the real data."""

from __future__ import annotations

import polars as pl
import pytest

from router_ml.data.costs import add_tokens_and_costs
from router_ml.data.importers import llmrouter, routellm, routerbench, zeroeval
from router_ml.tokens import count_tokens


def test_o200k_counts_are_tiktoken_compatible():
    # o200k_base splits "Hello world" into ["Hello", " world"].
    assert count_tokens("Hello world") == 2
    assert count_tokens("") == 0


def test_routellm_gsm8k_gpt4_row_priced_at_gpt4_turbo_rates(mini_files, report):
    raw = routellm.load(mini_files, report).filter(pl.col("task") == "gsm8k")
    priced = add_tokens_and_costs(raw)
    row = priced.filter(pl.col("model") == "gpt-4-1106-preview").row(0, named=True)
    tokens_in, tokens_out = count_tokens(row["prompt"]), count_tokens(row["response"])
    assert (row["input_tokens"], row["output_tokens"]) == (tokens_in, tokens_out)
    # gpt-4-1106-preview: $10 per million input tokens, $30 per million output tokens (OpenAI, GPT-4 Turbo).
    assert row["cost_usd"] == pytest.approx(tokens_in * 10e-6 + tokens_out * 30e-6)
    assert row["cost_source"] == "tokens_x_price"


def test_zeroeval_row_bills_the_whole_templated_prompt(mini_files, report):
    raw = zeroeval.load(mini_files, report).filter(pl.col("model") == "gpt-4o-2024-05-13").head(1)
    row = add_tokens_and_costs(raw).row(0, named=True)
    templated = raw["billed_input_text"][0]
    assert row["input_tokens"] == count_tokens(templated) > count_tokens(row["prompt"])
    # gpt-4o-2024-05-13: $5 / $15 per million tokens.
    assert row["cost_usd"] == pytest.approx(row["input_tokens"] * 5e-6 + row["output_tokens"] * 15e-6)


def test_billed_costs_are_kept(mini_files, report):
    raw = routerbench.load(mini_files, report)
    priced = add_tokens_and_costs(raw)
    assert priced["cost_usd"].to_list() == raw["cost_usd"].to_list()
    assert (priced["cost_source"] == "billed").all()


def test_no_response_means_prompt_only_cost(mini_files, report):
    raw = llmrouter.load(mini_files, report).filter(pl.col("model") == "llama3-chatqa-1.5-70b").head(3)
    priced = add_tokens_and_costs(raw)
    assert priced["output_tokens"].null_count() == 3
    assert (priced["cost_source"] == "prompt_x_price").all()
    # llama3-chatqa-1.5-70b: $0.90 per million tokens (LLMRouter's default_llm.json).
    expected = [count_tokens(p) * 0.9e-6 for p in priced["prompt"]]
    assert priced["cost_usd"].to_list() == pytest.approx(expected)
