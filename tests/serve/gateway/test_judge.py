"""The shadow judge (router_ml.serve.gateway.judge) through the provider protocol, on a real RouterBench MBPP prompt
that GPT-4 answered right and Mistral 7B wrong; the judge model is a handler provider that grades by the recorded
outcome and favours whichever answer it is shown first."""

from __future__ import annotations

import asyncio
import re

import pytest

from router_ml.serve.gateway.judge import JudgeError, judge, parse_scores
from router_ml.serve.providers.base import ProviderError
from router_ml.serve.providers.handler import HandlerProvider, failing
from real_streams import judged_answers, right_and_wrong

GOOD, BAD = "gpt-4-1106-preview", "mistralai/mistral-7b-chat"


@pytest.fixture(scope="module")
def case(real_files) -> dict:
    return right_and_wrong(real_files, GOOD, BAD)


def _biased_judge(right: str):
    """Scores 8 for the recorded right answer and 3 for the other, plus 2 for the answer shown first."""
    def handler(request):
        a, b = judged_answers(request)
        score_a, score_b = (8 if a == right else 3) + 2, 8 if b == right else 3
        return f'Here is my verdict:\n```json\n{{"score_a": {score_a}, "score_b": {score_b}, "reason": "x"}}\n```'
    return handler


def test_both_orders_cancel_the_position_bias_and_usage_counts_both_calls(case):
    provider = HandlerProvider(_biased_judge(case["right"]))
    verdict = asyncio.run(judge(provider, "judge-model", case["prompt"], case["wrong"], case["right"]))
    assert verdict.routed == pytest.approx((4 - 1) / 9) and verdict.reference == pytest.approx((9 - 1) / 9)
    assert verdict.consistent
    first, second = provider.requests
    assert first.model == "judge-model" and first.temperature == 0.0
    assert judged_answers(first) == (case["wrong"], case["right"]) and judged_answers(second) == (case["right"], case["wrong"])
    assert case["prompt"] in first.messages[-1]["content"] and first.messages[0]["role"] == "system"
    assert verdict.usage.output_tokens == 2 * len(_biased_judge(case["right"])(first).split())
    equal = asyncio.run(judge(provider, "judge-model", case["prompt"], case["right"], case["right"]))
    assert equal.routed == equal.reference and not equal.consistent  # the bias alone decided each order


@pytest.mark.parametrize("reply, scores", [
    ('{"score_a": 7, "score_b": 3, "reason": "A is right"}', (7.0, 3.0)),
    ('Sure. {"reason": "B {is} better", "score_b": 9, "score_a": 2.5} Done.', (2.5, 9.0)),
    ("Score A: 6\nScore B: 10", (6.0, 10.0)),
])
def test_verdicts_are_read_from_json_fences_or_prose(reply, scores):
    assert parse_scores(reply) == scores


@pytest.mark.parametrize("reply, says", [
    ("I cannot decide.", "no score_a and score_b"),
    ('{"score_a": 12, "score_b": 3}', "score_a 12 is outside 1-10"),
    ('{"score_a": "high", "score_b": 3}', "not numbers"),
])
def test_replies_without_a_verdict_are_judge_errors_that_quote_them(reply, says):
    with pytest.raises(JudgeError, match=re.escape(says)):
        parse_scores(reply)


def test_a_failing_or_slow_judge_is_a_judge_error(case):
    with pytest.raises(JudgeError, match="failed: upstream said 503") as raised:
        asyncio.run(judge(HandlerProvider(failing(503, True)), "j", case["prompt"], case["wrong"], case["right"]))
    assert isinstance(raised.value.__cause__, ProviderError)

    async def slow(request):
        await asyncio.sleep(5)
        return '{"score_a": 5, "score_b": 5}'

    with pytest.raises(JudgeError, match="no verdict within 0.05 s"):
        asyncio.run(judge(HandlerProvider(slow), "j", case["prompt"], case["wrong"], case["right"], timeout_s=0.05))
