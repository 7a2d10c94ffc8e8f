"""Progress callbacks, so library code reports long work without depending on a front end."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass


@dataclass
class Progress:
    """``stage(name, total)`` opens a stage (total None when unknown); ``advance(n)`` reports n units done.

    The CLI maps these onto rich progress bars; a notebook can pass tqdm, or nothing.
    """

    stage: Callable[[str, int | None], None] = lambda name, total: None
    advance: Callable[[int], None] = lambda n: None
