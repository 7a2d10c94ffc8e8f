"""The shadow judge: a model of the catalog grades a routed answer against the reference model's answer.

The rubric (:data:`RUBRIC`) shows the judge the user's prompt and two answers, labelled A and B, and asks for a
score from 1 to 10 for each, in a JSON object. It runs twice, the answers swapped the second time, and each
answer's score is the mean of its two: a judge that favours the first position (the commonest bias of LLM judges)
favours both answers once. Scores map to [0, 1] (``(score - 1) / 9``), the scale of the quality share
(:mod:`router_ml.online.estimate`). Each run is an ordinary provider call, with its timeout; its usage is summed
so that the judging is paid for where savings are shown.
"""

from __future__ import annotations

import asyncio
import json
import re
from dataclasses import dataclass

from router_ml.serve.providers.base import ChatRequest, Usage

RUBRIC = """You compare two answers to the same user prompt. Judge only how well each answer serves the user: \
correctness first, then completeness and clarity. Length and style do not count, and neither does the order in \
which the answers are shown.

Reply with one JSON object and nothing else:
{"score_a": <1-10>, "score_b": <1-10>, "reason": "<one sentence>"}
where 10 is a fully correct and helpful answer and 1 a wrong or useless one."""

_OBJECT = re.compile(r"\{.*?\}", re.DOTALL)
_SCORE = re.compile(r"score[_ ]?([ab])\W{0,4}(\d+(?:\.\d+)?)", re.IGNORECASE)


class JudgeError(Exception):
    """A judge reply that holds no verdict, or a judge call that failed or timed out."""


@dataclass(frozen=True)
class Judgment:
    """The routed and the reference answer's scores in [0, 1] (each the mean of both orders), whether the two
    orders agreed on which is better (or on a tie), and the judge's usage over both calls."""

    routed: float
    reference: float
    consistent: bool
    usage: Usage


def judge_messages(prompt: str, answer_a: str, answer_b: str) -> list[dict]:
    return [{"role": "system", "content": RUBRIC},
            {"role": "user", "content": f"[User prompt]\n{prompt}\n\n[Answer A]\n{answer_a}\n\n[Answer B]\n{answer_b}"}]


_SHOWN = re.compile(r"\A\[User prompt\]\n(.*?)\n\n\[Answer A\]\n(.*?)\n\n\[Answer B\]\n(.*)\Z", re.DOTALL)


def judged_parts(messages: list[dict]) -> tuple[str, str, str] | None:
    """(prompt, answer A, answer B) of messages :func:`judge_messages` built; None for any other messages. When an
    answer itself holds the separators, the prompt and answer A take the shortest reading."""
    if len(messages) != 2 or messages[0].get("content") != RUBRIC or not isinstance(messages[1].get("content"), str):
        return None
    shown = _SHOWN.match(messages[1]["content"])
    return (shown[1], shown[2], shown[3]) if shown else None


def parse_scores(text: str) -> tuple[float, float]:
    """(score of A, score of B) from a judge's reply: its JSON object (also inside a code fence or prose), else
    ``score_a: 7``-style pairs. JudgeError names what is missing or out of range."""
    found: dict[str, float] = {}
    for candidate in _OBJECT.findall(text):
        try:
            data = json.loads(candidate)
        except json.JSONDecodeError:
            continue
        if isinstance(data, dict) and {"score_a", "score_b"} <= data.keys():
            try:
                found = {"a": float(data["score_a"]), "b": float(data["score_b"])}
            except (TypeError, ValueError) as exc:
                raise JudgeError(f"judge scores are not numbers: {candidate[:200]!r}") from exc
            break
    if not found:
        found = {side.lower(): float(value) for side, value in _SCORE.findall(text)}
    if set(found) != {"a", "b"}:
        raise JudgeError(f"no score_a and score_b in the judge's reply: {text[:200]!r}")
    for side, value in found.items():
        if not 1 <= value <= 10:
            raise JudgeError(f"score_{side} {value:g} is outside 1-10 in the judge's reply: {text[:200]!r}")
    return found["a"], found["b"]


def _unit(score: float) -> float:
    return (score - 1) / 9


async def judge(provider, model: str, prompt: str, routed: str, reference: str, timeout_s: float = 60.0,
                max_tokens: int = 200) -> Judgment:
    """Grade ``routed`` against ``reference`` with ``model`` of ``provider``, both orders at once (see the module
    docstring). JudgeError when a call fails, times out or gives no verdict (a ProviderError is its cause)."""

    async def run(answer_a: str, answer_b: str):
        request = ChatRequest(model, judge_messages(prompt, answer_a, answer_b), temperature=0.0,
                              max_tokens=max_tokens)
        try:
            result = await asyncio.wait_for(provider.complete(request), timeout_s)
        except TimeoutError as exc:
            raise JudgeError(f"judge {model} gave no verdict within {timeout_s:g} s") from exc
        except Exception as exc:  # a ProviderError, or a provider's own failure
            raise JudgeError(f"judge {model} failed: {exc}") from exc
        return parse_scores(result.text), result.usage

    (first, first_usage), (second, second_usage) = await asyncio.gather(run(routed, reference),
                                                                         run(reference, routed))
    routed_scores, reference_scores = (first[0], second[1]), (first[1], second[0])
    agree = (first[0] > first[1]) == (second[1] > second[0]) and (first[0] == first[1]) == (second[0] == second[1])
    usage = Usage(first_usage.input_tokens + second_usage.input_tokens,
                  first_usage.output_tokens + second_usage.output_tokens)
    return Judgment(_unit(sum(routed_scores) / 2), _unit(sum(reference_scores) / 2), agree, usage)
