"""Prompt -> feature vector, the same function offline (training) and online (serving).

Two views of the prompt are embedded: its head and its tail. Many benchmark prompts
open with a long shared preamble (ARC and Winogrande in RouterBench repeat 1,300-1,700
characters of few-shot examples); an encoder that truncates or averages the whole
text gives all of them nearly the same vector. The tail holds the question that
differs, the head holds the instruction. A few cheap surface statistics (length,
lines, digits, code and math symbols) follow: prompt length alone is a strong
difficulty signal on RouteLLM's benchmarks.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np

VIEW_CHARS = 600
SURFACE_FEATURES = ("log_chars", "log_lines", "digit_share", "symbol_share", "question_marks")
_SYMBOLS = set("{}[]()<>=+-*/^\\$_|`#;")


def head_view(prompt: str) -> str:
    return prompt[:VIEW_CHARS]


def tail_view(prompt: str) -> str:
    return prompt[-VIEW_CHARS:]


def surface(prompt: str) -> list[float]:
    """Length and character statistics, each scaled to roughly [0, 1]."""
    n = max(len(prompt), 1)
    digits = sum(c.isdigit() for c in prompt)
    symbols = sum(c in _SYMBOLS for c in prompt)
    return [
        math.log1p(len(prompt)) / 10,
        math.log1p(prompt.count("\n")) / 5,
        digits / n,
        symbols / n,
        min(prompt.count("?"), 10) / 10,
    ]


class PromptFeaturizer:
    """Features of a prompt: [encoder(head) | encoder(tail) | surface statistics].

    ``encode`` is any function from a list of texts to unit-normalized vectors (a
    :class:`router_ml.embed.StaticEncoder`'s or MiniLM's ``encode``, possibly cached).
    """

    def __init__(self, encode: Callable[[Sequence[str]], np.ndarray]):
        self.encode = encode

    def transform(self, prompts: Sequence[str]) -> np.ndarray:
        prompts = list(prompts)
        texts = [head_view(p) for p in prompts] + [tail_view(p) for p in prompts]
        unique = list(dict.fromkeys(texts))  # a prompt of at most VIEW_CHARS has one view, encoded once
        vectors = self.encode(unique)  # one encoder call
        row = {text: i for i, text in enumerate(unique)}
        views = vectors[[row[t] for t in texts]]
        heads, tails = views[:len(prompts)], views[len(prompts):]
        stats = np.array([surface(p) for p in prompts], dtype=np.float32).reshape(len(prompts), len(SURFACE_FEATURES))
        return np.hstack([heads, tails, stats]).astype(np.float32)
