"""A labeled check of the near-duplicate rule: MMLU questions that MMLU-Pro re-asks.

MMLU-Pro marks every question it took from MMLU (``src`` starting with ``ori_mmlu``)
and RouteLLM's MMLU set is the whole MMLU test set, so each such question has a true
copy there, asked with other options. For a rule this reports the share of those
copies grouped with a RouteLLM MMLU prompt (recall), how many MMLU-Pro questions of
other origins were grouped with one (wrong joins), and the largest group (chains).
"""

from __future__ import annotations

from collections import Counter

import numpy as np
import polars as pl

from router_ml.data.dedup import RULES, EmbeddedPrompts, Rule
from router_ml.data.ids import normalize_text, text_hash
from router_ml.data.importers import mmlu_pro
from router_ml.data.prepare import import_sources
from router_ml.data.report import ImportReport
from router_ml.data.sources import DataFiles
from router_ml.embed import MINILM_ID, STATIC_DIMS, EmbeddingCache, MiniLMEncoder
from router_ml.progress import Progress

# The rules scored per encoder: the chosen one (dedup.RULES) last, its neighbours before it.
CANDIDATES = {
    MINILM_ID: (Rule(0.86, 2.0), Rule(0.88, 2.0), Rule(0.90, 2.0), Rule(0.92, 2.0),
                Rule(0.90, 0.98, 0.0), Rule(0.92, 0.98, 0.0)),
    f"minilm-static-{STATIC_DIMS}": (Rule(0.94, 2.0), Rule(0.96, 2.0), Rule(0.98, 2.0),
                                     Rule(0.95, 0.98, 0.75), Rule(0.96, 0.98, 0.75), Rule(0.97, 0.97, 0.75),
                                     Rule(0.98, 0.98, 0.0)),
}


def rules_to_check(encoder_id: str) -> tuple[Rule, ...]:
    if encoder_id not in RULES:
        raise ValueError(f"no near-duplicate rules to check for encoder {encoder_id!r} (known: {', '.join(RULES)})")
    return (*CANDIDATES[encoder_id], RULES[encoder_id])


def _mmlu_pro_origins(files: DataFiles) -> dict[str, bool]:
    """Normalized-text hash of each MMLU-Pro prompt -> whether MMLU-Pro took it from MMLU."""
    origins: dict[str, bool] = {}
    for path in files.paths(mmlu_pro.SOURCE, mmlu_pro.PREFIX, mmlu_pro.SUFFIX):
        for item in mmlu_pro.read_items(files, path):
            if isinstance(item, dict):
                prompt = mmlu_pro.format_question(item["question"], mmlu_pro.parse_options(item["options"]))
                origins.setdefault(text_hash(normalize_text(prompt)), str(item["src"]).startswith("ori_mmlu"))
    return origins


def check(files: DataFiles, encoder: MiniLMEncoder, cache: EmbeddingCache | None,
          rules: tuple[Rule, ...] | None = None, progress: Progress | None = None) -> pl.DataFrame:
    rules = rules or rules_to_check(encoder.encoder_id)
    raw = import_sources(files, ImportReport(), progress)
    embedded = EmbeddedPrompts.build(raw["prompt"].unique().to_list(), encoder, cache, progress)
    index = {h: i for i, h in enumerate(embedded.hashes)}
    mmlu = {index[text_hash(normalize_text(p))]
            for p in raw.filter((pl.col("source") == "routellm") & (pl.col("task") == "mmlu"))["prompt"].unique()}
    origins = {index[h]: ori for h, ori in _mmlu_pro_origins(files).items() if h in index}
    rows = []
    for rule in rules:
        roots = embedded.roots(rule)
        with_mmlu = set(roots[list(mmlu)].tolist())
        joined = {i: roots[i] in with_mmlu for i in origins}
        copies = [i for i, ori in origins.items() if ori]
        rows.append({
            "whole_view": rule.threshold,
            "stem_view": rule.stem_threshold if rule.stem_threshold <= 1 else None,
            "stem_guard": rule.stem_guard if rule.stem_threshold <= 1 else None,
            "recall": float(np.mean([joined[i] for i in copies])),
            "wrong_joins": sum(joined[i] for i, ori in origins.items() if not ori),
            "other_origin": len(origins) - len(copies),
            "largest_group": max(Counter(roots.tolist()).values()),
            "groups": len(set(roots.tolist())),
        })
    return pl.DataFrame(rows)
