"""MMLU-Pro: chain-of-thought outputs of 13 models on 12,032 ten-option questions.

Quality is ``pred == answer``. A null ``pred`` (TIGER-Lab's extractor found no
answer) counts as wrong, is flagged ``no_answer`` and reported per model.
"""

from __future__ import annotations

import ast
import json
import zipfile
from io import BytesIO

import polars as pl

from router_ml.data.ids import prompt_id
from router_ml.data.importers.common import frame, outcome
from router_ml.data.report import ImportReport
from router_ml.data.sources import DataFiles

SOURCE = "mmlu_pro"
PREFIX = "eval_results/model_outputs_"
SUFFIX = "_5shots.zip"
LETTERS = "ABCDEFGHIJKLMNOP"


def load(files: DataFiles, report: ImportReport) -> pl.DataFrame:
    rows = []
    for path in files.paths(SOURCE, PREFIX, SUFFIX):
        model = path[len(PREFIX):-len(SUFFIX)]
        rows.extend(_model_rows(files, path, model, report))
    return frame(rows)


def read_items(files: DataFiles, path: str) -> list[dict]:
    with zipfile.ZipFile(BytesIO(files.read_bytes(SOURCE, path))) as archive:
        members = [n for n in archive.namelist() if n.endswith(".json")]
        if len(members) != 1:
            raise ValueError(f"{SOURCE}/{path}: expected one JSON file in the zip, found {members}")
        try:
            items = json.loads(archive.read(members[0]))
        except ValueError as exc:
            raise ValueError(f"{SOURCE}/{path}:{members[0]}: not valid JSON: {exc}") from exc
    if not isinstance(items, list):
        raise ValueError(f"{SOURCE}/{path}: expected a JSON list of questions")
    return items


def format_question(question: str, options: list[str]) -> str:
    """The question with its lettered options, as a user would ask it."""
    lines = [question.strip()] + [f"({LETTERS[i]}) {opt}" for i, opt in enumerate(options)]
    return "\n".join(lines)


def parse_options(raw) -> list[str]:
    if isinstance(raw, list):
        return [str(o) for o in raw]
    value = ast.literal_eval(raw)
    if not isinstance(value, list):
        raise ValueError("options is not a list")
    return [str(o) for o in value]


def _model_rows(files, path, model, report):
    null_pred = 0
    items = read_items(files, path)
    for index, item in enumerate(items):
        if not isinstance(item, dict):
            report.skip(SOURCE, path, None, f"malformed item: item {index} is {type(item).__name__} {item!r:.40}, "
                                            "not an object")
            continue
        try:
            options = parse_options(item["options"])
            text = format_question(item["question"], options)
            answer, pred, qid = item["answer"], item["pred"], str(item["question_id"])
        except (KeyError, ValueError, SyntaxError, TypeError) as exc:
            report.skip(SOURCE, path, None, f"malformed item: item {index}: {exc!s}")
            continue
        null_pred += pred is None
        yield outcome(
            prompt_id=prompt_id(SOURCE, "mmlu_pro", qid),
            prompt=text,
            model=model,
            quality=float(pred is not None and pred == answer),
            source=SOURCE,
            task="mmlu_pro",
            split="test",
            response=item.get("model_outputs", item.get("generated_text")),
            flags=["no_answer"] if pred is None else [],
        )
    if null_pred:
        report.note(SOURCE, f"{model}: {null_pred} of {len(items)} predictions null (flagged no_answer, counted wrong)")
