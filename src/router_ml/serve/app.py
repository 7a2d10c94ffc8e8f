"""The FastAPI app factory: one APIRouter per area, state built once and passed in."""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI

from router_ml.clock import SYSTEM_CLOCK, Clock
from router_ml.serve.api import admin, analytics, chat, dashboard, errors, feedback, meta, metrics, route
from router_ml.serve.gateway.call import Gateway, call_cost
from router_ml.serve.gateway.shadow import ShadowJudge
from router_ml.serve.observability.analytics import Scope, recent_quality as quality_report
from router_ml.serve.observability.metrics import Metrics, RequestMetrics
from router_ml.serve.state import BundleHolder


MAX_BODY_BYTES = 16 << 20  # a long-context request with images stays well below; beyond: 413


def create_app(bundle_dir: Path | BundleHolder, providers: dict, store=None, encoder=None,
               max_body_bytes: int = MAX_BODY_BYTES, tenants=None, admin_key: str | None = None,
               limits=None, cache=None, clock: Clock = SYSTEM_CLOCK, shadow=None, steering=None) -> FastAPI:
    """An app routing with the bundle in ``bundle_dir`` (a directory, or a
    :class:`~router_ml.serve.state.BundleHolder` already loaded, so that a caller that needed the bundle first does
    not load it twice; ``encoder`` then belongs to the holder); ``providers`` maps each served model name to the
    provider that answers for it; ``store`` (optional) receives every call for the call log. A request body
    over ``max_body_bytes`` is refused with 413 before it is read in full. With ``tenants`` (a
    :class:`~router_ml.serve.tenancy.tenants.TenantStore`) every ``/v1/*`` call needs a tenant's API key and
    ``/admin/*`` needs ``admin_key`` (see :mod:`router_ml.serve.api.auth`); without, auth is off. ``limits`` (a
    :mod:`router_ml.serve.tenancy.limits` backend) enforces each tenant's rate limits and budgets; ``cache`` (a
    :class:`~router_ml.serve.gateway.cache.ResponseCache`) answers repeated requests of a tenant. ``clock``
    (:mod:`router_ml.clock`) is "now" for the analytics (ranges, forecasts, budget outlooks); give the store, the
    tenants and the limits the same one (their ``clock=``), as :func:`router_ml.serve.main.build_app` does.
    ``shadow`` (:class:`~router_ml.serve.gateway.shadow.ShadowSettings`) turns on shadow judging, and ``steering``
    (a :class:`~router_ml.serve.gateway.steering.Steering`, which needs it) routes tenants with a reference model at
    their online operating point."""
    app = FastAPI(title="router-ml", version="0.1.0")
    app.add_middleware(errors.BodyLimit, limit=max_body_bytes)
    if isinstance(bundle_dir, BundleHolder):
        if encoder is not None:
            raise ValueError("create_app: give the encoder to the BundleHolder, not beside it")
        app.state.bundles = bundle_dir
    else:
        app.state.bundles = BundleHolder(bundle_dir, encoder=encoder)
    app.state.providers = dict(providers)
    app.state.store = store
    app.state.tenants = tenants
    app.state.admin_key = admin_key
    app.state.limits = limits
    app.state.cache = cache
    app.state.clock = clock
    app.state.metrics = Metrics(app.state.providers, app.state.bundles)
    if hasattr(store, "watch"):  # a CallStore: its rejected, lost and dead-lettered rows reach /metrics
        app.state.metrics.watch_store(store)
    if steering is not None and shadow is None:
        raise ValueError("online steering needs shadow judging: give create_app shadow=ShadowSettings(judge model)")
    app.state.steering = steering
    app.state.shadow = (ShadowJudge(shadow, app.state.providers, store, call_cost, clock, steering=steering)
                        if shadow is not None else None)
    if app.state.shadow is not None and hasattr(store, "engine"):  # the judged quality reaches /metrics
        app.state.metrics.watch_quality(lambda: quality_report(store.engine, Scope(None, admin=True), clock), clock)
    app.state.gateway = Gateway(app.state.bundles, app.state.providers, store=store, metrics=app.state.metrics,
                                limits=limits, cache=cache, shadow=app.state.shadow, steering=steering)
    app.add_middleware(RequestMetrics, metrics=app.state.metrics, routes=app.routes)  # outermost: counts 413s
    errors.install(app)
    for area in (meta, route, chat, feedback, admin, analytics, metrics, dashboard):
        app.include_router(area.router)
    return app
