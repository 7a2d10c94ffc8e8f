"""LLMRouter (ulab-uiuc): 9 NVIDIA NIM models scored in [0, 1] on 6,108 queries of 14 tasks.

Scores come from ``dcrouter_preprocessed/{train,test}.json``; task names from the
matching ``query_data`` files, joined on the query text. No responses are published,
so costs cover the prompt only (``prompt_x_price``) and output tokens are null.
"""

from __future__ import annotations

import json

import polars as pl

from router_ml.data.ids import prompt_id
from router_ml.data.importers.common import frame, jsonl_records, outcome
from router_ml.data.report import ImportReport
from router_ml.data.sources import DataFiles

SOURCE = "llmrouter"
SCORES = "data/dcrouter_preprocessed/{split}.json"
QUERIES = "data/example_data/query_data/default_query_{split}.jsonl"


def _task_names(files: DataFiles, report: ImportReport) -> dict[str, str]:
    tasks: dict[str, str] = {}
    for split in ("train", "test"):
        for _, (query, task) in jsonl_records(files, SOURCE, QUERIES.format(split=split), report,
                                              lambda item: (item["query"], item["task_name"]), "query"):
            tasks.setdefault(query, task)
    return tasks


def load(files: DataFiles, report: ImportReport) -> pl.DataFrame:
    tasks = _task_names(files, report)
    rows = []
    for split in ("train", "test"):
        path = SCORES.format(split=split)
        try:
            items = json.loads(files.read_bytes(SOURCE, path))
        except ValueError as exc:
            raise ValueError(f"{SOURCE}/{path}: not valid JSON: {exc}") from exc
        for index, item in enumerate(items):
            question, scores = item.get("question"), item.get("scores")
            if not isinstance(question, str) or not isinstance(scores, dict):
                report.skip(SOURCE, path, None, f"malformed item: item {index} lacks question or scores")
                continue
            task = tasks.get(question)
            if task is None:
                report.skip(SOURCE, path, None, f"no task name: item {index} not found in the query files")
                continue
            for model, score in scores.items():
                if not isinstance(score, (int, float)) or not 0.0 <= score <= 1.0:
                    report.skip(SOURCE, path, None, f"score outside [0, 1]: item {index} {model}={score!r}")
                    continue
                rows.append(outcome(
                    # Some queries occur twice (in both splits, or twice in one): the id is the item.
                    prompt_id=prompt_id(SOURCE, task, f"{split}#{index}"),
                    prompt=question,
                    model=model,
                    quality=float(score),
                    source=SOURCE,
                    task=task,
                    split=split,
                ))
    return frame(rows)
