"""Constrained decoding: a grammar-driven logits mask so that the model can only write a valid answer.

The character automata live in ``answer_grammar``; this module lays them over a tokenizer's
vocabulary (masks, forced tokens, token budget) and runs the decoding loop.

Vehicle side (numpy + tokenizers only). Used by :class:`~edge_runtime.decoding.generator.OnnxGenerator`
with ``constrained=True`` (or ``generate(..., constrained=True)``). The decoding loop is a client of
the generator's public step API (:mod:`.step_api`: ``start()``, ``append_tokens(ids) -> logits``),
as is the greedy loop, so it needs nothing private of the generator and does not import it.

**The two answer grammars** (``tasks/answers.py`` formats)::

    mpc:       [REASON "\\n"] "<answer>" "{" PAIR (", " PAIR)* "}" "</answer>" EOS
               PAIR   = '"' NAME '": ' NUMBER
    decision:  [REASON "\\n"] "<answer>" ("True" | "False") "</answer>" EOS

* REASON: one optional line of free text, 1..``max_reason_chars`` (160) characters, without
  control characters and without the text of a tag (``<`` itself is fine: "needs < 50");
  ``\\n`` ends it and is always followed by ``<answer>``. With no reason the answer starts with ``<answer>`` directly. Both tasks allow it:
  the trained models write one before a decision too ("mean v 180, needs > 300."), and forcing
  ``<answer>`` first would take that reasoning away from them.
* NAME: one of the answer schema's parameter names (the file's ``answer_schema`` metadata, else
  ``control.params``), each at most once. ``key_order="canonical"`` (default) also requires the
  names in the schema's order -- the order ``format_mpc_answer`` writes and the model was trained
  on -- so fewer names are possible at each point and more of the text is forced;
  ``key_order="any"`` accepts any order.
* NUMBER: ``-?(0|[1-9][0-9]*)(\\.[0-9]{1,3})?`` with at most as many integer digits as the
  parameter's largest bound needs (qn [0, 100]: 3; qv [0, 20]: 2; qac [0, 1]: 1) and at most 3
  decimals (``format_number``'s precision); ``-`` only where the range has negative numbers.
  Because the digits are bounded, range checking is a *prefix* check: a prefix is allowed only if
  some completion of it lies in the range (exact, in integer thousandths). A number ends (``,``
  or ``}``) only when its value is in range.
* v_min <= v_max: when one of the two is written, its range is narrowed by the other's value if
  that one is already written, else by the other's *default* (v_min 1, v_max 5). So every
  closed object is consistent after the parser fills in defaults; the one thing it rules out is
  a v_max below 1 m/s *before* v_min (write v_min first -- the canonical order does).
* EOS is the generator's end token (``<|endoftext|>`` for our presets, ``<|im_end|>`` for a
  ChatML model) and is only ever allowed as that token. Whitespace is canonical (``", "``,
  ``": "``), exactly as ``format_mpc_answer`` writes it.
* The tags: where the tokenizer has both ``<answer>`` and ``</answer>`` as single tokens (our
  from-scratch tokenizers), they are grammar *symbols* and only ever allowed as those tokens,
  never spelled out of pieces. Where it has not (a pretrained tokenizer such as SmolLM2's writes
  ``<`` ``answer`` ``>``), :class:`TokenConstraint` switches its grammar to
  ``tags_as_text=True`` (``answer_grammar``): the tags are then literal text, matched character
  by character through the same vocabulary trie as ``{"`` or ``": ``, forced like any fixed text,
  and counted by the budget in characters; a tag token the tokenizer does have is then just one
  more way to spell it. The choice is made per tokenizer, so the tiny models' constrained
  results are those of the symbol grammar, unchanged. Added / special tokens (``<|im_start|>``,
  ``<|endoftext|>``, pad, ...) other than EOS are never allowed.

Every text the grammar accepts parses with ``parse_mpc_answer`` / ``parse_decision_answer``
(tests/test_constrained.py checks it with random weights and sampling).

**Token level.** Each vocabulary token's text is decoded once; tokens whose text is not valid
UTF-8 on its own (byte fragments, U+FFFD) are never allowed. A token is allowed in a grammar
state if the character automaton can consume its whole text (a trie over the vocabulary is
walked with the automaton, so only viable branches are visited); the masks are cached per
state. **Token budget**: the automaton also knows the length of the shortest completion of
every state (in characters, an upper bound on tokens since every character is a token of the
byte-level vocabulary); a token is allowed only if what remains of ``max_new_tokens`` after it
still fits that completion, so a constrained answer is always finished within the budget (when
the budget cannot hold even the shortest answer -- e.g. a 2-token warm-up -- the grammar still
applies but the text is cut off).

**Forced tokens.** Where exactly one token is allowed (``</answer>`` after ``}``, EOS after it,
``<answer>`` after the reason line, ``</answer>`` after ``True``) or where the grammar fixes the
next characters (the rest of a name once it is unique, ``": ``, ``{"``, `` "`` after a comma),
the token is *forced*: for a fixed text the token is the first token of its canonical
tokenization (what the model was trained on), and it is forced only when no allowed token
reaches past the fixed text (after ``":`` a space is forced for ``qv`` but not for ``a_min``,
whose value may start with the `` -`` token). Forced tokens are appended without a forward pass
of their own: they are fed to the graph together with the next model token in one run (the
graph accepts several new tokens with a past), or with the prompt in the prefill. Generation
results count them (``forced_tokens``; ``emitted_tokens`` counts all tokens of the answer, so the
model chose ``emitted_tokens - forced_tokens`` of them, one forward pass each).

Greedy decoding takes the argmax over the allowed tokens (the same token as unconstrained greedy
whenever that one is allowed); sampling draws from the softmax of the allowed logits / temperature.

Cost: the mask is built in Python from cached masks (the first answer fills the caches), and
forcing pays because a graph run that feeds a few tokens costs little more than a 1-token run,
while each forced token saves a forward pass of its own. What it costs and saves on the shipped
model (time per answer, graph runs, forced tokens, identical answers) is measured by
``bench/constrained_decode.py``: ``bench/results/constrained_decode.md``.
"""

from __future__ import annotations

import time
import weakref
from typing import Any

import numpy as np

from ..contracts.answer_format import ANSWER_CLOSE, ANSWER_OPEN
from .answer_grammar import (
    CLOSE,
    DECISION_MARKER,
    EOS,
    OPEN,
    TASKS,
    AnswerGrammar,
    NumberSpec,
    State,
    decision_grammar,
    infer_task,
    mpc_grammar,
)
from .step_api import DecodeSession, GenerationResult, StepDecoder

__all__ = [
    "DECISION_MARKER",
    "TASKS",
    "AnswerGrammar",
    "NumberSpec",
    "TokenConstraint",
    "constraint_for",
    "decision_grammar",
    "generate_constrained",
    "infer_task",
    "mpc_grammar",
]

_BUDGET_CAP = 64  # remaining-token counts >= this never constrain (every shortest completion is shorter;
#                   grammars with longer names raise the cap to their AnswerGrammar.cost_bound)


# --------------------------------------------------------------------------------- token level
class _Node:
    __slots__ = ("children", "ids")

    def __init__(self) -> None:
        self.children: dict[str, _Node] = {}
        self.ids: list[int] = []


class TokenConstraint:
    """An :class:`AnswerGrammar` over a tokenizer's vocabulary: allowed-token masks and forced tokens.

    ``tokenizer``: a ``tokenizers.Tokenizer``; ``eos_id``: the end-of-sequence token. The tags are
    symbols when the tokenizer has both as single tokens, else text: ``self.grammar`` is
    ``grammar`` with ``tags_as_text`` set accordingly (see the module docstring). Masks and
    transitions are cached per grammar state (the caches live as long as this object).
    ValueError (one line) when the tokenizer cannot express the grammar."""

    def __init__(self, grammar: AnswerGrammar, tokenizer: Any, eos_id: int, cache_limit: int = 200_000) -> None:
        self.tokenizer = tokenizer
        self.eos_id = int(eos_id)
        vocab = tokenizer.get_vocab_size()
        if not 0 <= self.eos_id < vocab:
            raise ValueError(f"the EOS id {self.eos_id} is not a token of the tokenizer (vocabulary {vocab})")
        tag_ids = {text: tokenizer.token_to_id(text) for text in (ANSWER_OPEN, ANSWER_CLOSE)}
        tags_as_text = any(tid is None for tid in tag_ids.values())
        self.grammar = grammar = grammar.with_tags_as_text(tags_as_text)
        self.texts: list[str | None] = [None] * vocab
        self.symbols: dict[int, str] = {self.eos_id: EOS}
        if not tags_as_text:
            self.symbols[int(tag_ids[ANSWER_OPEN])] = OPEN
            self.symbols[int(tag_ids[ANSWER_CLOSE])] = CLOSE
        if self.eos_id in tag_ids.values():
            raise ValueError(f"the EOS id {self.eos_id} is an answer tag's token; pass the tokenizer's end token")
        # a tag token the tokenizer has is one more spelling of the tag when the tags are text
        tag_tokens = {int(t) for t in tag_ids.values() if t is not None} if tags_as_text else set()
        added = {int(i) for i in getattr(tokenizer, "get_added_tokens_decoder", dict)()} - tag_tokens
        self.root = _Node()
        for tid in range(vocab):
            if tid in self.symbols or tid in added:
                continue  # tags (as symbols) / EOS only as symbols; pad and other added tokens never
            text = tokenizer.decode([tid], skip_special_tokens=False)
            if not text or "\ufffd" in text:
                continue  # byte fragments of a multi-byte character
            self.texts[tid] = text
            node = self.root
            for c in text:
                node = node.children.setdefault(c, _Node())
            node.ids.append(tid)
        for tag in (ANSWER_OPEN, ANSWER_CLOSE) if tags_as_text else ():
            if not self._spellable(tag):
                raise ValueError(f"the tokenizer cannot spell {tag!r} with its ordinary tokens: constrained decoding "
                                 "needs the answer tags as single tokens or as text")
        self._cache: dict[tuple, tuple[np.ndarray, int | None]] = {}
        self._advance: dict[tuple, State | None] = {}
        self._encoded: dict[str, list[int]] = {}
        self._cache_limit = int(cache_limit)
        self._cap = max(_BUDGET_CAP, grammar.cost_bound + 2)
        # reason states 1 <= n <= _reason_same have the same mask (no token reaches the length limit)
        self._reason_same = grammar.max_reason_chars - max((len(t) for t in self.texts if t), default=0)

    def _spellable(self, text: str) -> bool:
        """Some sequence of allowed tokens writes exactly ``text``."""
        reach = [False] * (len(text) + 1)
        reach[0] = True
        for i in range(len(text)):
            node = self.root if reach[i] else None
            j = i
            while node is not None and j < len(text):
                node = node.children.get(text[j])
                j += 1
                if node is not None and node.ids:
                    reach[j] = True
        return reach[-1]

    def _budget_key(self, remaining: int | None) -> int:
        return self._cap if remaining is None or remaining >= self._cap else int(remaining)

    def advance(self, s: State, token: int) -> State | None:
        """State after ``token`` (None: the grammar does not allow it)."""
        key = (s, token)
        if key not in self._advance:
            if len(self._advance) > self._cache_limit:
                self._advance.clear()
            sym = self.symbols.get(token)
            if sym is not None:
                nxt = self.grammar.step_symbol(s, sym)
            else:
                text = self.texts[token] if 0 <= token < len(self.texts) else None
                nxt = self.grammar.step_text(s, text) if text else None
            self._advance[key] = nxt
        return self._advance[key]

    def options(self, s: State, remaining: int | None) -> tuple[np.ndarray, int | None]:
        """(allowed token ids, ascending; the forced token or None) in state ``s`` when
        ``remaining`` tokens may still be emitted (None: no budget)."""
        budget = self._budget_key(remaining)
        key = (("R", 1, s[2]) if s[0] == "R" and 1 <= s[1] <= self._reason_same else s, budget)
        got = self._cache.get(key)
        if got is None:
            if len(self._cache) > self._cache_limit:
                self._cache.clear()
            got = self._cache[key] = self._compute(s, budget)
        return got

    def _compute(self, s: State, budget: int) -> tuple[np.ndarray, int | None]:
        g = self.grammar
        limit = budget - 1  # tokens left after this one
        allowed: list[int] = []
        for tid, sym in self.symbols.items():
            nxt = g.step_symbol(s, sym)
            if nxt is not None and g.cost(nxt) <= limit:
                allowed.append(tid)
        longest = 0
        stack: list[tuple[_Node, State, int]] = [(self.root, s, 0)]
        while stack:
            node, st, depth = stack.pop()
            for c, child in node.children.items():
                nxt = g.step_char(st, c)
                if nxt is None:
                    continue
                if child.ids and g.cost(nxt) <= limit:
                    allowed.extend(child.ids)
                    longest = max(longest, depth + 1)
                if child.children:
                    stack.append((child, nxt, depth + 1))
        ids = np.array(sorted(allowed), dtype=np.int64)
        forced = int(ids[0]) if len(ids) == 1 else None
        if forced is None and len(ids) > 1:
            text = g.forced_text(s)
            if text and longest <= len(text):  # no allowed token reaches past the fixed text
                first = self._canonical_first(text)
                if first is not None and first in set(ids.tolist()):
                    forced = first
        return ids, forced

    def _canonical_first(self, text: str) -> int | None:
        ids = self._encoded.get(text)
        if ids is None:
            ids = self._encoded[text] = list(self.tokenizer.encode(text, add_special_tokens=False).ids)
        if not ids:
            return None
        t = self.texts[ids[0]] if 0 <= ids[0] < len(self.texts) else None
        return ids[0] if t and text.startswith(t) else None


_CONSTRAINTS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def constraint_for(generator: Any, task: str, **grammar_options: Any) -> TokenConstraint:
    """The (cached) token constraint of ``task`` for a generator (its tokenizer, EOS and answer schema)."""
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}: use one of {', '.join(TASKS)}")
    per_gen = _CONSTRAINTS.setdefault(generator, {})
    key = (task, tuple(sorted(grammar_options.items())))
    if key not in per_gen:
        grammar = (mpc_grammar(getattr(generator, "answer_schema", None), **grammar_options) if task == "mpc"
                   else decision_grammar())
        per_gen[key] = TokenConstraint(grammar, generator.tokenizer, generator.eos_id)
    return per_gen[key]


# ---------------------------------------------------------------------------------- decoding
def _choose(logits: np.ndarray, allowed: np.ndarray | None, temperature: float, rng: np.random.Generator | None) -> int:
    row = logits if allowed is None else logits[allowed]
    if temperature <= 0.0:
        k = int(np.argmax(row))
    else:
        z = row.astype(np.float64) / temperature
        z -= z.max()
        p = np.exp(z)
        p /= p.sum()
        k = int(rng.choice(len(p), p=p))
    return k if allowed is None else int(allowed[k])


def _prefill(session: DecodeSession, ids: list[int]) -> np.ndarray:
    """The prompt's logits (at least the last row): ``session.prefill`` where the session has one
    (the ONNX generator's, which starts from a cached prompt prefix), else ``append_tokens``."""
    prefill = getattr(session, "prefill", None)
    return prefill(ids) if prefill is not None else session.append_tokens(ids)


def generate_constrained(gen: StepDecoder, prompt: str, max_new_tokens: int,
                         constraint: TokenConstraint | None, *, temperature: float = 0.0,
                         rng: np.random.Generator | None = None, stop_at_eos: bool = True,
                         skip_forced: bool = True) -> GenerationResult:
    """Generate with ``constraint`` (None: no mask -- plain sampling) from ``gen``'s graph.

    ``skip_forced=False`` runs the graph once per forced token too (a reference for tests: the
    same text, slower). Timing: ``time_to_first_token_s`` ends when the first model-chosen token
    is known; ``decode_times_s`` holds one entry per further model-chosen token (its graph run,
    which also feeds the forced tokens before it, and the choice)."""
    t0 = time.perf_counter()
    if temperature > 0.0 and rng is None:
        rng = np.random.default_rng()
    ids = gen.encode(prompt)
    if not ids:
        raise ValueError("the prompt encodes to zero tokens; give a non-empty prompt")
    gen.check_fits(len(ids), max_new_tokens)
    state = constraint.grammar.start if constraint is not None else None
    budget_ok = constraint is None or constraint.grammar.cost(state) <= max_new_tokens
    out: list[int] = []
    pending: list[int] = []  # emitted tokens not fed to the graph yet
    forced_count = passes = 0
    finished = False

    def remaining() -> int | None:
        return max_new_tokens - len(out) if budget_ok else None

    def take_forced() -> None:
        nonlocal state, forced_count, finished
        while constraint is not None and not finished and len(out) < max_new_tokens:
            _, forced = constraint.options(state, remaining())
            if forced is None:
                return
            out.append(forced)
            pending.append(forced)
            forced_count += 1
            state = constraint.advance(state, forced)
            finished = constraint.grammar.done(state)

    def feed(session: DecodeSession, tokens: list[int]) -> np.ndarray:
        nonlocal passes
        if skip_forced:
            passes += 1
            return session.append_tokens(tokens)
        logits = None
        for t in tokens:  # reference mode: one graph run per token
            passes += 1
            logits = session.append_tokens([t])
        return logits

    take_forced()
    ttft: float | None = None
    decode_times: list[float] = []
    stopped = finished
    if not finished and len(out) < max_new_tokens:
        session = gen.start()
        passes += 1
        if skip_forced:
            logits = _prefill(session, ids + pending)
        else:
            logits = _prefill(session, ids)
            if pending:
                logits = feed(session, pending)
        pending = []
        mark = t0
        while True:
            allowed = None
            if constraint is not None:
                allowed, _ = constraint.options(state, remaining())
                if not len(allowed):  # cannot happen with the budget guarantee; be safe without it
                    break
            token = _choose(logits[-1], allowed, temperature, rng)
            out.append(token)
            now = time.perf_counter()
            if ttft is None:
                ttft = now - t0
            else:
                decode_times.append(now - mark)
            mark = now
            if constraint is not None:
                state = constraint.advance(state, token)
                finished = constraint.grammar.done(state)
                take_forced()
                stopped = finished
            else:
                stopped = stop_at_eos and token == gen.eos_id
            if stopped or len(out) >= max_new_tokens:
                break
            new = [token] + pending
            pending = []
            logits = feed(session, new)
    if ttft is None:
        ttft = time.perf_counter() - t0
    text = gen.decode(out)
    return GenerationResult(text=text, token_ids=tuple(out), prompt_tokens=len(ids), emitted_tokens=len(out),
                            time_to_first_token_s=ttft, decode_times_s=tuple(decode_times),
                            total_s=time.perf_counter() - t0, stopped_at_eos=bool(stopped),
                            forced_tokens=forced_count, forward_passes=passes,
                            constrained=constraint.grammar.task if constraint is not None else None)
