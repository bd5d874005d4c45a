"""Decision-task data augmentation: random, physically consistent edits of a state history that
keep its label.

Why: the decision answer's reason line copies the deciding statistic from the prompt's summary
line ("d rms 28, needs < 15") before it compares. Histories simulated on one training track
cover a narrow, behaviour-specific range of each statistic, so a small model learns to write a
number that is *typical* for the instruction and behaviour instead of copying the one in the
prompt -- and on a new track, where the numbers differ, it copies wrong numbers and answers
wrong. Editing the histories spreads every statistic over a wide range while keeping the rows,
the summary, the walls and the label consistent, so the only way to the right reason line is
to read the prompt.

Edits (each sample moves the same way, so the history stays one plausible drive):

* **lateral shift** ``δ``: ``d += δ``, ``wall_left -= δ``, ``wall_right += δ`` (the track's
  width at each sample is unchanged), limited so that both wall gaps stay above ``min_wall_gap``;
* **swing scale** ``k``: ``d = mean(d) + k (d - mean(d))``, walls adjusted the same way, limited
  likewise -- weaving becomes wider or flatter;
* **speed scale** ``c``: ``v`` and ``vs`` times ``c`` (``s`` and the racing-line offsets at
  those ``s`` are kept: the car covered the same ground).

Crashed histories are left alone (every instruction is False for them whatever the numbers).
:func:`augment_example` retries a few draws until the rule label for the example's instruction
equals the original one, so a balanced dataset stays balanced; labels always come from
``tasks.decision.label``.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from ..tasks.behaviours import StateHistory
from ..tasks.decision import DecisionExample, label

__all__ = ["HistoryAugmentConfig", "perturb_history", "augment_example"]


@dataclass(frozen=True)
class HistoryAugmentConfig:
    """Ranges of the edits; defaults spread the summary statistics over several times their
    simulated range."""

    max_shift: float = 0.5  # m, |δ| of the lateral shift
    swing_scale: tuple[float, float] = (0.3, 2.0)  # range of k
    speed_scale: tuple[float, float] = (0.5, 1.8)  # range of c (drawn log-uniformly)
    min_wall_gap: float = 0.08  # m: an edit never puts the car closer than this to a wall
    tries: int = 8  # draws per example until the label matches

    def __post_init__(self) -> None:
        if not self.max_shift >= 0:
            raise ValueError("HistoryAugmentConfig.max_shift must be >= 0")
        for name in ("swing_scale", "speed_scale"):
            lo, hi = getattr(self, name)
            if not 0 < lo <= hi:
                raise ValueError(f"HistoryAugmentConfig.{name} must be (lo, hi) with 0 < lo <= hi, got {(lo, hi)}")
        if not self.min_wall_gap >= 0:
            raise ValueError("HistoryAugmentConfig.min_wall_gap must be >= 0")
        if self.tries < 1:
            raise ValueError("HistoryAugmentConfig.tries must be >= 1")


def _bounded_draw(rng: np.random.Generator, lo: float, hi: float, feasible_lo: float, feasible_hi: float,
                  neutral: float) -> float:
    """A uniform draw from [lo, hi] ∩ [feasible_lo, feasible_hi]; ``neutral`` if that is empty."""
    a, b = max(lo, feasible_lo), min(hi, feasible_hi)
    return float(rng.uniform(a, b)) if a < b else neutral


def perturb_history(history: StateHistory, rng: np.random.Generator,
                    config: HistoryAugmentConfig = HistoryAugmentConfig()) -> StateHistory:
    """One random shift / swing / speed edit of ``history`` (see the module docstring). The walls
    move with the car, so ``wall_left + wall_right`` is unchanged at every sample."""
    if any(history.crashed):
        return history
    d, wl, wr = history.arr("d"), history.arr("wall_left"), history.arr("wall_right")
    gap = config.min_wall_gap
    # shift: wl - δ >= gap and wr + δ >= gap
    delta = _bounded_draw(rng, -config.max_shift, config.max_shift, gap - wr.min(), wl.min() - gap, 0.0)
    d1, wl1, wr1 = d + delta, wl - delta, wr + delta
    # swing: the change of d at each sample is (k - 1) * swing; keep both gaps >= gap
    swing = d1 - d1.mean()
    k_hi, k_lo = np.inf, 0.0
    for sw, left, right in zip(swing, wl1, wr1):
        if sw > 0:  # moving this sample left by (k-1)*sw shrinks the left gap
            k_hi = min(k_hi, 1 + (left - gap) / sw)
            k_lo = max(k_lo, 1 - (right - gap) / sw)
        elif sw < 0:
            k_hi = min(k_hi, 1 + (right - gap) / -sw)
            k_lo = max(k_lo, 1 - (left - gap) / -sw)
    k = _bounded_draw(rng, *config.swing_scale, k_lo, k_hi, 1.0)
    change = (k - 1.0) * swing
    d2, wl2, wr2 = d1 + change, wl1 - change, wr1 + change
    lo, hi = config.speed_scale
    c = float(np.exp(rng.uniform(np.log(lo), np.log(hi))))
    return replace(history, d=tuple(d2), wall_left=tuple(wl2), wall_right=tuple(wr2),
                   v=tuple(history.arr("v") * c), vs=tuple(history.arr("vs") * c))


def augment_example(example: DecisionExample, rng: np.random.Generator,
                    config: HistoryAugmentConfig = HistoryAugmentConfig()) -> DecisionExample:
    """``example`` with a perturbed history whose rule label for its instruction is unchanged;
    the original example if no draw in ``config.tries`` keeps the label."""
    for _ in range(config.tries):
        edited = perturb_history(example.history, rng, config)
        if edited is example.history:
            return example
        if label(edited, example.instruction) == example.label:
            return replace(example, history=edited)
    return example
