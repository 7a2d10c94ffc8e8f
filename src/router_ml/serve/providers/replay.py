"""A provider that answers from recorded dataset responses, so the whole gateway runs offline.

:class:`ReplayProvider` is built from an outcomes table (``router_ml.data.schema``): for every model it
indexes prompt -> recorded response (and the row's output tokens and latency when known). A request whose
user prompt was recorded for the requested model gets exactly that model's recorded answer. Any other
prompt gets the recorded response of a deterministic pick among that model's recorded open-ended responses (a hash
of the prompt and the seed): this is an offline demo of the gateway's plumbing (routing, streaming,
logging, cost), not a real answer to the question, but the text, its length and its cost are those of a
real answer of that model. An unknown model is a 404 :class:`ProviderError`.

Latency is replayed too: the recorded ``latency_ms`` where the source logged it, else 0.2 s plus 10 ms per
output token; both are multiplied by ``speed`` (``speed=0`` means no sleeping at all, for tests).

Memory: prompts are keyed by a 16-byte digest (RouterBench few-shot prompts run to kilobytes and are shared
by 11 models), and identical response texts are stored once.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass

import polars as pl

from router_ml.serve.providers.base import ChatChunk, ChatRequest, ChatResult, ProviderError, Usage
from router_ml.serve.providers.wire import counted_input_tokens, message_text
from router_ml.tokens import _encoding, count_tokens

FIRST_TOKEN_S = 0.2
PER_TOKEN_S = 0.010
WORDS_PER_CHUNK = 4
MIN_STAND_IN_CHARS = 200
_PIECES = re.compile(r"\s*\S+\s*|\s+")


@dataclass(frozen=True, slots=True)
class Recorded:
    response: str
    output_tokens: int | None
    latency_ms: float | None


def text_digest(text: str) -> bytes:
    """The key a prompt (or an answer) is looked up by."""
    return hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=16).digest()


def user_prompt(messages: list[dict]) -> str:
    """The last user message's text (the last message's when no message has the user role)."""
    users = [m for m in messages if m.get("role") == "user"]
    chosen = users or messages
    return message_text(chosen[-1].get("content")) if chosen else ""


def truncate_tokens(text: str, max_tokens: int) -> tuple[str, bool]:
    """``text`` cut to its first ``max_tokens`` o200k_base tokens, and whether it was cut."""
    ids = _encoding().encode_ordinary(text)
    if len(ids) <= max_tokens:
        return text, False
    return _encoding().decode_bytes(ids[:max(max_tokens, 0)]).decode("utf-8", errors="ignore"), True


def chunk_words(text: str, words: int = WORDS_PER_CHUNK) -> list[str]:
    """``text`` in pieces of a few words each; the pieces join back to exactly ``text``."""
    pieces = _PIECES.findall(text)
    return ["".join(pieces[i:i + words]) for i in range(0, len(pieces), words)]


class ReplayProvider:
    """Answers chat requests with recorded responses of the requested model (see the module docstring)."""

    def __init__(self, recorded: dict[str, dict[bytes, Recorded]], speed: float = 1.0, seed: int = 0,
                 name: str = "replay"):
        if speed < 0:
            raise ValueError("speed must be >= 0")
        self.name, self.speed, self.seed = name, speed, seed
        self._recorded = recorded
        # Stand-in answers for unrecorded prompts come from the model's open-ended answers (a few sentences
        # at least) where it has any: a one-letter multiple-choice answer reads as broken in a demo.
        self._keys = {model: sorted(k for k, r in rows.items() if len(r.response) >= MIN_STAND_IN_CHARS) or sorted(rows)
                      for model, rows in recorded.items()}

    @classmethod
    def from_outcomes(cls, frame: pl.DataFrame, models: Iterable[str] | None = None, speed: float = 1.0,
                      seed: int = 0, name: str = "replay") -> ReplayProvider:
        """Index the rows of an outcomes table that have a response (first row wins for a repeated
        (model, prompt)); ``models`` keeps only those models."""
        rows = frame.filter(pl.col("response").is_not_null())
        if models is not None:
            rows = rows.filter(pl.col("model").is_in(list(models)))
        columns = [pl.col("model"), pl.col("prompt"), pl.col("response")]
        for optional, dtype in (("output_tokens", pl.Int64), ("latency_ms", pl.Float64)):
            columns.append(pl.col(optional) if optional in rows.columns else pl.lit(None, dtype).alias(optional))
        recorded: dict[str, dict[bytes, Recorded]] = {}
        texts: dict[str, str] = {}
        for model, prompt, response, output_tokens, latency_ms in rows.select(columns).iter_rows():
            by_prompt = recorded.setdefault(model, {})
            key = text_digest(prompt)
            if key not in by_prompt:
                by_prompt[key] = Recorded(texts.setdefault(response, response), output_tokens, latency_ms)
        return cls(recorded, speed=speed, seed=seed, name=name)

    @property
    def models(self) -> list[str]:
        return sorted(self._recorded)

    def lookup(self, model: str, prompt: str) -> tuple[Recorded, bool]:
        """The recorded answer for ``prompt`` and whether it was recorded for exactly that prompt (else a
        deterministic pick among the model's recorded open-ended answers)."""
        by_prompt = self._recorded.get(model)
        if not by_prompt:
            known = ", ".join(self.models[:5]) + (", ..." if len(self._recorded) > 5 else "")
            raise ProviderError(f"{self.name}: no recorded responses for model {model!r} (known: {known or 'none'})",
                                status=404, retryable=False, provider=self.name)
        key = text_digest(prompt)
        if key in by_prompt:
            return by_prompt[key], True
        keys = self._keys[model]
        pick = int.from_bytes(hashlib.blake2b(key + str(self.seed).encode(), digest_size=8).digest(), "little")
        return by_prompt[keys[pick % len(keys)]], False

    def _answer(self, request: ChatRequest) -> tuple[str, str, Usage, float]:
        """(text, finish_reason, usage, seconds to wait) for a request."""
        row, _ = self.lookup(request.model, user_prompt(request.messages))
        text, finish_reason, cut = row.response, "stop", False
        for stop in request.stop or []:
            at = text.find(stop) if stop else -1
            if at >= 0:
                text, cut = text[:at], True
        if request.max_tokens is not None:
            text, truncated = truncate_tokens(text, request.max_tokens)
            if truncated:
                finish_reason, cut = "length", True
        output_tokens = row.output_tokens if row.output_tokens is not None and not cut else count_tokens(text)
        input_tokens = counted_input_tokens(request.messages)
        if row.latency_ms is not None and not cut:
            seconds = row.latency_ms / 1000
        else:
            seconds = FIRST_TOKEN_S + PER_TOKEN_S * output_tokens
        return text, finish_reason, Usage(input_tokens, output_tokens), seconds * self.speed

    async def complete(self, request: ChatRequest) -> ChatResult:
        text, finish_reason, usage, seconds = self._answer(request)
        if seconds > 0:
            await asyncio.sleep(seconds)
        return ChatResult(text=text, finish_reason=finish_reason, usage=usage)

    async def stream(self, request: ChatRequest) -> AsyncIterator[ChatChunk]:
        """The same answer as :meth:`complete` in pieces of a few words; the time to the first piece is
        min(0.2 s, total) times ``speed``, the rest spread evenly; the last chunk carries finish_reason and usage."""
        text, finish_reason, usage, seconds = self._answer(request)
        pieces = chunk_words(text)
        first = min(FIRST_TOKEN_S * self.speed, seconds)
        rest = (seconds - first) / max(len(pieces), 1)
        for i, piece in enumerate(pieces):
            wait = first if i == 0 else rest
            if wait > 0:
                await asyncio.sleep(wait)
            yield ChatChunk(text=piece)
        last = rest if pieces else seconds
        if last > 0:
            await asyncio.sleep(last)
        yield ChatChunk(finish_reason=finish_reason, usage=usage)
