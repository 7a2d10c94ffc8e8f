"""The gateway as `router-ml serve` builds it (build_app from ROUTER_ML_* settings) with a provider catalog: three
of the bundle's models served by an OpenAI-compatible, an Anthropic and a Gemini upstream (the loopback fakes of
the provider tests, speaking each real wire format), keys from the environment, one shared connection pool. The
openai SDK is the client, plain and streamed; the call log is SQLite, then PostgreSQL."""

from __future__ import annotations

import openai
import pytest
import sqlalchemy as sa
from starlette.applications import Starlette

from loopback import serve
from provider_wires import ANSWER_TEXT as ANSWER, ANTHROPIC, GEMINI, OPENAI
from router_ml.config import get_settings
from router_ml.data.prepare import prepare
from router_ml.data.report import ImportReport
from router_ml.embed import StaticEncoder
from router_ml.serve.main import build_app
from router_ml.serve.tenancy.tenants import TenantStore
from router_ml.train import TrainConfig, run

KEYS = {"CAT_OPENAI_KEY": "sk-cat", "CAT_ANTHROPIC_KEY": "ak-cat", "CAT_GEMINI_KEY": "gk-cat"}


@pytest.fixture(scope="module")
def upstreams():
    app = Starlette(routes=OPENAI.routes + ANTHROPIC.routes + GEMINI.routes)  # one upstream speaking all three
    with serve(app) as base_url:
        yield base_url


@pytest.fixture(scope="module")
def bundle(mini_files, static_encoder_dir, tmp_path_factory):
    outcomes = prepare(mini_files, ImportReport(), encoder=None)
    config = TrainConfig(name="catalog", router="linear", sources=["routerbench"], min_prompts=50, n_trials=0)
    out = tmp_path_factory.mktemp("catalog-bundle")
    return out, run(config, outcomes, StaticEncoder(static_encoder_dir), out).meta["models"]


@pytest.fixture(params=["sqlite", "postgresql"])
def gateway(request, upstreams, bundle, static_encoder_dir, tmp_path, monkeypatch):
    bundle_dir, models = bundle
    store_url = (request.getfixturevalue("postgres_url") if request.param == "postgresql"
                 else f"sqlite:///{tmp_path / 'calls.db'}")
    served = dict(zip(("openai", "anthropic", "gemini"), models[:3]))
    catalog = tmp_path / "providers.toml"
    catalog.write_text(f'''
[models."{served['openai']}"]
provider = "openai"
base_url = "{upstreams}/v1"
api_key_env = "CAT_OPENAI_KEY"
upstream_model = "gpt-4o-mini"

[models."{served['anthropic']}"]
provider = "anthropic"
base_url = "{upstreams}"
api_key_env = "CAT_ANTHROPIC_KEY"
upstream_model = "claude-3-5-haiku-20241022"

[models."{served['gemini']}"]
provider = "gemini"
base_url = "{upstreams}"
api_key_env = "CAT_GEMINI_KEY"
upstream_model = "gemini-2.0-flash"
''')
    env = {"ROUTER_ML_PROVIDER": "catalog", "ROUTER_ML_PROVIDERS_FILE": str(catalog),
           "ROUTER_ML_BUNDLE": str(bundle_dir), "ROUTER_ML_STATIC_ENCODER": str(static_encoder_dir),
           "ROUTER_ML_STORE_URL": store_url,
           "ROUTER_ML_STORE_JOURNAL": str(tmp_path / "journal"), **KEYS}
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    get_settings.cache_clear()
    tenants = TenantStore(store_url)  # the served gateway needs a tenant's key
    tenants.create_tenant("catalog-test")
    key = tenants.issue_key("catalog-test")
    tenants.close()
    app = build_app()
    try:
        with serve(app) as url:
            yield openai.OpenAI(base_url=url + "/v1", api_key=key, max_retries=0), served, app
    finally:
        app.state.store.close()
        app.state.tenants.close()
        get_settings.cache_clear()


def test_each_catalog_model_is_answered_by_its_provider_plain_and_streamed(gateway):
    client, served, app = gateway
    wires = {"openai": OPENAI, "anthropic": ANTHROPIC, "gemini": GEMINI}
    ids, seen = [], {}
    for kind, model in served.items():
        raw = client.chat.completions.with_raw_response.create(
            model=model, messages=[{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}])
        reply = raw.parse()
        assert (reply.model, reply.choices[0].message.content) == (model, ANSWER), kind
        assert raw.headers["x-router-ml-model"] == model
        ids.append(raw.headers["x-router-ml-call-id"])
        seen[kind] = dict(wires[kind].seen)
        chunks = client.chat.completions.create(model=model, stream=True, messages=[{"role": "user", "content": "Hi"}])
        assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == ANSWER, kind
    assert seen["openai"]["headers"]["authorization"] == f"Bearer {KEYS['CAT_OPENAI_KEY']}"
    assert seen["openai"]["body"]["model"] == "gpt-4o-mini"
    assert seen["anthropic"]["headers"]["x-api-key"] == KEYS["CAT_ANTHROPIC_KEY"]
    assert seen["anthropic"]["body"]["model"] == "claude-3-5-haiku-20241022"
    assert seen["anthropic"]["body"]["system"] == "Be brief."  # lifted out of the messages
    assert seen["gemini"]["headers"]["x-goog-api-key"] == KEYS["CAT_GEMINI_KEY"]
    assert seen["gemini"]["path"].endswith("/models/gemini-2.0-flash:generateContent")
    assert seen["gemini"]["body"]["systemInstruction"]["parts"][0]["text"] == "Be brief."

    routed = client.chat.completions.create(model="router-ml/auto", messages=[{"role": "user", "content": "2 + 2?"}])
    assert routed.model in served.values()  # only models with a provider are candidates

    app.state.store.flush()
    with app.state.store.engine.connect() as conn:
        logged = dict(conn.execute(sa.select(sa.text("call_id, model FROM calls WHERE status = 'ok'"))).all())
    assert [logged[i] for i in ids] == list(served.values())
    assert len(logged) == 7
    app.state.store.feedback(ids[1], 0.5)  # the loop back to training, on this store
    labeled = app.state.store.outcomes()
    assert labeled.height == 1 and labeled["model"][0] == served["anthropic"] and labeled["quality"][0] == 0.5


def test_models_lists_only_what_the_catalog_serves(gateway):
    client, served, _ = gateway
    assert [m.id for m in client.models.list()] == ["router-ml/auto"] + sorted(served.values())
