"""A provider that answers through a plain function, like httpx's ``MockTransport``: for tests, demos and
embedding the gateway in front of your own code, with no upstream to run.

``HandlerProvider(handler)`` calls ``handler(request)`` for each :class:`ChatRequest`; the handler (a plain or
an ``async`` function) returns the answer's text or a whole :class:`ChatResult`, or raises
:class:`ProviderError` (:func:`failing` builds one that always does). A text answer finishes with "stop" and
rough token counts (a quarter of the characters of the messages in, the answer's words out). Streams run the
same handler and split the result into word pieces that join back to exactly its text, then one chunk with
its tool calls (as complete deltas with their ``index``) if it has any; the last chunk carries
finish_reason and usage. Every request is kept in ``requests``, in order.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import AsyncIterator, Awaitable, Callable

from router_ml.serve.providers.base import ChatChunk, ChatRequest, ChatResult, ProviderError, Usage

Answer = str | ChatResult
Handler = Callable[[ChatRequest], Answer | Awaitable[Answer]]
# A word with the white space before it; white space after the last word stays with it.
_PIECES = re.compile(r"\s*\S+(?:\s+$)?|\s+$")


class HandlerProvider:
    """The :class:`~router_ml.serve.providers.base.Provider` protocol over ``handler`` (see the module docstring).
    An error the handler raises without a ``provider`` is reported as this provider's."""

    def __init__(self, handler: Handler, name: str = "fake"):
        self.handler, self.name = handler, name
        self.requests: list[ChatRequest] = []

    async def _result(self, request: ChatRequest) -> ChatResult:
        self.requests.append(request)
        try:
            answer = self.handler(request)
            if inspect.isawaitable(answer):
                answer = await answer
        except ProviderError as exc:
            exc.provider = exc.provider or self.name
            raise
        if isinstance(answer, ChatResult):
            return answer
        return ChatResult(answer, "stop", Usage(len(str(request.messages)) // 4, len(answer.split())))

    async def complete(self, request: ChatRequest) -> ChatResult:
        return await self._result(request)

    async def stream(self, request: ChatRequest) -> AsyncIterator[ChatChunk]:
        result = await self._result(request)
        for piece in _PIECES.findall(result.text):
            yield ChatChunk(piece)
        if result.tool_calls:
            yield ChatChunk(tool_calls=[{"index": i, **call} for i, call in enumerate(result.tool_calls)])
        yield ChatChunk(finish_reason=result.finish_reason, usage=result.usage)


def failing(status: int, retryable: bool) -> Handler:
    """A handler that always fails as an upstream answering ``status`` would."""
    def handler(request: ChatRequest) -> str:
        raise ProviderError(f"upstream said {status}", status=status, retryable=retryable, provider="fake")

    return handler
