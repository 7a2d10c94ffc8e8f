"""Token counts with OpenAI's o200k_base encoding, through bpe-openai.

bpe-openai bundles its vocabulary, so counting works offline (tiktoken downloads
its files at run time). Counts are a common yardstick for pricing models whose
own tokenizer is not published; the encoding name is recorded wherever a count is.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache

import bpe_openai

ENCODING = "o200k_base"


@lru_cache(maxsize=1)
def _encoding() -> bpe_openai.Encoding:
    return bpe_openai.get_encoding(ENCODING)


def count_tokens(text: str) -> int:
    return len(_encoding().encode_ordinary(text))


def count_tokens_batch(texts: Sequence[str], num_threads: int = 2) -> list[int]:
    """Counts for many texts at once (parallel in the tokenizer's native threads)."""
    return [len(ids) for ids in _encoding().encode_ordinary_batch(list(texts), num_threads=num_threads)]
