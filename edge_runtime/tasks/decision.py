"""DecisionxR1-style task: does the car's recent state history adhere to an instruction?

The LLM reads a short state history (10 Hz over 3 s: arc length ``s``, lateral offset ``d``,
speeds, wall distances, reversing and crashed flags) and one of eight instructions, and answers
True or False. Ground truth comes from documented rules (:class:`LabelThresholds`), and the
histories come from a scripted, torch-free driver in the embedded simulator:

* :class:`FrenetDriver` follows a reference lateral offset ``d_ref(s)`` at a reference speed.
  Steering = curvature feed-forward + a linear law on the offset error and the heading error,
  written in distance travelled so that it behaves the same at every speed and when reversing.
* A *behaviour* (``still``, ``forward``, ``reverse``, ``oscillating``, ``left_wall``,
  ``centreline``, ``fast``, ``racing_line``, ``crash``) is a random draw of driver parameters,
  a :class:`BehaviourSpec`. Draws include near misses (forward speeds around 3 m/s, small and
  large offsets, gentle weaving, slow reversing...) so a label is not a function of the name.
* :func:`generate_decision_dataset` simulates behaviours (each history once, cached, labelled
  against all eight instructions) until every instruction has exactly half True, half False.

Each split (train, validation, test) has its own phrasings and its own track
(``sim.tracks.SPLIT_TRACKS``): validation is for iterating, test only for reporting.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from enum import Enum
from typing import Sequence

import numpy as np

from ..sim.racing_line import RacingLine
from ..sim.tracks import SPLIT_TRACKS, load_track, split_track
from .behaviours import (Behaviour, BehaviourSpec, DriverGains, FrenetDriver, HistoryConfig, StateHistory,
                         sample_behaviour, simulate_history)
from .instructions import check_splits_disjoint

__all__ = [
    "DecisionInstruction", "SPLITS", "phrasings", "Behaviour", "BehaviourSpec", "sample_behaviour",
    "DriverGains", "FrenetDriver", "HistoryConfig", "StateHistory", "simulate_history",
    "LabelThresholds", "DEFAULT_THRESHOLDS", "label", "label_all", "DecisionExample",
    "generate_decision_dataset", "decision_accuracy",
]

SPLITS = tuple(SPLIT_TRACKS)  # ("train", "validation", "test")


def _check_split(split: str) -> str:
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}: use one of {', '.join(map(repr, SPLITS))}")
    return split


# ---------------------------------------------------------------------------------------------
# Instructions and their phrasings
# ---------------------------------------------------------------------------------------------
class DecisionInstruction(str, Enum):
    """The eight instructions of DecisionxR1; ``.text`` is the canonical phrasing."""

    DONT_MOVE = "dont_move"
    REVERSE = "reverse"
    DRIVE_FORWARD = "drive_forward"
    OSCILLATE = "oscillate"
    LEFT_WALL = "left_wall"
    CENTRELINE = "centreline"
    FASTER_THAN_3 = "faster_than_3"
    RACING_LINE = "racing_line"

    @property
    def text(self) -> str:
        return _PHRASINGS[self]["train"][0]


# Canonical text first; the splits are disjoint (checked at import). The test phrasings were
# written fresh, in varied register (terse, polite, indirect, with typos), for reporting only.
_PHRASINGS: dict[DecisionInstruction, dict[str, tuple[str, ...]]] = {
    DecisionInstruction.DONT_MOVE: {
        "train": ("Don't move.", "Stay where you are.", "Keep the car stationary.", "Remain still.", "Stop and stay stopped.", "Do not drive.", "Stand still.", "The car must not move.", "Park the car.", "Keep the vehicle at rest."),
        "validation": ("Do not move the car at all.", "Hold your position without moving."),
        "test": ("Stay put.", "Don't drive anywhere.", "Could you keep the car parked right here?", "The vehicle should not be moving.", "Keep stil, please."),
    },
    DecisionInstruction.REVERSE: {
        "train": ("Reverse.", "Drive backwards.", "Back up along the track.", "Go in reverse.", "Drive the car in reverse.", "Back up slowly.", "Move in reverse.", "Go backwards along the track.", "Reverse the vehicle.", "Drive backward."),
        "validation": ("Move the car backwards.", "Drive in reverse gear."),
        "test": ("Back up.", "Could you go in reverse?", "The car should be moving backwards.", "Drive the car backwrds."),
    },
    DecisionInstruction.DRIVE_FORWARD: {
        "train": ("Drive forward.", "Go forwards.", "Move ahead along the track.", "Keep driving forwards.", "Drive ahead.", "Move forward along the track.", "Go forward.", "Keep moving forwards.", "Drive in the forward direction.", "Drive the car forwards."),
        "validation": ("Make progress in the forward direction.", "Head forward."),
        "test": ("Forward.", "Please keep going forward.", "The car should move ahead.", "Drive foward along the track."),
    },
    DecisionInstruction.OSCILLATE: {
        "train": ("Oscillate.", "Weave from side to side.", "Drive in a zig-zag across the track.",
                  "Swerve left and right repeatedly.", "Zig-zag along the track.", "Weave across the lane.", "Oscillate around the centre line.", "Sway from left to right.", "Swing side to side while driving.", "Drive a wavy line."),
        "validation": ("Snake back and forth across the lane.", "Slalom across the track."),
        "test": ("Zigzag.", "Please swerve back and forth.", "The car should wiggle from one side to the other.", "Weave left and rigth across the track."),
    },
    DecisionInstruction.LEFT_WALL: {
        "train": ("Drive close to the left wall.", "Hug the left wall.", "Stay near the left boundary.",
                  "Keep to the left edge of the track.", "Drive near the left wall.", "Stay close to the wall on the left.", "Keep left, next to the wall.", "Drive along the left side of the track.", "Hug the left side.", "Keep the car near the left barrier."),
        "validation": ("Drive tight along the left-hand barrier.", "Keep the car next to the wall on your left."),
        "test": ("Hug the left.", "Please stay close to the left-hand wall.", "The car should stay near its left boundary.", "Drive next to the lefft wall."),
    },
    DecisionInstruction.CENTRELINE: {
        "train": ("Drive on the centreline.", "Stay in the middle of the track.", "Follow the centre line.",
                  "Keep the car centred on the track.", "Drive in the center of the track.", "Stay on the centre line.", "Keep to the middle of the lane.", "Drive centred between the walls.", "Follow the middle of the track.", "Hold the centerline."),
        "validation": ("Drive down the middle of the road.", "Stick to the center of the track."),
        "test": ("Center line.", "Please keep to the centre of the track.", "The car should stay in the middle.", "Drive on the centre lien."),
    },
    DecisionInstruction.FASTER_THAN_3: {
        "train": ("Drive faster than 3 m/s.", "Go above 3 metres per second.", "Keep your speed over 3 m/s.",
                  "Exceed a speed of 3 m/s.", "Drive quicker than 3 m/s.", "Go faster than 3 meters per second.", "Keep above 3 m/s.", "Your speed must exceed 3 m/s.", "Drive faster than three meters per second.", "Stay over 3 m/s."),
        "validation": ("Drive at more than three metres per second.", "Your speed should be higher than 3 m/s."),
        "test": ("Over 3 m/s.", "Please go quicker than 3 m/s.", "The car should be doing more than 3 metres per second.", "Drive fatser than 3 m/s."),
    },
    DecisionInstruction.RACING_LINE: {
        "train": ("Follow the racing line.", "Drive along the racing line.", "Take the optimal racing line.",
                  "Stick to the racing line.", "Drive the racing line.", "Use the racing line.", "Follow the optimal line.", "Take the ideal racing line.", "Race on the racing line.", "Drive the fastest racing line."),
        "validation": ("Drive the ideal line around the track.", "Trace the fastest line through the corners."),
        "test": ("Racing line.", "Please drive on the racing line.", "The car should follow the best line through each corner.", "Follow the racng line."),
    },
}


check_splits_disjoint(_PHRASINGS, "decision phrasing")


def phrasings(instruction: DecisionInstruction | str, split: str = "train") -> tuple[str, ...]:
    """The phrasings of ``instruction`` in ``split`` (train, validation or test; disjoint sets)."""
    return _PHRASINGS[_as_instruction(instruction)][_check_split(split)]


def _as_instruction(instruction: DecisionInstruction | str) -> DecisionInstruction:
    try:
        return DecisionInstruction(instruction)
    except ValueError:
        names = ", ".join(i.value for i in DecisionInstruction)
        raise ValueError(f"unknown decision instruction {instruction!r}: use one of {names}") from None


# ---------------------------------------------------------------------------------------------
# Rule labels
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class LabelThresholds:
    """The labelling rules. A history in which the car crashed at any sample is False for every
    instruction, "don't move" included (a crash never adheres to an instruction). Otherwise:

    don't move      max |v| < still_speed
    reverse         mean v < reverse_speed
    drive forward   mean v > forward_speed
    oscillate       >= oscillation_crossings sign changes of d − mean(d), counted only on samples
                    outside a ±oscillation_band dead band, and peak-to-peak d > oscillation_p2p
    left wall       mean wall_left < left_wall_distance and driving forward
    centreline      RMS d < centreline_rms and driving forward
    faster than 3   mean v > fast_speed
    racing line     RMS(d − d_race) < racing_line_rms and driving forward
    ("driving forward" = the drive-forward rule.)
    """

    still_speed: float = 0.1
    reverse_speed: float = -0.2
    forward_speed: float = 0.3
    oscillation_band: float = 0.1
    oscillation_crossings: int = 2
    oscillation_p2p: float = 0.4
    left_wall_distance: float = 0.5
    centreline_rms: float = 0.15
    fast_speed: float = 3.0
    racing_line_rms: float = 0.15


DEFAULT_THRESHOLDS = LabelThresholds()


def _sign_changes(x: np.ndarray, band: float) -> int:
    signs = np.sign(x[np.abs(x) > band])
    return int(np.count_nonzero(signs[1:] != signs[:-1])) if len(signs) > 1 else 0


def label(history: StateHistory, instruction: DecisionInstruction | str,
          racing_line_offsets: RacingLine | Sequence[float] | None = None,
          thresholds: LabelThresholds = DEFAULT_THRESHOLDS) -> bool:
    """Does ``history`` adhere to ``instruction``? See :class:`LabelThresholds` for the rules.

    ``racing_line_offsets`` (per-sample offsets, or a RacingLine evaluated at the samples' ``s``)
    overrides ``history.race_d``; one of them is needed for the racing-line instruction.
    """
    ins = _as_instruction(instruction)
    t = thresholds
    if any(history.crashed):
        return False
    v, d = history.arr("v"), history.arr("d")
    forward = float(v.mean()) > t.forward_speed
    if ins is DecisionInstruction.DONT_MOVE:
        return float(np.abs(v).max()) < t.still_speed
    if ins is DecisionInstruction.REVERSE:
        return float(v.mean()) < t.reverse_speed
    if ins is DecisionInstruction.DRIVE_FORWARD:
        return forward
    if ins is DecisionInstruction.OSCILLATE:
        return (_sign_changes(d - d.mean(), t.oscillation_band) >= t.oscillation_crossings
                and float(d.max() - d.min()) > t.oscillation_p2p)
    if ins is DecisionInstruction.LEFT_WALL:
        return forward and float(history.arr("wall_left").mean()) < t.left_wall_distance
    if ins is DecisionInstruction.CENTRELINE:
        return forward and float(np.sqrt(np.mean(d ** 2))) < t.centreline_rms
    if ins is DecisionInstruction.FASTER_THAN_3:
        return float(v.mean()) > t.fast_speed
    # RACING_LINE
    if isinstance(racing_line_offsets, RacingLine):
        race = np.asarray(racing_line_offsets.offset_at(history.arr("s")), dtype=float)
    elif racing_line_offsets is not None:
        race = np.asarray(racing_line_offsets, dtype=float).ravel()
    elif history.race_d is not None:
        race = history.arr("race_d")
    else:
        raise ValueError("label: the racing-line instruction needs racing-line offsets (history.race_d "
                         "or the racing_line_offsets argument)")
    if race.shape != d.shape:
        raise ValueError(f"label: {race.size} racing-line offsets for {d.size} samples")
    return forward and float(np.sqrt(np.mean((d - race) ** 2))) < t.racing_line_rms


def label_all(history: StateHistory, racing_line_offsets: RacingLine | Sequence[float] | None = None,
              thresholds: LabelThresholds = DEFAULT_THRESHOLDS) -> dict[DecisionInstruction, bool]:
    return {ins: label(history, ins, racing_line_offsets, thresholds) for ins in DecisionInstruction}


# ---------------------------------------------------------------------------------------------
# Balanced datasets and the metric
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class DecisionExample:
    instruction: DecisionInstruction
    phrasing: str
    history: StateHistory
    label: bool
    behaviour: str  # the behaviour that produced the history (Behaviour value)


# Which instructions a behaviour *usually* satisfies: only a prior for picking behaviours while
# generating (refined by the labels actually observed); the labels always come from the rules.
_EXPECTED_TRUE: dict[Behaviour, frozenset[DecisionInstruction]] = {
    Behaviour.STILL: frozenset({DecisionInstruction.DONT_MOVE}),
    Behaviour.FORWARD: frozenset({DecisionInstruction.DRIVE_FORWARD}),
    Behaviour.REVERSE: frozenset({DecisionInstruction.REVERSE}),
    Behaviour.OSCILLATING: frozenset({DecisionInstruction.DRIVE_FORWARD, DecisionInstruction.OSCILLATE}),
    Behaviour.LEFT_WALL: frozenset({DecisionInstruction.DRIVE_FORWARD, DecisionInstruction.LEFT_WALL}),
    Behaviour.CENTRELINE: frozenset({DecisionInstruction.DRIVE_FORWARD, DecisionInstruction.CENTRELINE}),
    Behaviour.FAST: frozenset({DecisionInstruction.DRIVE_FORWARD, DecisionInstruction.FASTER_THAN_3}),
    Behaviour.RACING_LINE: frozenset({DecisionInstruction.DRIVE_FORWARD, DecisionInstruction.RACING_LINE}),
    Behaviour.CRASH: frozenset(),
}


def generate_decision_dataset(n_per_instruction: int = 20, split: str = "train", seed: int = 0,
                              track: str | None = None, config: HistoryConfig | None = None,
                              max_simulations: int | None = None) -> list[DecisionExample]:
    """A balanced, shuffled dataset: for every instruction exactly ``n_per_instruction // 2`` True
    and as many False examples, each with a random phrasing of ``split``.

    ``track`` defaults to the split's track (``sim.tracks.SPLIT_TRACKS``).
    Procedure (deterministic in ``seed``): pick an unfilled (instruction, label) slot, weighted by
    how many it still needs; pick a behaviour by how often it produced that label so far (with a
    prior from ``_EXPECTED_TRUE``); simulate it once (cached), label it against all eight
    instructions and put it into every slot that still needs that label. Within an instruction
    each history is used at most once; the same history may serve several instructions.
    """
    _check_split(split)
    if isinstance(n_per_instruction, bool) or not isinstance(n_per_instruction, (int, np.integer)):
        raise ValueError(f"n_per_instruction must be an int, got {n_per_instruction!r}")
    if n_per_instruction < 2 or n_per_instruction % 2:
        raise ValueError(f"n_per_instruction must be even and >= 2 (half True, half False), got {n_per_instruction}")
    track = track or split_track(split)
    config = config or HistoryConfig()
    tr = load_track(track)
    half = int(n_per_instruction) // 2
    max_sims = max_simulations if max_simulations is not None else 100 + 20 * len(DecisionInstruction) * half
    rng = np.random.default_rng(seed)
    behaviours = list(Behaviour)
    instructions = list(DecisionInstruction)
    slots: dict[tuple[DecisionInstruction, bool], list[tuple[StateHistory, Behaviour]]] = {
        (i, lab): [] for i in instructions for lab in (True, False)}
    tries: dict[Behaviour, int] = defaultdict(int)
    hits: dict[tuple[Behaviour, DecisionInstruction, bool], int] = defaultdict(int)
    sims = 0
    while True:
        needy = [k for k, v in slots.items() if len(v) < half]
        if not needy:
            break
        if sims >= max_sims:
            missing = ", ".join(f"{i.value}={lab}: {half - len(slots[(i, lab)])}" for i, lab in needy)
            raise RuntimeError(f"generate_decision_dataset: after {sims} simulations on track {track!r} some "
                               f"slots are still short ({missing}); raise max_simulations or check the track")
        need = np.array([half - len(slots[k]) for k in needy], dtype=float)
        target_ins, target_lab = needy[int(rng.choice(len(needy), p=need / need.sum()))]
        weights = []
        for b in behaviours:
            prior = 2.0 if (target_ins in _EXPECTED_TRUE[b]) == target_lab else 0.5
            weights.append(((hits[(b, target_ins, target_lab)] + prior) / (tries[b] + 2.5)) ** 2)
        w = np.array(weights)
        b = behaviours[int(rng.choice(len(behaviours), p=w / w.sum()))]
        spec = sample_behaviour(b, rng, tr, window_s=config.duration_s)
        hist = simulate_history(spec, track, config)
        sims += 1
        tries[b] += 1
        for ins, lab in label_all(hist).items():
            hits[(b, ins, lab)] += 1
            if len(slots[(ins, lab)]) < half:
                slots[(ins, lab)].append((hist, b))
    examples = []
    for (ins, lab), items in slots.items():
        texts = phrasings(ins, split)
        for hist, b in items:
            examples.append(DecisionExample(ins, texts[int(rng.integers(len(texts)))], hist, lab, b.value))
    return [examples[i] for i in rng.permutation(len(examples))]


def decision_accuracy(predictions: Sequence[bool | None], examples: Sequence[DecisionExample | bool]) -> float:
    """Fraction of correct predictions; ``None`` (an answer that did not parse) counts as wrong."""
    if len(predictions) != len(examples):
        raise ValueError(f"decision_accuracy: {len(predictions)} predictions for {len(examples)} examples")
    if not examples:
        raise ValueError("decision_accuracy: no examples")
    correct = 0
    for p, ex in zip(predictions, examples):
        if p is not None and not isinstance(p, (bool, np.bool_)):
            raise ValueError(f"decision_accuracy: predictions must be bool or None, got {p!r}")
        truth = ex.label if isinstance(ex, DecisionExample) else bool(ex)
        correct += int(p is not None and bool(p) == truth)
    return correct / len(examples)
