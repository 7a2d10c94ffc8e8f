"""Token prices for the models that appear in router-ml's outcome datasets.

Where a dataset carries no billed USD, router-ml labels an outcome's cost as::

    input_tokens * input_usd_per_mtok / 1e6 + output_tokens * output_usd_per_mtok / 1e6

The per-million-token rates come from two package data files in
``router_ml.price_data``:

``model_map.csv`` (``model,provider_id,model_ref,relation,note``)
    Maps a dataset model name to an exact (provider, model id) row of the
    offline ``genai-prices`` snapshot. ``relation`` is ``exact`` (same
    model, e.g. a dated snapshot) or ``proxy`` (a stand-in with the same
    base weights/size, e.g. a fine-tune priced as its base model, or the
    same weights on another host); every proxy row says why in ``note``.

``fallback_prices.csv`` (``model,input_usd_per_mtok,output_usd_per_mtok,source,note``)
    Hand-entered prices, each citing a public source, for the few dataset
    models that ``genai-prices`` does not know.

Rates from ``genai-prices`` are read at the fixed instant :data:`PRICES_AS_OF`
so that figures are reproducible; nothing here touches the network (the
bundled snapshot is used; :func:`genai_prices.update_prices` is never called).
Rates are flat: models with long-context price tiers (Gemini 1.5) are priced
at their base (short-prompt) tier.

Both files are validated completely on first use; a malformed row (missing
or extra column, non-numeric or negative price, unknown genai-prices
provider/model, duplicate model) raises :class:`ValueError` naming the file
and line.
"""

from __future__ import annotations

import csv
import io
import math
import operator
from dataclasses import dataclass
from datetime import datetime, timezone
from decimal import Decimal
from functools import cache
from importlib import resources

import genai_prices

__all__ = [
    "PRICES_AS_OF",
    "ModelPrice",
    "UnknownModelError",
    "cost_usd",
    "known_models",
    "parse_fallback_prices",
    "parse_model_map",
    "price_of",
]

#: Instant at which genai-prices rates are read. The date is 2026-11-01 (UTC);
#: the time is noon because some providers price by time of day (DeepSeek's
#: off-peak discount runs 16:30-00:30 UTC, so midnight would give the discount
#: rate rather than the standard one).
PRICES_AS_OF = datetime(2026, 11, 1, 12, 0, tzinfo=timezone.utc)

MODEL_MAP_FILE = "model_map.csv"
FALLBACK_FILE = "fallback_prices.csv"
_DATA_PACKAGE = "router_ml.price_data"

_MODEL_MAP_COLUMNS = ("model", "provider_id", "model_ref", "relation", "note")
_FALLBACK_COLUMNS = ("model", "input_usd_per_mtok", "output_usd_per_mtok", "source", "note")
_RELATIONS = ("exact", "proxy")

# Token count used to read a rate out of genai-prices: small enough to stay in
# the base tier of tiered (long-context) prices, and the result is scaled up.
_PROBE_TOKENS = 1_000
_PER_MTOK = Decimal(1_000_000) / Decimal(_PROBE_TOKENS)


@dataclass(frozen=True)
class ModelPrice:
    """USD per million tokens for one dataset model name.

    ``origin`` says where the figures come from: ``"genai-prices:<provider>/<model id>"``
    or ``"fallback:<source>"``.
    """

    model: str
    input_usd_per_mtok: float
    output_usd_per_mtok: float
    origin: str


class UnknownModelError(KeyError):
    """Raised for a model name that neither price file covers."""

    def __init__(self, model: str, known: list[str]) -> None:
        self.model = model
        self.known = sorted(known)
        self.message = f"unknown model {model!r}; known models: {', '.join(self.known)}"
        super().__init__(self.message)

    def __str__(self) -> str:  # KeyError would repr() the message
        return self.message


def _rows(text: str, filename: str, columns: tuple[str, ...]) -> list[tuple[int, dict[str, str]]]:
    """Parse CSV ``text`` into (line number, row) pairs, checking the header and column counts."""
    reader = csv.reader(io.StringIO(text))
    header = next(reader, None)
    if header is None or tuple(h.strip() for h in header) != columns:
        raise ValueError(f"{filename}, line 1: header must be {','.join(columns)}; got {header!r}")
    rows: list[tuple[int, dict[str, str]]] = []
    line = reader.line_num
    for record in reader:
        start, line = line + 1, reader.line_num
        if not record or all(not field.strip() for field in record):
            continue  # blank line
        if len(record) != len(columns):
            raise ValueError(
                f"{filename}, line {start}: expected {len(columns)} columns "
                f"({','.join(columns)}), got {len(record)}"
            )
        rows.append((start, {c: v.strip() for c, v in zip(columns, record)}))
    return rows


def _require(row: dict[str, str], names: tuple[str, ...], filename: str, line: int) -> None:
    for name in names:
        if not row[name]:
            raise ValueError(f"{filename}, line {line}: empty {name!r}")


def _check_unique(model: str, seen: dict[str, str], filename: str, line: int) -> None:
    if model in seen:
        raise ValueError(f"{filename}, line {line}: duplicate model {model!r} (first at {seen[model]})")
    seen[model] = f"{filename}, line {line}"


def parse_model_map(text: str, filename: str = MODEL_MAP_FILE) -> dict[str, ModelPrice]:
    """Resolve every row of a ``model_map.csv`` text through genai-prices.

    Each row must name a provider and model id that genai-prices resolves to
    exactly that (provider, model id) pair.
    """
    prices: dict[str, ModelPrice] = {}
    seen: dict[str, str] = {}
    usage = genai_prices.Usage(input_tokens=_PROBE_TOKENS, output_tokens=_PROBE_TOKENS)
    for line, row in _rows(text, filename, _MODEL_MAP_COLUMNS):
        _require(row, ("model", "provider_id", "model_ref", "relation"), filename, line)
        model = row["model"]
        _check_unique(model, seen, filename, line)
        if row["relation"] not in _RELATIONS:
            raise ValueError(
                f"{filename}, line {line}: relation must be one of {_RELATIONS}, got {row['relation']!r}"
            )
        if row["relation"] == "proxy" and not row["note"]:
            raise ValueError(f"{filename}, line {line}: proxy row for {model!r} needs a note saying why")
        provider_id, model_ref = row["provider_id"], row["model_ref"]
        try:
            calc = genai_prices.calc_price(
                usage, model_ref=model_ref, provider_id=provider_id, genai_request_timestamp=PRICES_AS_OF
            )
        except LookupError as exc:
            raise ValueError(
                f"{filename}, line {line}: genai-prices cannot price {provider_id}/{model_ref}: {exc}"
            ) from exc
        if calc.provider.id != provider_id or calc.model.id != model_ref:
            raise ValueError(
                f"{filename}, line {line}: {provider_id}/{model_ref} resolves to "
                f"{calc.provider.id}/{calc.model.id}; use that exact provider and model id"
            )
        prices[model] = ModelPrice(
            model=model,
            input_usd_per_mtok=float(calc.input_price * _PER_MTOK),
            output_usd_per_mtok=float(calc.output_price * _PER_MTOK),
            origin=f"genai-prices:{provider_id}/{model_ref}",
        )
    return prices


def _rate(value: str, column: str, filename: str, line: int) -> float:
    try:
        rate = float(value)
    except ValueError:
        raise ValueError(f"{filename}, line {line}: {column} is not a number: {value!r}") from None
    if not math.isfinite(rate) or rate < 0:
        raise ValueError(
            f"{filename}, line {line}: {column} must be a finite non-negative number, got {value!r}"
        )
    return rate


def parse_fallback_prices(text: str, filename: str = FALLBACK_FILE) -> dict[str, ModelPrice]:
    """Parse a ``fallback_prices.csv`` text; every row must cite a ``source``."""
    prices: dict[str, ModelPrice] = {}
    seen: dict[str, str] = {}
    for line, row in _rows(text, filename, _FALLBACK_COLUMNS):
        _require(row, ("model", "input_usd_per_mtok", "output_usd_per_mtok", "source"), filename, line)
        model = row["model"]
        _check_unique(model, seen, filename, line)
        prices[model] = ModelPrice(
            model=model,
            input_usd_per_mtok=_rate(row["input_usd_per_mtok"], "input_usd_per_mtok", filename, line),
            output_usd_per_mtok=_rate(row["output_usd_per_mtok"], "output_usd_per_mtok", filename, line),
            origin=f"fallback:{row['source']}",
        )
    return prices


def _read(name: str) -> str:
    return resources.files(_DATA_PACKAGE).joinpath(name).read_text(encoding="utf-8")


@cache
def _price_table() -> dict[str, ModelPrice]:
    table = parse_model_map(_read(MODEL_MAP_FILE), MODEL_MAP_FILE)
    fallback_text = _read(FALLBACK_FILE)
    fallback = parse_fallback_prices(fallback_text, FALLBACK_FILE)
    for line, row in _rows(fallback_text, FALLBACK_FILE, _FALLBACK_COLUMNS):
        if row["model"] in table:
            raise ValueError(
                f"{FALLBACK_FILE}, line {line}: duplicate model {row['model']!r} (also in {MODEL_MAP_FILE})"
            )
    table.update(fallback)
    return table


def known_models() -> list[str]:
    """All model names that can be priced, sorted."""
    return sorted(_price_table())


@cache
def price_of(model: str) -> ModelPrice:
    """Price of a dataset model name (exact string match); raises :class:`UnknownModelError`."""
    table = _price_table()
    try:
        return table[model]
    except KeyError:
        raise UnknownModelError(model, list(table)) from None


def _count(value: int, name: str) -> int:
    count = operator.index(value)  # accepts int and numpy integers, rejects floats
    if count < 0:
        raise ValueError(f"{name} must be non-negative, got {count}")
    return count


def cost_usd(model: str, input_tokens: int, output_tokens: int | None) -> float:
    """USD cost of one call: prompt tokens plus output tokens at the model's rates.

    ``output_tokens=None`` gives the prompt-only cost. Negative token counts
    raise :class:`ValueError` naming the argument.
    """
    n_in = _count(input_tokens, "input_tokens")
    n_out = 0 if output_tokens is None else _count(output_tokens, "output_tokens")
    price = price_of(model)
    return (n_in * price.input_usd_per_mtok + n_out * price.output_usd_per_mtok) / 1_000_000


def cost_usd_if_priced(model: str, input_tokens: int, output_tokens: int | None) -> float | None:
    """:func:`cost_usd`, or None for a model without a price (e.g. self-hosted)."""
    try:
        return cost_usd(model, input_tokens, output_tokens)
    except UnknownModelError:
        return None
