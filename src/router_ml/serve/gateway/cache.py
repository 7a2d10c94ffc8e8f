"""Response cache of the gateway: an exact layer and an optional semantic layer, per tenant.

Exact. :func:`request_key` hashes the whole normalized request: tenant, every message (roles, system
prompt, full history, whitespace-normalized text, tool calls), the model or routing policy, and the
parameters that shape the answer (temperature, top_p, max_tokens, stop, tools, ...). Two requests
share an answer only if all of that is equal.

Semantic (off by default). A request whose exact key misses may reuse the answer of an earlier
request of the same tenant whose *scope* is identical (everything in the exact key except the last
user message: same system prompt, history, model or policy and sampling) and whose last user message
is close in meaning: cosine similarity of the injected encoder's embeddings >= ``threshold`` AND
:func:`near_miss_reason` finds no sign of a near-miss opposite (numbers, negation, opposite words,
names, word order). Only the last user message is embedded, not the whole context: a long shared
system prompt would otherwise make every request of a tenant look alike; the rest of the context
must match exactly, which is stricter than embedding it.

Why the guards: on PAWS-Wiki (adversarial pairs with nearly the same words) a cosine threshold alone
gets about as many wrong hits as right ones at any threshold; see benchmarks/semantic_cache.py and
benchmarks/results/semantic_cache.json for the measured rates behind ``SHIPPED_THRESHOLD``.

Only successful answers are cached (:func:`is_cacheable`); a hit costs nothing and carries the cost
of the original call as ``saved_usd``, for the call log's savings.

Backends, behind :class:`CacheBackend`: :class:`MemoryBackend` (this process, the embedded default)
and :class:`RedisBackend` (shared by replicas), chosen by :func:`cache_backend_for`.
"""

from __future__ import annotations

import base64
import difflib
import hashlib
import json
import math
import re
import threading
import time
import uuid
from collections import Counter, OrderedDict
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol

import numpy as np

SHIPPED_THRESHOLD = 0.92
"""Cosine threshold for the static encoder (minilm-static-256), tuned on PAWS-Wiki dev by
benchmarks/semantic_cache.py: the highest paraphrase hit rate with <= 1% wrong hits, guards on."""

MAX_DISPLACED = 0
"""Word-order guard: how many shared words may have changed both neighbours (tuned with the threshold)."""

MIN_ALIGNMENT = 0.97
"""Token-alignment guard: the least difflib ratio between the two token sequences (tuned with the threshold).
PAWS-Wiki shows why it is this strict: a pair that rewords more than that is a wrong hit too often."""

Encode = Callable[[Sequence[str]], np.ndarray]


def normalize_text(text: str) -> str:
    return " ".join(text.split())


def _normalize_content(content: Any) -> Any:
    """Whitespace-normalized text; the text parts of a content list likewise, other parts (images) as given."""
    if isinstance(content, str):
        return normalize_text(content)
    if isinstance(content, list):
        return [{**p, "text": normalize_text(str(p.get("text", "")))} if isinstance(p, dict) and p.get("type") == "text"
                else p for p in content]
    return content


def _message_dict(message: Any) -> dict:
    if hasattr(message, "model_dump"):
        message = message.model_dump(exclude_none=True)
    out = {k: v for k, v in dict(message).items() if v is not None}
    out["content"] = _normalize_content(out.get("content"))
    return out


def _content_text(content: Any) -> str:
    if isinstance(content, list):
        return " ".join(p["text"] for p in content if isinstance(p, dict) and p.get("type") == "text")
    return content if isinstance(content, str) else ""


def _canonical_sampling(sampling: Mapping[str, Any]) -> dict:
    """Parameters left unset and set to None are the same request; a lone stop string equals a one-item list."""
    out = {k: v for k, v in sampling.items() if v is not None}
    if isinstance(out.get("stop"), str):
        out["stop"] = [out["stop"]]
    return out


def _digest(value: Any) -> str:
    canonical = json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def _policy(model_or_policy: Any) -> Any:
    return model_or_policy.model_dump() if hasattr(model_or_policy, "model_dump") else model_or_policy


def request_key(tenant: str, messages: Sequence[Any], model_or_policy: Any, sampling: Mapping[str, Any]) -> str:
    """SHA-256 of the canonical JSON of the whole request (see the module docstring).

    ``messages`` are dicts or pydantic messages; ``model_or_policy`` a model name or the routing policy
    (a dict or pydantic model); ``sampling`` every parameter that shapes the answer (None = unset).
    """
    return _digest({"tenant": tenant, "messages": [_message_dict(m) for m in messages],
                    "model": _policy(model_or_policy), "sampling": _canonical_sampling(sampling)})


def semantic_parts(tenant: str, messages: Sequence[Any], model_or_policy: Any,
                   sampling: Mapping[str, Any]) -> tuple[str, str] | None:
    """(scope, text): the hash of everything but the last message, and that message's normalized text.

    None when the last message is not a user text message (a tool result, say): those are cached exactly only.
    """
    normalized = [_message_dict(m) for m in messages]
    if not normalized or normalized[-1].get("role") != "user":
        return None
    text = _content_text(normalized[-1]["content"])
    if not text:
        return None
    scope = _digest({"tenant": tenant, "history": normalized[:-1], "model": _policy(model_or_policy),
                     "sampling": _canonical_sampling(sampling)})
    return scope, text


def is_cacheable(payload: Mapping[str, Any]) -> bool:
    """A successful chat completion: no error, at least one choice, each with content or tool calls."""
    choices = payload.get("choices")
    if payload.get("error") or not choices:
        return False
    for choice in choices:
        message = choice.get("message") or {}
        if choice.get("finish_reason") in ("error", "content_filter"):
            return False
        if not (message.get("content") or message.get("tool_calls")):
            return False
    return True


# ---- near-miss guards ------------------------------------------------------------------------------------------------

_TOKEN = re.compile(r"\d+(?:[.,]\d+)*|\w+")
_NEGATIONS = frozenset("not no never none nobody nothing nowhere neither nor without cannot".split())
_NUMBER_WORDS = {w: str(i) for i, w in enumerate(
    "zero one two three four five six seven eight nine ten eleven twelve".split())}
_OPPOSITES = dict(pair for a, b in (
    ("enable", "disable"), ("enabled", "disabled"), ("increase", "decrease"), ("before", "after"),
    ("above", "below"), ("minimum", "maximum"), ("min", "max"), ("add", "remove"), ("true", "false"),
    ("allow", "deny"), ("accept", "reject"), ("buy", "sell"), ("first", "last"), ("more", "less"),
    ("higher", "lower"), ("larger", "smaller"), ("ascending", "descending"), ("include", "exclude"),
    ("encrypt", "decrypt"), ("import", "export"), ("open", "close"), ("start", "stop"), ("win", "lose"),
    ("positive", "negative"), ("always", "never"), ("all", "none"), ("left", "right"), ("up", "down"),
    ("input", "output"), ("inside", "outside"), ("maximize", "minimize"), ("longest", "shortest"),
) for pair in ((a, b), (b, a)))
_STOPWORDS = frozenset(
    "a an the of in on at to for from by with and or but as is are was were be been being it its this that these "
    "those he she they his her their him them we you i me my our your who whom which what when where how also "
    "has have had do does did will would can could should may might into than then there here so such".split())


def _tokens(text: str) -> list[str]:
    """Case-kept tokens, with "n't" spelled out so that "doesn't" and "does not" agree."""
    text = re.sub(r"(?i)\bcan't\b|\bcannot\b", "can not", text)
    text = re.sub(r"(?i)n't\b", " not", text)
    return _TOKEN.findall(text)


def _numbers(tokens: list[str]) -> Counter:
    return Counter(_NUMBER_WORDS.get(t.lower(), t.replace(",", "")) for t in tokens
                   if t[0].isdigit() or t.lower() in _NUMBER_WORDS)


def _names(tokens: list[str], common_words: set[str]) -> set[str]:
    """Capitalized words, not text-initial, that neither text also writes in lower case (so not "The")."""
    return {t for i, t in enumerate(tokens) if i and t[0].isupper() and t.lower() not in common_words}


def _displaced(a: list[str], b: list[str]) -> int:
    """Shared content words (once in each text) whose left AND right content neighbours both changed.

    A clause moved as a block changes one side of its edge words only; two words swapping places (the
    PAWS "ceremonial figures on the human metate" / "human figures on the ceremonial metate") change both.
    """
    def contexts(words: list[str]) -> dict[str, tuple[str, str]]:
        content = [w for w in words if w not in _STOPWORDS]
        once = {w for w, n in Counter(content).items() if n == 1}
        padded = ["^", *content, "$"]
        return {w: (padded[i], padded[i + 2]) for i, w in enumerate(content) if w in once}

    ca, cb = contexts(a), contexts(b)
    return sum(1 for w in ca.keys() & cb.keys() if ca[w][0] != cb[w][0] and ca[w][1] != cb[w][1])


def near_miss_reason(a: str, b: str, max_displaced: int = MAX_DISPLACED,
                     min_alignment: float = MIN_ALIGNMENT) -> str | None:
    """Why ``b`` must not reuse the answer to ``a`` although they may embed alike; None when no guard objects.

    Pure and symmetric. Checks, in order: numbers (digits and number words, as multisets), negation
    (the count of negation words), opposite words (enable/disable, before/after, ...), capitalized
    names, word order (more than ``max_displaced`` shared words with both neighbours changed), and
    token alignment (a difflib ratio of the lower-cased token sequences under ``min_alignment``).
    """
    ta, tb = _tokens(a), _tokens(b)
    la, lb = [t.lower() for t in ta], [t.lower() for t in tb]
    if _numbers(ta) != _numbers(tb):
        return "numbers differ"
    if sum(t in _NEGATIONS for t in la) != sum(t in _NEGATIONS for t in lb):
        return "negation differs"
    only_a, only_b = set(la) - set(lb), set(lb) - set(la)
    if any(_OPPOSITES.get(w) in only_b for w in only_a):
        return "opposite words"
    lower_written = {t for t in ta + tb if t.islower()}
    if _names(ta, lower_written) != _names(tb, lower_written):
        return "names differ"
    if _displaced(la, lb) > max_displaced:
        return "word order/roles differ"
    if min_alignment > 0 and difflib.SequenceMatcher(None, la, lb, autojunk=False).ratio() < min_alignment:
        return "wording differs"
    return None


# ---- backends --------------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class SemanticEntry:
    """One cached last user message: its scope, its text (for the guards), and the exact key of its answer."""

    scope: str
    text: str
    key: str
    expires: float


class CacheBackend(Protocol):
    def get(self, tenant: str, key: str, now: float) -> dict | None: ...

    def put(self, tenant: str, key: str, entry: dict, ttl_s: float, now: float) -> None: ...

    def add_vector(self, tenant: str, entry: SemanticEntry, vector: np.ndarray, ttl_s: float) -> None: ...

    def nearest(self, tenant: str, scope: str, vector: np.ndarray, now: float) -> tuple[float, SemanticEntry] | None: ...


class _TenantIndex:
    """A ring buffer of unit vectors: once full, a new vector replaces the oldest (FIFO eviction)."""

    def __init__(self, capacity: int, dimension: int):
        self.vectors = np.zeros((capacity, dimension), dtype=np.float32)
        self.entries: list[SemanticEntry | None] = [None] * capacity
        self.expires = np.zeros(capacity)
        self.scopes = np.full(capacity, "", dtype="<U64")
        self.next = 0

    def add(self, entry: SemanticEntry, vector: np.ndarray) -> None:
        i = self.next % len(self.entries)
        self.vectors[i], self.entries[i], self.expires[i], self.scopes[i] = vector, entry, entry.expires, entry.scope
        self.next += 1

    def nearest(self, scope: str, vector: np.ndarray, now: float) -> tuple[float, SemanticEntry] | None:
        live = (self.expires > now) & (self.scopes == scope)
        if not live.any():
            return None
        sims = np.where(live, self.vectors @ vector, -np.inf)
        best = int(np.argmax(sims))
        return float(sims[best]), self.entries[best]


class MemoryBackend:
    """This process's memory: an LRU dict of exact entries (at most ``max_entries``) and a vector ring per tenant
    (at most ``max_vectors`` each). Thread-safe; expired entries are dropped when read or evicted."""

    def __init__(self, max_entries: int = 100_000, max_vectors: int = 10_000):
        self.max_entries, self.max_vectors = max_entries, max_vectors
        self._exact: OrderedDict[tuple[str, str], dict] = OrderedDict()
        self._indexes: dict[str, _TenantIndex] = {}
        self._lock = threading.Lock()

    def get(self, tenant: str, key: str, now: float) -> dict | None:
        with self._lock:
            entry = self._exact.get((tenant, key))
            if entry is None:
                return None
            if entry["expires"] <= now:
                del self._exact[(tenant, key)]
                return None
            self._exact.move_to_end((tenant, key))
            return entry

    def put(self, tenant: str, key: str, entry: dict, ttl_s: float, now: float) -> None:
        with self._lock:
            self._exact[(tenant, key)] = entry
            self._exact.move_to_end((tenant, key))
            while len(self._exact) > self.max_entries:
                self._exact.popitem(last=False)

    def add_vector(self, tenant: str, entry: SemanticEntry, vector: np.ndarray, ttl_s: float) -> None:
        with self._lock:
            index = self._indexes.get(tenant)
            if index is None:
                index = self._indexes[tenant] = _TenantIndex(self.max_vectors, len(vector))
            index.add(entry, vector)

    def nearest(self, tenant: str, scope: str, vector: np.ndarray, now: float) -> tuple[float, SemanticEntry] | None:
        with self._lock:
            index = self._indexes.get(tenant)
            return index.nearest(scope, vector, now) if index is not None else None


class RedisBackend:
    """A Redis server shared by replicas. Keys: ``{prefix}{tenant}:x:{key}`` (exact entries, EX = TTL),
    ``{prefix}{tenant}:v:{scope}`` (a hash of the scope's vectors) and ``{prefix}{tenant}:vorder`` (a sorted
    set by insertion time that evicts a tenant's oldest vectors beyond ``max_vectors``).

    Limit: :meth:`nearest` fetches the whole hash of one scope (HGETALL) and scans it in this process, so a
    lookup moves up to ``max_vectors`` x dimension x 4 bytes (10 MB at 10,000 x 256); keep ``max_vectors``
    modest, or move to a Redis vector index (RediSearch) when tenants need more.
    """

    def __init__(self, url: str, prefix: str = "router-ml:cache:", max_vectors: int = 2_000):
        import redis

        self.client = redis.Redis.from_url(url)
        self.prefix, self.max_vectors = prefix, max_vectors

    def _k(self, tenant: str, *parts: str) -> str:
        return ":".join([f"{self.prefix}{tenant}", *parts])

    def get(self, tenant: str, key: str, now: float) -> dict | None:
        raw = self.client.get(self._k(tenant, "x", key))
        if raw is None:
            return None
        entry = json.loads(raw)
        return entry if entry["expires"] > now else None

    def put(self, tenant: str, key: str, entry: dict, ttl_s: float, now: float) -> None:
        self.client.set(self._k(tenant, "x", key), json.dumps(entry), ex=max(1, math.ceil(ttl_s)))

    def add_vector(self, tenant: str, entry: SemanticEntry, vector: np.ndarray, ttl_s: float) -> None:
        field = uuid.uuid4().hex
        value = json.dumps({"scope": entry.scope, "text": entry.text, "key": entry.key, "expires": entry.expires,
                            "vector": base64.b64encode(vector.astype(np.float32).tobytes()).decode()})
        order, vectors = self._k(tenant, "vorder"), self._k(tenant, "v", entry.scope)
        with self.client.pipeline() as pipe:
            pipe.hset(vectors, field, value)
            pipe.zadd(order, {f"{entry.scope}:{field}": time.time()})
            pipe.expire(vectors, max(1, math.ceil(ttl_s)))  # the newest entry's TTL: an idle scope vanishes
            pipe.zcard(order)
            size = pipe.execute()[-1]
        for member, _ in self.client.zpopmin(order, max(0, size - self.max_vectors)):
            scope, old = member.decode().split(":")
            self.client.hdel(self._k(tenant, "v", scope), old)

    def nearest(self, tenant: str, scope: str, vector: np.ndarray, now: float) -> tuple[float, SemanticEntry] | None:
        rows = [json.loads(v) for v in self.client.hgetall(self._k(tenant, "v", scope)).values()]
        rows = [r for r in rows if r["expires"] > now]
        if not rows:
            return None
        matrix = np.stack([np.frombuffer(base64.b64decode(r["vector"]), dtype=np.float32) for r in rows])
        sims = matrix @ vector
        best = int(np.argmax(sims))
        r = rows[best]
        return float(sims[best]), SemanticEntry(r["scope"], r["text"], r["key"], r["expires"])

    def close(self) -> None:
        self.client.close()


def cache_backend_for(redis_url: str | None) -> MemoryBackend | RedisBackend:
    """Redis when a URL is configured (several replicas), else this process's memory."""
    return RedisBackend(redis_url) if redis_url else MemoryBackend()


# ---- the cache -------------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class CacheHit:
    """A cached answer: log the call at zero cost and count ``saved_usd`` (the original call's cost) as savings."""

    payload: dict
    kind: Literal["exact", "semantic"]
    similarity: float
    saved_usd: float


class ResponseCache:
    """Exact cache, plus the semantic layer for the tenants in ``semantic`` (True: all; default: none).

    ``encode`` embeds texts (an encoder's ``encode``: the static encoder in serving); it is required only
    when the semantic layer is on. ``clock`` gives seconds (tests inject one to expire entries).
    """

    def __init__(self, backend: CacheBackend | None = None, *, ttl_s: float = 3600.0,
                 semantic: bool | Collection[str] = False, encode: Encode | None = None,
                 threshold: float = SHIPPED_THRESHOLD, clock: Callable[[], float] = time.time):
        if semantic and encode is None:
            raise ValueError("the semantic cache needs an encoder (encode=...)")
        self.backend = backend if backend is not None else MemoryBackend()
        self.ttl_s, self.semantic, self.encode, self.threshold, self.clock = ttl_s, semantic, encode, threshold, clock

    def _semantic_for(self, tenant: str) -> bool:
        return self.semantic is True or (not isinstance(self.semantic, bool) and tenant in self.semantic)

    def _embed(self, text: str) -> np.ndarray:
        vector = np.asarray(self.encode([text]), dtype=np.float32)[0]
        return vector / max(float(np.linalg.norm(vector)), 1e-12)

    def lookup(self, tenant: str, messages: Sequence[Any], model_or_policy: Any,
               sampling: Mapping[str, Any]) -> CacheHit | None:
        now = self.clock()
        entry = self.backend.get(tenant, request_key(tenant, messages, model_or_policy, sampling), now)
        if entry is not None:
            return CacheHit(entry["payload"], "exact", 1.0, entry["cost_usd"])
        if not self._semantic_for(tenant) or (parts := semantic_parts(tenant, messages, model_or_policy,
                                                                        sampling)) is None:
            return None
        scope, text = parts
        found = self.backend.nearest(tenant, scope, self._embed(text), now)
        if found is None or found[0] < self.threshold or near_miss_reason(found[1].text, text) is not None:
            return None
        entry = self.backend.get(tenant, found[1].key, now)
        return CacheHit(entry["payload"], "semantic", found[0], entry["cost_usd"]) if entry is not None else None

    def store(self, tenant: str, messages: Sequence[Any], model_or_policy: Any, sampling: Mapping[str, Any],
              payload: Mapping[str, Any], cost_usd: float = 0.0) -> bool:
        """Cache a successful answer (see :func:`is_cacheable`); False, and nothing stored, for anything else."""
        if not is_cacheable(payload):
            return False
        now = self.clock()
        key = request_key(tenant, messages, model_or_policy, sampling)
        self.backend.put(tenant, key, {"payload": dict(payload), "cost_usd": cost_usd, "expires": now + self.ttl_s},
                         self.ttl_s, now)
        if self._semantic_for(tenant) and (parts := semantic_parts(tenant, messages, model_or_policy,
                                                                     sampling)) is not None:
            scope, text = parts
            self.backend.add_vector(tenant, SemanticEntry(scope, text, key, now + self.ttl_s), self._embed(text),
                                    self.ttl_s)
        return True
