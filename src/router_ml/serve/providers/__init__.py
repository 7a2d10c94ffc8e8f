"""Upstream providers: the protocol (:mod:`.base`), a replay of recorded dataset answers for offline runs
(:mod:`.replay`), and one HTTP adapter per wire format: OpenAI-compatible (:mod:`.openai_compat`: OpenAI,
OpenRouter, vLLM, Ollama), Anthropic Messages (:mod:`.anthropic`) and Gemini generateContent (:mod:`.gemini`)."""

from router_ml.serve.providers.anthropic import AnthropicProvider
from router_ml.serve.providers.base import ChatChunk, ChatRequest, ChatResult, Provider, ProviderError, Usage
from router_ml.serve.providers.gemini import GeminiProvider
from router_ml.serve.providers.openai_compat import OpenAICompatProvider
from router_ml.serve.providers.replay import ReplayProvider

__all__ = [
    "AnthropicProvider",
    "GeminiProvider",
    "ChatChunk",
    "ChatRequest",
    "ChatResult",
    "OpenAICompatProvider",
    "Provider",
    "ProviderError",
    "ReplayProvider",
    "Usage",
]
