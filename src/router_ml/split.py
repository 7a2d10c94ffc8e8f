"""Group-aware splits: copies of one prompt (one ``group_id``) always land on the same side.

Assignment hashes the group id with a seed, so a group's side does not depend on row
order or on which other prompts are present, and the same seed gives the same split.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Sequence

import numpy as np


def _unit(group: str, seed: int) -> float:
    digest = hashlib.sha1(f"{seed}\x1f{group}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def group_fold(groups: Sequence[str], k: int, seed: int = 0) -> np.ndarray:
    """Fold number in [0, k) of each row, the same for every row of a group."""
    if k < 2:
        raise ValueError(f"k must be at least 2, got {k}")
    unit = {g: _unit(g, seed) for g in set(groups)}
    return np.array([int(unit[g] * k) for g in groups], dtype=np.int64)


def group_kfold(groups: Sequence[str], k: int, seed: int = 0) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(train rows, test rows) for each of ``k`` folds."""
    fold = group_fold(groups, k, seed)
    for f in range(k):
        yield np.nonzero(fold != f)[0], np.nonzero(fold == f)[0]


def group_holdout(groups: Sequence[str], fraction: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(kept rows, held-out rows) with about ``fraction`` of the groups held out (for validation)."""
    if not 0 < fraction < 1:
        raise ValueError(f"fraction must be in (0, 1), got {fraction}")
    unit = {g: _unit(g, seed) for g in set(groups)}
    held = np.array([unit[g] < fraction for g in groups])
    return np.nonzero(~held)[0], np.nonzero(held)[0]
