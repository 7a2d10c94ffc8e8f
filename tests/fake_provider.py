"""A provider that answers through a plain handler function: the test double of the provider protocol."""

from __future__ import annotations

from router_ml.serve.providers.base import ChatChunk, ChatRequest, ChatResult, ProviderError, Usage


class HandlerProvider:
    """``handler(request)`` returns the answer text or raises :class:`ProviderError`; every call is kept
    in ``requests``. Streams split the answer into words."""

    def __init__(self, handler, name: str = "fake"):
        self.handler, self.name, self.requests = handler, name, []

    async def complete(self, request: ChatRequest) -> ChatResult:
        self.requests.append(request)
        text = self.handler(request)
        return ChatResult(text, "stop", Usage(len(str(request.messages)) // 4, len(text.split())))

    async def stream(self, request: ChatRequest):
        self.requests.append(request)
        text = self.handler(request)
        words = text.split(" ")
        for i, word in enumerate(words):
            yield ChatChunk(word if i == 0 else " " + word)
        yield ChatChunk(finish_reason="stop", usage=Usage(len(str(request.messages)) // 4, len(words)))


def failing(status: int, retryable: bool):
    def handler(request: ChatRequest) -> str:
        raise ProviderError(f"upstream said {status}", status=status, retryable=retryable, provider="fake")

    return handler
