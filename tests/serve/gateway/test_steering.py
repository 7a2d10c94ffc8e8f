"""Online steering through the served app (router_ml.serve.gateway.steering): a tenant with a reference model
starts at the reference and earns its way to cheaper models as the shadow judge's verdicts say they keep its
quality, and stays at the reference when they do not; two workers on one call log steer a tenant as one, and a
feedback label joins the judge's. Prompts are real RouterBench prompts of the mini fixtures; the judge is a
handler provider whose verdict the test sets."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import httpx
import polars as pl
import pytest

from router_ml.calllog.operating_points import OperatingPointStore
from router_ml.calllog.store import CallStore
from router_ml.clock import SYSTEM_CLOCK, FixedClock
from router_ml.data.prepare import prepare
from router_ml.data.report import ImportReport
from router_ml.embed import StaticEncoder
from router_ml.online.sampling import judging_chance
from router_ml.serve.app import create_app
from router_ml.serve.gateway.shadow import ShadowSettings
from router_ml.serve.gateway.steering import Steering
from router_ml.serve.main import spend_targets
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


def _app(trained, static_encoder_dir, store, tenants, verdict, clock=SYSTEM_CLOCK, **steering):
    directory, models, _ = trained
    providers = {m: HandlerProvider(lambda r, m=m: f"the answer of {m}") for m in models}
    providers[JUDGE] = HandlerProvider(verdict)
    steering = Steering(OperatingPointStore(store.engine, clock), **{"target": 0.9, "min_labels": 5, "ladder_calls": 10,
                                                              "probe_levels": 20, **steering})
    app = create_app(directory, providers, store=store, encoder=StaticEncoder(static_encoder_dir), tenants=tenants,
                     shadow=ShadowSettings(JUDGE, rate=1.0, cap_usd_day=100.0), steering=steering)
    return app, steering


async def _calls(apps, key, prompts, calls: int) -> list[str]:
    """``calls`` chat calls, sent in turn to each app of ``apps`` (workers), each judged before the next."""
    served = []
    clients = [httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gateway") for app in apps]
    for i in range(calls):
        app, client = apps[i % len(apps)], clients[i % len(apps)]
        body = {"model": "router-ml/auto", "messages": [{"role": "user", "content": prompts[i % len(prompts)]}]}
        answer = await client.post("/v1/chat/completions", headers={"authorization": f"Bearer {key}"}, json=body)
        assert answer.status_code == 200, answer.text
        served.append(answer.json()["model"])
        await app.state.shadow.drain()
    for client in clients:
        await client.aclose()
    return served


def _serve(trained, static_encoder_dir, tmp_path, verdict, calls: int):
    _, _, prompts = trained
    url = f"sqlite:///{tmp_path}/calls.db"
    store, tenants = CallStore(url), TenantStore(url)
    tenants.create_tenant("acme", reference_model=REFERENCE)
    key = tenants.issue_key("acme")
    app, steering = _app(trained, static_encoder_dir, store, tenants, verdict)

    async def go():
        served = await _calls([app], key, prompts, calls)
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gateway") as client:
            quality = await client.get("/v1/analytics/quality", headers={"authorization": f"Bearer {key}"})
        return served, quality.json()

    served, quality = asyncio.run(go())
    point = steering.point("acme")
    if point is not None:  # the API shows the stored point
        shown = quality["tenants"][0]["operating_point"]
        assert (shown["level"], len(shown["changes"])) == (point.level, min(10, len(point.changes)))
    store.flush()
    kinds = pl.read_database("SELECT kind FROM calls WHERE kind IS NOT NULL", store.engine)["kind"].to_list()
    saved = OperatingPointStore(store.engine).points()
    store.close()
    tenants.close()
    return served, point, kinds, saved, url


def _ties(request) -> str:
    return '{"score_a": 9, "score_b": 9}'


def _reference_wins(request) -> str:
    a, b = judged_answers(request)
    return f'{{"score_a": {10 if REFERENCE in a else 2}, "score_b": {10 if REFERENCE in b else 2}}}'


def _chained(changes, max_step: int) -> bool:
    """Whether the moves go down from the reference one after another (none lost), each at most ``max_step``."""
    return all(c.old == (changes[k - 1].new if k else 0) and 0 < c.new - c.old <= max_step
               for k, c in enumerate(changes))


def test_a_tenant_starts_at_its_reference_and_earns_its_way_down(trained, static_encoder_dir, tmp_path):
    served, point, kinds, saved, url = _serve(trained, static_encoder_dir, tmp_path, _ties, 60)
    assert set(served[:10]) == {REFERENCE}  # before the ladder is placed: the reference alone
    assert point.level == len(point.margins) - 1  # every level proven, at most max_step levels per move
    assert _chained(point.changes, 3)
    assert all("proven" in c.reason and c.estimate["lower"] >= 0.91 for c in point.changes)
    assert REFERENCE not in served[-5:]  # the cheapest model now
    assert {"shadow", "judge", "probe"} <= set(kinds)
    assert saved["acme"].version == 1 + len(point.changes)  # placed, then one save per move
    store = CallStore(url)
    # a restart resumes from the stored point, and the judging schedule from the call log's count of calls
    resumed = Steering(OperatingPointStore(store.engine), target=0.9, usage=store.usage)
    assert resumed.margin("acme") == float("-inf") and resumed.chance("acme", 0.03) == 0.03
    resumed.refresh()
    assert resumed.margin("acme") == point.margin and resumed.point("acme").estimate(1) == point.estimate(1)
    assert resumed.held["acme"].calls in (50, 51)  # the calls from the 10th, where the ladder was placed
    assert resumed.chance("acme", 0.03) == judging_chance(0.03, resumed.held["acme"].calls) > 0.03
    store.close()


def test_a_tenant_whose_cheaper_answers_lose_stays_at_its_reference(trained, static_encoder_dir, tmp_path):
    served, point, kinds, saved, _ = _serve(trained, static_encoder_dir, tmp_path, _reference_wins, 40)
    assert set(served) == {REFERENCE} and point.level == 0 and point.changes == [] and saved["acme"].version == 1
    top = len(point.margins) - 1
    assert point.estimate(top).upper < 0.9 and "probe" in kinds  # the cheaper levels were graded, and lost


def test_two_workers_on_one_call_log_steer_a_tenant_as_one(trained, static_encoder_dir, tmp_path):
    """Calls alternate between two apps (workers) on one database: one ladder (the first stored), every judged
    call's labels count for both, each move is saved once from the version read, and the other worker adopts it at
    its next judged call or refresh."""
    _, _, prompts = trained
    url = f"sqlite:///{tmp_path}/calls.db"
    store, tenants = CallStore(url), TenantStore(url)
    tenants.create_tenant("acme", reference_model=REFERENCE)
    key = tenants.issue_key("acme")
    (one, first), (two, second) = (_app(trained, static_encoder_dir, store, tenants, _ties) for _ in range(2))
    served = asyncio.run(_calls([one, two], key, prompts, 60))
    first.refresh()
    second.refresh()
    stored = OperatingPointStore(store.engine).point("acme")
    assert first.held["acme"].ladder == second.held["acme"].ladder == stored.state["ladder"]
    assert first.margin("acme") == second.margin("acme") == stored.state["margins"][stored.state["level"]]
    point = first.point("acme")
    assert point.level == len(point.margins) - 1 and stored.version == 1 + len(point.changes)
    assert _chained(point.changes, 3)  # no move lost
    assert REFERENCE not in served[-5:]
    store.close()
    tenants.close()


def test_feedback_on_judged_calls_corrects_the_judge(trained, static_encoder_dir, tmp_path):
    """A judge that calls every answer as good as the reference's, and a client whose feedback says the served
    answers were wrong: the exact labels join the stored labels and pull the level's estimate down."""
    _, _, prompts = trained
    url = f"sqlite:///{tmp_path}/calls.db"
    store, tenants = CallStore(url), TenantStore(url)
    tenants.create_tenant("acme", reference_model=REFERENCE)
    key = tenants.issue_key("acme")
    app, steering = _app(trained, static_encoder_dir, store, tenants, _ties, min_labels=1000)
    asyncio.run(_calls([app], key, prompts, 30))
    level = len(steering.point("acme").margins) - 1  # the cheapest level: its answers are mostly not the reference's
    before = steering.point("acme").estimate(level)
    store.flush()
    labelled = pl.read_database(f"SELECT graded_call, reference_call FROM online_labels WHERE level = {level}",
                                store.engine)
    for graded, reference in labelled.iter_rows():
        store.feedback(graded, 0.0 if graded != reference else 1.0)
        store.feedback(reference, 1.0)
    after = steering.point("acme").estimate(level)
    assert before.exact == 0 and after.exact == before.labels >= 2
    assert after.share < before.share and after.upper < 0.9
    store.close()
    tenants.close()


def test_a_request_may_ask_for_a_margin_itself_without_a_tenant(trained, static_encoder_dir, tmp_path):
    directory, models, prompts = trained
    providers = {m: HandlerProvider(lambda r, m=m: f"the answer of {m}") for m in models}
    providers[JUDGE] = HandlerProvider(_ties)
    store = CallStore(f"sqlite:///{tmp_path}/calls.db")
    app = create_app(directory, providers, store=store, encoder=StaticEncoder(static_encoder_dir),
                     shadow=ShadowSettings(JUDGE), steering=Steering(OperatingPointStore(store.engine)))
    body = {"model": "router-ml/auto", "messages": [{"role": "user", "content": prompts[0]}],
            "router_ml": {"reference": REFERENCE, "margin": -1.0}}

    async def go():
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gateway") as client:
            return await client.post("/v1/chat/completions", json=body)

    answer = asyncio.run(go())
    assert answer.status_code == 200 and answer.json()["model"] == REFERENCE  # within -1 of it: only itself
    store.close()


def test_a_spend_target_paces_a_tenant_below_its_quality_level(trained, static_encoder_dir, tmp_path):
    """A tenant whose judge keeps it at the reference, with a spend target per day that the reference's pace
    would overrun: the pacer raises its floor, calls are served cheaper, the move is recorded as the pacer's and
    survives a restart, and removing the target brings the floor back."""
    _, _, prompts = trained
    url = f"sqlite:///{tmp_path}/calls.db"
    clock = FixedClock(datetime(2026, 6, 1, 12, 0, tzinfo=UTC))  # half the day gone
    store, tenants = CallStore(url, clock=clock), TenantStore(url, clock=clock)
    tenants.create_tenant("acme", reference_model=REFERENCE)
    key = tenants.issue_key("acme")
    app, steering = _app(trained, static_encoder_dir, store, tenants, _reference_wins, clock, usage=store.usage)
    assert set(asyncio.run(_calls([app], key, prompts, 40))) == {REFERENCE}
    assert steering.pace(spend_targets(tenants)) == []  # no target: nothing to pace
    calls, spent = store.usage("acme", datetime(2026, 6, 1, tzinfo=UTC))
    assert calls == 40 and spent > 0
    tenants.update_tenant("acme", spend_target_usd_day=1.2 * spent)
    (change,) = steering.pace(spend_targets(tenants))
    assert change.by == "cost" and change.reason.startswith("cost pacer")
    assert (change.old, change.new) == (0.0, 3.0)  # as far as a move may go (max_step): level 3 sends 20% away
    # the rest of the day (12 h) at the last ten minutes' rate (40 calls, all now): 2,880 calls to come
    assert change.estimate["allowance"] == pytest.approx(0.2 * spent / 2880)
    assert steering.pace(spend_targets(tenants)) == []  # paced a moment ago: not again
    served = asyncio.run(_calls([app], key, prompts, 40))
    assert sum(m != REFERENCE for m in served) >= 4  # served below the reference, where quality would keep it
    described = steering.describe("acme")
    assert described["level"] == 0 and described["floor"] == change.new and described["changes"][-1]["by"] == "cost"
    resumed = Steering(OperatingPointStore(store.engine, clock), target=0.9)
    resumed.refresh()
    assert resumed.point("acme").floor == change.new  # a restart keeps the floor
    tenants.update_tenant("acme", spend_target_usd_day=None)
    clock.advance(minutes=2)
    (back,) = steering.pace(spend_targets(tenants))
    assert (back.old, back.new, back.reason) == (change.new, 0.0, "cost pacer: no spend target")
    store.close()
    tenants.close()
