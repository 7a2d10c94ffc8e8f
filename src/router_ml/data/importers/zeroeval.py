"""ZeroEval: GSM8K, MATH level 5 and CRUXEval outputs of 40-50 models each.

Correctness is not stored upstream; it is recomputed from each output text with
ZeroEval's own rule (:mod:`router_ml.data.zeroeval_grading`). An output with no
extractable answer counts as wrong and is flagged ``no_answer``.
:func:`reproduction` compares the recomputed accuracies with ZeroEval's published
``*.summary.json`` figures.
"""

from __future__ import annotations

import json

import polars as pl

from router_ml.data import zeroeval_grading
from router_ml.data.ids import prompt_id
from router_ml.data.importers.common import frame, outcome
from router_ml.data.report import ImportReport
from router_ml.data.sources import DataFiles

SOURCE = "zeroeval"
RESULTS = "result_dirs"
TASK_NAMES = {"gsm": "gsm8k", "math-l5": "math_l5", "crux": "cruxeval"}
PROMPT_KEYS = ("question", "problem")


def _result_files(files: DataFiles, task_dir: str) -> list[tuple[str, str]]:
    prefix = f"{RESULTS}/{task_dir}/"
    return [(p, p[len(prefix):].removesuffix(".json")) for p in files.paths(SOURCE, prefix, ".json")]


def load(files: DataFiles, report: ImportReport) -> pl.DataFrame:
    rows = []
    for task_dir, task in TASK_NAMES.items():
        task_rows = [r for path, model in _result_files(files, task_dir)
                     for r in _model_rows(files, path, task_dir, task, model, report)]
        no_answer = sum("no_answer" in r["flags"] for r in task_rows)
        report.note(SOURCE, f"{task}: {no_answer} of {len(task_rows)} outputs had no extractable answer "
                            "(flagged no_answer, counted wrong, as ZeroEval does)")
        rows.extend(task_rows)
    return frame(rows)


def _model_rows(files, path, task_dir, task, model, report):
    try:
        items = json.loads(files.read_bytes(SOURCE, path))
    except ValueError as exc:
        raise ValueError(f"{SOURCE}/{path}: not valid JSON: {exc}") from exc
    if not isinstance(items, list):
        raise ValueError(f"{SOURCE}/{path}: expected a JSON list of items, got {type(items).__name__}")
    for index, item in enumerate(items):
        where = f"item {index}"
        try:
            question = next(item[k] for k in PROMPT_KEYS if k in item)
            output = item["output"][0]
            gold = item["answer"]
            item_id = str(item["id"])
        except (KeyError, IndexError, TypeError, StopIteration) as exc:
            report.skip(SOURCE, path, None, f"malformed item: {where} lacks {exc!s}")
            continue
        graded = zeroeval_grading.grade(output, gold, task_dir, model)
        history = item.get("chat_history")
        yield outcome(
            prompt_id=prompt_id(SOURCE, task, item_id),
            prompt=question,
            model=model,
            quality=float(graded.correct),
            source=SOURCE,
            task=task,
            split="test",
            response=output,
            flags=[] if graded.extracted else ["no_answer"],
            billed_input_text="\n".join(history) if isinstance(history, list) and history else None,
        )


def reproduction(files: DataFiles, outcomes: pl.DataFrame) -> pl.DataFrame:
    """Recomputed accuracy per (task, model) beside ZeroEval's published figure, in points."""
    rows = []
    for task_dir, task in TASK_NAMES.items():
        summary_path = f"{RESULTS}/{task_dir}.summary.json"
        published = {r["Model"]: float(r["Acc"]) for r in json.loads(files.read_bytes(SOURCE, summary_path))}
        ours = (
            outcomes.filter((pl.col("source") == SOURCE) & (pl.col("task") == task))
            .group_by("model")
            .agg((pl.col("quality").mean() * 100).alias("ours"), pl.len().alias("items"))
        )
        for model, acc, items in ours.iter_rows():
            name = zeroeval_grading.summary_model_name(model)
            rows.append({"task": task, "model": model, "items": items, "ours": round(acc, 2),
                         "published": published.get(name)})
    table = pl.DataFrame(rows, schema={"task": pl.String, "model": pl.String, "items": pl.Int64,
                                       "ours": pl.Float64, "published": pl.Float64})
    return table.with_columns((pl.col("ours") - pl.col("published")).round(2).alias("diff")).sort("task", "model")
