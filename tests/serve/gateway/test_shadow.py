"""Shadow judging through the served app (router_ml.serve.gateway.shadow): a tenant whose reference model is GPT-4
gets its answer from another model, then the reference answers the same prompt and a judge scores both; the call
log holds the shadow and the judge rows, the usage report counts their cost against the savings and not as
requests, and /v1/analytics/quality estimates the quality kept. The prompt is a real RouterBench MBPP prompt with
the answers GPT-4 and Mistral 7B gave; the judge is a handler provider that grades by the recorded outcome."""

from __future__ import annotations

import asyncio
import math
from datetime import datetime, timezone

import httpx
import polars as pl
import pytest

from router_ml.calllog.store import CallStore
from router_ml.clock import SYSTEM_CLOCK, FixedClock
from router_ml.data.prepare import prepare
from router_ml.data.report import ImportReport
from router_ml.embed import StaticEncoder
from router_ml.serve.app import create_app
from router_ml.serve.gateway.shadow import ShadowSettings
from router_ml.serve.providers.handler import HandlerProvider
from router_ml.serve.tenancy.tenants import TenantStore
from router_ml.train import TrainConfig, run
from real_streams import judged_answers, right_and_wrong
from scraped_metrics import scrape

REFERENCE, CHEAP, JUDGE = "gpt-4-1106-preview", "mistralai/mistral-7b-chat", "gpt-3.5-turbo-1106"


@pytest.fixture(scope="module")
def bundle(mini_files, static_encoder_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("shadow-bundle")
    config = TrainConfig(name="shadow", router="linear", sources=["routerbench"], min_prompts=50, n_trials=0)
    run(config, prepare(mini_files, ImportReport(), encoder=None), StaticEncoder(static_encoder_dir), out)
    return out


@pytest.fixture(scope="module")
def case(real_files) -> dict:
    return right_and_wrong(real_files, REFERENCE, CHEAP)


def _judge(right: str):
    def handler(request):
        a, b = judged_answers(request)
        return f'{{"score_a": {10 if a == right else 1}, "score_b": {10 if b == right else 1}, "reason": "r"}}'
    return handler


def _served(bundle, static_encoder_dir, tmp_path, case, clock=SYSTEM_CLOCK):
    """An app whose tenant 'acme' has GPT-4 as reference, Mistral 7B answering wrong, a judge grading by the
    recorded outcome: (app, call store, tenant store, key, providers, a request for Mistral 7B)."""
    url = f"sqlite:///{tmp_path}/calls.db"
    store, tenants = CallStore(url, clock=clock), TenantStore(url, clock=clock)
    tenants.create_tenant("acme", reference_model=REFERENCE)
    key = tenants.issue_key("acme")
    answers = {REFERENCE: case["right"], CHEAP: case["wrong"]}
    providers = {m: HandlerProvider(lambda r, m=m: answers.get(m, "unused")) for m in (REFERENCE, CHEAP)}
    providers[JUDGE] = HandlerProvider(_judge(case["right"]))
    app = create_app(bundle, providers, store=store, encoder=StaticEncoder(static_encoder_dir), tenants=tenants,
                     shadow=ShadowSettings(JUDGE, rate=1.0), clock=clock)
    body = {"model": CHEAP, "messages": [{"role": "user", "content": case["prompt"]}]}
    return app, store, tenants, key, providers, body


def test_a_routed_call_is_judged_after_its_answer_and_logged_apart(bundle, static_encoder_dir, tmp_path, case):
    app, store, tenants, key, providers, body = _served(bundle, static_encoder_dir, tmp_path, case)

    async def go():
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gateway") as client:
            headers = {"authorization": f"Bearer {key}"}
            answered = await client.post("/v1/chat/completions", headers=headers, json=body)
            by_reference = await client.post("/v1/chat/completions", headers=headers, json={**body, "model": REFERENCE})
            await app.state.shadow.drain()
            usage = await client.get("/v1/analytics/usage", headers=headers, params={"bucket": "day"})
            quality = await client.get("/v1/analytics/quality", headers=headers)
            return answered, by_reference, usage, quality

    answered, by_reference, usage, quality = asyncio.run(go())
    assert answered.status_code == 200 and answered.json()["choices"][0]["message"]["content"] == case["wrong"]
    call_id = answered.json()["router_ml"]["call_id"]
    store.flush()
    rows = pl.read_database("SELECT call_id, model, kind, judges, judge_routed, judge_reference, cost_usd "
                            "FROM calls", store.engine)
    judging = rows.filter(pl.col("kind").is_not_null())
    assert sorted(judging["kind"].to_list()) == ["judge", "shadow"]  # the reference's own answer is not judged
    assert set(judging["judges"]) == {call_id}
    verdict = judging.filter(pl.col("kind") == "judge").row(0, named=True)
    assert (verdict["model"], verdict["judge_routed"], verdict["judge_reference"]) == (JUDGE, 0.0, 1.0)
    assert len(providers[JUDGE].requests) == 2  # both orders
    totals = usage.json()["totals"]
    assert totals["requests"] == 2 and totals["judging_usd"] == pytest.approx(judging["cost_usd"].sum())
    assert totals["judging_usd"] > 0
    assert totals["spend_usd"] == pytest.approx(rows["cost_usd"].sum())  # judging is spend: it comes off the savings
    report = quality.json()
    assert report["judged_calls"] == 1 and report["judged_away"]["share"] == 0.0
    assert report["tenants"][0]["tenant"] == "acme" and report["tenants"][0]["judging_usd"] == totals["judging_usd"]
    store.close()
    tenants.close()


def test_metrics_export_the_quality_kept_and_refresh_it_every_30_seconds(bundle, static_encoder_dir, tmp_path, case):
    clock = FixedClock(datetime(2026, 3, 2, 12, tzinfo=timezone.utc))
    app, store, tenants, key, _, body = _served(bundle, static_encoder_dir, tmp_path, case, clock)

    async def judged_then_scraped(client) -> dict:
        answered = await client.post("/v1/chat/completions", headers={"authorization": f"Bearer {key}"}, json=body)
        assert answered.status_code == 200
        await app.state.shadow.drain()
        store.flush()
        return scrape((await client.get("/metrics")).text)

    async def go():
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gateway") as client:
            first = await judged_then_scraped(client)
            clock.advance(seconds=29)
            cached = await judged_then_scraped(client)
            clock.advance(seconds=2)
            fresh = scrape((await client.get("/metrics")).text)
            quality = await client.get("/v1/analytics/quality", headers={"authorization": f"Bearer {key}"})
            return first, cached, fresh, quality.json()

    first, cached, fresh, quality = asyncio.run(go())
    store.close()
    tenants.close()
    assert first["router_ml_quality_kept_share", (("bound", "estimate"),)] == 0.0  # Mistral's answer was wrong
    assert first["router_ml_judged_calls", ()] == 1 and first["router_ml_judging_usd", ()] > 0
    assert cached["router_ml_judged_calls", ()] == 1  # the call log is read at most every 30 s on the app's clock
    assert fresh["router_ml_judged_calls", ()] == 2 == quality["judged_calls"]
    assert fresh["router_ml_judging_usd", ()] == pytest.approx(quality["judging_usd"])
    for bound, key in (("estimate", "share"), ("lower", "lower"), ("upper", "upper")):
        value, reported = fresh["router_ml_quality_kept_share", (("bound", bound),)], quality["judged_away"][key]
        assert math.isnan(value) if reported is None else value == pytest.approx(reported), bound


def test_a_streamed_call_is_judged_on_the_answer_it_streamed(bundle, static_encoder_dir, tmp_path, case):
    app, store, tenants, key, providers, body = _served(bundle, static_encoder_dir, tmp_path, case)

    async def go():
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gateway") as client:
            async with client.stream("POST", "/v1/chat/completions", json={**body, "stream": True},
                                     headers={"authorization": f"Bearer {key}"}) as streamed:
                text = "".join([line async for line in streamed.aiter_lines()])
            await app.state.shadow.drain()
            return streamed.status_code, text

    status, text = asyncio.run(go())
    assert status == 200 and "[DONE]" in text
    store.flush()
    rows = pl.read_database("SELECT call_id, kind, judges, graded, judge_routed, judge_reference FROM calls",
                            store.engine)
    served = rows.filter(pl.col("kind").is_null())["call_id"].to_list()
    verdict = rows.filter(pl.col("kind") == "judge").row(0, named=True)
    assert len(served) == 1 and verdict["judges"] == verdict["graded"] == served[0]
    assert (verdict["judge_routed"], verdict["judge_reference"]) == (0.0, 1.0)  # the streamed text was judged
    store.close()
    tenants.close()


def test_no_judging_without_a_reference_or_a_sample_and_bad_settings_are_refused():
    with pytest.raises(ValueError, match="shadow rate"):
        ShadowSettings(JUDGE, rate=1.5)
    with pytest.raises(ValueError, match="judge model 'gpt-9' is not served"):
        from router_ml.serve.gateway.shadow import ShadowJudge
        ShadowJudge(ShadowSettings("gpt-9"), {CHEAP: None}, None, lambda m, u: 0.0)
