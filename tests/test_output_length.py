"""Output-length prediction (router_ml.output_length) on real outcomes of the mini mirror (answer lengths
counted from the recorded response texts)."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from router_ml.data.prepare import prepare
from router_ml.data.report import ImportReport
from router_ml.embed import StaticEncoder
from router_ml.features import PromptFeaturizer
from router_ml.output_length import OutputLengthPredictor


@pytest.fixture(scope="module")
def lengths(mini_files, static_encoder_dir):
    rows = prepare(mini_files, ImportReport(), encoder=None).filter(pl.col("output_tokens").is_not_null())
    X = PromptFeaturizer(StaticEncoder(static_encoder_dir).encode).transform(rows["prompt"].to_list())
    return X, np.array(rows["model"].to_list()), rows["output_tokens"].to_numpy().astype(float)


def test_predictions_are_lengths_and_the_upper_bound_covers_its_quantile(lengths):
    X, models, tokens = lengths
    predictor = OutputLengthPredictor(quantile=0.9).fit(X, models, tokens)
    covered = []
    for model in np.unique(models):
        rows = models == model
        expected, upper = predictor.predict(X[rows], model), predictor.predict_upper(X[rows], model)
        assert np.all(expected >= 0) and np.all(upper >= expected)
        covered.append(tokens[rows] <= upper + 1e-6)
    assert np.mean(np.concatenate(covered)) >= 0.88  # on the fit rows, by construction of the residual quantile
    unseen = predictor.predict(X[:3], "a-model-never-seen")
    assert unseen.shape == (3,) and np.all(np.isfinite(unseen))


def test_length_predictions_follow_the_prompt_not_just_the_model(lengths):
    X, models, tokens = lengths
    model = max(set(models), key=lambda m: (models == m).sum())
    predicted = OutputLengthPredictor().fit(X, models, tokens).predict(X[models == model], model)
    assert predicted.std() > 0  # a per-model constant would not tell a short answer from a long one


def test_bad_input_is_named():
    with pytest.raises(ValueError, match="differ in length"):
        OutputLengthPredictor().fit(np.zeros((3, 2)), ["a", "b"], [1, 2, 3])
    with pytest.raises(ValueError, match="tokens must be finite"):
        OutputLengthPredictor().fit(np.zeros((2, 2)), ["a", "b"], [1, -2])


def test_all_models_at_once_equal_one_at_a_time_and_calibration_moves_the_bound(lengths):
    X, models, tokens = lengths
    half = len(tokens) // 2
    predictor = OutputLengthPredictor().fit(X[:half], models[:half], tokens[:half])
    names = sorted(set(models)) + ["a-model-never-seen"]
    expected, upper = predictor.predict_models(X[half:half + 5], names)
    for j, model in enumerate(names):
        assert np.allclose(expected[:, j], predictor.predict(X[half:half + 5], model), rtol=1e-4, atol=1e-3)
        assert np.allclose(upper[:, j], predictor.predict_upper(X[half:half + 5], model), rtol=1e-4, atol=1e-3)
    before = dict(predictor.margins_)
    predictor.calibrate(X[half:], models[half:], tokens[half:])
    held = [tokens[half:][models[half:] == m] <= predictor.predict_upper(X[half:][models[half:] == m], m) + 1e-6
            for m in np.unique(models[half:]) if (models[half:] == m).sum() >= predictor.min_rows]
    assert held and abs(np.mean(np.concatenate(held)) - 0.9) < 0.03  # calibrated on these rows: the quantile holds
    assert predictor.margins_ != before


def test_a_trained_bundle_predicts_lengths_and_a_budget_reserves_the_predicted_bound(
        mini_files, static_encoder_dir, tmp_path):
    """Without max_tokens the reservation holds each tried model's predicted bound, not 1,024 tokens: a budget
    between the two admits the call, one just below the bound refuses it."""
    import asyncio

    import httpx

    from router_ml.serve.providers.handler import HandlerProvider
    from router_ml.pricing import cost_usd
    from router_ml.serve.app import create_app
    from router_ml.serve.tenancy.limits import MemoryLimits
    from router_ml.serve.tenancy.admission import DEFAULT_OUTPUT_TOKENS
    from router_ml.serve.tenancy.tenants import TenantStore
    from router_ml.tokens import count_tokens
    from router_ml.train import TrainConfig, run

    outcomes = prepare(mini_files, ImportReport(), encoder=None)
    config = TrainConfig(name="lengths", router="linear", sources=["routerbench"], min_prompts=50, n_trials=0)
    result = run(config, outcomes, StaticEncoder(static_encoder_dir), tmp_path / "bundle")
    assert result.meta["output_lengths"]["alpha"] in (0.1, 1.0, 10.0, 100.0)
    prompt = "Write a haiku about the sea."
    url = f"sqlite:///{tmp_path}/t.db"
    tenants = TenantStore(url)
    models = result.meta["models"]
    app = create_app(tmp_path / "bundle", {m: HandlerProvider(lambda r: "waves") for m in models},
                     encoder=StaticEncoder(static_encoder_dir), tenants=tenants, limits=MemoryLimits())
    tenants.create_tenant("probe")
    probe = tenants.issue_key("probe")

    async def send(key: str, path: str, body: dict):
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gateway") as client:
            return await client.post(path, headers={"authorization": f"Bearer {key}"}, json=body)

    chat = {"model": models[0], "messages": [{"role": "user", "content": prompt}]}
    decision = asyncio.run(send(probe, "/v1/route", {"prompt": prompt})).json()
    bounds = {p["model"]: p["max_output_tokens"] for p in decision["predicted"]}
    assert all(1 <= b for b in bounds.values()) and all("estimated_cost_usd" in p for p in decision["predicted"])
    need = cost_usd(models[0], count_tokens(prompt), bounds[models[0]])
    assert bounds[models[0]] < DEFAULT_OUTPUT_TOKENS
    default_need = cost_usd(models[0], count_tokens(prompt), DEFAULT_OUTPUT_TOKENS)
    tenants.create_tenant("enough", budget_usd_day=(need + default_need) / 2)
    tenants.create_tenant("short", budget_usd_day=need * 0.99)
    enough = asyncio.run(send(tenants.issue_key("enough"), "/v1/chat/completions", chat))
    short = asyncio.run(send(tenants.issue_key("short"), "/v1/chat/completions", chat))
    tenants.close()
    assert enough.status_code == 200, enough.text
    assert short.status_code == 429 and short.json()["error"]["param"] == "budget"
