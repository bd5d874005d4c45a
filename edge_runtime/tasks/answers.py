"""Answer formats of the two driving tasks: formatters (training targets) and parsers that never raise.

MPC answer (written by :func:`format_mpc_answer`)::

    Stay centred: raise the lateral weight.
    <answer>{"qv": 10, "qn": 60, "qalpha": 7, ..., "track_safety_margin": 0.45}</answer>

An optional one-line reason, then a JSON object with all 11 parameters in the order of
``PARAM_NAMES``; numbers are rounded to 3 decimals, written without exponent and without
trailing zeros ("0.01", "10", "-2.5").

Decision answer: ``<answer>True</answer>`` or ``<answer>False</answer>``.

**Parsing** (:func:`parse_mpc_answer`, :func:`parse_decision_answer`) takes any string and
returns a frozen result with either a value or a typed :class:`ParseFailure` (never both, never
neither) and a human-readable ``detail``. The answer block is the *last complete* one: the last
``<answer>`` that is followed by a ``</answer>``, up to the first ``</answer>`` after it (so
text after the final block, duplicated tags or an extra trailing ``<answer>`` do not matter).
Tags are matched exactly (case-sensitive, no spaces inside the brackets).

Failure reasons, checked in this order:

==============  ===============================================================================
no_answer_tag   no ``<answer>`` tag at all (also a lone ``</answer>``)
unterminated    an ``<answer>`` tag with no ``</answer>`` after it: typically a generation that
                hit its token limit (a dedicated reason so that this is visible in counts)
empty           the block holds only whitespace
bad_json        MPC: the block is not valid JSON, or an object repeats a name
not_an_object   MPC: valid JSON but not an object (a list, a number, a string...)
unknown_name    MPC: a name that is not one of the 11 parameters
bad_value       MPC: a value that is not a finite number (string, bool, null, NaN, inf, nested
                object/list); decision: anything but true/false (case-insensitive)
out_of_range    MPC: a number outside its [min, max] (unless ``clamp=True``)
inconsistent    MPC: v_min > v_max after filling in defaults
==============  ===============================================================================

Missing names take their default values (a partial set is valid), exactly as
``MPCParams.from_mapping`` does; the parser checks every value itself and only then builds
``MPCParams``, so the reason never depends on the wording of a ``ParameterError``.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from dataclasses import dataclass
from enum import Enum
from typing import Any, Iterable, Mapping

import numpy as np

from ..contracts.answer_format import ANSWER_CLOSE, ANSWER_OPEN
from ..contracts.user_input import DuplicateKeyError, no_duplicate_keys
from ..control.params import DEFAULT_PARAMS, PARAM_NAMES, SPEC_BY_NAME, MPCParams, ParameterError

__all__ = [
    "ParseFailure", "MPCParse", "DecisionParse", "format_number",
    "format_mpc_answer", "parse_mpc_answer", "format_decision_answer", "parse_decision_answer",
    "extract_answer_block", "count_failures", "answer_choice",
]

class ParseFailure(str, Enum):
    """Why an answer did not parse (see the module docstring for the exact conditions)."""

    NO_ANSWER_TAG = "no_answer_tag"
    UNTERMINATED = "unterminated"
    EMPTY = "empty"
    BAD_JSON = "bad_json"
    NOT_AN_OBJECT = "not_an_object"
    UNKNOWN_NAME = "unknown_name"
    BAD_VALUE = "bad_value"
    OUT_OF_RANGE = "out_of_range"
    INCONSISTENT = "inconsistent"


@dataclass(frozen=True)
class MPCParse:
    """Result of :func:`parse_mpc_answer`: exactly one of ``params`` and ``failure`` is set.

    ``clamped``: the names that were clamped into range (only with ``clamp=True``)."""

    params: MPCParams | None
    failure: ParseFailure | None
    detail: str = ""
    clamped: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        return self.failure is None


@dataclass(frozen=True)
class DecisionParse:
    """Result of :func:`parse_decision_answer`: exactly one of ``value`` and ``failure`` is set."""

    value: bool | None
    failure: ParseFailure | None
    detail: str = ""

    @property
    def ok(self) -> bool:
        return self.failure is None


# ---------------------------------------------------------------------------------------------
# Formatting
# ---------------------------------------------------------------------------------------------
def format_number(x: float, decimals: int = 3) -> str:
    """Compact, deterministic: rounded to ``decimals`` places, no exponent, no trailing zeros, no "-0"."""
    if isinstance(x, bool) or not isinstance(x, (int, float)) or not math.isfinite(x):
        raise ValueError(f"format_number: expected a finite number, got {x!r}")
    text = f"{float(x):.{decimals}f}"
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return "0" if text in ("-0", "") else text


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def format_mpc_answer(params: MPCParams | Mapping[str, float], reasoning: str | None = None,
                      only_changed: bool = False) -> str:
    """Optional reason line, then ``<answer>{...}</answer>`` with the parameters in canonical order.

    All 11 by default; with ``only_changed`` only those that differ from the defaults (at least
    ``v_max``, so the object is never empty) -- the parser fills the rest with defaults, and a
    short answer is what a small model learns most reliably. A mapping may be partial (defaults
    fill in) and is validated like ``MPCParams.from_mapping`` (``ParameterError`` for a bad set).
    The reason is collapsed onto one line and must not contain an answer tag (ValueError)."""
    if not isinstance(params, MPCParams):
        params = MPCParams.from_mapping(params)[0]
    names = PARAM_NAMES
    if only_changed:
        names = tuple(n for n in PARAM_NAMES if format_number(getattr(params, n)) != format_number(
            getattr(DEFAULT_PARAMS, n))) or ("v_max",)
    body = ", ".join(f'"{name}": {format_number(getattr(params, name))}' for name in names)
    answer = f"{ANSWER_OPEN}{{{body}}}{ANSWER_CLOSE}"
    if reasoning is None:
        return answer
    reason = _one_line(reasoning)
    if ANSWER_OPEN in reason or ANSWER_CLOSE in reason:
        raise ValueError("format_mpc_answer: the reasoning must not contain an <answer> or </answer> tag")
    return f"{reason}\n{answer}" if reason else answer


def format_decision_answer(label: bool) -> str:
    """``<answer>True</answer>`` or ``<answer>False</answer>``."""
    if isinstance(label, np.bool_):
        label = bool(label)
    if not isinstance(label, bool):
        raise ValueError(f"format_decision_answer: expected a bool, got {label!r}")
    return f"{ANSWER_OPEN}{label}{ANSWER_CLOSE}"


# ---------------------------------------------------------------------------------------------
# Parsing
# ---------------------------------------------------------------------------------------------
def _short(value: Any, limit: int = 40) -> str:
    try:
        text = repr(value)
    except Exception:  # e.g. an int beyond Python's digit limit
        text = f"<{type(value).__name__}>"
    return text if len(text) <= limit else text[:limit - 3] + "..."


def extract_answer_block(text: str) -> tuple[str | None, ParseFailure | None, str]:
    """The content of the last complete answer block: ``(content, None, "")`` or ``(None, reason, detail)``."""
    close = text.rfind(ANSWER_CLOSE)
    start = text.rfind(ANSWER_OPEN, 0, close) if close >= 0 else -1
    if start < 0:
        if ANSWER_OPEN in text:
            return None, ParseFailure.UNTERMINATED, "an <answer> tag is never closed by </answer> (answer cut off?)"
        return None, ParseFailure.NO_ANSWER_TAG, "no <answer>...</answer> block in the text"
    begin = start + len(ANSWER_OPEN)
    end = text.find(ANSWER_CLOSE, begin)
    return text[begin:end], None, ""


def _mpc_fail(reason: ParseFailure, detail: str) -> MPCParse:
    return MPCParse(None, reason, detail)


def parse_mpc_answer(text: str, clamp: bool = False) -> MPCParse:
    """Parse an MPC answer; never raises (see the module docstring for the reasons).

    ``clamp=True`` clamps finite out-of-range numbers into their range instead of failing with
    ``out_of_range`` and lists them in ``clamped``; v_min > v_max still fails."""
    if not isinstance(text, str):
        return _mpc_fail(ParseFailure.EMPTY, f"expected the answer as a string, got {type(text).__name__}")
    content, reason, detail = extract_answer_block(text)
    if content is None:
        return _mpc_fail(reason, detail)
    if not content.strip():
        return _mpc_fail(ParseFailure.EMPTY, "the <answer> block is empty")
    try:
        data = json.loads(content, object_pairs_hook=no_duplicate_keys)
    except DuplicateKeyError as exc:
        return _mpc_fail(ParseFailure.BAD_JSON, f"parameter {_short(exc.args[0])} appears more than once")
    except json.JSONDecodeError as exc:
        return _mpc_fail(ParseFailure.BAD_JSON, f"not valid JSON: {exc.msg} at character {exc.pos}")
    except (ValueError, RecursionError, MemoryError, OverflowError) as exc:  # huge ints, deep nesting
        return _mpc_fail(ParseFailure.BAD_JSON, f"not valid JSON: {type(exc).__name__}")
    if not isinstance(data, dict):
        return _mpc_fail(ParseFailure.NOT_AN_OBJECT,
                         f"expected a JSON object of name: number, got a {type(data).__name__}")
    unknown = [k for k in data if k not in SPEC_BY_NAME]
    if unknown:
        return _mpc_fail(ParseFailure.UNKNOWN_NAME, f"unknown parameter name(s) {', '.join(_short(k) for k in unknown)}; "
                                                    f"valid: {', '.join(PARAM_NAMES)}")
    for name, value in data.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return _mpc_fail(ParseFailure.BAD_VALUE, f"{name}: expected a number, got {_short(value)}")
        if isinstance(value, float) and not math.isfinite(value):
            return _mpc_fail(ParseFailure.BAD_VALUE, f"{name}: expected a finite number, got {_short(value)}")
    values: dict[str, float] = {}
    clamped: list[str] = []
    for name, value in data.items():
        spec = SPEC_BY_NAME[name]
        if not spec.low <= value <= spec.high:  # exact for ints of any size, no float overflow
            if not clamp:
                return _mpc_fail(ParseFailure.OUT_OF_RANGE,
                                 f"{name}={_short(value)} is outside its range [{spec.low:g}, {spec.high:g}]")
            clamped.append(name)
            values[name] = spec.low if value < spec.low else spec.high
        else:
            values[name] = float(value)
    v_min = values.get("v_min", SPEC_BY_NAME["v_min"].default)
    v_max = values.get("v_max", SPEC_BY_NAME["v_max"].default)
    if v_min > v_max:
        missing = [n for n in ("v_min", "v_max") if n not in values]
        note = f" ({' and '.join(missing)} from the defaults)" if missing else ""
        return _mpc_fail(ParseFailure.INCONSISTENT, f"v_min={v_min:g} > v_max={v_max:g}{note}: v_min must be <= v_max")
    try:
        params, _ = MPCParams.from_mapping(values)
    except ParameterError as exc:  # pragma: no cover - every condition is checked above
        return _mpc_fail(ParseFailure.BAD_VALUE, str(exc))
    return MPCParse(params, None, "clamped " + ", ".join(clamped) if clamped else "", tuple(clamped))


def parse_decision_answer(text: str) -> DecisionParse:
    """Parse ``<answer>True|False</answer>`` (case-insensitive, surrounding whitespace ok); never raises."""
    if not isinstance(text, str):
        return DecisionParse(None, ParseFailure.EMPTY, f"expected the answer as a string, got {type(text).__name__}")
    content, reason, detail = extract_answer_block(text)
    if content is None:
        return DecisionParse(None, reason, detail)
    word = content.strip()
    if not word:
        return DecisionParse(None, ParseFailure.EMPTY, "the <answer> block is empty")
    low = word.lower()
    if low == "true":
        return DecisionParse(True, None, "")
    if low == "false":
        return DecisionParse(False, None, "")
    return DecisionParse(None, ParseFailure.BAD_VALUE, f"expected True or False, got {_short(word)}")


def count_failures(parses: Iterable[MPCParse | DecisionParse]) -> dict[str, int]:
    """Tally the failure reasons: ``{reason value: count}`` for the reasons that occur (in enum
    order; successful parses are not counted, so an all-good batch gives ``{}``)."""
    counts = Counter(p.failure for p in parses if p.failure is not None)
    return {r.value: counts[r] for r in ParseFailure if counts[r]}


def answer_choice(text: str) -> tuple[str, ...] | bool | None:
    """What an answer decides, without its numbers: the sorted names of the parameters an MPC
    answer sets, or a decision answer's verdict; None when it parses as neither.

    Two models whose answers differ only in their numbers have made the same choice; one that
    sets ``a_max`` where the other sets ``a_min`` has not. The export's parity check compares
    this between a quantized file and its source weights, because a quantization that flips one
    such token ruins a whole instruction category while its answers stay token-for-token close."""
    verdict = parse_decision_answer(text)
    if verdict.ok:
        return verdict.value
    if not parse_mpc_answer(text, clamp=True).ok:
        return None
    content, _, _ = extract_answer_block(text)
    return tuple(sorted(json.loads(content)))
