"""Online steering through the served app (router_ml.serve.gateway.steering): a tenant with a reference model
starts at the reference and earns its way to cheaper models as the shadow judge's verdicts say they keep its
quality, and stays at the reference when they do not. Prompts are real RouterBench prompts of the mini fixtures;
the judge is a handler provider whose verdict the test sets."""

from __future__ import annotations

import asyncio

import httpx
import polars as pl
import pytest

from router_ml.calllog import operating_points
from router_ml.calllog.store import CallStore
from router_ml.data.prepare import prepare
from router_ml.data.report import ImportReport
from router_ml.embed import StaticEncoder
from router_ml.serve.app import create_app
from router_ml.serve.gateway.shadow import ShadowSettings
from router_ml.serve.gateway.steering import Steering
from router_ml.serve.providers.handler import HandlerProvider
from router_ml.serve.tenancy.tenants import TenantStore
from router_ml.train import TrainConfig, run
from real_streams import judged_answers

REFERENCE, JUDGE = "gpt-4-1106-preview", "judge"


@pytest.fixture(scope="module")
def trained(mini_files, static_encoder_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("steering-bundle")
    outcomes = prepare(mini_files, ImportReport(), encoder=None)
    config = TrainConfig(name="steering", router="linear", sources=["routerbench"], min_prompts=50, n_trials=0)
    models = run(config, outcomes, StaticEncoder(static_encoder_dir), out).meta["models"]
    prompts = outcomes.filter(pl.col("source") == "routerbench")["prompt"].unique().sort().to_list()
    return out, models, prompts


def _serve(trained, static_encoder_dir, tmp_path, verdict, calls: int):
    directory, models, prompts = trained
    url = f"sqlite:///{tmp_path}/calls.db"
    store, tenants = CallStore(url), TenantStore(url)
    tenants.create_tenant("acme", reference_model=REFERENCE)
    key = tenants.issue_key("acme")
    providers = {m: HandlerProvider(lambda r, m=m: f"the answer of {m}") for m in models}
    providers[JUDGE] = HandlerProvider(verdict)
    steering = Steering(target=0.9, min_labels=5, ladder_calls=10, probe_levels=20,
                        saver=lambda tenant, state: operating_points.save(store.engine, tenant, state))
    app = create_app(directory, providers, store=store, encoder=StaticEncoder(static_encoder_dir), tenants=tenants,
                     shadow=ShadowSettings(JUDGE, rate=1.0, cap_usd_day=100.0), steering=steering)

    async def go():
        served = []
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gateway") as client:
            for i in range(calls):
                body = {"model": "router-ml/auto", "messages": [{"role": "user", "content": prompts[i % len(prompts)]}]}
                answer = await client.post("/v1/chat/completions", headers={"authorization": f"Bearer {key}"},
                                           json=body)
                assert answer.status_code == 200, answer.text
                served.append(answer.json()["model"])
                await app.state.shadow.drain()
            quality = await client.get("/v1/analytics/quality", headers={"authorization": f"Bearer {key}"})
        return served, quality.json()

    served, quality = asyncio.run(go())
    point = steering.points.get("acme")
    if point is not None:  # the API shows where this process steers the tenant
        shown = quality["tenants"][0]["operating_point"]
        assert (shown["level"], len(shown["changes"])) == (point.level, min(10, len(point.changes)))
    store.flush()
    kinds = pl.read_database("SELECT kind FROM calls WHERE kind IS NOT NULL", store.engine)["kind"].to_list()
    saved = operating_points.load(store.engine)
    store.close()
    tenants.close()
    return served, point, kinds, saved


def _ties(request) -> str:
    return '{"score_a": 9, "score_b": 9}'


def _reference_wins(request) -> str:
    a, b = judged_answers(request)
    return f'{{"score_a": {10 if REFERENCE in a else 2}, "score_b": {10 if REFERENCE in b else 2}}}'


def test_a_tenant_starts_at_its_reference_and_earns_its_way_down(trained, static_encoder_dir, tmp_path):
    served, point, kinds, saved = _serve(trained, static_encoder_dir, tmp_path, _ties, 60)
    assert set(served[:10]) == {REFERENCE}  # before the ladder is placed: the reference alone
    assert point.level == len(point.margins) - 1  # every level proven, one step per judged call
    assert [(c.old, c.new) for c in point.changes] == [(k, k + 1) for k in range(point.level)]
    assert all("proven" in c.reason and c.estimate["lower"] >= 0.91 for c in point.changes)
    assert REFERENCE not in served[-5:]  # the cheapest model now
    assert {"shadow", "judge", "probe"} <= set(kinds)
    resumed = Steering(target=0.9)  # a restart: the saved point, not the reference, is where it starts
    resumed.restore(saved)
    assert resumed.margin("acme") == point.margin and resumed.points["acme"].estimate(1) == point.estimate(1)


def test_a_tenant_whose_cheaper_answers_lose_stays_at_its_reference(trained, static_encoder_dir, tmp_path):
    served, point, kinds, saved = _serve(trained, static_encoder_dir, tmp_path, _reference_wins, 40)
    assert set(served) == {REFERENCE} and point.level == 0 and point.changes == [] and saved == {}
    top = len(point.margins) - 1
    assert point.estimate(top).upper < 0.9 and "probe" in kinds  # the cheaper levels were graded, and lost


def test_a_request_may_ask_for_a_margin_itself_without_a_tenant(trained, static_encoder_dir):
    directory, models, prompts = trained
    providers = {m: HandlerProvider(lambda r, m=m: f"the answer of {m}") for m in models}
    providers[JUDGE] = HandlerProvider(_ties)
    app = create_app(directory, providers, encoder=StaticEncoder(static_encoder_dir), shadow=ShadowSettings(JUDGE),
                     steering=Steering())
    body = {"model": "router-ml/auto", "messages": [{"role": "user", "content": prompts[0]}],
            "router_ml": {"reference": REFERENCE, "margin": -1.0}}

    async def go():
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gateway") as client:
            return await client.post("/v1/chat/completions", json=body)

    answer = asyncio.run(go())
    assert answer.status_code == 200 and answer.json()["model"] == REFERENCE  # within -1 of it: only itself
