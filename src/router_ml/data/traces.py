"""Real LLM usage traces (ServeGen per-client request rates, BurstGPT calls), pinned in datasets/traces.tsv.

They are fetched like the outcome datasets: downloaded from GitHub at the pinned commit, or read from a mirror
laid out like shared/traces, checksums verified either way. They back the usage-forecast backtest
(benchmarks/forecast.py) and its tests; nothing here is committed.

The manifest's ``source`` column is the file's directory in the mirror (``servegen/language/m-large``,
``burstgpt``): ``sources.fetch`` finds a mirrored file as ``<mirror>/<source>/<file name>[.gz]``, and the
repository paths (``data/language/m-large/...``, ``trace_data/...``) differ from the mirror's layout.

Neither trace has calendar dates: times are seconds from the start of the trace (BurstGPT: from midnight of
its first day; ServeGen: 2,016 windows of 600 s = 14 days).
"""

from __future__ import annotations

import io
from pathlib import Path

import polars as pl

from router_ml.data.sources import DataFiles, fetch, load_manifest

SERVEGEN_WINDOW_S = 600
SERVEGEN_POOLS = ("servegen/language/m-large", "servegen/language/m-small")
BURSTGPT = ("burstgpt", "trace_data/BurstGPT_first7days.csv")
BURSTGPT_PRICED_AS = {"ChatGPT": "gpt-3.5-turbo-0125", "GPT-4": "gpt-4-0314"}
"""The trace carries no prices: its two Azure OpenAI models priced as the OpenAI models of the same name."""


def trace_files(manifest: Path, cache_dir: Path, mirror: Path | None = None, on_file=None) -> DataFiles:
    """Verified local copies of every file pinned in ``manifest`` (``on_file(entry)`` after each one)."""
    return fetch(load_manifest(manifest), cache_dir, mirror=mirror, on_file=on_file)


def servegen_tenant(path: str) -> str:
    """``data/language/m-large/chunk-7-trace.csv`` -> ``m-large/chunk-7``: one client of a ServeGen pool."""
    parts = Path(path).parts
    return f"{parts[-2]}/{parts[-1].removesuffix('-trace.csv')}"


def servegen_windows(files: DataFiles, source: str, path: str) -> pl.DataFrame:
    """One ServeGen client: ``tenant``, ``t_s`` (window start, s) and ``requests`` in each 600 s window.

    The files carry a mean arrival rate per window (requests/s; idle windows 0); requests = rate x 600. The
    released rates may be normalized, so they are comparable within a client, not across clients as absolutes.
    """
    raw = pl.read_csv(files.read_bytes(source, path), has_header=False, infer_schema=False)
    if raw.width < 2:
        raise ValueError(f"{source}/{path}: expected at least 2 columns (window_start_s, rate), got {raw.width}")
    frame = raw.select(pl.col(raw.columns[0]).cast(pl.Int64).alias("t_s"),
                       pl.col(raw.columns[1]).cast(pl.Float64).alias("rate"))
    if frame.height == 0 or frame["rate"].null_count() or (frame["rate"] < 0).any():
        raise ValueError(f"{source}/{path}: expected non-negative rates in column 2 of every row")
    gaps = frame["t_s"].diff().drop_nulls().unique().to_list()
    if gaps and gaps != [SERVEGEN_WINDOW_S]:
        raise ValueError(f"{source}/{path}: windows must be {SERVEGEN_WINDOW_S} s apart, found gaps {gaps[:5]}")
    return frame.select(pl.lit(servegen_tenant(path)).alias("tenant"), "t_s",
                        (pl.col("rate") * SERVEGEN_WINDOW_S).alias("requests"))


def servegen(files: DataFiles) -> pl.DataFrame:
    """Every ServeGen client of both language pools (``tenant``, ``t_s``, ``requests``), stacked."""
    parts = [servegen_windows(files, source, path) for source in SERVEGEN_POOLS for path in files.paths(source)]
    if not parts:
        raise ValueError(f"no ServeGen files among the pinned traces (expected sources {SERVEGEN_POOLS})")
    return pl.concat(parts)


def burstgpt(files: DataFiles) -> pl.DataFrame:
    """BurstGPT's first 7 days, one row per call: ``t_s``, ``model`` (ChatGPT / GPT-4), ``input_tokens``,
    ``output_tokens``, ``log_type`` and ``failed`` (the trace marks a failure with 0 response tokens)."""
    text = files.read_bytes(*BURSTGPT)
    frame = pl.read_csv(io.BytesIO(text))
    expected = ["Timestamp", "Model", "Request tokens", "Response tokens", "Total tokens", "Log Type"]
    if frame.columns != expected:
        raise ValueError(f"{'/'.join(BURSTGPT)}: expected columns {expected}, got {frame.columns}")
    return frame.select(pl.col("Timestamp").cast(pl.Float64).alias("t_s"), pl.col("Model").alias("model"),
                        pl.col("Request tokens").cast(pl.Int64).alias("input_tokens"),
                        pl.col("Response tokens").cast(pl.Int64).alias("output_tokens"),
                        pl.col("Log Type").alias("log_type"),
                        (pl.col("Response tokens") == 0).alias("failed"))
