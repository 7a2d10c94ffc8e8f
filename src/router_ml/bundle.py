"""A trained router with everything serving needs, saved in one directory.

``models/<name>/`` holds two files:

- ``bundle.json``: human-readable metadata: format version, name and version, the
  encoder id and a fingerprint of its output, the model catalog with prices, the
  router class and its hyper-parameters, the calibrated policy, checksums of the
  training data and the evaluation metrics;
- ``predictors.joblib``: the fitted quality router, cost predictor and, when the training data recorded answer
  lengths, the output-length predictor (:mod:`router_ml.output_length`; None otherwise).

The encoder itself is referenced by id, not copied: the static encoder is distilled
locally by ``router-ml encoders build-static`` (tens of MB), and the fingerprint makes
loading fail loudly if the encoder found locally is not the one the router learned on.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import joblib
import numpy as np

from router_ml.config import PROJECT_ROOT, get_settings
from router_ml.embed import MINILM_ID, MiniLMEncoder, StaticEncoder
from router_ml.features import PromptFeaturizer
from router_ml.pricing import cost_usd_if_priced
from router_ml.routers.policy import Calibration, Policy, choose_for, fallback_order

FORMAT_VERSION = 1
META_FILE = "bundle.json"
PREDICTORS_FILE = "predictors.joblib"
FINGERPRINT_TEXT = "How many prime numbers are there below one hundred?"
STATIC_ENCODER_DIR = PROJECT_ROOT / "models" / "minilm-static"  # the default of settings.static_encoder


class BundleError(ValueError):
    """A bundle is missing, incomplete, or does not match the encoder found locally."""


def load_encoder(encoder_id: str, static_dir: Path | None = None):
    """The encoder named by ``encoder_id``: MiniLM, or the static encoder built under ``static_dir``
    (default: ``settings.static_encoder``, $ROUTER_ML_STATIC_ENCODER)."""
    static_dir = Path(static_dir) if static_dir is not None else get_settings().static_encoder
    if encoder_id == MINILM_ID:
        return MiniLMEncoder()
    if encoder_id.startswith("minilm-static-"):
        try:
            encoder = StaticEncoder(static_dir)
        except FileNotFoundError as exc:
            raise BundleError(f"{exc} (the bundle needs encoder {encoder_id})") from exc
        if encoder.encoder_id != encoder_id:
            raise BundleError(f"the bundle needs encoder {encoder_id} but {static_dir} holds {encoder.encoder_id}: "
                              f"rebuild it with `router-ml encoders build-static --out {static_dir}`")
        return encoder
    raise BundleError(f"unknown encoder id {encoder_id!r}")


def fingerprint(encoder) -> list[float]:
    return [round(float(v), 5) for v in encoder.encode([FINGERPRINT_TEXT])[0][:16]]


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@dataclass(frozen=True)
class Decision:
    """The routing decision for one prompt: the chosen model, the allowed models in the order a call tries
    them (``ranking``, the chosen one first), the per-model predictions and how long deciding took."""

    model: str
    ranking: list[str]
    predicted: list[dict]
    decision_ms: float
    bundle_version: str

    def as_dict(self) -> dict:
        """The decision as the API shows it (plain JSON types)."""
        return {"model": self.model, "predicted": self.predicted, "decision_ms": self.decision_ms,
                "bundle_version": self.bundle_version}


@dataclass
class Bundle:
    """A loaded (or freshly trained) router: predicts per-model quality and cost and applies a policy."""

    meta: dict
    router: object
    cost: object
    encoder: object = field(repr=False, default=None)
    lengths: object = None  # OutputLengthPredictor, or None (a bundle trained without answer lengths)

    @property
    def models(self) -> list[str]:
        return self.meta["models"]

    @property
    def version(self) -> str:
        return self.meta["version"]

    @cached_property
    def featurizer(self) -> PromptFeaturizer:
        return PromptFeaturizer(self.encoder.encode)

    def predict(self, prompts: Sequence[str], input_tokens: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
        """(predicted quality, predicted cost), each (prompts x models)."""
        X = self.featurizer.transform(prompts)
        return self.router.predict(X), self.cost.predict(input_tokens)

    def predict_with_lengths(self, prompt: str, input_tokens: int) -> tuple[np.ndarray, np.ndarray, tuple | None]:
        """One prompt's (quality, cost, lengths) per model, the features computed once; ``lengths`` is (expected
        output tokens, their upper bound in whole tokens) per model, or None for a bundle without a length predictor."""
        X = self.featurizer.transform([prompt])
        return self.router.predict(X)[0], self.cost.predict([input_tokens])[0], self._lengths(X)

    def length_bounds(self, prompt: str) -> list[int] | None:
        """Each model's upper bound on the answer's length to ``prompt`` (None without a length predictor), for a
        call that needs no routing decision."""
        if self.lengths is None:
            return None
        return self._lengths(self.featurizer.transform([prompt]))[1].tolist()

    def _lengths(self, X: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
        if self.lengths is None:
            return None
        expected, upper = self.lengths.predict_models(X, self.models)
        return expected[0], np.ceil(upper[0]).astype(int)

    @cached_property
    def calibration(self) -> Calibration:
        """The policy calibrated at training time: its rule and parameter apply when a caller sets neither."""
        return Calibration(**self.meta["calibration"])

    def choose(self, quality: np.ndarray, cost: np.ndarray, policy: Policy | None = None) -> np.ndarray:
        """Model index per prompt under ``policy`` (default: the calibrated rule), from (prompts x models)
        predictions: :func:`~router_ml.routers.policy.choose_for`, the gateway's choice."""
        return choose_for(policy or Policy(), quality, cost, self.models, self.calibration)[0]

    def decide(self, prompt: str, input_tokens: int, policy: Policy | None = None) -> Decision:
        """The gateway's decision for one prompt: predict, choose under ``policy``, rank the fallbacks.
        ValueError names a policy the bundle cannot apply (a model it does not know)."""
        started = time.perf_counter()
        quality, cost, lengths = self.predict_with_lengths(prompt, input_tokens)
        choice, allowed = choose_for(policy or Policy(), quality, cost, self.models, self.calibration)
        order = fallback_order(int(choice[0]), allowed[0], quality, cost)
        predicted = [{"model": m, "quality": float(q), "cost_usd": float(c), "allowed": bool(a)}
                     for m, q, c, a in zip(self.models, quality, cost, allowed[0])]
        if lengths is not None:  # the answer's expected length, its priced estimate, and the bound a reservation holds
            for row, expected, upper in zip(predicted, *lengths):
                row["output_tokens"], row["max_output_tokens"] = round(float(expected), 1), int(upper)
                row["estimated_cost_usd"] = cost_usd_if_priced(row["model"], input_tokens, round(float(expected)))
        return Decision(self.models[order[0]], [self.models[i] for i in order], predicted,
                        (time.perf_counter() - started) * 1000, self.version)


def json_safe(value):
    """``value`` with numpy numbers as Python numbers, tuples as lists, and inf / NaN as None, so that
    strict JSON readers accept it (an unreachable target or an empty gap shows as null)."""
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if hasattr(value, "tolist"):
        return json_safe(value.tolist())
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def save_bundle(directory: Path, meta: dict, router, cost, lengths=None) -> dict:
    """Write a bundle and return its metadata, completed with the format version, a content version
    (name and checksum of the predictors) and the save time, as written (JSON types: lists, not tuples)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    joblib.dump({"router": router, "cost": cost, "lengths": lengths}, directory / PREDICTORS_FILE, compress=3)
    meta = {"format_version": FORMAT_VERSION, **meta}
    meta["predictors_sha256"] = file_sha256(directory / PREDICTORS_FILE)
    meta["version"] = f"{meta['name']}-{meta['predictors_sha256'][:12]}"
    meta["saved_at"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    text = json.dumps(json_safe(meta), indent=2, sort_keys=True, allow_nan=False) + "\n"
    (directory / META_FILE).write_text(text)
    return json.loads(text)


def load_bundle(directory: Path, encoder=None, static_dir: Path | None = None) -> Bundle:
    """Load a bundle and its encoder, checking that the files are whole and the encoder is the right one."""
    directory = Path(directory)
    for name in (META_FILE, PREDICTORS_FILE):
        if not (directory / name).is_file():
            raise BundleError(f"{directory} is not a router bundle: {name} is missing")
    meta = json.loads((directory / META_FILE).read_text())
    if meta.get("format_version") != FORMAT_VERSION:
        raise BundleError(f"{directory}: bundle format {meta.get('format_version')} is not {FORMAT_VERSION}")
    if file_sha256(directory / PREDICTORS_FILE) != meta["predictors_sha256"]:
        raise BundleError(f"{directory / PREDICTORS_FILE} does not match the checksum in {META_FILE}")
    encoder = encoder or load_encoder(meta["encoder"]["id"], static_dir)
    if not np.allclose(fingerprint(encoder), meta["encoder"]["fingerprint"], atol=1e-3):
        raise BundleError(f"the local encoder {meta['encoder']['id']} gives other vectors than the one {directory} "
                          "was trained with: retrain the bundle or rebuild the encoder")
    predictors = joblib.load(directory / PREDICTORS_FILE)
    return Bundle(meta, predictors["router"], predictors["cost"], encoder, predictors.get("lengths"))
