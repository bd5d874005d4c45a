"""Instruction categories of the MPC task and their phrasings (train and held-out sets, disjoint).

Five categories, as in RobotxR1: follow the centre line, drive at a reference velocity (the
phrasing carries the number), reverse, drive smoothly, follow the racing line. Every category
has many phrasings; the held-out ones never appear in training, so an evaluation on them
measures whether a model understood the instruction rather than memorised a string.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from ..contracts.task_enums import Category


REVERSE_TARGET_SPEED = -1.0  # m/s, the reverse category's error is measured against it
SPLITS = ("train", "heldout")
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
        "heldout": (
            "Please keep to the midline of the course.",
            "I want you glued to the centre of the track.",
            "Stay halfway between the left and right boundaries.",
            "Don't drift sideways, keep it centred.",
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
        "heldout": (
            "Could you travel at exactly {v} metres per second?",
            "I'd like the car to move at {v} m/s, no faster, no slower.",
            "Regulate the velocity to {v} m/s.",
            "Lap the course at a steady {v} m/s.",
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
        "heldout": (
            "Travel rearwards around the course.",
            "Let the car roll backward, please.",
            "Head the opposite way without turning around.",
            "Can you back the vehicle down the track?",
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
        "heldout": (
            "Pretend there is a full cup of coffee on the dashboard.",
            "Keep the g-forces low.",
            "Be soft on the throttle and the steering.",
            "I get car-sick easily, take it easy.",
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
        "heldout": (
            "Hit every apex like a race driver would.",
            "Take the fastest line around the circuit.",
            "Drive the minimum-curvature line.",
            "Clip the apexes and use the full width of the track.",
        ),
    },
}


# Compositional training phrasings: (openings, endings) per category, combined exhaustively.
# They widen the training language (a from-scratch model knows no synonyms) and are checked to be
# disjoint from the held-out phrasings; the held-out set stays the test of paraphrase robustness.
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
    held = {" ".join(p.lower().split()) for p in _PHRASINGS[category]["heldout"]}
    assert not held & {" ".join(p.lower().split()) for p in out}, f"{category}: training phrasing is held out"
    return out


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


def phrasings(category: Category, split: str) -> tuple[str, ...]:
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}: use one of {SPLITS}")
    return _PHRASINGS[Category(category)][split]


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
    """Every phrasing of ``split``; reference-velocity phrasings get seeded target speeds."""
    rng = np.random.default_rng(seed + (0 if split == "train" else 10_000))
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
_KEYWORDS: tuple[tuple[Category, tuple[str, ...]], ...] = (
    (Category.REVERSE, ("revers", "backward", "back up", "back the", "rearward", "roll backward")),
    (Category.RACING_LINE, ("racing", "apex", "race", "fastest line", "minimum-curvature", "minimum curvature")),
    (Category.SMOOTH, ("smooth", "comfort", "gentl", "jerk", "g-force", "soft", "coffee", "car-sick", "easy")),
    (Category.CENTRELINE, ("centre", "center", "middle", "midline", "halfway", "equal distance", "centred")),
)


def classify_instruction(text: str) -> Instruction:
    """Map a free-text instruction onto a category (exact phrasings first, then keywords).

    Used by the command line, where a person types an instruction; raises ValueError naming the
    categories when the text matches none (pass the category explicitly then)."""
    norm = " ".join(text.lower().split())
    for category, splits in _PHRASINGS.items():
        for p in training_phrasings(category) + splits["heldout"]:
            if category is Category.REFERENCE_VELOCITY:
                pattern = re.escape(" ".join(p.lower().split())).replace(re.escape("{v}"), r"(\d+(?:\.\d+)?)")
                m = re.fullmatch(pattern, norm)
                if m:
                    return Instruction(text, category, float(m.group(1)))
            elif norm == " ".join(p.lower().split()):
                return Instruction(text, category)
    m = _SPEED_RE.search(norm)
    if m and not any(k in norm for k in _KEYWORDS[0][1]):
        return Instruction(text, Category.REFERENCE_VELOCITY, float(m.group(1)))
    for category, words in _KEYWORDS:
        if any(w in norm for w in words):
            return Instruction(text, category)
    raise ValueError(f"cannot tell the category of instruction {text!r}; pass one of "
                     f"{', '.join(c.value for c in Category)} explicitly")
