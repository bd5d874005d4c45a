"""Prompt builders of the two driving tasks (plain text, no chat template; vehicle-side, torch-free).

* :func:`build_mpc_prompt` -- MPCxR1: the model reads a human instruction and answers with a new
  MPC parameter set. The prompt holds a one-line role, the parameter table (:data:`PARAM_TABLE`,
  a constant: identical in every prompt), optional context (:class:`PromptContext`), the
  instruction, the answer format and the cue :data:`MPC_CUE` after which the model writes.
* :func:`build_decision_prompt` -- DecisionxR1: the model reads a compact state history and an
  instruction and answers True or False after :data:`DECISION_CUE`.

Both prompts are kept short on purpose (a tiny model is trained on them on a CPU, and every
prompt token costs prefill time on the vehicle). Their lengths per split, in characters and in
tokens of the shipped tokenizer, are in ``bench/results/label_recovery.md``.

**Compact history text.** The recorded window (3 s at 10 Hz in the task) is shown every
:data:`HISTORY_STEP_S` seconds (10 rows, the newest sample always included) with four columns,
all integers in centimetres (cm/s for speed)::

    d     offset from the centre line, + = left     (cm)
    v     speed, < 0 = reversing                     (cm/s)
    wl    distance to the left wall                  (cm)
    dr    d minus the racing-line offset             (cm; column left out when unknown)

followed by a summary line of window statistics (:func:`history_summary`: mean / min / max
speed, mean / RMS / range / sign changes of d, mean wall gap, RMS offset from the racing line)
and ``Crashed: yes|no`` (any sample crashed). Integers in cm rather than metres with
decimals: the tokenizer splits every digit, so each character of a number is one token, and
"-0.12" (5 tokens) becomes "-12" (3 tokens) at the same 1 cm resolution. 1 cm (1 cm/s) is well
below every labelling threshold of :class:`~edge_runtime.tasks.decision.LabelThresholds`
(0.1 m/s, 0.1/0.15/0.4/0.5 m), so the
rules (max |v|, mean v, sign changes and peak-to-peak of d, mean wl, RMS d, RMS dr, crash) can
be recomputed from the text; only the 3:1 subsampling changes them slightly. How often the
labels recomputed from the text agree with the true ones, per split and for a denser table, is
measured by ``bench/label_recovery.py`` (``bench/results/label_recovery.md``); the floor is
enforced by ``tests/test_prompts.py``.

:data:`~edge_runtime.contracts.answer_format.PROMPT_VERSION` names this template; it is stored in
exported models, so change it whenever the text of either prompt changes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..control.params import PARAM_SPECS, ParamSpec
from .behaviours import StateHistory

__all__ = [
    "MPC_CUE", "DECISION_CUE", "SHORT_MEANINGS", "PARAM_TABLE", "HISTORY_STEP_S",
    "PromptContext", "build_mpc_prompt", "build_decision_prompt", "history_text",
]

#: The model writes its answer right after these cues (the prompt ends with them).
MPC_CUE = "Answer:\n"
DECISION_CUE = "Answer:\n"

#: 2-5 word meanings of the parameters for the prompt table (the long ones live in PARAM_SPECS).
SHORT_MEANINGS: dict[str, str] = {
    "qv": "speed tracking weight",
    "qn": "centre line offset weight",
    "qalpha": "heading error weight",
    "qac": "acceleration change weight",
    "qddelta": "steering rate weight",
    "alat_max": "max lateral accel m/s2",
    "a_min": "max braking m/s2",
    "a_max": "max acceleration m/s2",
    "v_min": "min speed m/s (<0 reverses)",
    "v_max": "max and target speed m/s",
    "track_safety_margin": "wall margin m",
}


def _num(x: float) -> str:
    return f"{x:g}"


def _table_line(p: ParamSpec) -> str:
    return f"{p.name} [{_num(p.low)},{_num(p.high)}] {_num(p.default)} {SHORT_MEANINGS[p.name]}"


#: The parameter table of the MPC prompt: one line per parameter, "name [min,max] default meaning".
PARAM_TABLE: str = "\n".join(_table_line(p) for p in PARAM_SPECS)

_MPC_ROLE = "You tune the MPC of a small race car. Parameters (name [min,max] default meaning):"
_MPC_FORMAT = 'Reply with a short reason, then JSON, e.g. <answer>{"qv": 10, "v_max": 5}</answer>'


@dataclass(frozen=True)
class PromptContext:
    """Optional situation given to the MPC prompt: current speed (m/s) and track name."""

    current_speed: float | None = None
    track: str | None = None

    def __post_init__(self) -> None:
        if self.current_speed is not None:
            if isinstance(self.current_speed, bool) or not isinstance(self.current_speed, (int, float)) \
                    or not math.isfinite(self.current_speed):
                raise ValueError(f"PromptContext.current_speed must be a finite number in m/s or None, "
                                 f"got {self.current_speed!r}")
            object.__setattr__(self, "current_speed", float(self.current_speed))
        if self.track is not None:
            if not isinstance(self.track, str):
                raise ValueError(f"PromptContext.track must be a string or None, got {self.track!r}")
            object.__setattr__(self, "track", _one_line(self.track) or None)

    def text(self) -> str:
        """One line such as "Now: speed 2.3 m/s, track oval." ('' when nothing is known)."""
        parts = []
        if self.current_speed is not None:
            parts.append(f"speed {self.current_speed:.1f} m/s".replace("-0.0", "0.0"))
        if self.track:
            parts.append(f"track {self.track}")
        return f"Now: {', '.join(parts)}." if parts else ""


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def _instruction(instruction_text: str) -> str:
    if not isinstance(instruction_text, str):
        raise TypeError(f"instruction_text must be a string, got {type(instruction_text).__name__}")
    text = _one_line(instruction_text)
    if not text:
        raise ValueError("instruction_text is empty: give the instruction the car should follow")
    return text


def build_mpc_prompt(instruction_text: str, context: PromptContext | None = None) -> str:
    """The MPC prompt: role, :data:`PARAM_TABLE`, optional context, instruction, format, :data:`MPC_CUE`.

    Whitespace in the instruction is collapsed onto one line; an empty instruction is a ValueError."""
    lines = [_MPC_ROLE, PARAM_TABLE]
    if context is not None and context.text():
        lines.append(context.text())
    lines += [f"Instruction: {_instruction(instruction_text)}", _MPC_FORMAT]
    return "\n".join(lines) + "\n" + MPC_CUE


# ---------------------------------------------------------------------------------------------
# Decision prompt
# ---------------------------------------------------------------------------------------------
HISTORY_STEP_S = 0.3  # s between the rows of the compact history (3 s window -> 10 rows)


def _cm(x: float) -> str:
    v = int(round(x * 100.0))
    return str(v)  # int: never "-0"


def _sample_indices(n: int, sample_hz: float, step_s: float) -> list[int]:
    stride = max(1, int(round(step_s * sample_hz)))
    return list(range(n - 1, -1, -stride))[::-1]  # newest sample always included


def history_text(history: StateHistory, step_s: float = HISTORY_STEP_S) -> str:
    """The compact history table (legend, header, rows, crash line) used by the decision prompt."""
    n = len(history)
    idx = _sample_indices(n, history.sample_hz, step_s)
    has_race = history.race_d is not None
    window = n / history.sample_hz
    step = (idx[1] - idx[0]) / history.sample_hz if len(idx) > 1 else window
    legend = (f"Last {window:g} s, every {step:g} s, oldest first. d: offset from centre (+left), "
              "wl: left wall gap" + (", dr: offset from racing line" if has_race else "")
              + " [cm]; v: speed [cm/s].")
    header = "d v wl" + (" dr" if has_race else "")
    rows = []
    for i in idx:
        row = [_cm(history.d[i]), _cm(history.v[i]), _cm(history.wall_left[i])]
        if has_race:
            row.append(_cm(history.d[i] - history.race_d[i]))
        rows.append(" ".join(row))
    crashed = "yes" if any(history.crashed) else "no"
    return "\n".join([legend, header, *rows, history_summary(history), f"Crashed: {crashed}"])


SIGN_CHANGE_BAND = 0.1  # m: swings of d inside this band around its mean are not counted


def history_stats(history: StateHistory) -> dict[str, float]:
    """Window statistics over every recorded sample, in cm and cm/s (rounded like the text)."""
    v, d, wl = history.arr("v"), history.arr("d"), history.arr("wall_left")
    swing = d - d.mean()
    signs = np.sign(swing[np.abs(swing) > SIGN_CHANGE_BAND])
    stats = {"v_mean": v.mean(), "v_min": v.min(), "v_max": v.max(), "v_absmax": np.abs(v).max(),
             "d_mean": d.mean(), "d_rms": np.sqrt(np.mean(d ** 2)), "d_range": d.max() - d.min(),
             "wl_mean": wl.mean()}
    out = {k: float(int(round(x * 100.0))) for k, x in stats.items()}
    out["sign_changes"] = float(np.count_nonzero(signs[1:] != signs[:-1])) if len(signs) > 1 else 0.0
    if history.race_d is not None:
        dr = d - np.asarray(history.race_d, dtype=float)
        out["dr_rms"] = float(int(round(np.sqrt(np.mean(dr ** 2)) * 100.0)))
    return out


def history_summary(history: StateHistory) -> str:
    """One line of window statistics over every recorded sample (not only the rows shown).

    Why: a small model cannot be expected to average ten multi-digit numbers digit by digit; the
    vehicle computes these few statistics for free, and the model's job is to know which one an
    instruction is about and where the line lies. Same units as the rows (cm, cm/s)."""
    st = {k: int(v) for k, v in history_stats(history).items()}
    parts = [f"v mean {st['v_mean']} min {st['v_min']} max {st['v_max']}",
             f"d mean {st['d_mean']} rms {st['d_rms']} range {st['d_range']} sign changes {st['sign_changes']}",
             f"wl mean {st['wl_mean']}"]
    if "dr_rms" in st:
        parts.append(f"dr rms {st['dr_rms']}")
    return "Summary: " + ", ".join(parts) + "."


_DECISION_QUESTION = "Does the car follow it? Reply <answer>True</answer> or <answer>False</answer>."


def build_decision_prompt(history: StateHistory, instruction_text: str) -> str:
    """The decision prompt: compact history (:func:`history_text`), instruction, question, :data:`DECISION_CUE`."""
    if not isinstance(history, StateHistory):
        raise TypeError(f"history must be a StateHistory, got {type(history).__name__}")
    return "\n".join([history_text(history), f"Instruction: {_instruction(instruction_text)}",
                      _DECISION_QUESTION]) + "\n" + DECISION_CUE
