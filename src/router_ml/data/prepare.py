"""Build the outcomes table from every public source: import, count and price, deduplicate."""

from __future__ import annotations

import polars as pl

from router_ml.data import schema
from router_ml.data.costs import add_tokens_and_costs
from router_ml.data.dedup import group_ids
from router_ml.data.importers import IMPORTERS
from router_ml.data.report import ImportReport
from router_ml.data.sources import DataFiles
from router_ml.embed import EmbeddingCache, MiniLMEncoder
from router_ml.progress import Progress


def import_sources(files: DataFiles, report: ImportReport, progress: Progress | None = None) -> pl.DataFrame:
    """Raw outcome rows from every source present in ``files``."""
    progress = progress or Progress()
    present = [name for name in IMPORTERS if name in files.sources()]
    progress.stage("import", len(present))
    parts = []
    for name in present:
        parts.append(IMPORTERS[name](files, report))
        progress.advance(1)
    return pl.concat(parts)


def prepare(
    files: DataFiles,
    report: ImportReport,
    encoder: MiniLMEncoder | None,
    cache: EmbeddingCache | None = None,
    progress: Progress | None = None,
) -> pl.DataFrame:
    """The outcomes table, validated against :mod:`router_ml.data.schema`.

    ``encoder=None`` skips the near-duplicate step (exact duplicates still share a group).
    """
    progress = progress or Progress()
    raw = import_sources(files, report, progress)
    progress.stage("tokens and costs", None)
    priced = add_tokens_and_costs(raw)
    groups = group_ids(priced["prompt"].unique(maintain_order=True).to_list(), encoder, cache, progress=progress)
    table = priced.join(groups, on="prompt", how="left", maintain_order="left")
    return schema.conform(table)


def per_model_summary(table: pl.DataFrame) -> pl.DataFrame:
    return (
        table.group_by("source", "model")
        .agg(
            pl.len().alias("rows"),
            pl.col("quality").mean().alias("mean_quality"),
            pl.col("quality").null_count().alias("quality_unknown"),
            pl.col("cost_usd").mean().alias("mean_cost_usd"),
            pl.col("cost_source").mode().first().alias("cost_source"),
        )
        .sort("source", "mean_quality", descending=[False, True])
    )


def per_source_summary(table: pl.DataFrame, report: ImportReport) -> pl.DataFrame:
    summary = (
        table.group_by("source")
        .agg(
            pl.col("prompt_id").n_unique().alias("prompts"),
            pl.col("model").n_unique().alias("models"),
            pl.len().alias("rows"),
            pl.col("task").n_unique().alias("tasks"),
            pl.col("quality").mean().alias("mean_quality"),
            pl.col("cost_usd").mean().alias("mean_cost_usd"),
            pl.col("flags").list.contains("contaminated").sum().alias("contaminated_rows"),
            pl.col("flags").list.contains("no_answer").sum().alias("no_answer_rows"),
        )
        .sort("source")
    )
    skipped = {s: sum(report.skip_counts(s).values()) for s in summary["source"]}
    return summary.with_columns(pl.col("source").replace_strict(skipped, default=0).alias("skipped_rows"))


def duplicate_summary(table: pl.DataFrame) -> pl.DataFrame:
    """How many duplicate groups span more than one source, per combination of sources."""
    groups = table.group_by("group_id").agg(pl.col("source").unique().sort().alias("sources"))
    return (
        groups.filter(pl.col("sources").list.len() > 1)
        .with_columns(pl.col("sources").list.join(" + ").alias("sources"))
        .group_by("sources")
        .agg(pl.len().alias("groups"))
        .sort("groups", descending=True)
    )


REPLAY_SOURCE = "routerbench"


def replay_slice(files: DataFiles, report: ImportReport, progress: Progress | None = None) -> pl.DataFrame:
    """The outcomes table of RouterBench alone, without near-duplicate grouping: what serving the default bundle
    with the replay provider and the demo traffic need (its 11 models' recorded answers), built in seconds."""
    if REPLAY_SOURCE not in files.sources():
        raise ValueError(f"the replay slice needs the {REPLAY_SOURCE} files of the manifest; none were fetched")
    return prepare(files.only(REPLAY_SOURCE), report, encoder=None, progress=progress)
