"""Which provider serves each model: a TOML file, keys taken from the environment by name.

```toml
[models."gpt-4o-mini"]
provider = "openai"                 # openai | openrouter | anthropic | gemini
api_key_env = "OPENAI_API_KEY"      # the variable that holds the key (a key never goes in the file)

[models."claude-3-5-haiku-20241022"]
provider = "anthropic"
api_key_env = "ANTHROPIC_API_KEY"

[models."llama-3.1-8b"]
provider = "openai"                 # any OpenAI-compatible server: vLLM, Ollama
base_url = "http://localhost:8001/v1"
upstream_model = "meta-llama/Llama-3.1-8B-Instruct"
```

Deployments with the same provider, base URL and key share one adapter (one connection
pool); each model gets its own retry and circuit-breaker wrapper.
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path

from router_ml.serve.providers.reliability import ReliableProvider

KINDS = {"openai": "https://api.openai.com/v1", "openrouter": "https://openrouter.ai/api/v1",
         "anthropic": "https://api.anthropic.com", "gemini": "https://generativelanguage.googleapis.com"}
FIELDS = {"provider", "api_key_env", "base_url", "upstream_model"}


class CatalogError(ValueError):
    """The provider catalog names something wrong; the message says which model and field."""


def _adapter(kind: str, base_url: str, api_key: str | None, pool):
    from router_ml.serve.providers import AnthropicProvider, GeminiProvider, OpenAICompatProvider

    if kind == "anthropic":
        return AnthropicProvider(base_url, api_key=api_key, pool=pool)
    if kind == "gemini":
        return GeminiProvider(base_url, api_key=api_key, pool=pool)
    return OpenAICompatProvider(base_url, api_key=api_key, name=kind, pool=pool)


def load_catalog(path: Path, environ=os.environ, pool=None) -> dict:
    """Model name -> provider (wrapped for reliability), from the catalog file at ``path``. Every adapter sends
    through ``pool`` (the app's one :class:`~router_ml.serve.providers.wire.UpstreamPool`) when given, else
    through a pool of its own."""
    try:
        entries = tomllib.loads(Path(path).read_text())["models"]
    except FileNotFoundError as exc:
        raise CatalogError(f"no provider catalog at {path}") from exc
    except (tomllib.TOMLDecodeError, KeyError) as exc:
        raise CatalogError(f"{path}: not a provider catalog ([models.\"<name>\"] tables): {exc}") from exc
    adapters, providers = {}, {}
    for model, entry in entries.items():
        where = f"{path}: models.{model!r}"
        unknown = sorted(set(entry) - FIELDS)
        if unknown:
            raise CatalogError(f"{where}: unknown field(s) {', '.join(unknown)}; allowed: {', '.join(sorted(FIELDS))}")
        kind = entry.get("provider")
        if kind not in KINDS:
            raise CatalogError(f"{where}: provider must be one of {', '.join(KINDS)}, not {kind!r}")
        key_env = entry.get("api_key_env")
        api_key = environ.get(key_env) if key_env else None
        if key_env and not api_key:
            raise CatalogError(f"{where}: environment variable {key_env} (api_key_env) is not set")
        base_url = entry.get("base_url", KINDS[kind])
        shared = (kind, base_url, key_env)
        if shared not in adapters:
            adapters[shared] = _adapter(kind, base_url, api_key, pool)
        providers[model] = ReliableProvider(adapters[shared], f"{kind}/{model}",
                                            upstream_model=entry.get("upstream_model"))
    return providers
