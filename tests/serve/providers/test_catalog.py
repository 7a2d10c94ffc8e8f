"""The provider catalog: which adapter serves each model, keys from the environment, clear errors."""

from __future__ import annotations

import asyncio

import pytest

from router_ml.serve.providers.catalog import CatalogError, load_catalog
from router_ml.serve.providers import AnthropicProvider, GeminiProvider, OpenAICompatProvider
from router_ml.serve.providers.base import ChatRequest
from router_ml.serve.providers.handler import HandlerProvider
from router_ml.serve.providers.reliability import ReliableProvider

CATALOG = """
[models."gpt-4o-mini"]
provider = "openai"
api_key_env = "TEST_OPENAI_KEY"

[models."gpt-4o"]
provider = "openai"
api_key_env = "TEST_OPENAI_KEY"

[models."claude-3-5-haiku-20241022"]
provider = "anthropic"
api_key_env = "TEST_ANTHROPIC_KEY"

[models."gemini-1.5-flash"]
provider = "gemini"
api_key_env = "TEST_GEMINI_KEY"

[models."llama-local"]
provider = "openai"
base_url = "http://127.0.0.1:8001/v1"
upstream_model = "meta-llama/Llama-3.1-8B-Instruct"
"""
ENV = {"TEST_OPENAI_KEY": "sk-test", "TEST_ANTHROPIC_KEY": "ak-test", "TEST_GEMINI_KEY": "gk-test"}


def _write(tmp_path, text: str):
    path = tmp_path / "providers.toml"
    path.write_text(text)
    return path


def test_each_model_gets_its_adapter_and_same_endpoints_share_one(tmp_path):
    providers = load_catalog(_write(tmp_path, CATALOG), ENV)
    assert set(providers) == {"gpt-4o-mini", "gpt-4o", "claude-3-5-haiku-20241022", "gemini-1.5-flash", "llama-local"}
    assert all(isinstance(p, ReliableProvider) for p in providers.values())
    assert isinstance(providers["gpt-4o"].inner, OpenAICompatProvider)
    assert providers["gpt-4o"].inner is providers["gpt-4o-mini"].inner  # one connection pool per endpoint and key
    assert providers["llama-local"].inner is not providers["gpt-4o"].inner
    assert isinstance(providers["claude-3-5-haiku-20241022"].inner, AnthropicProvider)
    assert isinstance(providers["gemini-1.5-flash"].inner, GeminiProvider)
    assert providers["gpt-4o"].breaker is not providers["gpt-4o-mini"].breaker  # one breaker per deployment
    assert "sk-test" not in repr(providers["gpt-4o"].inner)


def test_upstream_model_renames_the_request():
    inner = HandlerProvider(lambda request: request.model)
    provider = ReliableProvider(inner, "openai/llama-local", upstream_model="meta-llama/Llama-3.1-8B-Instruct")
    result = asyncio.run(provider.complete(ChatRequest(model="llama-local", messages=[{"role": "user", "content": "x"}])))
    assert result.text == "meta-llama/Llama-3.1-8B-Instruct"


@pytest.mark.parametrize("text, env, message", [
    ('[models."m"]\nprovider = "openai"\napi_key = "sk-in-the-file"\n', {}, "unknown field(s) api_key"),
    ('[models."m"]\nprovider = "azure"\n', {}, "provider must be one of"),
    ('[models."m"]\nprovider = "openai"\napi_key_env = "NOT_SET_ANYWHERE"\n', {}, "NOT_SET_ANYWHERE"),
    ('[providers]\nx = 1\n', {}, "not a provider catalog"),
])
def test_mistakes_are_named(tmp_path, text, env, message):
    with pytest.raises(CatalogError, match=message.replace("(", r"\(").replace(")", r"\)")) as raised:
        load_catalog(_write(tmp_path, text), env)
    assert "models.'m'" in str(raised.value) or "not a provider catalog" in str(raised.value)


def test_a_missing_file_is_named(tmp_path):
    with pytest.raises(CatalogError, match="no provider catalog at"):
        load_catalog(tmp_path / "absent.toml", {})
