"""Build the served app from settings (``ROUTER_ML_*``), for ``router-ml serve`` and uvicorn workers.

Providers: ``replay`` (the default: recorded dataset answers, offline) serves every model of the
bundle from the outcomes table, or RouterBench's slice of it when the full table was never built;
``openai`` sends every model to one OpenAI-compatible base URL (``ROUTER_ML_UPSTREAM_BASE_URL``, key from
``ROUTER_ML_UPSTREAM_API_KEY``: never from code), which also reaches OpenRouter (``https://openrouter.ai/api/v1``), vLLM or Ollama; ``catalog`` reads which
provider serves each model from ``ROUTER_ML_PROVIDERS_FILE`` (:mod:`router_ml.serve.providers.catalog`).
With ``replay``, the judge model ``replay-judge`` grades answers by their recorded quality
(:mod:`router_ml.serve.providers.replay_judge`), so shadow judging and online steering run offline too.
Every model is served through its own retry and circuit-breaker wrapper. The call log goes to ``ROUTER_ML_STORE_URL``
(SQLite under data/ by default; a PostgreSQL URL scales out), journaled in ``ROUTER_ML_STORE_JOURNAL`` so
that a killed process loses no answered call, and flushed at shutdown. Tenants and API keys live in the same
database (:mod:`router_ml.serve.tenancy.tenants`): the served gateway always requires a key, and ``/admin/*`` the admin
key (``ROUTER_ML_ADMIN_KEY``).

A server decides for one prompt at a time, where thread pools cost more than they give: BLAS and the
tokenizer run single-threaded here unless the environment says otherwise (set at import, before numpy
or the tokenizer load; the tokenizer's pool alone took a decision from 195 to 266 us).
"""

from __future__ import annotations

import os

SERVING_THREADS = {"OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}


def use_serving_threads() -> None:
    for name, value in SERVING_THREADS.items():
        os.environ.setdefault(name, value)


use_serving_threads()

import asyncio  # noqa: E402
import logging  # noqa: E402
from contextlib import asynccontextmanager  # noqa: E402

import polars as pl  # noqa: E402

from router_ml.config import get_settings  # noqa: E402
from router_ml.serve.providers.wire import UpstreamPool  # noqa: E402
from router_ml.serve.providers.reliability import ReliableProvider  # noqa: E402

SHADOW_DRAIN_S = 30.0  # at shutdown, how long judging in flight may take to finish
STEERING_REFRESH_S = 5.0  # how often a worker adopts the operating points other workers moved
PACE_S = 60.0  # how often the cost pacer moves the floors of tenants with a spend target


def providers_for(models: list[str], settings, pool: UpstreamPool | None = None) -> dict:
    """Model name -> provider; HTTP providers send through ``pool`` (the app's one connection pool)."""
    if settings.provider == "replay":
        from router_ml.serve.gateway.judge import judged_parts
        from router_ml.serve.providers.replay import ReplayProvider
        from router_ml.serve.providers.replay_judge import MODEL as REPLAY_JUDGE, ReplayJudge

        table = settings.replay_table()
        if not table.is_file():
            raise ValueError(f"the replay provider needs recorded answers: neither the outcomes table "
                             f"{settings.outcomes_path} nor the replay slice {settings.replay_path} exists; run "
                             "`router-ml datasets replay` (seconds; `router-ml serve` does it when missing)")
        frame = pl.read_parquet(table, columns=["prompt", "model", "response", "output_tokens", "input_tokens",
                                                "latency_ms", "quality"]).filter(pl.col("model").is_in(models))
        replay = ReplayProvider.from_outcomes(frame, models, speed=settings.replay_speed)
        served = {m: ReliableProvider(replay, f"replay/{m}") for m in models if m in replay.models}
        if settings.judge_model == REPLAY_JUDGE:  # grades by the recorded outcomes of the answers replayed
            served[REPLAY_JUDGE] = ReliableProvider(ReplayJudge.from_outcomes(frame, judged_parts), REPLAY_JUDGE)
        return served
    if settings.provider == "catalog":
        from router_ml.serve.providers.catalog import load_catalog

        if settings.providers_file is None:
            raise ValueError("ROUTER_ML_PROVIDER=catalog needs ROUTER_ML_PROVIDERS_FILE (a TOML provider catalog)")
        return load_catalog(settings.providers_file, pool=pool)
    if settings.provider == "openai":
        from router_ml.serve.providers.openai_compat import OpenAICompatProvider

        if not settings.upstream_base_url:
            raise ValueError("ROUTER_ML_PROVIDER=openai needs ROUTER_ML_UPSTREAM_BASE_URL")
        upstream = OpenAICompatProvider(settings.upstream_base_url, api_key=settings.upstream_api_key, pool=pool)
        return {m: ReliableProvider(upstream, f"openai/{m}") for m in models}  # one breaker per deployment
    raise ValueError(f"ROUTER_ML_PROVIDER must be 'replay', 'openai' or 'catalog', not {settings.provider!r}")


def response_cache(settings, encode):
    """The response cache the settings ask for (None when off); the semantic layer embeds with ``encode``."""
    from router_ml.serve.gateway.cache import ResponseCache, cache_backend_for

    if settings.cache not in ("off", "exact", "semantic"):
        raise ValueError(f"ROUTER_ML_CACHE must be 'off', 'exact' or 'semantic', not {settings.cache!r}")
    if settings.cache == "off":
        return None
    semantic = settings.cache == "semantic"
    return ResponseCache(cache_backend_for(settings.redis_url), ttl_s=settings.cache_ttl_seconds, semantic=semantic,
                         encode=encode if semantic else None)


def spend_targets(tenants) -> dict[str, float]:
    """The tenants' spend targets per UTC day, by tenant (those that set one)."""
    return {t.name: t.spend_target_usd_day for t in tenants.list_tenants() if t.spend_target_usd_day is not None}


def build_app():
    """The app for uvicorn's ``factory=True``: bundle, providers and call log from the settings."""
    from router_ml.clock import SYSTEM_CLOCK
    from router_ml.serve.app import create_app
    from router_ml.serve.gateway.shadow import ShadowSettings
    from router_ml.serve.gateway.steering import Steering, keep_fresh, keep_paced
    from router_ml.calllog.operating_points import OperatingPointStore
    from router_ml.serve.tenancy.limits import limits_for
    from router_ml.serve.state import BundleHolder, watch
    from router_ml.calllog.store import CallStore
    from router_ml.serve.tenancy.tenants import TenantStore

    settings = get_settings()
    bundles = BundleHolder(settings.bundle)  # the bundle and its encoder, loaded once: the app serves this holder
    models = bundles.current.models
    clock = SYSTEM_CLOCK  # one "now" for the call log's stamps, budget periods and analytics
    store = CallStore(settings.store_url, journal_dir=settings.store_journal, clock=clock)
    tenants = TenantStore(settings.store_url, clock=clock)
    # A budget period's spend starts from the call log, so a restart does not reset it.
    limits = limits_for(settings.redis_url, lambda tenant, _period, start: store.spend(tenant, start), clock=clock)
    pool = UpstreamPool()
    cache = response_cache(settings, lambda texts: app.state.bundles.current.encoder.encode(texts))
    shadow = (ShadowSettings(settings.judge_model, settings.shadow_rate, settings.shadow_cap_usd_day)
              if settings.judge_model else None)
    if settings.online_target is not None and shadow is None:
        raise ValueError("ROUTER_ML_ONLINE_TARGET needs a judge: set ROUTER_ML_JUDGE_MODEL to a served model")
    steering = None
    if settings.online_target is not None:
        steering = Steering(OperatingPointStore(store.engine, clock), settings.online_target, pace_every_s=PACE_S,
                            usage=store.usage)
    app = create_app(bundles, providers_for(models, settings, pool), store=store, tenants=tenants,
                     admin_key=settings.admin_key, limits=limits, cache=cache, clock=clock, shadow=shadow,
                     steering=steering)

    @asynccontextmanager
    async def lifespan(app):
        background = [asyncio.create_task(watch(app.state.bundles, settings.bundle_watch_seconds))]
        if steering is not None:  # the operating points other workers and replicas moved, and the stored ones
            background.append(asyncio.create_task(keep_fresh(steering, STEERING_REFRESH_S)))
            background.append(asyncio.create_task(keep_paced(steering, lambda: spend_targets(tenants), PACE_S)))
        yield
        for task in background:
            task.cancel()
        if app.state.shadow is not None:  # judging in flight logs its rows before the store closes
            try:
                await asyncio.wait_for(app.state.shadow.drain(), SHADOW_DRAIN_S)
            except TimeoutError:
                logging.getLogger(__name__).warning("shadow judging still in flight after %s s: dropped",
                                                    SHADOW_DRAIN_S)
        await pool.aclose()
        store.close()  # flush every logged call before the process ends
        tenants.close()
        for shared in (limits, cache.backend if cache is not None else None):
            if hasattr(shared, "close"):
                shared.close()  # Redis connections

    app.router.lifespan_context = lifespan
    return app
