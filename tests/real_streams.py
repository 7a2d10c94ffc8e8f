"""Real traffic for the online-loop tests: RouterBench's prompts (the mirror's slice) as an outcome matrix over its
11 models, a task-name router's predictions for its test split fitted on its train split, and a prompt with a
right and a wrong recorded answer for the judge's tests."""

from __future__ import annotations

import numpy as np
import polars as pl

from router_ml.data.costs import add_tokens_and_costs
from router_ml.data.importers import routerbench
from router_ml.data.report import ImportReport
from router_ml.label import OutcomeMatrix, outcome_matrix
from router_ml.online.simulate import Stream

REFERENCE = "gpt-4-1106-preview"
_MATRICES: dict = {}


def routerbench_matrix(files) -> OutcomeMatrix:
    """Every RouterBench prompt of ``files`` that all 11 models answered (loaded once per test session)."""
    if id(files) not in _MATRICES:
        rows = add_tokens_and_costs(routerbench.load(files, ImportReport()))
        _MATRICES[id(files)] = outcome_matrix(rows, list(routerbench.MODELS)).complete()
    return _MATRICES[id(files)]


def task_router_stream(files) -> Stream:
    """RouterBench's test split routed by each model's mean quality and cost per task on the train split."""
    matrix = routerbench_matrix(files)
    tasks, train = matrix.prompts["task"].to_numpy(), matrix.prompts["split"].to_numpy() == "train"
    quality = {t: matrix.quality[train & (tasks == t)].mean(axis=0) for t in set(tasks)}
    cost = {t: matrix.cost[train & (tasks == t)].mean(axis=0) for t in set(tasks)}
    test = ~train
    return Stream("routerbench test, task-name router", matrix.models,
                  np.array([quality[t] for t in tasks[test]]), np.array([cost[t] for t in tasks[test]]),
                  matrix.quality[test], matrix.cost[test])


def right_and_wrong(files, right_model: str = REFERENCE, wrong_model: str = "mistralai/mistral-7b-chat") -> dict:
    """A RouterBench MBPP prompt that ``right_model`` answered right and ``wrong_model`` wrong: its text and the two
    recorded answers (``prompt``, ``right``, ``wrong``)."""
    rows = routerbench.load(files, ImportReport())
    wide = rows.filter(pl.col("model").is_in([right_model, wrong_model]) & (pl.col("task") == "mbpp")).pivot(
        "model", index=["prompt_id", "prompt"], values=["quality", "response"])
    row = wide.filter((pl.col(f"quality_{right_model}") == 1) & (pl.col(f"quality_{wrong_model}") == 0)).row(
        0, named=True)
    return {"prompt": row["prompt"], "right": row[f"response_{right_model}"], "wrong": row[f"response_{wrong_model}"]}


def judged_answers(request) -> tuple[str, str]:
    """(answer A, answer B) as a judge's request (router_ml.serve.gateway.judge) shows them."""
    return tuple(request.messages[-1]["content"].split("[Answer A]\n", 1)[1].split("\n\n[Answer B]\n", 1))
