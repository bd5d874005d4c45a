"""Closed-loop error of each instruction category and control adaptability.

Errors (root mean square over the evaluation window, SI units):
  centreline          lateral offset d from the centre line (m)
  reference_velocity  v - target speed (m/s)
  reverse             v - (-1 m/s) (m/s)
  smooth              sqrt(mean(ax^2 + ay^2)) of the body accelerations (m/s^2)
  racing_line         d - d_racing_line(s) (m)

Control adaptability of one parameter set on one instruction = (E_default - E) / E_default,
clipped to [WORST_ADAPTABILITY, 1]; a run that crashes, stalls (see :func:`stalled`) or
whose answer does not parse scores WORST_ADAPTABILITY, the lower clip of the RL reward. The
per-category score is the mean over that category's instructions; "overall" is the mean of the
category means, so that every category weighs the same. The errors follow RobotxR1.

The centre-line and smooth errors can be lowered by driving slowly (less lateral acceleration,
less tracking error); the progress guard bounds that: a run below the evaluation's mean progress
speed counts as stalled and scores the worst case (docs/evaluation.md).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable

import numpy as np

from ..contracts.task_enums import Category
from .instructions import Instruction

WORST_ADAPTABILITY = -4.0
BEST_ADAPTABILITY = 1.0


@dataclass(frozen=True)
class Trajectory:
    """What the metrics need from a closed-loop run, one entry per control step."""

    t: np.ndarray
    s: np.ndarray
    d: np.ndarray
    v: np.ndarray
    ax: np.ndarray
    ay: np.ndarray
    racing_d: np.ndarray  # racing-line offset at each s
    progress: float  # signed arc length driven, m
    crashed: bool
    duration: float  # s of simulated time

    def __post_init__(self) -> None:
        n = len(self.t)
        for name in ("s", "d", "v", "ax", "ay", "racing_d"):
            if len(getattr(self, name)) != n:
                raise ValueError(f"Trajectory.{name} has {len(getattr(self, name))} samples, t has {n}")
        if n == 0:
            raise ValueError("Trajectory is empty")


def rms(x: np.ndarray) -> float:
    x = np.asarray(x, dtype=float)
    return float(math.sqrt(np.mean(x * x)))


def category_error(instruction: Instruction, traj: Trajectory) -> float:
    """RMS error of ``traj`` for the instruction's category (see module docstring)."""
    c = instruction.category
    if c is Category.CENTRELINE:
        return rms(traj.d)
    if c in (Category.REFERENCE_VELOCITY, Category.REVERSE):
        return rms(traj.v - instruction.reference_speed)
    if c is Category.SMOOTH:
        return float(math.sqrt(np.mean(traj.ax ** 2 + traj.ay ** 2)))
    if c is Category.RACING_LINE:
        return rms(traj.d - traj.racing_d)
    raise ValueError(f"unknown category {c!r}")


def stalled(instruction: Instruction, traj: Trajectory, min_speed: float) -> bool:
    """True when the car did not really drive: no instruction asks it to stand still, and
    standing still would otherwise be a perfect centre-line or smoothness score. Forward
    categories need a mean forward progress speed of ``min_speed``; reverse needs half of it
    backwards (the reverse target is only 1 m/s)."""
    rate = traj.progress / max(traj.duration, 1e-9)
    if instruction.category is Category.REVERSE:
        return rate > -0.5 * min_speed
    if instruction.category is Category.REFERENCE_VELOCITY:
        return rate < 0.5 * min(min_speed, instruction.target_speed)
    return rate < min_speed


def adaptability(error: float, default_error: float, failed: bool = False) -> float:
    """Relative improvement over the default parameters, clipped; ``failed`` scores the worst case."""
    if failed or not math.isfinite(error):
        return WORST_ADAPTABILITY
    if default_error <= 0:
        return 0.0 if error <= 0 else WORST_ADAPTABILITY
    value = (default_error - error) / default_error
    return float(min(max(value, WORST_ADAPTABILITY), BEST_ADAPTABILITY))


def summarise_adaptability(scores: Iterable[tuple[Category, float]]) -> dict[str, float]:
    """Per-category means and the overall mean of the category means."""
    by_cat: dict[Category, list[float]] = {}
    for cat, score in scores:
        by_cat.setdefault(Category(cat), []).append(float(score))
    out = {c.value: float(np.mean(v)) for c, v in by_cat.items()}
    out["overall"] = float(np.mean(list(out.values()))) if out else float("nan")
    return out
