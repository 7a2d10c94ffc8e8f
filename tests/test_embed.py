"""The MiniLM encoder loads offline from its PyPI package, and the disk cache is keyed by text."""

from __future__ import annotations

import numpy as np
import pytest

from router_ml.embed import EmbeddingCache, MiniLMEncoder, embed_cached


@pytest.fixture(scope="module")
def encoder() -> MiniLMEncoder:
    return MiniLMEncoder()


def test_minilm_embeds_offline_with_unit_vectors(encoder):
    vectors = encoder.encode(["How many integers are in the solution of |x + 5| < 10?",
                              "How many integers satisfy |x + 5| < 10?",
                              "Compose a travel blog post about Hawaii."])
    assert vectors.shape == (3, 384)
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert vectors[0] @ vectors[1] > vectors[0] @ vectors[2] + 0.3


def test_cached_texts_are_not_embedded_again(encoder, tmp_path, monkeypatch):
    texts = ["What is 2+2?", "Name the capital of France."]
    first = embed_cached(texts, encoder, EmbeddingCache(tmp_path, encoder.encoder_id))
    monkeypatch.setattr(encoder, "encode", lambda *a, **k: pytest.fail("a cached text was embedded again"))
    again = embed_cached(list(reversed(texts)), encoder, EmbeddingCache(tmp_path, encoder.encoder_id))
    assert np.array_equal(again, first[::-1])


def test_static_encoder_is_distilled_locally_and_embeds(static_encoder_dir):
    from router_ml.embed import StaticEncoder

    encoder = StaticEncoder(static_encoder_dir)
    assert encoder.encoder_id == "minilm-static-64"
    vectors = encoder.encode(["How many integers are in the solution of |x + 5| < 10?",
                              "How many integers satisfy |x + 5| < 10?",
                              "Compose a travel blog post about Hawaii."])
    assert vectors.shape == (3, 64)
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert vectors[0] @ vectors[1] > vectors[0] @ vectors[2] + 0.3


def test_missing_static_encoder_says_how_to_build_it(tmp_path):
    from router_ml.embed import StaticEncoder

    with pytest.raises(FileNotFoundError, match="build-static"):
        StaticEncoder(tmp_path)
