"""Cross-source deduplication: exact after normalization, then near-duplicates by embedding (the static encoder
by default, MiniLM on request, each with the rule the labeled check chose for it).

Every prompt gets a ``group_id``; prompts in one group are copies of one another,
so a split by group never puts a prompt on one side and its copy on the other
(the GSM8K test questions, for one, appear in three sources).

Near-duplicates are found on a *view* of each prompt: its lines, normalized, minus
boilerplate lines (a line found in at least ``BOILERPLATE_MIN_PROMPTS`` distinct
prompts: instructions, answer templates, the shared few-shot examples of
RouterBench's ARC and Winogrande prompts), cut to ``VIEW_CHARS`` characters. Without
this, prompts that share a long preamble embed alike (MiniLM reads at most 256 word
pieces) and templated questions look like copies of each other.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import polars as pl

from router_ml.data.ids import group_id_of_hash, normalize_text, text_hash
from router_ml.embed import MINILM_ID, STATIC_DIMS, EmbeddingCache, MiniLMEncoder, embed_cached
from router_ml.progress import Progress

VIEW_CHARS = 512
BOILERPLATE_MIN_PROMPTS = 25
STEM_MIN_CHARS = 40
# Chosen from inspected pairs and a labeled check (MiniLM); see datasets/README.md ("Deduplication").
NEAR_DUPLICATE_THRESHOLD = 0.92
STEM_THRESHOLD = 0.98
STEM_FULL_GUARD = 0.75

_OPTION = re.compile(r"^(\([a-p]\)|[a-p][.)])\s")


def _lines(text: str) -> list[str]:
    return [line for line in (normalize_text(raw) for raw in text.splitlines()) if line]


def boilerplate_lines(prompts: Sequence[str], min_prompts: int = BOILERPLATE_MIN_PROMPTS) -> set[str]:
    """Normalized lines that occur in at least ``min_prompts`` distinct prompts."""
    counts: Counter[str] = Counter()
    for prompt in set(prompts):
        counts.update(set(_lines(prompt)))
    return {line for line, n in counts.items() if n >= min_prompts}


def dedup_view(prompt: str, boilerplate: set[str]) -> str:
    """The part of a prompt that tells it apart: non-boilerplate lines, first ``VIEW_CHARS`` characters."""
    lines = _lines(prompt)
    kept = [line for line in lines if line not in boilerplate] or lines
    return "\n".join(kept)[:VIEW_CHARS]


def stem_view(prompt: str, boilerplate: set[str]) -> str | None:
    """The question without its answer options, when it has options and enough text of its own.

    The same question reappears with other options (MMLU-Pro adds six distractors to
    each MMLU question); comparing stems finds such copies, which the full view misses.
    """
    lines = [line for line in _lines(prompt) if line not in boilerplate]
    stem = [line for line in lines if not _OPTION.match(line)]
    if len(stem) == len(lines):
        return None
    text = "\n".join(stem)[:VIEW_CHARS]
    return text if len(text) >= STEM_MIN_CHARS else None


class _UnionFind:
    def __init__(self, n: int):
        self.parent = np.arange(n)

    def find(self, i: int) -> int:
        root = i
        while self.parent[root] != root:
            root = self.parent[root]
        while self.parent[i] != root:
            self.parent[i], i = root, self.parent[i]
        return root

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)


def similar_pairs(vectors: np.ndarray, threshold: float, block: int = 2048) -> np.ndarray:
    """All index pairs (i < j) whose cosine similarity (unit vectors) is at least ``threshold``."""
    pairs = []
    for start in range(0, len(vectors), block):
        sims = vectors[start:start + block] @ vectors.T
        rows, cols = np.nonzero(sims >= threshold)
        rows += start
        keep = cols > rows
        pairs.append(np.stack([rows[keep], cols[keep]], axis=1))
    return np.concatenate(pairs) if pairs else np.empty((0, 2), dtype=np.int64)


def _embed(views: Sequence[str], encoder: MiniLMEncoder, cache: EmbeddingCache | None,
           progress: Callable[[int], None]) -> np.ndarray:
    order = np.argsort([len(v) for v in views], kind="stable")  # similar lengths batch with less padding
    vectors = np.empty((len(views), encoder.dimension), dtype=np.float32)
    vectors[order] = embed_cached([views[i] for i in order], encoder, cache, progress)
    return vectors


@dataclass(frozen=True)
class Rule:
    """When two prompts count as near-duplicates (a stem threshold above 1 disables the stem view)."""

    threshold: float = NEAR_DUPLICATE_THRESHOLD
    stem_threshold: float = STEM_THRESHOLD
    stem_guard: float = STEM_FULL_GUARD


# Each encoder scores similarity on its own scale, so each has its own rule, chosen on the labeled check
# (`router-ml datasets dedup-check --encoder ...`). The static encoder (the default of `make data`: seconds
# instead of the tens of minutes MiniLM takes on 2 cores) needs stricter thresholds for no wrong join.
RULES = {
    MINILM_ID: Rule(),
    f"minilm-static-{STATIC_DIMS}": Rule(threshold=0.98, stem_threshold=0.98, stem_guard=0.75),
}


def rule_for(encoder_id: str) -> Rule:
    """The near-duplicate rule checked for ``encoder_id``; an encoder no rule was checked for is refused."""
    try:
        return RULES[encoder_id]
    except KeyError:
        raise ValueError(f"no near-duplicate rule was checked for encoder {encoder_id!r} "
                         f"(checked: {', '.join(RULES)})") from None


@dataclass
class EmbeddedPrompts:
    """Distinct prompts (one per normalized-text hash, sorted by hash) with their embedded views."""

    hashes: list[str]
    representatives: list[str]
    full: np.ndarray | None = None
    stem_members: np.ndarray = field(default_factory=lambda: np.empty(0, dtype=np.int64))
    stems: np.ndarray | None = None

    @classmethod
    def build(cls, prompts: Sequence[str], encoder: MiniLMEncoder | None, cache: EmbeddingCache | None = None,
              progress: Progress | None = None) -> EmbeddedPrompts:
        representative: dict[str, str] = {}
        for prompt in prompts:
            representative.setdefault(text_hash(normalize_text(prompt)), prompt)
        hashes = sorted(representative)
        found = cls(hashes, [representative[h] for h in hashes])
        if encoder is None or len(hashes) < 2:
            return found
        progress = progress or Progress()
        boilerplate = boilerplate_lines(found.representatives)
        full = [dedup_view(p, boilerplate) for p in found.representatives]
        stems = {i: v for i, p in enumerate(found.representatives) if (v := stem_view(p, boilerplate))}
        progress.stage("embed prompts (near-duplicates)", len(full) + len(stems))
        found.full = _embed(full, encoder, cache, progress.advance)
        found.stem_members = np.asarray(sorted(stems), dtype=np.int64)
        found.stems = _embed([stems[i] for i in found.stem_members], encoder, cache, progress.advance)
        return found

    def links(self, rule: Rule) -> np.ndarray:
        """Index pairs (into ``hashes``) that ``rule`` calls near-duplicates."""
        if self.full is None:
            return np.empty((0, 2), dtype=np.int64)
        pairs = [similar_pairs(self.full, rule.threshold)]
        if self.stems is not None and len(self.stem_members) > 1 and rule.stem_threshold <= 1.0:
            stem_pairs = self.stem_members[similar_pairs(self.stems, rule.stem_threshold)]
            # A generic stem ("which of these statements is false?") says nothing alone: the whole prompts
            # must be alike too.
            alike = np.einsum("ij,ij->i", self.full[stem_pairs[:, 0]], self.full[stem_pairs[:, 1]]) >= rule.stem_guard
            pairs.append(stem_pairs[alike])
        return np.concatenate(pairs)

    def roots(self, rule: Rule) -> np.ndarray:
        """The duplicate group of each prompt, as the smallest index in its group."""
        uf = _UnionFind(len(self.hashes))
        for a, b in self.links(rule):
            uf.union(int(a), int(b))
        return np.array([uf.find(i) for i in range(len(self.hashes))], dtype=np.int64)


def group_ids(
    prompts: Sequence[str],
    encoder: MiniLMEncoder | None,
    cache: EmbeddingCache | None = None,
    rule: Rule | None = None,
    progress: Progress | None = None,
) -> pl.DataFrame:
    """Map each distinct prompt to its duplicate group.

    Returns one row per distinct input prompt: ``prompt``, ``group_id``. A group's id
    is derived from the smallest normalized-text hash among its members, so it does
    not depend on row order or on which sources were imported. ``encoder=None`` does
    the exact (normalized) step only; ``rule=None`` takes the encoder's own (:func:`rule_for`).
    """
    distinct = list(dict.fromkeys(prompts))
    if encoder is not None and rule is None:
        rule = rule_for(encoder.encoder_id)
    embedded = EmbeddedPrompts.build(distinct, encoder, cache, progress)
    roots = embedded.roots(rule)
    group_of_hash = {h: group_id_of_hash(embedded.hashes[root]) for h, root in zip(embedded.hashes, roots)}
    return pl.DataFrame(
        {"prompt": distinct, "group_id": [group_of_hash[text_hash(normalize_text(p))] for p in distinct]},
        schema={"prompt": pl.String, "group_id": pl.String},
    )
