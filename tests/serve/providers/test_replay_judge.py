"""The replay judge grades the shadow judge's rubric by the recorded quality of each answer (RouterBench's real
answers to an MBPP prompt that GPT-4 got right and Mistral 7B wrong), in both orders, and refuses to make up a grade
for an answer the dataset never recorded."""

from __future__ import annotations

import asyncio

import polars as pl
import pytest

from router_ml.data.importers import routerbench
from router_ml.data.report import ImportReport
from router_ml.serve.gateway.judge import JudgeError, judge, judge_messages, judged_parts
from router_ml.serve.providers.base import ChatRequest, ProviderError
from router_ml.serve.providers.replay_judge import MODEL, ReplayJudge
from real_streams import right_and_wrong


@pytest.fixture(scope="module")
def case(real_files) -> dict:
    found = right_and_wrong(real_files)
    rows = routerbench.load(real_files, ImportReport()).filter(pl.col("prompt") == found["prompt"])
    return {**found, "judge": ReplayJudge.from_outcomes(rows, judged_parts)}


def test_the_rubric_round_trips_through_its_parser():
    shown = judge_messages("2+2?\n\nShow work.", "4\n\nsure", "5")
    assert judged_parts(shown) == ("2+2?\n\nShow work.", "4\n\nsure", "5")
    assert judged_parts([{"role": "user", "content": "hello"}]) is None


def test_recorded_answers_are_graded_by_their_recorded_quality_in_both_orders(case):
    verdict = asyncio.run(judge(case["judge"], MODEL, case["prompt"], case["wrong"], case["right"]))
    assert (verdict.routed, verdict.reference, verdict.consistent) == (0.0, 1.0, True)
    assert verdict.usage.input_tokens > 0 and verdict.usage.output_tokens > 0
    tie = asyncio.run(judge(case["judge"], MODEL, case["prompt"], case["right"], case["right"]))
    assert (tie.routed, tie.reference) == (1.0, 1.0)


def test_an_unrecorded_answer_gets_no_grade(case):
    with pytest.raises(JudgeError) as failed:
        asyncio.run(judge(case["judge"], MODEL, case["prompt"], case["wrong"] + " (edited)", case["right"]))
    cause = failed.value.__cause__
    assert isinstance(cause, ProviderError) and cause.status == 422 and "answer" in cause.message
    with pytest.raises(ProviderError, match="only the shadow judge's rubric") as refused:
        asyncio.run(case["judge"].complete(ChatRequest(MODEL, [{"role": "user", "content": case["prompt"]}])))
    assert refused.value.status == 400
