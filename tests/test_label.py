"""Outcome rows pivot into prompt x model matrices without losing or inventing cells."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from router_ml.data.prepare import prepare
from router_ml.data.report import ImportReport
from router_ml.label import outcome_matrix


@pytest.fixture(scope="module")
def outcomes(mini_files):
    return prepare(mini_files, ImportReport(), encoder=None)


def test_matrix_cells_match_rows(outcomes):
    rows = outcomes.filter(pl.col("source") == "routerbench")
    matrix = outcome_matrix(rows)
    assert matrix.quality.shape == (rows["prompt_id"].n_unique(), 11)
    for row in rows.sample(20, seed=0).iter_rows(named=True):
        i = matrix.prompts["prompt_id"].to_list().index(row["prompt_id"])
        j = matrix.models.index(row["model"])
        assert matrix.cost[i, j] == row["cost_usd"]
        assert (np.isnan(matrix.quality[i, j]) and row["quality"] is None) or matrix.quality[i, j] == row["quality"]


def test_complete_drops_prompts_with_unknown_cells(outcomes):
    rows = outcomes.filter(pl.col("source") == "zeroeval")
    missing = rows.row(0, named=True)
    matrix = outcome_matrix(rows.slice(1))
    complete = matrix.complete()
    assert not np.isnan(complete.quality).any()
    assert complete.prompts["prompt_id"].to_list() == [p for p in matrix.prompts["prompt_id"] if p != missing["prompt_id"]]


def test_duplicate_cell_is_an_error(outcomes):
    rows = outcomes.filter(pl.col("source") == "routellm").head(3)
    with pytest.raises(ValueError, match=rows["prompt_id"][0]):
        outcome_matrix(pl.concat([rows, rows.head(1)]))
