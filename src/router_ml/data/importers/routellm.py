"""RouteLLM's eval sets: MMLU and GSM8K correctness, MT-Bench GPT-4 judge scores.

Two models answered every prompt: gpt-4-1106-preview and Mixtral-8x7B-Instruct.
MT-Bench is routed on the turn-1 prompt and scored as the mean GPT-4 judge score over
both turns, mapped from 1-10 to [0, 1]. Prompts RouteLLM lists as contaminated
(found in its own training data) are kept and flagged ``contaminated``.
"""

from __future__ import annotations

import csv
import re
from collections import defaultdict

import polars as pl

from router_ml.data.ids import prompt_id
from router_ml.data.importers.common import frame, jsonl_records, messages_json, outcome
from router_ml.data.report import ImportReport
from router_ml.data.sources import DataFiles

SOURCE = "routellm"
MODELS = ("gpt-4-1106-preview", "mistralai/Mixtral-8x7B-Instruct-v0.1")
EVALS = "routellm/evals"
BOOL = {"True": 1.0, "False": 0.0}
JUDGE_MIN, JUDGE_MAX = 1.0, 10.0


def load(files: DataFiles, report: ImportReport) -> pl.DataFrame:
    parts = [_mmlu(files, report), _gsm8k(files, report), _mt_bench(files, report)]
    return pl.concat(parts)


def _contaminated(files: DataFiles, report: ImportReport, task_dir: str) -> set[str]:
    path = f"{EVALS}/{task_dir}/contaminated_prompts.jsonl"
    return {p for _, p in jsonl_records(files, SOURCE, path, report, lambda item: item["eval_prompt"].strip(),
                                        "contaminated-prompt entry")}


def _flags(prompt: str, contaminated: set[str]) -> list[str]:
    return ["contaminated"] if prompt.strip() in contaminated else []


def _mmlu(files: DataFiles, report: ImportReport) -> pl.DataFrame:
    contaminated = _contaminated(files, report, "mmlu")
    rows = []
    for path in files.paths(SOURCE, f"{EVALS}/mmlu/responses/", ".csv"):
        with files.open_text(SOURCE, path) as handle:
            rows.extend(_correctness_rows(csv.DictReader(handle), path, "mmlu", contaminated, report, responses=False))
    _note_contamination(report, "mmlu", contaminated, rows)
    return frame(rows)


def _gsm8k(files: DataFiles, report: ImportReport) -> pl.DataFrame:
    contaminated = _contaminated(files, report, "gsm8k")
    path = f"{EVALS}/gsm8k/gsm8k_responses.csv"
    with files.open_text(SOURCE, path) as handle:
        rows = list(_correctness_rows(csv.DictReader(handle), path, "gsm8k", contaminated, report, responses=True))
    _note_contamination(report, "gsm8k", contaminated, rows)
    return frame(rows)


def _note_contamination(report: ImportReport, task: str, contaminated: set[str], rows: list[dict]) -> None:
    found = {r["prompt"] for r in rows if "contaminated" in r["flags"]}
    report.note(SOURCE, f"{task}: {len(found)} of {len(contaminated)} listed contaminated prompts flagged")


def _correctness_rows(reader, path, task, contaminated, report, responses):
    missing = [m for m in MODELS if m not in (reader.fieldnames or [])]
    if "prompt" not in (reader.fieldnames or []) or missing:
        raise ValueError(f"{SOURCE}/{path}: expected columns 'prompt' and {list(MODELS)}, got {reader.fieldnames}")
    for index, record in enumerate(reader):
        line = reader.line_num
        prompt = record["prompt"]
        if not prompt or not prompt.strip():
            report.skip(SOURCE, path, line, "empty prompt")
            continue
        for model in MODELS:
            value = record[model]
            if value not in BOOL:
                report.skip(SOURCE, path, line, f"correctness not True/False: {model}={value!r}")
                continue
            yield outcome(
                # MMLU repeats some questions across subjects: the id is the record, not the text.
                prompt_id=prompt_id(SOURCE, task, f"{path}#{index}"),
                prompt=prompt,
                model=model,
                quality=BOOL[value],
                source=SOURCE,
                task=task,
                split="test",
                response=record.get(f"{model}_response") if responses else None,
                flags=_flags(prompt, contaminated),
            )


_ANSWER = re.compile(r"\[The Start of Assistant's Answer\]\n(.*?)\n\[The End of Assistant's Answer\]", re.S)
_CONVERSATION = re.compile(
    r"<\|The Start of Assistant A's Conversation with User\|>(.*?)<\|The End of Assistant A's Conversation with User\|>",
    re.S,
)
_ASSISTANT_TURN = re.compile(r"### Assistant A:\n(.*?)(?=\n\n### User:\n|\Z)", re.S)


def _judgement_fields(item: dict) -> tuple[int, str, int, float, str]:
    return (int(item["question_id"]), item["model"], int(item["turn"]), float(item["score"]),
            item.get("user_prompt", ""))


def _mt_bench(files: DataFiles, report: ImportReport) -> pl.DataFrame:
    contaminated = _contaminated(files, report, "mt_bench")
    questions = dict(q for _, q in jsonl_records(
        files, SOURCE, f"{EVALS}/mt_bench/question.jsonl", report,
        lambda item: (int(item["question_id"]), list(item["turns"])), "question"))

    # (question, model) -> turn -> (score, answer text of that turn)
    judged: dict[tuple[int, str], dict[int, tuple[float, str | None]]] = defaultdict(dict)
    jpath = f"{EVALS}/mt_bench/judgements.jsonl"
    for line_no, (qid, model, turn, score, judge_prompt) in jsonl_records(
            files, SOURCE, jpath, report, _judgement_fields, "judgement"):
        if not JUDGE_MIN <= score <= JUDGE_MAX:
            report.skip(SOURCE, jpath, line_no, f"judge score outside 1-10: {score}")
            continue
        judged[(qid, model)][turn] = (score, _answer_of_turn(judge_prompt, turn))

    rows = []
    for (qid, model), turns in sorted(judged.items()):
        if qid not in questions:
            report.skip(SOURCE, jpath, None, f"judgement for unknown question {qid}")
            continue
        if set(turns) != {1, 2}:
            report.skip(SOURCE, jpath, None, f"question {qid} {model}: judged turns {sorted(turns)}, need 1 and 2")
            continue
        q1, q2 = questions[qid][:2]
        a1, a2 = turns[1][1], turns[2][1]
        mean_score = (turns[1][0] + turns[2][0]) / 2
        conversation = [{"role": "user", "content": q1}, {"role": "assistant", "content": a1 or ""},
                        {"role": "user", "content": q2}, {"role": "assistant", "content": a2 or ""}]
        rows.append(outcome(
            prompt_id=prompt_id(SOURCE, "mt_bench", str(qid)),
            prompt=q1,
            messages=messages_json(conversation),
            model=model,
            quality=(mean_score - JUDGE_MIN) / (JUDGE_MAX - JUDGE_MIN),
            source=SOURCE,
            task="mt_bench",
            split="test",
            response=a1,
            flags=_flags(q1, contaminated),
            # Two billed calls: turn 1 sends q1; turn 2 sends q1, a1 and q2.
            billed_input_text="\n".join([q1, q1, a1 or "", q2]) if a1 is not None else None,
            billed_output_text="\n".join([a1, a2]) if a1 is not None and a2 is not None else None,
        ))
        if a1 is None or a2 is None:
            report.note(SOURCE, f"mt_bench question {qid} {model}: answer text not found in the judge prompt; "
                                "tokens counted from the question only")
    _note_contamination(report, "mt_bench", contaminated, rows)
    return frame(rows)


def _answer_of_turn(judge_prompt: str, turn: int) -> str | None:
    """The model's answer as quoted in the GPT-4 judge prompt (the only place MT-Bench answers are stored)."""
    if turn == 1:
        match = _ANSWER.search(judge_prompt)
        return match.group(1) if match else None
    conversation = _CONVERSATION.search(judge_prompt)
    if not conversation:
        return None
    answers = _ASSISTANT_TURN.findall(conversation.group(1))
    return answers[1].rstrip() if len(answers) >= 2 else None
