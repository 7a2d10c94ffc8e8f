"""A judge for the replay provider: it grades two answers by the quality the dataset recorded for them, so the
shadow judge, the live quality estimate and the online operating point run offline (``router-ml serve`` with
``ROUTER_ML_JUDGE_MODEL=replay-judge``) on the same recorded answers the replay provider serves.

It answers only the shadow judge's rubric (:func:`router_ml.serve.gateway.judge.judge_messages`): each answer that
is a recorded response to the judged prompt scores ``1 + 9 * quality`` (the rubric's 1-10 scale, which the judge
maps back to the recorded quality), as an exact judge would. An answer the dataset holds no grade for (a stand-in
for an unrecorded prompt, an answer cut by ``max_tokens``) gets no made-up score: the call fails with a 422
:class:`ProviderError` naming it, and the shadow judge logs that verdict as failed. Usage counts the rubric's tokens
in and the reply's out; the judge has no price, so its calls cost nothing.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable

import polars as pl

from router_ml.serve.providers.base import ChatChunk, ChatRequest, ChatResult, ProviderError, Usage
from router_ml.serve.providers.replay import text_digest
from router_ml.serve.providers.wire import counted_input_tokens
from router_ml.tokens import count_tokens

MODEL = "replay-judge"


class ReplayJudge:
    """Grades the shadow judge's two answers from recorded outcomes (see the module docstring); ``graded`` maps a
    prompt's digest to {a response's digest: its recorded quality in [0, 1]}; ``parts`` reads (prompt, answer A,
    answer B) back from the rubric's messages, or None for another request
    (:func:`router_ml.serve.gateway.judge.judged_parts`, passed in: providers do not import the gateway)."""

    def __init__(self, graded: dict[bytes, dict[bytes, float]], parts: Callable[[list], tuple | None],
                 name: str = "replay-judge"):
        self.graded, self.parts, self.name = graded, parts, name

    @classmethod
    def from_outcomes(cls, frame: pl.DataFrame, parts: Callable[[list], tuple | None],
                      name: str = "replay-judge") -> ReplayJudge:
        """Index every graded response of an outcomes table (``prompt``, ``response``, ``quality``); a response
        recorded more than once for one prompt scores its mean quality."""
        rows = (frame.filter(pl.col("response").is_not_null() & pl.col("quality").is_not_null())
                .group_by("prompt", "response").agg(pl.col("quality").mean()))
        graded: dict[bytes, dict[bytes, float]] = {}
        for prompt, response, quality in rows.iter_rows():
            graded.setdefault(text_digest(prompt), {})[text_digest(response)] = float(quality)
        return cls(graded, parts, name=name)

    def _reply(self, request: ChatRequest) -> ChatResult:
        parts = self.parts(request.messages)
        if parts is None:
            raise ProviderError(f"{self.name} answers only the shadow judge's rubric prompt", status=400,
                                provider=self.name)
        prompt, *answers = parts
        recorded = self.graded.get(text_digest(prompt), {})
        scores = {}
        for side, answer in zip("ab", answers):
            quality = recorded.get(text_digest(answer))
            if quality is None:
                raise ProviderError(f"{self.name}: answer {side.upper()} is not a recorded answer to the judged prompt, "
                                    "so the dataset holds no grade for it", status=422, provider=self.name)
            scores[f"score_{side}"] = round(1 + 9 * quality, 6)
        text = json.dumps({**scores, "reason": "the quality the dataset recorded for each answer"})
        return ChatResult(text, "stop", Usage(counted_input_tokens(request.messages), count_tokens(text)))

    async def complete(self, request: ChatRequest) -> ChatResult:
        return self._reply(request)

    async def stream(self, request: ChatRequest) -> AsyncIterator[ChatChunk]:
        result = self._reply(request)
        yield ChatChunk(text=result.text)
        yield ChatChunk(finish_reason=result.finish_reason, usage=result.usage)
