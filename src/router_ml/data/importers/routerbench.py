"""RouterBench (zero-shot subset): 11 models on ARC-Challenge, MBPP and Winogrande.

Each row carries the real USD cost of every model's call (``billed``), the 0/1
score and the full response; the upstream train/test split is kept. A missing
score keeps the row with quality null (unknown) and is reported.
"""

from __future__ import annotations

import ast
import csv
import sys

import polars as pl

from router_ml.data.ids import prompt_id
from router_ml.data.importers.common import frame, messages_json, outcome
from router_ml.data.report import ImportReport
from router_ml.data.sources import DataFiles

SOURCE = "routerbench"
PREFIX = "datasets/routerbench_zs/"
MODELS = (
    "WizardLM/WizardLM-13B-V1.2", "claude-instant-v1", "claude-v1", "claude-v2", "gpt-3.5-turbo-1106",
    "gpt-4-1106-preview", "meta/code-llama-instruct-34b-chat", "meta/llama-2-70b-chat",
    "mistralai/mistral-7b-chat", "mistralai/mixtral-8x7b-chat", "zero-one-ai/Yi-34B-Chat",
)


def load(files: DataFiles, report: ImportReport) -> pl.DataFrame:
    csv.field_size_limit(sys.maxsize)
    records = []
    for path in files.paths(SOURCE, PREFIX, ".csv"):
        split = path.removesuffix(".csv").rsplit("_", 1)[-1]
        with files.open_text(SOURCE, path) as handle:
            reader = csv.DictReader(handle)
            _check_columns(reader, path)
            records.extend((path, reader.line_num, split, record) for record in reader)
    rows = []
    for path, line, split, record in _drop_duplicate_samples(records, report):
        rows.extend(_record_rows(record, path, line, split, report))
    return frame(rows)


def _scored(record: dict) -> int:
    return sum(record[m] != "" for m in MODELS)


def _drop_duplicate_samples(records: list, report: ImportReport) -> list:
    """A few sample ids occur twice, one copy without scores: keep the copy with the most scores."""
    best: dict[str, tuple] = {}
    for item in records:
        sample = item[3]["sample_id"]
        kept = best.get(sample)
        if kept is None:
            best[sample] = item
            continue
        winner, loser = (item, kept) if _scored(item[3]) > _scored(kept[3]) else (kept, item)
        best[sample] = winner
        report.skip(SOURCE, loser[0], loser[1],
                    f"duplicate sample_id: {sample} also at {winner[0]}:{winner[1]} (kept the copy with more scores)")
    return list(best.values())


def _text_list(raw: str) -> list[str]:
    """RouterBench stores prompts and responses as Python list literals: "['text']"."""
    value = ast.literal_eval(raw)
    if isinstance(value, str):
        return [value]
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ValueError("not a list of strings")
    return value


def _check_columns(reader: csv.DictReader, path: str) -> None:
    needed = {"sample_id", "prompt", "eval_name", *MODELS}
    missing = needed - set(reader.fieldnames or [])
    if missing:
        raise ValueError(f"{SOURCE}/{path}: missing columns {sorted(missing)}")


def _record_rows(record, path, line, split, report):
    try:
        parts = _text_list(record["prompt"])
    except (ValueError, SyntaxError) as exc:
        report.skip(SOURCE, path, line, f"unparseable prompt: {exc}")
        return
    # A few ARC rows repeat the same prompt twice; distinct parts are kept as separate user turns.
    distinct = list(dict.fromkeys(parts))
    prompt = distinct[-1]
    messages = messages_json([{"role": "user", "content": p} for p in distinct]) if len(distinct) > 1 else None
    task = record["eval_name"]
    for model in MODELS:
        score, cost = record[model], record.get(f"{model}|total_cost", "")
        try:
            cost_usd = float(cost)
        except ValueError:
            report.skip(SOURCE, path, line, f"cost not a number: {model}|total_cost={cost!r}")
            continue
        if score == "":
            quality = None
        else:
            try:
                quality = float(score)
            except ValueError:
                report.skip(SOURCE, path, line, f"score not a number: {model}={score!r}")
                continue
        try:
            response = "\n".join(_text_list(record.get(f"{model}|model_response") or "[]"))
        except (ValueError, SyntaxError):
            response = record.get(f"{model}|model_response")
        yield outcome(
            prompt_id=prompt_id(SOURCE, task, record["sample_id"]),
            prompt=prompt,
            messages=messages,
            model=model,
            quality=quality,
            cost_usd=cost_usd,
            cost_source="billed",
            source=SOURCE,
            task=task,
            split=split,
            response=response,
        )
