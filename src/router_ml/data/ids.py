"""Stable identifiers of prompts, one copy shared by the importers, the deduplication and the call log.

``prompt_id`` names an item of a source; ``group_id`` names a duplicate group and is derived from the normalized
text's hash of the group's smallest member, so a prompt that is alone in its group (every call logged by the
gateway, before deduplication) has the group id it would get from ``router-ml datasets prepare``. Nothing heavy is
imported here: the serving process uses it.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata

_SPACE = re.compile(r"\s+")


def normalize_text(text: str) -> str:
    """Unicode NFKC, case-folded, whitespace collapsed and trimmed. Idempotent."""
    previous = None
    while text != previous:  # NFKC and casefold can each undo the other's fixed point once
        previous = text
        text = _SPACE.sub(" ", unicodedata.normalize("NFKC", text).casefold()).strip()
    return text


def text_hash(normalized: str) -> str:
    return hashlib.sha1(normalized.encode("utf-8")).hexdigest()


def prompt_id(source: str, task: str, key: str) -> str:
    """Stable id from the source, task and the upstream item id (or the prompt text when there is none)."""
    return hashlib.sha1(f"{source}\x1f{task}\x1f{key}".encode()).hexdigest()[:16]


def group_id_of_hash(smallest_hash: str) -> str:
    """The id of the duplicate group whose smallest member's normalized text hashes to ``smallest_hash``."""
    return "g" + smallest_hash[:15]


def group_id(prompt: str) -> str:
    """The group id of a prompt with no near-duplicate (or before deduplication): its own exact group."""
    return group_id_of_hash(text_hash(normalize_text(prompt)))
