"""Instruction phrasings of the MPC task per split (train, validation, test; disjoint) and the
keyword classifier that maps a person's free text onto a category.

Five categories, as in RobotxR1: follow the centre line, drive at a reference velocity (the
phrasing carries the number), reverse, drive smoothly, follow the racing line. Every category
has many phrasings. Validation and test phrasings never appear in training, so an evaluation on
them measures whether a model understood the instruction rather than memorised a string.
Validation may be read and iterated on; the test phrasings were written fresh, in varied
register (terse, polite, indirect, with typos), and are for reporting only (docs/evaluation.md).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from ..contracts.task_enums import Category
from ..sim.tracks import SPLIT_TRACKS


REVERSE_TARGET_SPEED = -1.0  # m/s, the reverse category's error is measured against it
SPLITS = tuple(SPLIT_TRACKS)  # ("train", "validation", "test"); each split has its own track
SPEED_RANGE = (0.5, 4.5)  # m/s: reference-velocity targets drawn from here

_PHRASINGS: dict[Category, dict[str, tuple[str, ...]]] = {
    Category.CENTRELINE: {
        "train": (
            "Drive on the centre line.",
            "Follow the centerline of the track.",
            "Stay in the middle of the track.",
            "Keep the car centred between the walls.",
            "Track the centre line as closely as you can.",
            "Hold the middle of the road.",
            "Drive exactly in the center of the lane.",
            "Keep equal distance to both walls.",
        ),
        "validation": (
            "Please keep to the midline of the course.",
            "I want you glued to the centre of the track.",
            "Stay halfway between the left and right boundaries.",
            "Don't drift sideways, keep it centred.",
        ),
        "test": (
            "Centre line, please.",
            "Drive down the center.",
            "Could you keep the car right in the middle of the track?",
            "Would you mind staying equally far from both walls?",
            "I'd feel better if we stayed away from both edges.",
            "Keep us in the middle of the lane all lap long.",
            "stay on teh centre line",
            "Drive along the middel of the road.",
            "No hugging either wall; the centre is where I want you.",
            "Follow the line that runs down the middle of the track.",
            "Split the track in two and ride the dividing line.",
            "Aim for the center of the lane at all times, thanks.",
            "Keep it centered, mate.",
            "Hold a central position on the track.",
        ),
    },
    Category.REFERENCE_VELOCITY: {
        "train": (
            "Drive at {v} m/s.",
            "Keep a constant speed of {v} m/s.",
            "Hold the speed at {v} meters per second.",
            "Maintain {v} m/s.",
            "Go {v} m/s around the track.",
            "Set your velocity to {v} m/s and keep it.",
            "Cruise at {v} m/s.",
            "Your target speed is {v} m/s.",
        ),
        "validation": (
            "Could you travel at exactly {v} metres per second?",
            "I'd like the car to move at {v} m/s, no faster, no slower.",
            "Regulate the velocity to {v} m/s.",
            "Lap the course at a steady {v} m/s.",
        ),
        "test": (
            "{v} m/s.",
            "Speed {v} m/s, go.",
            "Please drive at a speed of {v} m/s.",
            "Would you hold it at {v} metres per second for me?",
            "I'd like us to cruise along at about {v} m/s.",
            "It would be great if the speedometer read {v} m/s the whole lap.",
            "drvie at {v} m/s pls",
            "Keep teh speed at {v} m/s.",
            "Neither faster nor slower than {v} m/s, please.",
            "Pace yourself at {v} meters per second.",
            "Let's do this lap at {v} m/s.",
            "Stick to {v} m/s around the circuit.",
            "Velocity {v} m/s, steady.",
            "Can we go {v} m/s today?",
        ),
    },
    Category.REVERSE: {
        "train": (
            "Reverse the car.",
            "Drive backwards.",
            "Go in reverse.",
            "Back up along the track.",
            "Drive the car in reverse gear.",
            "Move backwards slowly.",
            "Reverse along the track.",
            "Put it in reverse and drive.",
        ),
        "validation": (
            "Travel rearwards around the course.",
            "Let the car roll backward, please.",
            "Head the opposite way without turning around.",
            "Can you back the vehicle down the track?",
        ),
        "test": (
            "Backwards.",
            "Reverse, now.",
            "Could you please drive the car backwards along the track?",
            "Would you mind reversing for a bit?",
            "I'd like to see the car going tail first.",
            "Let's try the lap with the car moving in reverse.",
            "drive backwrds please",
            "Revrse the car slowly.",
            "Engage reverse and keep going.",
            "Roll back along the track, nose still pointing ahead.",
            "Take the car backwards down the circuit.",
            "Put the car in reverse gear, please.",
            "Move the car rear-first around the track.",
            "Back it up.",
        ),
    },
    Category.SMOOTH: {
        "train": (
            "Drive smoothly.",
            "Drive as smoothly as possible.",
            "Make the ride comfortable.",
            "Avoid harsh acceleration and jerky steering.",
            "Drive gently, passengers are on board.",
            "Minimise the accelerations of the car.",
            "Give me a smooth and comfortable ride.",
            "No sudden moves, drive softly.",
        ),
        "validation": (
            "Pretend there is a full cup of coffee on the dashboard.",
            "Keep the g-forces low.",
            "Be soft on the throttle and the steering.",
            "I get car-sick easily, take it easy.",
        ),
        "test": (
            "Smooth.",
            "Smooth driving, please.",
            "Could you drive a bit more gently?",
            "Would you please avoid any sudden braking or sharp steering?",
            "My passenger is asleep, don't wake them.",
            "I'd rather not be thrown around in my seat.",
            "Drive smoothy, no jerks.",
            "plese drive comfortabley",
            "Treat the throttle and the brakes like they're made of glass.",
            "Take it nice and calm around the lap.",
            "Gentle inputs only.",
            "Keep the ride calm and steady for everyone inside.",
            "Imagine you are carrying a wedding cake.",
            "Keep the lateral and longitudinal accelerations small.",
        ),
    },
    Category.RACING_LINE: {
        "train": (
            "Follow the racing line.",
            "Drive the racing line.",
            "Take the ideal racing line through the corners.",
            "Use the racing line.",
            "Drive like a racer: outside, apex, outside.",
            "Cut the corners like on a race lap.",
            "Follow the optimal racing trajectory.",
            "Race the track on the racing line.",
        ),
        "validation": (
            "Hit every apex like a race driver would.",
            "Take the fastest line around the circuit.",
            "Drive the minimum-curvature line.",
            "Clip the apexes and use the full width of the track.",
        ),
        "test": (
            "Racing line.",
            "Race line, go.",
            "Could you take the racing line through every bend?",
            "Please drive the quickest path around the circuit.",
            "I want the line a Formula 1 driver would pick.",
            "Use all of the track: wide on entry, tight at the apex, wide on exit.",
            "follow the racin line",
            "Drive the racign line please.",
            "Let's set a fast lap on the best line.",
            "Go for lap time, take the ideal line.",
            "Late apex, early throttle, on the ideal trajectory.",
            "Straighten the corners like a racer.",
            "Show me a qualifying lap on the optimal line.",
            "Take each bend on the line that carries the most speed.",
        ),
    },
}


# Compositional training phrasings: (openings, endings) per category, combined exhaustively.
# They widen the training language (a from-scratch model knows no synonyms) and are checked to be
# disjoint from the validation and test phrasings, which stay the measure of paraphrase robustness.
_TRAIN_GRAMMAR: dict[Category, tuple[tuple[str, ...], tuple[str, ...]]] = {
    Category.CENTRELINE: (
        ("Drive on the centre line", "Drive on the centerline", "Stay on the center line",
         "Keep to the middle of the track", "Stay in the middle of the lane", "Hold the car in the centre",
         "Keep the car centered", "Follow the middle of the road", "Track the centerline",
         "Drive in the exact middle", "Keep the same gap to the left and right walls", "Stay centred on the track"),
        ("", " please", " at all times", " around the lap", " all the way round", " and do not cut corners",
         " as precisely as possible"),
    ),
    Category.REFERENCE_VELOCITY: (
        ("Drive at {v} m/s", "Keep a speed of {v} m/s", "Hold {v} m/s", "Go {v} meters per second",
         "Maintain a velocity of {v} m/s", "Set the speed to {v} m/s", "Target speed: {v} m/s",
         "Drive with {v} metres per second", "Run at {v} m/s", "Keep the velocity at {v} m/s",
         "The speed should be {v} m/s", "Travel with a speed of {v} m/s"),
        ("", " please", " around the track", " constantly", " and keep it steady", " the whole time",
         " exactly"),
    ),
    Category.REVERSE: (
        ("Reverse", "Drive backwards", "Drive backward", "Go backwards", "Back up", "Move in reverse",
         "Drive in reverse", "Go in reverse gear", "Move backwards", "Travel in reverse", "Back the car up",
         "Drive the wrong way in reverse gear"),
        ("", " please", " slowly", " along the track", " around the track", " for a while",
         " at walking pace"),
    ),
    Category.SMOOTH: (
        ("Drive smoothly", "Drive comfortably", "Drive gently", "Make the ride smooth", "Avoid jerky moves",
         "Keep the accelerations small", "Drive softly", "Give the passengers a comfortable ride",
         "Brake and steer gently", "Be gentle with the car", "Drive in a relaxed way", "Limit the acceleration"),
        ("", " please", " around the track", " all the time", " for the passengers", " like a chauffeur",
         " without harsh braking"),
    ),
    Category.RACING_LINE: (
        ("Follow the racing line", "Drive the racing line", "Take the racing line", "Race on the ideal line",
         "Use the optimal line", "Drive the ideal trajectory", "Cut the apex of every corner",
         "Go outside, apex, outside", "Drive it like a race lap", "Take the racing trajectory",
         "Follow the optimal racing line", "Drive the line a racer would take"),
        ("", " please", " around the track", " in every corner", " on this lap", " as a race driver",
         " for the best lap time"),
    ),
}


def training_phrasings(category: Category) -> tuple[str, ...]:
    """Every training phrasing of ``category``: the curated train set plus the compositional ones."""
    category = Category(category)
    openings, endings = _TRAIN_GRAMMAR[category]
    generated = tuple(f"{o}{e}." for o in openings for e in endings)
    out = tuple(dict.fromkeys(_PHRASINGS[category]["train"] + generated))
    unseen = {_norm(p) for split in SPLITS if split != "train" for p in _PHRASINGS[category][split]}
    assert not unseen & {_norm(p) for p in out}, f"{category}: a training phrasing is also a validation/test one"
    return out


def _norm(text: str) -> str:
    return " ".join(text.lower().split())


def check_splits_disjoint(table: dict, what: str = "phrasing") -> None:
    """No phrasing of ``table`` ({key: {split: phrasings}}) in two splits (across keys too): a score
    on validation or test must never be a score on text the model was trained or tuned on."""
    owner: dict[str, str] = {}
    for key, splits in table.items():
        if set(splits) != set(SPLITS):
            raise AssertionError(f"{key.value}: phrasings for splits {sorted(splits)}, expected {SPLITS}")
        for split, texts in splits.items():
            for text in texts:
                seen = owner.setdefault(_norm(text), split)
                if seen != split:
                    raise AssertionError(f"{what} {text!r} is in both the {seen} and the {split} split")


check_splits_disjoint(_PHRASINGS)


@dataclass(frozen=True)
class Instruction:
    """One human instruction: its text, its category and, for reference velocity, the target."""

    text: str
    category: Category
    target_speed: float | None = None  # m/s; required for REFERENCE_VELOCITY, else None

    def __post_init__(self) -> None:
        if not isinstance(self.category, Category):
            object.__setattr__(self, "category", Category(self.category))
        if self.category is Category.REFERENCE_VELOCITY:
            if self.target_speed is None or not (0.0 < self.target_speed <= 10.0):
                raise ValueError(f"reference-velocity instruction {self.text!r} needs a target speed in (0, 10] m/s")
        elif self.target_speed is not None:
            raise ValueError(f"only reference-velocity instructions carry a target speed, not {self.category.value}")

    @property
    def reference_speed(self) -> float | None:
        """The speed the category's error is measured against (None where speed is free)."""
        if self.category is Category.REFERENCE_VELOCITY:
            return self.target_speed
        if self.category is Category.REVERSE:
            return REVERSE_TARGET_SPEED
        return None


_SPEED_SEED_OFFSET = {"train": 0, "validation": 10_000, "test": 20_000}


def _check_split(split: str) -> str:
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}: use one of {', '.join(SPLITS)}")
    return split


def phrasings(category: Category, split: str) -> tuple[str, ...]:
    """The curated phrasings of ``category`` in ``split`` (train, validation or test)."""
    return _PHRASINGS[Category(category)][_check_split(split)]


def format_speed(v: float) -> str:
    return f"{v:.1f}"


def make_instruction(category: Category, phrasing: str, target_speed: float | None = None) -> Instruction:
    category = Category(category)
    if category is Category.REFERENCE_VELOCITY:
        if target_speed is None:
            raise ValueError("reference-velocity phrasings need a target speed")
        v = round(float(target_speed), 1)
        return Instruction(phrasing.format(v=format_speed(v)), category, v)
    return Instruction(phrasing, category)


def instruction_set(split: str, speeds_per_phrasing: int = 1, seed: int = 0) -> list[Instruction]:
    """Every phrasing of ``split``; reference-velocity phrasings get seeded target speeds (each
    split draws from its own seed offset; validation keeps the old held-out offset, so its speeds and
    the validation oracle table still match)."""
    rng = np.random.default_rng(seed + _SPEED_SEED_OFFSET[_check_split(split)])
    out: list[Instruction] = []
    for category in Category:
        for phrasing in phrasings(category, split):
            if category is Category.REFERENCE_VELOCITY:
                for v in rng.uniform(*SPEED_RANGE, size=speeds_per_phrasing):
                    out.append(make_instruction(category, phrasing, float(v)))
            else:
                out.append(make_instruction(category, phrasing))
    return out


_SPEED_RE = re.compile(r"(-?\d+(?:\.\d+)?)\s*(?:m/s|meters? per second|metres? per second|mps)", re.I)

# Keyword stage of the classifier. A keyword is a sequence of word terms: a literal word, a stem
# ("revers*": the word starts with it) or "*" (any one word). Every word and stem comes from the
# training phrasings or general knowledge, never from validation or test phrasings (a test checks
# that no word here occurs only in those), so the classifier's accuracy on them is a real
# measurement. Keywords match whole words only ("race" does not match "trace").
_KEYWORDS: dict[Category, tuple[str, ...]] = {
    Category.REVERSE: ("revers*", "backward*", "back up", "back * up", "back * * up"),
    Category.RACING_LINE: ("racing", "race", "races", "racer*", "apex*", "ideal line", "optimal line",
                           "ideal trajectory", "optimal trajectory", "lap time"),
    Category.SMOOTH: ("smooth*", "comfort*", "gentl*", "soft*", "relax*", "chauffeur*", "passenger*",
                      "limit the acceleration*", "minimise the acceleration*", "minimize the acceleration*",
                      "acceleration* small"),
    Category.CENTRELINE: ("centre*", "center*", "middle", "equal distance", "same gap", "between the walls"),
}
# Words that ask for a smooth ride only when negated ("no sudden moves", "without harsh braking").
_NEGATED_KEYWORDS: dict[Category, tuple[str, ...]] = {
    Category.SMOOTH: ("harsh*", "jerk*", "sudden*", "abrupt*"),
}
_PRIORITY = (Category.REVERSE, Category.RACING_LINE, Category.SMOOTH, Category.CENTRELINE)  # breaks ties
_NEGATORS = frozenset({"no", "not", "never", "without", "nor", "neither", "avoid", "dont"})
NEGATION_WINDOW = 3  # words before a keyword, within its clause, that can negate it
_TOKEN_RE = re.compile(r"[a-z0-9]+(?:['’-][a-z0-9]+)*|[.,;:!?()]")


def _compile(keyword: str) -> re.Pattern:
    terms = []
    for term in keyword.split():
        if term == "*":
            terms.append(r"[\w'’-]+")
        elif term.endswith("*"):
            terms.append(re.escape(term[:-1]) + r"[\w'’-]*")
        else:
            terms.append(re.escape(term))
    return re.compile(r"(?<![\w'’-])" + " ".join(terms) + r"(?![\w'’-])")


_COMPILED = {(cat, negated): [_compile(k) for k in table.get(cat, ())]
             for cat in Category for negated, table in ((False, _KEYWORDS), (True, _NEGATED_KEYWORDS))}


def _negated(tokens: list[str], index: int) -> bool:
    """Is the word at ``index`` negated: a negator among the NEGATION_WINDOW words before it, with no
    punctuation in between ("don't reverse", "no backwards drift"; not "don't drift, keep centred")."""
    for tok in reversed(tokens[max(0, index - NEGATION_WINDOW):index]):
        if not tok[0].isalnum():
            return False
        if tok in _NEGATORS or tok.endswith(("n't", "n’t")):
            return True
    return False


def keyword_hits(text: str) -> dict[Category, int]:
    """How many keywords of each category ``text`` contains, negated ones not counted (and the
    negated-only ones counted only when negated)."""
    tokens = _TOKEN_RE.findall(text.lower())
    joined = " ".join(tokens)
    hits: dict[Category, int] = {}
    for (category, wants_negated), patterns in _COMPILED.items():
        for pattern in patterns:
            for m in pattern.finditer(joined):
                if _negated(tokens, joined.count(" ", 0, m.start())) == wants_negated:
                    hits[category] = hits.get(category, 0) + 1
    return hits


def classify_instruction(text: str) -> Instruction:
    """Map a free-text instruction onto a category: an exact training phrasing first, then a
    speed ("2.9 m/s") unless the text asks to reverse, then the category with most keywords.

    Used by the command line and the scenario files, where a person types an instruction; raises
    ValueError naming the categories when the text matches none (pass the category explicitly
    then)."""
    norm = _norm(text)
    for category in Category:
        for p in training_phrasings(category):
            if category is Category.REFERENCE_VELOCITY:
                pattern = re.escape(_norm(p)).replace(re.escape("{v}"), r"(\d+(?:\.\d+)?)")
                m = re.fullmatch(pattern, norm)
                if m:
                    return Instruction(text, category, float(m.group(1)))
            elif norm == _norm(p):
                return Instruction(text, category)
    hits = keyword_hits(norm)
    m = _SPEED_RE.search(norm)
    if m and Category.REVERSE not in hits:
        return Instruction(text, Category.REFERENCE_VELOCITY, float(m.group(1)))
    if hits:
        best = max(hits.values())
        return Instruction(text, next(c for c in _PRIORITY if hits.get(c) == best))
    raise ValueError(f"cannot tell the category of instruction {text!r}; pass one of "
                     f"{', '.join(c.value for c in Category)} explicitly")
