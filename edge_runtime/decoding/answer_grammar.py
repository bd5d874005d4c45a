"""The answer grammars of constrained decoding, as character-level automata (vehicle side, pure Python).

:class:`AnswerGrammar` steps over characters and the single-token symbols (the answer tags, EOS),
knows the length of the shortest completion of every state (:meth:`AnswerGrammar.cost`) and the
characters a state fixes (:meth:`AnswerGrammar.forced_text`). The grammars themselves -- what
an MPC and a decision answer may look like -- are described in ``edge_runtime.decoding.constrained``,
which lays them over a tokenizer's vocabulary.

**Tags as symbols or as text.** Our from-scratch tokenizers have ``<answer>`` and ``</answer>`` as
single tokens; there the tags are *symbols* (:meth:`AnswerGrammar.step_symbol`), like EOS. A
pretrained tokenizer spells them with several ordinary tokens (``<`` ``answer`` ``>``), so with
``tags_as_text=True`` the tags are *literal text* instead: the states that expected a tag symbol
(``("TO",)`` after the reason's newline, ``("TC",)`` after ``}``, the completed decision word)
become ``("L", tag, next)`` literals, stepped character by character like ``{"`` or ``": ``, and
:meth:`~AnswerGrammar.cost` / :meth:`~AnswerGrammar.forced_text` count the tag's characters
instead of 1 symbol, so the token budget still holds (one character is at most one token). Only
the very start is new: ``<`` there may begin the optional reason (``< 50 needed``) or the opening
tag, so ``("RO", prefix)`` tracks a start that is still a prefix of ``<answer>``: completing the
tag enters the answer, any other character continues it as a reason line (which, as in symbol
mode, may never contain a tag's text). EOS is always a symbol (the tokenizer's end token, e.g.
ChatML's ``<|im_end|>``). With ``tags_as_text=False`` every state and transition is exactly the
symbol grammar.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from ..control.params import PARAM_SPECS
from ..contracts.answer_format import ANSWER_CLOSE, ANSWER_OPEN

__all__ = [
    "CLOSE",
    "DECISION_MARKER",
    "EOS",
    "MAX_DECIMALS",
    "OPEN",
    "TASKS",
    "AnswerGrammar",
    "NumberSpec",
    "decision_grammar",
    "infer_task",
    "mpc_grammar",
]

TASKS = ("mpc", "decision")
#: Text of every decision prompt (``tasks.prompts.build_decision_prompt``) and of no MPC prompt.
DECISION_MARKER = "Reply <answer>True</answer> or <answer>False</answer>."
MAX_DECIMALS = 3
_SCALE = 10 ** MAX_DECIMALS  # numbers are handled in integer thousandths
_NUMBER_CHARS = "-0123456789."

# Symbols: the single-token parts of an answer.
OPEN, CLOSE, EOS = "<open>", "<close>", "<eos>"
_TAGS = (ANSWER_OPEN, ANSWER_CLOSE)


def infer_task(prompt: str) -> str:
    """``"decision"`` for a decision prompt (it asks for True/False), else ``"mpc"``."""
    return "decision" if DECISION_MARKER in prompt else "mpc"


# ------------------------------------------------------------------------------------- numbers
@dataclass(frozen=True)
class NumberSpec:
    """A parameter's number grammar: range in thousandths and integer digits allowed."""

    name: str
    low: int
    high: int
    default: int
    int_digits: int

    @classmethod
    def from_bounds(cls, name: str, low: float, high: float, default: float) -> NumberSpec:
        if not (math.isfinite(low) and math.isfinite(high) and low <= high):
            raise ValueError(f"answer schema: parameter {name!r} has an invalid range [{low}, {high}]")
        lo, hi = math.ceil(low * _SCALE - 1e-6), math.floor(high * _SCALE + 1e-6)
        digits = len(str(int(max(abs(low), abs(high)))))
        return cls(name, lo, hi, round(default * _SCALE), digits)


def _split(p: str) -> tuple[bool, str, str | None]:
    neg = p.startswith("-")
    body = p[1:] if neg else p
    if "." in body:
        d, e = body.split(".", 1)
        return neg, d, e
    return neg, body, None


def _viable(p: str, lo: int, hi: int, int_digits: int) -> bool:
    """Some completion of the number prefix ``p`` (within the digit bounds) lies in [lo, hi]."""
    neg, d, e = _split(p)
    if d == "":
        mags = [(0, (10 ** int_digits) * _SCALE - 1)]
    elif e is None:
        v = int(d)
        if d == "0":
            mags = [(0, _SCALE - 1)]
        else:
            mags = [(v * 10 ** k * _SCALE, (v + 1) * 10 ** k * _SCALE - 1) for k in range(int_digits - len(d) + 1)]
    else:
        width = 10 ** (MAX_DECIMALS - len(e))
        base = int(d) * _SCALE + (int(e) * width if e else 0)
        mags = [(base, base + width - 1)]
    for a, b in mags:
        if neg:
            a, b = -b, -a
        if max(a, lo) <= min(b, hi):
            return True
    return False


def _value(p: str) -> int | None:
    """Value of a complete number in thousandths, None for an incomplete prefix."""
    neg, d, e = _split(p)
    if d == "" or e == "":
        return None
    v = int(d) * _SCALE + (int(e.ljust(MAX_DECIMALS, "0")) if e else 0)
    return -v if neg else v


def _num_step(p: str, c: str, lo: int, hi: int, int_digits: int) -> str | None:
    if c == "-":
        return "-" if p == "" and lo < 0 else None
    _, d, e = _split(p)
    if c == ".":
        if d == "" or e is not None:
            return None
    elif c in "0123456789":
        if e is not None:
            if len(e) >= MAX_DECIMALS:
                return None
        elif d == "0" or len(d) >= int_digits:
            return None
    else:
        return None
    q = p + c
    return q if _viable(q, lo, hi, int_digits) else None


def _complete(p: str, lo: int, hi: int) -> bool:
    v = _value(p)
    return v is not None and lo <= v <= hi


@lru_cache(maxsize=65536)
def _completion_len(p: str, lo: int, hi: int, int_digits: int) -> int:
    """Characters of the shortest completion of the (viable) prefix ``p`` to an in-range number."""
    frontier = [p]
    for depth in range(MAX_DECIMALS + int_digits + 3):
        if any(_complete(q, lo, hi) for q in frontier):
            return depth
        frontier = [r for q in frontier for c in _NUMBER_CHARS if (r := _num_step(q, c, lo, hi, int_digits))]
        if not frontier:
            break
    raise ValueError(f"number prefix {p!r} has no completion in [{lo / _SCALE:g}, {hi / _SCALE:g}]")


# ------------------------------------------------------------------------------------- grammar
# States are hashable tuples (the token-level caches key on them):
#   ("R", n, tail)          reason line, n characters so far, ``tail``: its longest suffix that begins a tag
#                           (("R", 0, "") is the start of every answer)
#   ("RO", prefix)          tags_as_text only: the answer so far is ``prefix``, a proper prefix of
#                           <answer>: the opening tag or the start of a reason line
#   ("TO",)                 expects the <answer> symbol (tags_as_text: ("L", "<answer>", ...) instead)
#   ("L", text, next)       the literal ``text`` must follow, then state ``next``
#   ("K", used, k)          inside a key, ``k`` typed so far; used = ((name, value), ...)
#   ("N", used, name, p)    the number of ``name``, prefix ``p`` so far
#   ("W", w)                decision word, ``w`` typed so far
#   ("TC",)                 expects the </answer> symbol (tags_as_text: ("L", "</answer>", ("E",)))
#   ("E",): expects EOS      ("DONE",)
State = tuple


class AnswerGrammar:
    """Character-level automaton of one task's answer (see the module docstring)."""

    def __init__(self, task: str, numbers: Sequence[NumberSpec] = (), key_order: str = "canonical",
                 max_reason_chars: int = 160, words: Sequence[str] = ("True", "False"),
                 tags_as_text: bool = False) -> None:
        if task not in TASKS:
            raise ValueError(f"unknown task {task!r}: use one of {', '.join(TASKS)}")
        if key_order not in ("canonical", "any"):
            raise ValueError(f"key_order must be 'canonical' or 'any', got {key_order!r}")
        if task == "mpc" and not numbers:
            raise ValueError("the mpc grammar needs at least one parameter")
        if max_reason_chars < 0:
            raise ValueError("max_reason_chars must be >= 0")
        self.task = task
        self.numbers = {n.name: n for n in numbers}
        self.order = tuple(n.name for n in numbers)
        self.key_order = key_order
        self.max_reason_chars = int(max_reason_chars)
        self.words = tuple(words)
        self.tags_as_text = bool(tags_as_text)
        self._options = dict(numbers=tuple(numbers), key_order=key_order, max_reason_chars=self.max_reason_chars,
                             words=self.words)
        self.start: State = ("R", 0, "")
        self._after_open: State = ("L", '{"', ("K", (), "")) if task == "mpc" else ("W", "")
        # where a tag is expected: a symbol state, or its literal text
        self._open: State = ("L", ANSWER_OPEN, self._after_open) if self.tags_as_text else ("TO",)
        self._close: State = ("L", ANSWER_CLOSE, ("E",)) if self.tags_as_text else ("TC",)
        self._pairs = (("v_min", "v_max"),) if {"v_min", "v_max"} <= set(self.numbers) else ()
        self._cost: dict[State, int] = {}
        longest = max((len(n) for n in self.order), default=0)
        digits = max((n.int_digits for n in numbers), default=0)
        #: an upper bound of cost() over every state (reason: "\n<answer>{\"" + key + '": ' + number + "}</answer>" EOS)
        self.cost_bound = 2 + 2 + longest + 3 + (digits + 5) + 3 + 2 + max((len(w) for w in self.words), default=0)
        if self.tags_as_text:  # each tag counts its characters instead of 1
            self.cost_bound += len(ANSWER_OPEN) - 1 + len(ANSWER_CLOSE) - 1
        self._available: dict[tuple, tuple[str, ...]] = {}

    def with_tags_as_text(self, tags_as_text: bool) -> AnswerGrammar:
        """This grammar with the tags as text (True) or as symbols (False); ``self`` if it already is."""
        if bool(tags_as_text) == self.tags_as_text:
            return self
        return AnswerGrammar(self.task, tags_as_text=tags_as_text, **self._options)

    # -- helpers
    def available(self, used: tuple) -> tuple[str, ...]:
        """Names that may start the next key after the pairs ``used``."""
        got = self._available.get(used)
        if got is None:
            names = {n for n, _ in used}
            if self.key_order == "canonical":
                last = max((self.order.index(n) for n in names), default=-1)
                got = self.order[last + 1:]
            else:
                got = tuple(n for n in self.order if n not in names)
            if len(self._available) < 100_000:
                self._available[used] = got
        return got

    def value_range(self, used: tuple, name: str) -> tuple[int, int]:
        """[low, high] in thousandths for ``name`` given the pairs already written (v_min <= v_max)."""
        spec = self.numbers[name]
        lo, hi = spec.low, spec.high
        given = dict(used)
        for small, big in self._pairs:
            if name == big:
                lo = max(lo, given.get(small, self.numbers[small].default))
            elif name == small:
                hi = min(hi, given.get(big, self.numbers[big].default))
        return lo, hi

    @staticmethod
    def _lit(text: str, nxt: State) -> State:
        return ("L", text, nxt) if text else nxt

    # -- transitions
    def step_char(self, s: State, c: str) -> State | None:
        kind = s[0]
        if kind == "R":
            n = s[1]
            if c == "\n":
                return self._open if n >= 1 else None
            if n == 0 and self.tags_as_text and ANSWER_OPEN.startswith(c):
                return ("RO", c)  # the opening tag, or a reason that starts like it
            if ord(c) < 32 or c in "\x7f\u2028\u2029" or n >= self.max_reason_chars:
                return None
            tail = s[2] + c
            if tail in _TAGS:
                return None  # the reason would spell out a tag
            while tail and not any(t.startswith(tail) for t in _TAGS):
                tail = tail[1:]
            return ("R", n + 1, tail)
        if kind == "L":
            text = s[1]
            return self._lit(text[1:], s[2]) if c == text[0] else None
        if kind == "RO":
            q = s[1] + c
            if q == ANSWER_OPEN:
                return self._after_open
            if ANSWER_OPEN.startswith(q):
                return ("RO", q)
            if len(s[1]) > self.max_reason_chars:
                return None
            return self.step_char(("R", len(s[1]), s[1]), c)  # it was the start of a reason line
        if kind == "K":
            used, k = s[1], s[2]
            avail = self.available(used)
            if c == '"':
                return ("L", ": ", ("N", used, k, "")) if k in avail else None
            q = k + c
            return ("K", used, q) if any(n.startswith(q) for n in avail) else None
        if kind == "N":
            used, name, p = s[1], s[2], s[3]
            lo, hi = self.value_range(used, name)
            if c in ",}":
                if not _complete(p, lo, hi):
                    return None
                used2 = used + ((name, _value(p)),)
                if c == "}":
                    return self._close
                return ("L", ' "', ("K", used2, "")) if self.available(used2) else None
            q = _num_step(p, c, lo, hi, self.numbers[name].int_digits)
            return ("N", used, name, q) if q is not None else None
        if kind == "W":
            q = s[1] + c
            if any(w.startswith(q) for w in self.words):
                return ("W", q)
            if self.tags_as_text and s[1] in self.words:
                return self.step_char(self._close, c)
            return None
        return None

    def step_symbol(self, s: State, sym: str) -> State | None:
        kind = s[0]
        if self.tags_as_text and sym in (OPEN, CLOSE):
            return None  # the tags are text here
        if sym == OPEN and (s == self.start or kind == "TO"):
            return self._after_open
        if sym == CLOSE and (kind == "TC" or (kind == "W" and s[1] in self.words)):
            return ("E",)
        if sym == EOS and kind == "E":
            return ("DONE",)
        return None

    def step_text(self, s: State | None, text: str) -> State | None:
        for c in text:
            if s is None:
                return None
            s = self.step_char(s, c)
        return s

    # -- what is left
    def cost(self, s: State) -> int:
        """Length of the shortest completion of ``s`` (characters; a tag or EOS counts 1)."""
        got = self._cost.get(s)
        if got is None:
            got = self._cost[s] = self._compute_cost(s)
        return got

    def _compute_cost(self, s: State) -> int:
        kind = s[0]
        if kind == "DONE":
            return 0
        if kind == "E":
            return 1
        if kind == "TC":
            return 2
        if kind == "L":
            return len(s[1]) + self.cost(s[2])
        if kind == "TO":
            return 1 + self.cost(self._after_open)
        if kind == "R":
            return (0 if s[1] == 0 else 1) + self.cost(self._open)  # [newline] tag
        if kind == "RO":  # finishing the tag is shorter than any reason line
            return len(ANSWER_OPEN) - len(s[1]) + self.cost(self._after_open)
        if kind == "W":
            return min(len(w) - len(s[1]) for w in self.words if w.startswith(s[1])) + self.cost(self._close)
        if kind == "K":
            used, k = s[1], s[2]
            best = None
            for name in self.available(used):
                if name.startswith(k):
                    lo, hi = self.value_range(used, name)
                    c = (len(name) - len(k) + 3 + _completion_len("", lo, hi, self.numbers[name].int_digits)
                         + 1 + self.cost(self._close))
                    best = c if best is None else min(best, c)
            if best is None:
                raise ValueError(f"grammar state {s!r} has no completion")
            return best
        if kind == "N":
            used, name, p = s[1], s[2], s[3]
            lo, hi = self.value_range(used, name)
            return _completion_len(p, lo, hi, self.numbers[name].int_digits) + 1 + self.cost(self._close)
        raise ValueError(f"unknown grammar state {s!r}")

    def forced_text(self, s: State) -> str:
        """The characters that must come next in ``s`` (possibly empty)."""
        kind = s[0]
        if kind == "L":
            return s[1] + self.forced_text(s[2])
        if kind == "K":
            used, k = s[1], s[2]
            rest = [n[len(k):] for n in self.available(used) if n.startswith(k)]
            if len(rest) == 1:
                return rest[0] + '": '
            prefix = rest[0] if rest else ""
            for r in rest[1:]:
                while not r.startswith(prefix):
                    prefix = prefix[:-1]
            return prefix
        if kind == "W":
            rest = [w[len(s[1]):] for w in self.words if w.startswith(s[1])]
            return rest[0] if len(rest) == 1 else ""
        return ""

    @staticmethod
    def done(s: State) -> bool:
        return s[0] == "DONE"


def mpc_grammar(answer_schema: dict[str, Any] | None = None, **kwargs: Any) -> AnswerGrammar:
    """The MPC answer grammar over the parameters of ``answer_schema`` (a model file's
    ``edge_runtime.answer_schema`` metadata); the ``control.params`` table when it is missing."""
    params = (answer_schema or {}).get("parameters") if isinstance(answer_schema, dict) else None
    numbers = []
    if isinstance(params, list) and params:
        try:
            numbers = [NumberSpec.from_bounds(str(p["name"]), float(p["low"]), float(p["high"]),
                                              float(p.get("default", p["low"]))) for p in params]
        except (KeyError, TypeError, ValueError):
            numbers = []
    if not numbers:
        numbers = [NumberSpec.from_bounds(p.name, p.low, p.high, p.default) for p in PARAM_SPECS]
    return AnswerGrammar("mpc", numbers, **kwargs)


def decision_grammar() -> AnswerGrammar:
    return AnswerGrammar("decision")
