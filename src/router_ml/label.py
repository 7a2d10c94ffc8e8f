"""Outcomes -> per-prompt x per-model matrices of quality and cost, the shape routers learn from."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import polars as pl

PROMPT_COLUMNS = ("prompt_id", "prompt", "group_id", "source", "task", "split")


@dataclass
class OutcomeMatrix:
    """Row i of ``quality`` and ``cost`` is prompt ``prompts[i]``; column j is ``models[j]``.

    A (prompt, model) pair without an outcome, or with unknown quality, is NaN.
    """

    prompts: pl.DataFrame
    models: list[str]
    quality: np.ndarray
    cost: np.ndarray

    def complete(self) -> OutcomeMatrix:
        """Only the prompts every model has a known outcome for."""
        keep = ~(np.isnan(self.quality).any(axis=1) | np.isnan(self.cost).any(axis=1))
        return self.take(np.nonzero(keep)[0])

    def take(self, rows: np.ndarray) -> OutcomeMatrix:
        return OutcomeMatrix(self.prompts[rows], self.models, self.quality[rows], self.cost[rows])


def outcome_matrix(outcomes: pl.DataFrame, models: list[str] | None = None) -> OutcomeMatrix:
    """Pivot outcome rows (one source's, or any filtered set) into an :class:`OutcomeMatrix`.

    ``models`` fixes the column order (default: sorted model names). A prompt id that
    occurs with two different prompt texts or a model listed twice for one prompt is an
    error naming the prompt id.
    """
    models = models or sorted(outcomes["model"].unique().to_list())
    doubled = outcomes.group_by("prompt_id", "model").len().filter(pl.col("len") > 1)
    if doubled.height:
        raise ValueError(f"prompt {doubled['prompt_id'][0]} has {doubled['len'][0]} outcomes for model "
                         f"{doubled['model'][0]!r}")
    prompts = outcomes.select([c for c in PROMPT_COLUMNS if c in outcomes.columns]).unique(
        "prompt_id", keep="first", maintain_order=True)
    index = pl.DataFrame({"prompt_id": prompts["prompt_id"]}).with_row_index("row")
    cells = outcomes.filter(pl.col("model").is_in(models)).join(index, on="prompt_id")
    column = {m: j for j, m in enumerate(models)}
    quality = np.full((prompts.height, len(models)), np.nan)
    cost = np.full((prompts.height, len(models)), np.nan)
    rows = cells["row"].to_numpy()
    cols = cells["model"].replace_strict(column, return_dtype=pl.Int64).to_numpy()
    quality[rows, cols] = cells["quality"].fill_null(np.nan).to_numpy()
    cost[rows, cols] = cells["cost_usd"].to_numpy()
    return OutcomeMatrix(prompts, list(models), quality, cost)
