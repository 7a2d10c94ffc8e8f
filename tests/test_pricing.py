"""Tests for router_ml.pricing: coverage of the dataset models, hand-checked costs, CSV validation."""

from __future__ import annotations

import csv
import io
import json
import math
from datetime import datetime, timezone
from importlib import resources
from pathlib import Path

import genai_prices
import pytest
from hypothesis import given
from hypothesis import strategies as st

from router_ml import pricing
from router_ml.pricing import (
    ModelPrice,
    UnknownModelError,
    cost_usd,
    known_models,
    parse_fallback_prices,
    parse_model_map,
    price_of,
)

# (source, model) exactly as the outcomes table's `model` column spells them: the
# coverage this module must provide (copied from the dataset inventory, 95 rows).
DATASET_MODELS: list[tuple[str, str]] = [
    ("routellm", "gpt-4-1106-preview"),
    ("routellm", "mistralai/Mixtral-8x7B-Instruct-v0.1"),
    ("routerbench", "WizardLM/WizardLM-13B-V1.2"),
    ("routerbench", "claude-instant-v1"),
    ("routerbench", "claude-v1"),
    ("routerbench", "claude-v2"),
    ("routerbench", "gpt-3.5-turbo-1106"),
    ("routerbench", "gpt-4-1106-preview"),
    ("routerbench", "meta/code-llama-instruct-34b-chat"),
    ("routerbench", "meta/llama-2-70b-chat"),
    ("routerbench", "mistralai/mistral-7b-chat"),
    ("routerbench", "mistralai/mixtral-8x7b-chat"),
    ("routerbench", "zero-one-ai/Yi-34B-Chat"),
    ("llmrouter", "llama3-chatqa-1.5-8b"),
    ("llmrouter", "qwen2.5-7b-instruct"),
    ("llmrouter", "llama3-chatqa-1.5-70b"),
    ("llmrouter", "llama-3.1-nemotron-51b-instruct"),
    ("llmrouter", "mistral-7b-instruct-v0.3"),
    ("llmrouter", "gemma-2-9b-it"),
    ("llmrouter", "llama-3.1-8b-instruct"),
    ("llmrouter", "codegemma-7b"),
    ("llmrouter", "llama-3.3-nemotron-super-49b-v1"),
    ("zeroeval", "Athene-70B"),
    ("zeroeval", "DeepSeek-Coder-V2-0724"),
    ("zeroeval", "Llama-3.1-405B-Inst-fp8"),
    ("zeroeval", "Llama-3.1-405B-Inst@sambanova"),
    ("zeroeval", "Llama-3.1-405B-Instruct-Turbo"),
    ("zeroeval", "Meta-Llama-3-70B-Instruct"),
    ("zeroeval", "Meta-Llama-3-8B-Instruct"),
    ("zeroeval", "Meta-Llama-3.1-405B-Instruct@hyperbolic"),
    ("zeroeval", "Meta-Llama-3.1-70B-Instruct"),
    ("zeroeval", "Meta-Llama-3.1-70B-Instruct@hyperbolic"),
    ("zeroeval", "Meta-Llama-3.1-8B-Instruct"),
    ("zeroeval", "Mistral-Large-2"),
    ("zeroeval", "Mistral-Nemo-Instruct-2407"),
    ("zeroeval", "Mixtral-8x7B-Instruct-v0.1"),
    ("zeroeval", "Phi-3-mini-4k-instruct"),
    ("zeroeval", "Phi-3.5-mini-instruct"),
    ("zeroeval", "Qwen2-72B-Instruct"),
    ("zeroeval", "Qwen2-7B-Instruct"),
    ("zeroeval", "Qwen2.5-32B-Instruct"),
    ("zeroeval", "Qwen2.5-3B-Instruct"),
    ("zeroeval", "Qwen2.5-72B-Instruct"),
    ("zeroeval", "Qwen2.5-7B-Instruct"),
    ("zeroeval", "Yi-1.5-34B-Chat"),
    ("zeroeval", "Yi-1.5-9B-Chat"),
    ("zeroeval", "chatgpt-4o-latest-24-09-07"),
    ("zeroeval", "claude-3-5-haiku-20241022"),
    ("zeroeval", "claude-3-5-sonnet-20240620"),
    ("zeroeval", "claude-3-5-sonnet-20241022"),
    ("zeroeval", "claude-3-haiku-20240307"),
    ("zeroeval", "claude-3-opus-20240229"),
    ("zeroeval", "claude-3-sonnet-20240229"),
    ("zeroeval", "command-r"),
    ("zeroeval", "command-r-plus"),
    ("zeroeval", "deepseek-chat"),
    ("zeroeval", "deepseek-coder"),
    ("zeroeval", "deepseek-v2-chat-0628"),
    ("zeroeval", "deepseek-v2-coder-0724"),
    ("zeroeval", "deepseek-v2.5-0908"),
    ("zeroeval", "gemini-1.5-flash"),
    ("zeroeval", "gemini-1.5-flash-exp-0827"),
    ("zeroeval", "gemini-1.5-pro"),
    ("zeroeval", "gemini-1.5-pro-exp-0801"),
    ("zeroeval", "gemini-1.5-pro-exp-0827"),
    ("zeroeval", "gemma-2-27b-it"),
    ("zeroeval", "gemma-2-27b-it@together"),
    ("zeroeval", "gemma-2-2b-it"),
    ("zeroeval", "gemma-2-9b-it"),
    ("zeroeval", "gpt-3.5-turbo-0125"),
    ("zeroeval", "gpt-4-0314"),
    ("zeroeval", "gpt-4-turbo-2024-04-09"),
    ("zeroeval", "gpt-4o-2024-05-13"),
    ("zeroeval", "gpt-4o-2024-08-06"),
    ("zeroeval", "gpt-4o-mini-2024-07-18"),
    ("zeroeval", "grok-2-1212"),
    ("zeroeval", "o1-mini-2024-09-12"),
    ("zeroeval", "o1-preview-2024-09-12"),
    ("zeroeval", "reka-core-20240501"),
    ("zeroeval", "reka-flash-20240226"),
    ("zeroeval", "yi-large"),
    ("zeroeval", "yi-large-preview"),
    ("mmlu_pro", "DeepSeek-Coder-V2"),
    ("mmlu_pro", "Meta-Llama-3_1-70B-Instruct"),
    ("mmlu_pro", "Meta-Llama-3_1-8B-Instruct"),
    ("mmlu_pro", "Mistral-7B-Instruct-v0.2"),
    ("mmlu_pro", "Mixtral-8x7B-Instruct-v0.1"),
    ("mmlu_pro", "Phi-3-mini-4k-instruct"),
    ("mmlu_pro", "Qwen1.5-72B-Chat"),
    ("mmlu_pro", "Qwen1.5-7B-Chat"),
    ("mmlu_pro", "c4ai-command-r-v01"),
    ("mmlu_pro", "gemini-1.5-flash-002"),
    ("mmlu_pro", "gemini-1.5-pro-002"),
    ("mmlu_pro", "jamba-1.5-large"),
    ("mmlu_pro", "mathstral-7B"),
]

DATASET_NAMES = sorted({model for _, model in DATASET_MODELS})

LLMROUTER_CANDIDATES = Path(
    "/work/shared/datasets/llmrouter/data/example_data/llm_candidates/default_llm.json"
)


def _csv_rows(name: str) -> list[dict[str, str]]:
    text = resources.files("router_ml.price_data").joinpath(name).read_text(encoding="utf-8")
    return list(csv.DictReader(io.StringIO(text)))


# --- coverage -----------------------------------------------------------------


def test_dataset_inventory_is_complete() -> None:
    assert len(DATASET_MODELS) == 95
    assert len(DATASET_NAMES) == 91  # four names appear in two sources


@pytest.mark.parametrize("model", DATASET_NAMES)
def test_every_dataset_model_is_priced(model: str) -> None:
    price = price_of(model)
    assert price.model == model
    assert math.isfinite(price.input_usd_per_mtok) and price.input_usd_per_mtok > 0
    assert math.isfinite(price.output_usd_per_mtok) and price.output_usd_per_mtok > 0
    assert price.origin.startswith(("genai-prices:", "fallback:"))
    assert cost_usd(model, 1_000, 1_000) > 0


def test_known_models_are_exactly_the_dataset_models() -> None:
    assert known_models() == DATASET_NAMES


def test_each_model_in_exactly_one_file() -> None:
    mapped = [r["model"] for r in _csv_rows("model_map.csv")]
    fallback = [r["model"] for r in _csv_rows("fallback_prices.csv")]
    assert len(mapped) == len(set(mapped))
    assert len(fallback) == len(set(fallback))
    assert not set(mapped) & set(fallback)
    assert set(mapped) | set(fallback) == set(DATASET_NAMES)


def test_model_map_rows_are_documented() -> None:
    for row in _csv_rows("model_map.csv"):
        assert row["relation"] in ("exact", "proxy"), row
        if row["relation"] == "proxy":
            assert row["note"].strip(), row
        assert price_of(row["model"]).origin == f"genai-prices:{row['provider_id']}/{row['model_ref']}"


def test_fallback_rows_cite_a_source() -> None:
    for row in _csv_rows("fallback_prices.csv"):
        assert row["source"].strip(), row
        assert price_of(row["model"]).origin == f"fallback:{row['source']}"


# --- hand-checked costs -------------------------------------------------------


def test_prices_as_of_is_fixed_2026_11_01_utc() -> None:
    assert pricing.PRICES_AS_OF.tzinfo is not None
    assert pricing.PRICES_AS_OF.astimezone(timezone.utc).date() == datetime(2026, 11, 1).date()


def test_gpt_4o_2024_05_13() -> None:
    # genai-prices openai/gpt-4o-2024-05-13: $5 in / $15 out per MTok
    assert price_of("gpt-4o-2024-05-13") == ModelPrice(
        "gpt-4o-2024-05-13", 5.0, 15.0, "genai-prices:openai/gpt-4o-2024-05-13"
    )
    assert cost_usd("gpt-4o-2024-05-13", 1_000, 500) == pytest.approx(1000 * 5 / 1e6 + 500 * 15 / 1e6)
    assert cost_usd("gpt-4o-2024-05-13", 1_000, 500) == pytest.approx(0.0125)


def test_dated_snapshot_maps_to_alias_row() -> None:
    # claude-3-5-sonnet-20241022 -> anthropic/claude-3-5-sonnet: $3 / $15
    assert cost_usd("claude-3-5-sonnet-20241022", 2_000, 1_000) == pytest.approx(0.006 + 0.015)
    # gpt-4-1106-preview -> openai/gpt-4-turbo: $10 / $30
    assert cost_usd("gpt-4-1106-preview", 1_000, 1_000) == pytest.approx(0.01 + 0.03)


def test_tiered_model_uses_base_tier() -> None:
    # gemini-1.5-pro: $1.25 / $5 up to 128k prompt tokens (long-context tier ignored)
    assert cost_usd("gemini-1.5-pro-002", 1_000, 1_000) == pytest.approx(0.00125 + 0.005)


def test_deepseek_chat_standard_not_off_peak_rate() -> None:
    # deepseek-chat standard rate $0.27 / $1.10 (the 16:30-00:30 UTC discount is half that)
    assert cost_usd("deepseek-chat", 1_000_000, 1_000_000) == pytest.approx(0.27 + 1.10)


def test_proxy_host_suffix() -> None:
    # no Hyperbolic 3.1-70B row: Together's Meta-Llama-3.1-70B-Instruct-Turbo at $0.88 / $0.88
    cost = cost_usd("Meta-Llama-3.1-70B-Instruct@hyperbolic", 3_000, 1_000)
    assert cost == pytest.approx(4_000 * 0.88 / 1e6)
    # Athene-70B (Llama-3-70B fine-tune) -> together Llama-3-70b-chat-hf at $0.90
    assert cost_usd("Athene-70B", 1_000, 1_000) == pytest.approx(2_000 * 0.9 / 1e6)


def test_fallback_model_cost() -> None:
    # llama3-chatqa-1.5-70b: LLMRouter default_llm.json, NVIDIA NIM $0.90 / $0.90
    price = price_of("llama3-chatqa-1.5-70b")
    assert (price.input_usd_per_mtok, price.output_usd_per_mtok) == (0.9, 0.9)
    assert price.origin.startswith("fallback:ulab-uiuc/LLMRouter@4e7a7969")
    assert cost_usd("llama3-chatqa-1.5-70b", 10_000, 2_000) == pytest.approx(0.009 + 0.0018)
    # claude-instant-v1: $0.80 / $2.40
    assert cost_usd("claude-instant-v1", 1_000, 1_000) == pytest.approx(0.0008 + 0.0024)


@pytest.mark.skipif(not LLMROUTER_CANDIDATES.exists(), reason="local LLMRouter copy not present")
def test_llmrouter_fallbacks_match_default_llm_json() -> None:
    candidates = json.loads(LLMROUTER_CANDIDATES.read_text())
    for row in _csv_rows("fallback_prices.csv"):
        if "LLMRouter" in row["source"]:
            entry = candidates[row["model"]]
            assert float(row["input_usd_per_mtok"]) == entry["input_price"]
            assert float(row["output_usd_per_mtok"]) == entry["output_price"]


@pytest.mark.parametrize("row", _csv_rows("model_map.csv"), ids=lambda r: r["model"])
def test_rates_agree_with_genai_prices(row: dict[str, str]) -> None:
    calc = genai_prices.calc_price(
        genai_prices.Usage(input_tokens=3_000, output_tokens=700),
        model_ref=row["model_ref"],
        provider_id=row["provider_id"],
        genai_request_timestamp=pricing.PRICES_AS_OF,
    )
    assert (calc.provider.id, calc.model.id) == (row["provider_id"], row["model_ref"])
    assert cost_usd(row["model"], 3_000, 700) == pytest.approx(float(calc.total_price), rel=1e-9)


def test_prompt_only_cost() -> None:
    assert cost_usd("gpt-4o-2024-05-13", 1_000, None) == pytest.approx(0.005)
    assert cost_usd("gpt-4o-2024-05-13", 0, None) == 0.0
    assert cost_usd("gpt-4o-2024-05-13", 1_000, 0) == cost_usd("gpt-4o-2024-05-13", 1_000, None)


@pytest.mark.parametrize(
    ("args", "name"),
    [((-1, 10), "input_tokens"), ((10, -1), "output_tokens"), ((-5, None), "input_tokens")],
)
def test_negative_tokens_rejected(args: tuple[int, int | None], name: str) -> None:
    with pytest.raises(ValueError, match=name):
        cost_usd("gpt-4o-2024-05-13", *args)


def test_non_integer_tokens_rejected() -> None:
    with pytest.raises(TypeError):
        cost_usd("gpt-4o-2024-05-13", 10.5, 1)  # type: ignore[arg-type]


def test_unknown_model_lists_known_names() -> None:
    with pytest.raises(UnknownModelError) as info:
        price_of("gpt-5-imaginary")
    err = info.value
    assert isinstance(err, KeyError)
    message = str(err)
    assert "'gpt-5-imaginary'" in message
    assert ", ".join(sorted(DATASET_NAMES)) in message
    with pytest.raises(KeyError):
        cost_usd("GPT-4O-2024-05-13", 1, 1)  # names are matched exactly


@given(
    model=st.sampled_from(DATASET_NAMES),
    input_tokens=st.integers(min_value=0, max_value=10**9),
    output_tokens=st.none() | st.integers(min_value=0, max_value=10**9),
)
def test_cost_is_never_negative(model: str, input_tokens: int, output_tokens: int | None) -> None:
    cost = cost_usd(model, input_tokens, output_tokens)
    assert math.isfinite(cost) and cost >= 0
    assert cost >= cost_usd(model, input_tokens, None)


# --- CSV validation -----------------------------------------------------------

MAP_HEADER = "model,provider_id,model_ref,relation,note\n"
FALLBACK_HEADER = "model,input_usd_per_mtok,output_usd_per_mtok,source,note\n"


def test_parse_model_map_good_row() -> None:
    prices = parse_model_map(MAP_HEADER + "m,openai,gpt-4o-2024-05-13,exact,\n", "t.csv")
    assert prices["m"] == ModelPrice("m", 5.0, 15.0, "genai-prices:openai/gpt-4o-2024-05-13")


@pytest.mark.parametrize(
    ("body", "line", "fragment"),
    [
        ("m,openai,gpt-4o-2024-05-13,exact\n", 2, "columns"),
        ("m,openai,gpt-4o-2024-05-13,exact,,extra\n", 2, "columns"),
        ("ok,openai,gpt-4o,exact,\nm,no-such-provider,gpt-4o,exact,\n", 3, "no-such-provider"),
        ("m,openai,no-such-model-xyz,exact,\n", 2, "no-such-model-xyz"),
        ("m,openai,gpt-4o-2024-08-06,exact,\n", 2, "resolves to openai/gpt-4o"),
        ("m,openai,gpt-4o,exact,\n\nm,openai,gpt-4o,exact,\n", 4, "duplicate"),
        ("m,openai,gpt-4o,same,\n", 2, "relation"),
        ("m,openai,gpt-4o,proxy,\n", 2, "note"),
        (",openai,gpt-4o,exact,\n", 2, "model"),
    ],
)
def test_parse_model_map_rejects(body: str, line: int, fragment: str) -> None:
    with pytest.raises(ValueError, match=f"bad_map.csv, line {line}") as info:
        parse_model_map(MAP_HEADER + body, "bad_map.csv")
    assert fragment in str(info.value)


def test_parse_model_map_rejects_bad_header() -> None:
    with pytest.raises(ValueError, match="bad_map.csv, line 1"):
        parse_model_map("model,provider,model_ref,relation,note\n", "bad_map.csv")


def test_parse_fallback_good_row() -> None:
    prices = parse_fallback_prices(FALLBACK_HEADER + 'm,0.5,1.5,"src, page",n\n', "t.csv")
    assert prices["m"] == ModelPrice("m", 0.5, 1.5, "fallback:src, page")


@pytest.mark.parametrize(
    ("body", "line", "fragment"),
    [
        ("m,0.5,1.5,src\n", 2, "columns"),
        ("m,abc,1.5,src,\n", 2, "input_usd_per_mtok"),
        ("ok,1,1,src,\nm,0.5,,src,\n", 3, "output_usd_per_mtok"),
        ("m,-0.5,1.5,src,\n", 2, "non-negative"),
        ("m,nan,1.5,src,\n", 2, "finite"),
        ("m,0.5,1.5,,\n", 2, "source"),
        ("m,0.5,1.5,src,\nm,0.5,1.5,src,\n", 3, "duplicate"),
    ],
)
def test_parse_fallback_rejects(body: str, line: int, fragment: str) -> None:
    with pytest.raises(ValueError, match=f"bad_fb.csv, line {line}") as info:
        parse_fallback_prices(FALLBACK_HEADER + body, "bad_fb.csv")
    assert fragment in str(info.value)


def test_data_files_ship_in_package() -> None:
    data = resources.files("router_ml.price_data")
    assert data.joinpath("model_map.csv").is_file()
    assert data.joinpath("fallback_prices.csv").is_file()


def test_model_in_both_files_is_rejected(monkeypatch: pytest.MonkeyPatch) -> None:
    texts = {
        "model_map.csv": MAP_HEADER + "m,openai,gpt-4o,exact,\n",
        "fallback_prices.csv": FALLBACK_HEADER + "x,1,1,src,\nm,1,1,src,\n",
    }
    monkeypatch.setattr(pricing, "_read", texts.__getitem__)
    pricing._price_table.cache_clear()
    try:
        with pytest.raises(ValueError, match="fallback_prices.csv, line 3: duplicate model 'm'"):
            pricing._price_table()
    finally:
        monkeypatch.undo()
        pricing._price_table.cache_clear()
    assert "gpt-4o-2024-05-13" in known_models()
