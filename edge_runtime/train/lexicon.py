"""A word lexicon for SFT data augmentation: WordNet synonyms of the training words, and
distractor words that carry no driving instruction.

Why: a model trained from scratch knows only the words of its training phrasings. An unseen
paraphrase with one unknown word then lands on whatever answer the remaining words suggest --
sometimes a parameter set that stalls the car, which scores the worst case. Three augmentations,
all derived from the training phrasings and a general lexicon, address this. The lexicon never
holds a word that only validation or test phrasings use (:func:`unseen_words`, checked by
:func:`check_no_unseen_words`): otherwise training would see words of the evaluation sets and
their scores would no longer measure unseen language.

* **synonym substitution** -- a content word of a training phrasing is replaced, with a set
  probability, by one of its WordNet synonyms (the lemmas of its first few senses), so the model
  sees each instruction in many words;
* **distractor instructions** -- every *category-bearing* word of a training phrasing (a word
  that occurs in the phrasings of exactly one category) is replaced by a random common English
  word from outside the lexicon; such an instruction carries no category, and the SFT answer is
  the default parameter set. A model that does not understand an instruction then keeps the
  defaults (score 0) instead of inventing parameters (score down to -4).
* **word insertion** -- random distractor words are inserted into a training phrasing whose
  category-bearing words stay; the answer is the phrasing's own. Together with the distractors
  this teaches the rule "an instruction word decides, other unknown words do not": without it a
  model learns "any unknown word means the defaults" and drops a clear instruction that comes
  with one unfamiliar word ("Clip the apexes and use the full width of the track").

The lexicon file is built offline by ``tools/build_lexicon.py`` from the WordNet 3.0 database
files (Princeton WordNet licence, reproduced in the file) and shipped with the package, so
training never reads anything from the network.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

from ..tasks.decision import DecisionInstruction
from ..tasks.decision import phrasings as decision_phrasings
from ..contracts.task_enums import Category
from ..tasks.instructions import phrasings, training_phrasings

__all__ = ["Lexicon", "DEFAULT_LEXICON", "load_lexicon", "words_of", "content_words", "source_words",
           "category_bearing_words", "unseen_words", "check_no_unseen_words", "substitute_synonyms",
           "distractor_phrasing", "insert_words"]

DEFAULT_LEXICON = Path(__file__).resolve().parent / "data" / "lexicon.json"
LEXICON_VERSION = 1

# Function words -- articles, pronouns, prepositions, conjunctions, auxiliaries and modals,
# determiners, politeness and discourse words: never substituted, never category-bearing (a
# phrasing template's "without" or "along" says nothing about the instruction's category).
STOPWORDS = frozenset("""
a an the this that these those there here
i me my mine we us our ours you your yours he him his she her hers it its they them their theirs
i'd i'm i'll you'd you're you'll it's let's what which who whom whose how when where why
about above across after against along amid among around as at before behind below beneath beside
besides between beyond by despite down during except for from in inside into like near of off on
onto out outside over past per since than through throughout till to toward towards under
underneath until unto up upon via with within without
and or but nor so yet if then because while although though whether either neither both
is are be been being am was were do does did doing done don't doesn't didn't not no
have has had having can could would should will shall may might must
all any each every some such same other another own only just also too very much many more most
please now ok okay hey next again still
""".split())

# Numbers and units are the content of a speed instruction, not a wording: never substituted.
PROTECTED_WORDS = frozenset("one two three four five six seven eight nine ten meter meters metre metres second "
                            "seconds per mps".split())

_WORD_RE = re.compile(r"[a-z][a-z'-]*[a-z]|[a-z]")


def words_of(text: str) -> list[str]:
    """Lower-case words of ``text`` (letters, inner apostrophes and hyphens); numbers and units dropped."""
    return _WORD_RE.findall(text.lower().replace("{v}", " "))


def content_words(text: str) -> list[str]:
    """Words that carry meaning: stopwords and single letters (the "m" and "s" of m/s) dropped."""
    return [w for w in words_of(text) if w not in STOPWORDS and len(w) > 1]


def source_words() -> list[str]:
    """Every content word of every training phrasing (MPC and decision): the words the lexicon
    gives synonyms for. Validation and test phrasings are not read."""
    texts = [p for c in Category for p in training_phrasings(c)]
    texts += [p for d in DecisionInstruction for p in decision_phrasings(d, "train")]
    return sorted({w for t in texts for w in content_words(t) if w not in PROTECTED_WORDS})


@lru_cache(maxsize=1)
def unseen_words() -> frozenset[str]:
    """Content words of the validation and test phrasings (MPC and decision) that no training
    phrasing uses: the lexicon must not contain them (function words say nothing about a split)."""
    def vocabulary(texts: list[str]) -> set[str]:
        return {w for t in texts for w in words_of(t)}
    unseen = [p for c in Category for s in ("validation", "test") for p in phrasings(c, s)]
    unseen += [p for d in DecisionInstruction for s in ("validation", "test") for p in decision_phrasings(d, s)]
    train = [p for c in Category for p in training_phrasings(c)]
    train += [p for d in DecisionInstruction for p in decision_phrasings(d, "train")]
    return frozenset(vocabulary(unseen) - vocabulary(train) - STOPWORDS)


def check_no_unseen_words(synonyms: dict[str, tuple[str, ...]], distractors: tuple[str, ...]) -> None:
    """Raise ValueError naming the validation/test-only words found in a lexicon."""
    words = set(synonyms) | {w for syns in synonyms.values() for s in syns for w in s.split()} | set(distractors)
    clash = sorted(words & unseen_words())
    if clash:
        raise ValueError(f"lexicon: {len(clash)} words occur only in validation/test phrasings ({', '.join(clash[:8])}"
                         f"{', ...' if len(clash) > 8 else ''}); rebuild it with tools/build_lexicon.py")


@lru_cache(maxsize=1)
def category_bearing_words() -> dict[str, Category]:
    """Content words that occur in the MPC training phrasings of exactly one category, with it."""
    seen: dict[str, set[Category]] = {}
    for category in Category:
        for phrase in training_phrasings(category):
            for w in content_words(phrase):
                seen.setdefault(w, set()).add(category)
    return {w: next(iter(cats)) for w, cats in sorted(seen.items()) if len(cats) == 1}


@dataclass(frozen=True)
class Lexicon:
    """Synonyms per source word and the distractor vocabulary (disjoint from every lexicon word)."""

    synonyms: dict[str, tuple[str, ...]]
    distractors: tuple[str, ...]
    source: str = ""

    def __post_init__(self) -> None:
        if not self.distractors:
            raise ValueError("Lexicon: the distractor vocabulary is empty")
        known = set(self.synonyms) | {w for syns in self.synonyms.values() for s in syns for w in s.split()}
        clash = sorted(set(self.distractors) & known)
        if clash:
            raise ValueError(f"Lexicon: distractor words also in the synonym lexicon: {clash[:5]}")


def load_lexicon(path: str | Path | None = None) -> Lexicon:
    """Load a lexicon JSON (default: the one shipped with the package); errors name the file."""
    path = Path(path) if path is not None else DEFAULT_LEXICON
    try:
        raw = json.loads(path.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"lexicon {path} not found; build it with tools/build_lexicon.py") from None
    except json.JSONDecodeError as e:
        raise ValueError(f"lexicon {path}: not valid JSON ({e})") from None
    if not isinstance(raw, dict) or raw.get("version") != LEXICON_VERSION:
        raise ValueError(f"lexicon {path}: expected a JSON object with \"version\": {LEXICON_VERSION}")
    try:
        synonyms = {str(k): tuple(str(s) for s in v) for k, v in raw["synonyms"].items()}
        distractors = tuple(str(w) for w in raw["distractors"])
    except (KeyError, AttributeError, TypeError) as e:
        raise ValueError(f"lexicon {path}: needs a \"synonyms\" object of lists and a \"distractors\" list ({e})") from None
    return Lexicon(synonyms, distractors, source=str(raw.get("source", "")))


def _replace_words(text: str, pick) -> str:
    """Rewrite ``text`` word by word; ``pick(word)`` returns a replacement or None. The first
    letter's case is kept, so a sentence still starts with a capital."""
    def sub(m: re.Match) -> str:
        word = m.group(0)
        new = pick(word.lower())
        if new is None:
            return word
        return new[:1].upper() + new[1:] if word[:1].isupper() else new
    return re.sub(r"[A-Za-z][A-Za-z'-]*[A-Za-z]|[A-Za-z]", sub, text)


def substitute_synonyms(text: str, lexicon: Lexicon, rng: np.random.Generator, rate: float) -> str:
    """Replace each content word that has synonyms by a random one with probability ``rate``.
    A ``{v}`` placeholder and numbers are left alone."""
    if rate <= 0:
        return text

    def pick(word: str) -> str | None:
        options = lexicon.synonyms.get(word)
        if not options or word in STOPWORDS or rng.random() >= rate:
            return None
        return options[int(rng.integers(len(options)))]
    return _replace_words(text, pick)


def distractor_phrasing(text: str, lexicon: Lexicon, rng: np.random.Generator) -> str:
    """``text`` with every category-bearing word replaced by a random distractor word: the
    sentence keeps its shape ("Drive ... around the track") but names no category.

    Raises ValueError for a text with no category-bearing word (it would not change)."""
    bearing = category_bearing_words()
    if not any(w in bearing for w in content_words(text)):
        raise ValueError(f"distractor_phrasing: {text!r} has no category-bearing word to replace")
    words = lexicon.distractors
    return _replace_words(text, lambda w: words[int(rng.integers(len(words)))] if w in bearing else None)


def _is_anchor(token: str) -> bool:
    """A token that words must not be inserted next to: numbers, units and the ``{v}`` slot (so
    "2.5 m/s" and "three meters per second" stay whole)."""
    word = token.strip(".,!?;:").lower()
    return ("{v}" in token or any(ch.isdigit() for ch in token) or word in PROTECTED_WORDS
            or word in ("m/s", "m"))


def insert_words(text: str, lexicon: Lexicon, rng: np.random.Generator, max_words: int = 3) -> str:
    """``text`` with 1..``max_words`` random distractor words inserted between its words (never
    before the first word, never next to a number, unit or ``{v}``); the original words, their
    order and the final punctuation are kept."""
    if max_words < 1:
        raise ValueError(f"insert_words: max_words must be >= 1, got {max_words}")
    tokens = text.split()
    gaps = [i for i in range(1, len(tokens) + 1)
            if not _is_anchor(tokens[i - 1]) and (i == len(tokens) or not _is_anchor(tokens[i]))]
    if not gaps:
        return text
    words = lexicon.distractors
    for _ in range(int(rng.integers(1, max_words + 1))):
        i = gaps[int(rng.integers(len(gaps)))]
        new = words[int(rng.integers(len(words)))]
        if i == len(tokens) and tokens[-1][-1:] in ".!?":  # keep the sentence's end mark last
            tokens[-1], new = tokens[-1][:-1], new + tokens[-1][-1]
        tokens.insert(i, new)
        gaps = [g + (g >= i) for g in gaps]
    return " ".join(tokens)
