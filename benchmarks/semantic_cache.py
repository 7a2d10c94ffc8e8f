"""Semantic cache: paraphrase hit rate against wrong hits, tuned on PAWS-Wiki dev, reported on test.

A pair (stored, asked) is a hit when the cosine similarity of the two texts' embeddings is >= the
threshold and, with guards, ``near_miss_reason`` finds nothing. Per threshold and guard setting:

- hit rate: hits among true paraphrases (label 1) / true paraphrases;
- wrong-hit rate: hits among non-paraphrases / all hits.

The shipped setting is the one with the highest dev hit rate at <= 1% wrong hits (and at least 20
hits); test reports it untouched. Near-miss pairs cut from real prompts of data/outcomes.parquet (one
number changed, one "not" added or removed) must never hit; their hit rate is reported too.

    .venv/bin/python benchmarks/semantic_cache.py [--minilm]

Writes benchmarks/results/semantic_cache.json and semantic_cache.png. The static encoder is what
serving uses, so its setting is the one shipped (``SHIPPED_THRESHOLD`` etc. in router_ml.serve.gateway.cache);
``--minilm`` adds the full MiniLM for comparison (slower; its embeddings are cached on disk).
"""

from __future__ import annotations

import argparse
import json
import random
import re
import sys
import time
from pathlib import Path

import numpy as np
import polars as pl

from router_ml.config import PROJECT_ROOT, get_settings
from router_ml.data.paraphrase import load_pairs, paws_files
from router_ml.embed import CachedEncoder, EmbeddingCache, MiniLMEncoder, StaticEncoder
from router_ml.serve.gateway.cache import near_miss_reason

RESULTS = PROJECT_ROOT / "benchmarks" / "results"
STATIC = PROJECT_ROOT / "models" / "minilm-static"
THRESHOLDS = np.round(np.arange(0.5, 1.0001, 0.01), 2)
GUARDS = [None] + [(d, a) for d in (0, 1, 2) for a in (0.0, 0.85, 0.9, 0.93, 0.95, 0.97, 0.98)]
MAX_WRONG, MIN_HITS, NEAR_MISS_PAIRS = 0.01, 20, 1000


def load_paws() -> dict[str, tuple[list[str], list[str], np.ndarray]]:
    """The pinned PAWS-Wiki splits (datasets/paraphrase.tsv; ROUTER_ML_PARAPHRASE_MIRROR or a download)."""
    settings = get_settings()
    files = paws_files(settings.paraphrase_manifest, settings.cache_dir, settings.paraphrase_mirror)
    return {split: (a, b, np.array(labels)) for split in ("dev", "test")
            for a, b, labels in [load_pairs(files[split])]}


def near_miss_pairs(outcomes: Path, n: int, seed: int = 0) -> dict[str, tuple[list[str], list[str]]]:
    """(original, altered) real prompts: one number replaced by another, or one "not" inserted or removed."""
    prompts = (pl.read_parquet(outcomes, columns=["prompt"]).unique().filter(pl.col("prompt").str.len_chars()
                                                                              .is_between(20, 1500))["prompt"])
    rng = random.Random(seed)
    pool = sorted(prompts.to_list())
    rng.shuffle(pool)
    numbers, negations = ([], []), ([], [])
    for prompt in pool:
        if len(numbers[0]) < n and (spots := list(re.finditer(r"(?<![\w.])\d{1,6}(?![\w.])", prompt))):
            m = rng.choice(spots)
            altered = str(int(m.group()) + rng.randint(1, 9))
            numbers[0].append(prompt)
            numbers[1].append(prompt[:m.start()] + altered + prompt[m.end():])
        elif len(negations[0]) < n and (m := re.search(r"\b(is|are|was|were|does|do|can|should|will) (not )?", prompt)):
            altered = prompt[:m.end(1)] + (" " if m.group(2) else " not ") + prompt[m.end():]
            negations[0].append(prompt)
            negations[1].append(altered)
        if len(numbers[0]) >= n and len(negations[0]) >= n:
            break
    return {"one number changed": numbers, "one negation added or removed": negations}


def similarities(encoder, a: list[str], b: list[str]) -> np.ndarray:
    return (encoder.encode(a) * encoder.encode(b)).sum(axis=1)


def passes(a: list[str], b: list[str], guard) -> np.ndarray:
    if guard is None:
        return np.ones(len(a), dtype=bool)
    return np.array([near_miss_reason(x, y, max_displaced=guard[0], min_alignment=guard[1]) is None
                     for x, y in zip(a, b)])


def curve(sim: np.ndarray, ok: np.ndarray, labels: np.ndarray) -> list[dict]:
    out = []
    for t in THRESHOLDS:
        hit = ok & (sim >= t)
        hits = int(hit.sum())
        out.append({"threshold": float(t), "hits": hits, "hit_rate": float(hit[labels == 1].mean()),
                    "wrong_hit_rate": float((hit & (labels == 0)).sum() / hits) if hits else 0.0})
    return out


def guard_name(guard) -> str:
    return "no guards" if guard is None else f"guards(max_displaced={guard[0]}, min_alignment={guard[1]})"


def evaluate(encoder, near_miss: dict) -> dict:
    started = time.perf_counter()
    splits = load_paws()
    sims = {split: similarities(encoder, a, b) for split, (a, b, _) in splits.items()}
    curves = {split: {guard_name(g): curve(sims[split], passes(a, b, g), labels) for g in GUARDS}
              for split, (a, b, labels) in splits.items()}
    best = {}
    for name, points in curves["dev"].items():
        ok = [p for p in points if p["wrong_hit_rate"] <= MAX_WRONG and p["hits"] >= MIN_HITS]
        best[name] = max(ok, key=lambda p: (p["hit_rate"], p["threshold"])) if ok else None
    name, dev_point = max(((n, p) for n, p in best.items() if p), key=lambda np_: np_[1]["hit_rate"],
                          default=(None, None))
    shipped = None
    if name is not None:
        guard = next(g for g in GUARDS if guard_name(g) == name)
        t = dev_point["threshold"]
        test_point = next(p for p in curves["test"][name] if p["threshold"] == t)
        pairs = {}
        for kind, (a, b) in near_miss.items():
            sim = similarities(encoder, a, b)
            pairs[kind] = {"pairs": len(a), "hit_rate_guarded": float((passes(a, b, guard) & (sim >= t)).mean()),
                           "hit_rate_unguarded": float((sim >= t).mean())}
        shipped = {"guards": name, "max_displaced": guard[0] if guard else None,
                   "min_alignment": guard[1] if guard else None, "threshold": t,
                   "dev": dev_point, "test": test_point, "near_miss_pairs": pairs}
    return {"encoder": encoder.encoder_id, "best_on_dev_per_setting": best, "shipped": shipped,
            "curves": curves, "seconds": round(time.perf_counter() - started, 1)}


def plot(results: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(results), figsize=(6.5 * len(results), 5), squeeze=False)
    for ax, result in zip(axes[0], results):
        shipped = result["shipped"]
        for split, style in (("dev", "--"), ("test", "-")):
            for name in ["no guards"] + ([shipped["guards"]] if shipped and shipped["guards"] != "no guards" else []):
                pts = [p for p in result["curves"][split][name] if p["hits"]]
                ax.plot([p["wrong_hit_rate"] for p in pts], [p["hit_rate"] for p in pts], style, label=f"{split}, {name}")
        if shipped:
            ax.plot(shipped["test"]["wrong_hit_rate"], shipped["test"]["hit_rate"], "k*", markersize=12,
                    label=f"shipped on test (t={shipped['threshold']})")
        ax.axvline(MAX_WRONG, color="grey", lw=0.8)
        ax.set(xlabel="wrong hits / hits", ylabel="hits / true paraphrases", title=f"PAWS-Wiki, {result['encoder']}")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minilm", action="store_true", help="also measure the full MiniLM encoder")
    args = parser.parse_args()
    outcomes = get_settings().outcomes_path
    if not Path(outcomes).is_file():
        sys.exit(f"needs the outcomes table {outcomes} (`make data`)")
    near_miss = near_miss_pairs(outcomes, NEAR_MISS_PAIRS)
    encoders = [StaticEncoder(STATIC)]
    if args.minilm:
        encoders.append(CachedEncoder(MiniLMEncoder(), EmbeddingCache(get_settings().cache_dir / "embeddings",
                                                                      "minilm-l6-v2")))
    results = [evaluate(encoder, near_miss) for encoder in encoders]
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "semantic_cache.json").write_text(json.dumps(
        {"max_wrong_hit_rate": MAX_WRONG, "min_hits": MIN_HITS, "results": results}, indent=1))
    plot(results, RESULTS / "semantic_cache.png")
    print(f"{'encoder':20} {'setting (best on dev, <= 1% wrong)':58} {'t':>5} {'dev hit':>8} {'dev wrong':>9}")
    for result in results:
        for name, p in result["best_on_dev_per_setting"].items():
            if p:
                print(f"{result['encoder']:20} {name:58} {p['threshold']:5.2f} {p['hit_rate']:8.3f} "
                      f"{p['wrong_hit_rate']:9.3f}")
            else:
                print(f"{result['encoder']:20} {name:58}   none reaches <= 1% wrong hits with >= {MIN_HITS} hits")
        s = result["shipped"]
        if s:
            print(f"\nshipped for {result['encoder']}: {s['guards']}, threshold {s['threshold']}")
            for split in ("dev", "test"):
                print(f"  PAWS {split}: hit rate {s[split]['hit_rate']:.3f}, wrong-hit rate {s[split]['wrong_hit_rate']:.3f}"
                      f" ({s[split]['hits']} hits)")
            for kind, p in s["near_miss_pairs"].items():
                print(f"  {kind} ({p['pairs']} real prompts): hit rate {p['hit_rate_guarded']:.3f} with guards, "
                      f"{p['hit_rate_unguarded']:.3f} without")
        print(f"  ({result['seconds']} s)\n")


if __name__ == "__main__":
    main()
