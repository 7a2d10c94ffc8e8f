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
