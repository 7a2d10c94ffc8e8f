"""Re-implementation of ZeroEval's answer-grading rule (WildEval/ZeroEval @ 8c1485ed).

Why this exists: ZeroEval publishes each model's full output text for GSM8K
("gsm"), MATH level 5 ("math-l5") and CRUXEval ("crux") but not a per-item
correctness flag. To train a router we need that flag per (prompt, model), and
it must agree with ZeroEval's own ``*.summary.json`` accuracies, otherwise our
labels would describe a different benchmark than the one ZeroEval reports.
This module reproduces the upstream rule (``math_eval.py``, ``crux_eval.py``
and ``eval_utils.py``) with the standard library only, and without ever
calling Python's ``eval`` on model output.

Public API
----------
``extract_answer(output_text, task, model=None) -> str | None``
    The answer ZeroEval reads from ``output[0]``, or ``None`` when it finds
    none (ZeroEval's "No answer", graded wrong). For "gsm"/"math-l5" it is the
    raw answer as a string (before sanitising); for "crux" it is the string
    that is compared with the gold (outer quotes stripped).
``grade(output_text, gold, task, model=None) -> Grade``
    ``Grade(correct, extracted)``, a named tuple of two bools. ``extracted`` is
    False exactly when ``extract_answer`` returns ``None``; then ``correct`` is
    False too. Accuracy = mean(correct); "No answer" rate = mean(not extracted).
``summary_model_name(file_stem) -> str``
    The model name that ``*.summary.json`` uses for a result file
    ``<file_stem>.json`` (ZeroEval renames some providers' files).

The rule, per item
------------------
1. Answer extraction from ``output[0]`` (same for all three tasks):
   a. the first complete top-level ``{...}`` block (brace matching, newlines
      removed) parsed with ``json.loads``; if it fails to parse the search
      stops there (no later block is tried), as upstream;
   b. if that gave no dict with an ``"answer"`` key: a lenient regex for
      ``"answer": "..."``, then ``"answer": value`` and ``answer: value``;
   c. still nothing and the model name contains "Llama-3.1": if "boxed"
      occurs in the last 30 characters, the first ``\\boxed{word}``;
   d. otherwise no answer (counted wrong).
2. gsm / math-l5: ``str(answer)`` and the gold (``#`` removed) are sanitised:
   drop ``$``, strip, drop ``,``, and if a ``/`` remains and the whole string
   is a plain arithmetic expression, replace it by ``str(float(value))``
   (upstream calls ``eval``; we evaluate only number literals and the
   operators + - * / // % ** ^ through ``ast``).
   Correct iff both contain a number (``-?\\d+(\\.\\d+)?``) and the first
   numbers are equal as floats.
3. crux: ``str(answer)`` with outer single/double quotes stripped and real
   newlines written as ``\\n`` must equal ``str(gold)`` with outer quotes
   stripped, exactly. (This is the rule behind the published crux summary; an
   older upstream rule that quoted bare strings reproduces an older summary.)
"""

from __future__ import annotations

import ast
import json
import operator
import re
from typing import Any, Callable, Final, NamedTuple

__all__ = ["TASKS", "Grade", "extract_answer", "grade", "summary_model_name"]

TASKS: Final[frozenset[str]] = frozenset({"gsm", "math-l5", "crux"})

# ZeroEval's model_name_replacement: file stem -> name used in summary.json.
# Applied as ordered substring replacements, exactly like upstream, so that a
# stem like "Llama-3.1-405B-Inst-fp8" maps to "...-fp8@together".
_NAME_REPLACEMENTS: Final[tuple[tuple[str, str], ...]] = (
    ("gemma-2-9b-it@nvidia", "gemma-2-9b-it"),
    ("gemma-2-9b-it@together", "gemma-2-9b-it"),
    ("gemma-2-27b-it@together", "gemma-2-27b-it"),
    ("gemma-2-27b-it@nvidia", "gemma-2-27b-it"),
    ("deepseek-chat", "deepseek-v2-chat-0628"),
    ("deepseek-coder", "deepseek-v2-coder-0614"),
    ("DeepSeek-Coder-V2-0724", "deepseek-v2-coder-0724"),
    ("Llama-3.1-405B-Inst-fp8", "Llama-3.1-405B-Inst-fp8@together"),
    ("Llama-3.1-405B-Instruct-Turbo", "Llama-3.1-405B-Inst-fp8@together"),
    ("Meta-Llama-3.1-405B-Instruct@hyperbolic", "Llama-3.1-405B-Inst@hyperbolic"),
)

_FIRST_NUMBER: Final = re.compile(r"-?\d+(\.\d+)?")
_BOXED: Final = re.compile(r"\\boxed\{(\w+)\}")
_MISSING: Final = object()  # "no answer found"; distinct from a JSON null answer


class Grade(NamedTuple):
    """Outcome of grading one output: ``correct`` and whether an answer was found."""

    correct: bool
    extracted: bool


def summary_model_name(file_stem: str) -> str:
    """Map a result file's stem to the model name ZeroEval's summary.json shows.

    Why: ZeroEval renames a few files (provider suffixes, DeepSeek aliases) when
    it writes the summary, so joins on the name need the same renaming.
    """
    name = file_stem
    for old, new in _NAME_REPLACEMENTS:
        name = name.replace(old, new)
    return name


# --------------------------------------------------------------------------
# Answer extraction
# --------------------------------------------------------------------------


def _first_json_object(text: str) -> dict[str, Any] | None:
    """Parse the first complete top-level ``{...}`` block, or return None.

    Only the first balanced block is tried: upstream gives up (falls back to the
    regex extraction) when that block is not valid JSON. Newlines are removed
    before parsing, which lets raw line breaks inside JSON strings through.
    """
    depth = 0
    start = -1
    for i, char in enumerate(text):
        if char == "{":
            if depth == 0:
                start = i
            depth += 1
        elif char == "}" and depth > 0:
            depth -= 1
            if depth == 0:
                try:
                    value = json.loads(text[start : i + 1].replace("\n", ""))
                except (ValueError, RecursionError):
                    return None
                return value if isinstance(value, dict) else None
    return None


def _regex_answer(text: str) -> str | None:
    """Lenient ``answer`` lookup for outputs whose JSON does not parse.

    Tried in order: ``"answer": "..."`` without inner quotes, the same with any
    characters (across lines), then an unquoted value ``"answer": x`` and
    finally an unquoted key ``answer: x`` (value up to a comma or whitespace).
    """
    match = re.search(r'"answer"\s*:\s*"([^"]*?)"', text)
    if match is None:
        match = re.search(r'"answer"\s*:\s*"(.*?)"', text, re.DOTALL)
    if match is None:
        match = re.search(r'"answer"\s*:\s*([^,\s]*)', text)
    if match is None:
        match = re.search(r"answer\s*:\s*([^,\s]*)", text)
    return match.group(1) if match is not None else None


def _model_specific_answer(text: str, model: str | None) -> str | None:
    """Last resort for Llama-3.1 models, which often end with ``\\boxed{x}``."""
    if model and "Llama-3.1" in model and "boxed" in text[-30:]:
        match = _BOXED.search(text)
        if match is not None and match.group(1):
            return match.group(1)
    return None


def _raw_answer(text: str, model: str | None) -> Any:
    """The answer value as ZeroEval finds it (any JSON type), or ``_MISSING``."""
    parsed = _first_json_object(text)
    if parsed is not None and "answer" in parsed:
        return parsed["answer"]
    answer = _regex_answer(text)
    if answer is not None:
        return answer
    answer = _model_specific_answer(text, model)
    return answer if answer is not None else _MISSING


def _check_task(task: str) -> None:
    if task not in TASKS:
        raise ValueError(f"unknown ZeroEval task {task!r}; expected one of {sorted(TASKS)}")


def _crux_text(value: Any) -> str:
    """CRUX: the answer as compared, ``str(value)`` without outer quotes.

    Stripping quotes lets ``"abc"``, ``'abc'`` and ``abc`` all match a gold
    ``'abc'``; real newlines become the two characters backslash-n, since the
    gold literals spell newlines that way.
    """
    return str(value).strip("'\"").replace("\n", "\\n")


def extract_answer(output_text: str, task: str, model: str | None = None) -> str | None:
    """Return the answer ZeroEval would read from ``output_text``, or None.

    ``model`` (file stem or summary name) only matters for the Llama-3.1
    ``\\boxed{}`` fallback. For "gsm"/"math-l5" the result is ``str(answer)``
    before sanitising; for "crux" it is the string compared with the gold.
    """
    _check_task(task)
    value = _raw_answer(output_text, model)
    if value is _MISSING:
        return None
    return _crux_text(value) if task == "crux" else str(value)


# --------------------------------------------------------------------------
# Numeric comparison (gsm, math-l5)
# --------------------------------------------------------------------------

_BIN_OPS: Final[dict[type[ast.operator], Callable[[Any, Any], Any]]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
    ast.Mod: operator.mod,
    ast.Pow: operator.pow,
    ast.BitXor: operator.xor,  # "2^3/4": upstream's eval treats ^ as xor (and fails)
}
_UNARY_OPS: Final[dict[type[ast.unaryop], Callable[[Any], Any]]] = {
    ast.UAdd: operator.pos,
    ast.USub: operator.neg,
}
# Integer powers past this many bits are refused instead of computed: they
# cost time and memory and would overflow float() anyway (upstream: OverflowError).
_MAX_POWER_BITS: Final = 100_000


class _NotArithmetic(Exception):
    """The expression is not plain arithmetic on number literals."""


def _pow_too_large(base: Any, exponent: Any) -> bool:
    """Guard ``base ** exponent`` against huge integer results ("9**9**9/2")."""
    if not isinstance(base, int) or not isinstance(exponent, int) or exponent <= 0:
        return False  # float/complex powers overflow quickly; negatives give floats
    return abs(base) > 1 and base.bit_length() * exponent > _MAX_POWER_BITS


def _arith(node: ast.AST) -> Any:
    """Evaluate a parsed arithmetic expression with Python's number semantics."""
    if isinstance(node, ast.Expression):
        return _arith(node.body)
    if isinstance(node, ast.Constant) and isinstance(node.value, (int, float, complex)):
        return node.value
    if isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY_OPS:
        return _UNARY_OPS[type(node.op)](_arith(node.operand))
    if isinstance(node, ast.BinOp) and type(node.op) in _BIN_OPS:
        left, right = _arith(node.left), _arith(node.right)
        if isinstance(node.op, ast.Pow) and _pow_too_large(left, right):
            raise _NotArithmetic
        return _BIN_OPS[type(node.op)](left, right)
    raise _NotArithmetic


def _fraction_to_float(text: str) -> str | None:
    """``str(float(value))`` of an arithmetic expression such as "3/4", else None.

    Upstream calls ``eval`` here; we parse with ``ast`` and only evaluate number
    literals and arithmetic operators, which covers every case where upstream's
    eval yields a number except calls to builtins (not seen in practice).
    """
    try:
        tree = ast.parse(text.lstrip(" \t"), mode="eval")
        return str(float(_arith(tree)))
    except (_NotArithmetic, SyntaxError, ValueError, TypeError, ArithmeticError, RecursionError):
        return None


def _sanitize_number_text(answer: str) -> str:
    """Drop ``$`` and ``,``; turn a fraction/arithmetic expression into a float."""
    answer = answer.replace("$", "").strip().replace(",", "")
    if "/" in answer:
        converted = _fraction_to_float(answer)
        if converted is not None:
            return converted
    return answer


def _first_numbers_equal(model_answer: str, gold: str) -> bool:
    model_num = _FIRST_NUMBER.search(_sanitize_number_text(model_answer))
    gold_num = _FIRST_NUMBER.search(_sanitize_number_text(gold))
    if model_num is None or gold_num is None:
        return False
    return float(model_num.group()) == float(gold_num.group())


# --------------------------------------------------------------------------
# Grading
# --------------------------------------------------------------------------


def grade(output_text: str, gold: Any, task: str, model: str | None = None) -> Grade:
    """Grade one model output against the gold answer the way ZeroEval does.

    Returns ``Grade(correct, extracted)``; an output with no extractable answer
    is ``Grade(False, False)``. ``gold`` is the item's ``answer`` field.
    """
    _check_task(task)
    value = _raw_answer(output_text, model)
    if value is _MISSING:
        return Grade(correct=False, extracted=False)
    if task == "crux":
        # Exact string match after stripping outer quotes on both sides; an
        # empty answer matches an empty gold (e.g. gold "''").
        correct = _crux_text(value) == str(gold).strip("'\"")
    else:
        correct = _first_numbers_equal(str(value), str(gold).replace("#", "").strip())
    return Grade(correct=correct, extracted=True)
