"""Upstream providers: the protocol (:mod:`.base`), a replay of recorded dataset answers for offline runs
(:mod:`.replay`) and the OpenAI-compatible HTTP adapter (:mod:`.openai_compat`)."""

from router_ml.serve.providers.base import ChatChunk, ChatRequest, ChatResult, Provider, ProviderError, Usage
from router_ml.serve.providers.openai_compat import OpenAICompatProvider
from router_ml.serve.providers.replay import ReplayProvider

__all__ = [
    "ChatChunk",
    "ChatRequest",
    "ChatResult",
    "OpenAICompatProvider",
    "Provider",
    "ProviderError",
    "ReplayProvider",
    "Usage",
]
