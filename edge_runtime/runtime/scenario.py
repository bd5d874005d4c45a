"""Instruction scripts for ``edge-run`` (time -> instruction) and the closed-loop score of each window.

**Script files.** Either plain text, one instruction per line::

    # t [s], instruction            (blank lines and '#' comments are ignored)
    0,   Drive on the centre line.
    10,  Drive at 2.5 m/s, please.   <- only the first comma separates the time

or a JSON list ``[{"t": 0, "instruction": "Drive on the centre line."}, ...]`` (a file ending in
``.json``, or whose first non-blank character is ``[``). Times are seconds of simulated time,
finite, >= 0 and strictly increasing; every text must be non-empty and classifiable by
:func:`edge_runtime.tasks.instructions.classify_instruction` (its category decides how the
window is scored). Errors are :class:`ScriptError` with one line naming the file, the line (or
JSON entry) and what to do. ``--instruction TEXT`` is the one-entry script ``0, TEXT``.

**Windows.** Instruction *i* owns the control steps from the step at which it was issued up to
the step before instruction *i+1* (or the end of the run). Its score compares two closed-loop
runs over the same steps from the same start state:

* live: the recorded states of the window (the parameters in use: the previous set until the
  LLM's answer applies, then the answer's set -- exactly what the car did);
* baseline: the window's sim time re-simulated (one on-time step per control period: a late
  live controller's lost periods count against the live run) with the *default* parameters, from a
  :meth:`~edge_runtime.sim.track_sim.TrackSimulator.snapshot` of the simulator taken at the
  window's first step, in a fresh simulator of the same track and configuration, with a fresh
  (cold-started) MPC at the same rate and horizon. The live MPC was warm-started from the
  previous window, so a window whose parameters stayed the defaults scores close to, not
  exactly, 0.

Error = :func:`~edge_runtime.tasks.metrics.category_error` of the instruction's category (centre
line: RMS d; reference velocity / reverse: RMS speed error; smooth: sqrt(mean(ax^2 + ay^2));
racing line: RMS of d minus the racing-line offset at s). Improvement =
:func:`~edge_runtime.tasks.metrics.adaptability` (clipped relative improvement
(E_default - E) / E_default; a window in which the car crashed or stalled scores the worst case).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..control.mpc import FrenetMPC, MPCConfig
from ..contracts.user_input import UserInputError, clip, loads_bounded, quote, read_text_file
from ..control.params import DEFAULT_PARAMS
from ..tasks.instructions import Instruction, classify_instruction
from ..tasks.metrics import Trajectory, adaptability, category_error, stalled

__all__ = [
    "DEFAULT_INSTRUCTION",
    "Scenario",
    "ScriptEntry",
    "ScriptError",
    "WindowTrace",
    "load_script",
    "parse_script",
    "score_windows",
    "single_instruction",
]

#: What ``edge-run --model`` drives when given no instruction and no script.
DEFAULT_INSTRUCTION = "Drive on the centre line."
#: m/s of mean progress below which a window counts as stalled (as in closed-loop evaluation).
MIN_PROGRESS_SPEED = 1.0


class ScriptError(ValueError):
    """An instruction script cannot be used; the message is one line (file, line, what to do)."""


@dataclass(frozen=True)
class ScriptEntry:
    t: float  # s of simulated time at which the instruction is issued
    instruction: Instruction
    where: str = ""  # "file:line" (or "file: entry N") for messages


@dataclass(frozen=True)
class Scenario:
    entries: tuple[ScriptEntry, ...]
    source: str = "<instruction>"

    def __post_init__(self) -> None:
        if not self.entries:
            raise ScriptError(f"{self.source}: the script holds no instruction; add lines like "
                              f"'0, {DEFAULT_INSTRUCTION}'")

    def __len__(self) -> int:
        return len(self.entries)

    def to_list(self) -> list[dict[str, Any]]:
        return [{"t": e.t, "instruction": e.instruction.text, "category": e.instruction.category.value,
                 "target_speed": e.instruction.target_speed} for e in self.entries]


_FORMAT_HINT = "write one 'TIME_S, instruction text' per line (or a JSON list of {\"t\": .., \"instruction\": ..})"


def _entry(source: str, where: str, t: Any, text: Any) -> ScriptEntry:
    if isinstance(t, bool) or not isinstance(t, (int, float)):
        raise ScriptError(f"{where}: time {quote(t, 30)} is not a number of seconds; {_FORMAT_HINT}")
    try:
        t = float(t)
    except OverflowError:  # an int too large for a float
        t = math.inf if t > 0 else -math.inf
    if not math.isfinite(t) or t < 0:
        raise ScriptError(f"{where}: time {t:g} s must be finite and >= 0")
    if not isinstance(text, str) or not " ".join(text.split()):
        raise ScriptError(f"{where}: the instruction text is empty; {_FORMAT_HINT}")
    text = " ".join(text.split())
    try:
        instruction = classify_instruction(text)
    except ValueError as exc:
        raise ScriptError(f"{where}: {clip(exc, 200)} (rephrase it, e.g. '{DEFAULT_INSTRUCTION}' or "
                          "'Drive at 2 m/s.')") from None
    return ScriptEntry(t, instruction, where)


def _check_order(source: str, entries: list[ScriptEntry]) -> Scenario:
    for prev, cur in itertools.pairwise(entries):
        if cur.t <= prev.t:
            raise ScriptError(f"{cur.where}: time {cur.t:g} s is not after the previous instruction's "
                              f"{prev.t:g} s; sort the script by time (one instruction per time)")
    return Scenario(tuple(entries), source)


def _parse_json(source: str, text: str) -> Scenario:
    try:
        data = loads_bounded(text, source)  # bounded depth and numbers, no repeated keys
    except UserInputError as exc:
        raise ScriptError(f"{exc}; {_FORMAT_HINT}") from None
    if not isinstance(data, list):
        raise ScriptError(f"{source}: expected a JSON list of {{\"t\": .., \"instruction\": ..}}, "
                          f"got {type(data).__name__}")
    entries = []
    for i, item in enumerate(data, start=1):
        where = f"{source}: entry {i}"
        if not isinstance(item, dict) or set(item) != {"t", "instruction"}:
            raise ScriptError(f"{where}: expected an object with exactly the keys \"t\" and \"instruction\", "
                              f"got {quote(item, 80)}")
        entries.append(_entry(source, where, item["t"], item["instruction"]))
    return _check_order(source, entries)


def _parse_lines(source: str, text: str) -> Scenario:
    entries = []
    for lineno, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        where = f"{source}:{lineno}"
        head, sep, rest = line.partition(",")
        if not sep:
            raise ScriptError(f"{where}: no comma after the time in {line[:60]!r}; {_FORMAT_HINT}")
        try:
            t = float(head.strip())
        except ValueError:
            raise ScriptError(f"{where}: time {head.strip()[:30]!r} is not a number of seconds; "
                              f"{_FORMAT_HINT}") from None
        entries.append(_entry(source, where, t, rest))
    return _check_order(source, entries)


def parse_script(text: str, source: str = "<script>", as_json: bool | None = None) -> Scenario:
    """Parse script text (format detected from the first character unless ``as_json`` is given)."""
    if as_json is None:
        as_json = text.lstrip().startswith("[")
    return _parse_json(source, text) if as_json else _parse_lines(source, text)


def load_script(path: str | Path) -> Scenario:
    """Read and validate a script file; ScriptError (one line) when it is missing or invalid."""
    path = Path(path)
    try:
        text = read_text_file(path, "script file")
    except UserInputError as exc:
        raise ScriptError(f"{exc}; {_FORMAT_HINT}") from None
    as_json = True if path.suffix.lower() == ".json" else None
    return parse_script(text, str(path), as_json)


def single_instruction(text: str) -> Scenario:
    """The script of ``--instruction TEXT``: TEXT at t = 0."""
    return Scenario((_entry("--instruction", "--instruction", 0.0, text),), "--instruction")


# ---------------------------------------------------------------------------------------------
# Window scores
# ---------------------------------------------------------------------------------------------
@dataclass
class WindowTrace:
    """The recorded control steps of one instruction window (filled by the control loop)."""

    index: int
    instruction: Instruction
    scheduled_t: float  # script time
    start_t: float  # sim time of the window's first step (state before that step)
    start_step: int
    snapshot: Any  # simulator snapshot before the first step (None: the simulator has none)
    t: list[float]
    s: list[float]
    d: list[float]
    v: list[float]
    ax: list[float]
    ay: list[float]
    crashed: bool = False
    progress0: float = 0.0  # sim progress at the window start
    progress1: float = 0.0  # ... at its last step
    periods: int = 0  # control periods the window's steps spanned (more than its steps when some were late)

    @classmethod
    def start(cls, index: int, instruction: Instruction, scheduled_t: float, step: int, state: Any,
              snapshot: Any) -> WindowTrace:
        return cls(index, instruction, scheduled_t, state.t, step, snapshot, [], [], [], [], [], [],
                   progress0=state.progress, progress1=state.progress)

    def add(self, state: Any, periods: int = 1) -> None:
        self.periods += periods
        self.t.append(state.t); self.s.append(state.s); self.d.append(state.d); self.v.append(state.v)
        self.ax.append(state.ax); self.ay.append(state.ay)
        self.crashed = self.crashed or state.crashed
        self.progress1 = state.progress

    def __len__(self) -> int:
        return len(self.t)


def _trajectory(t, s, d, v, ax, ay, progress: float, crashed: bool, duration: float, racing) -> Trajectory:
    s_arr = np.asarray(s, dtype=float)
    race = racing.offset_at(s_arr) if racing is not None else np.zeros_like(s_arr)
    return Trajectory(t=np.asarray(t, float), s=s_arr, d=np.asarray(d, float), v=np.asarray(v, float),
                      ax=np.asarray(ax, float), ay=np.asarray(ay, float), racing_d=np.asarray(race, float),
                      progress=progress, crashed=crashed, duration=duration)


def _baseline(window: WindowTrace, make_sim, mpc_config: MPCConfig, racing, period: float) -> Trajectory:
    sim = make_sim()
    try:
        state = sim.restore(window.snapshot)
        progress0 = state.progress
        mpc = FrenetMPC(sim.track, DEFAULT_PARAMS, mpc_config)
        cols = ([], [], [], [], [], [])
        for _ in range(window.periods):  # an on-time controller over the window's whole sim time
            state = sim.step(mpc.step(state).command, period)
            for col, value in zip(cols, (state.t, state.s, state.d, state.v, state.ax, state.ay)):
                col.append(value)
            if state.crashed:
                break
        return _trajectory(*cols, progress=state.progress - progress0, crashed=state.crashed,
                           duration=state.t - window.start_t, racing=racing)
    finally:
        sim.close()


def score_windows(windows: Sequence[WindowTrace], make_sim, mpc_config: MPCConfig, period: float,
                  racing=None) -> list[dict[str, Any]]:
    """Per-window scores (see the module docstring). ``make_sim()`` builds a fresh simulator with
    ``restore``; None (or a window without snapshot) leaves the baseline and improvement null.
    ``racing``: the track's racing line (needed for racing-line windows)."""
    out = []
    for w in windows:
        row: dict[str, Any] = {
            "window": w.index, "t_script": w.scheduled_t, "t_start": w.start_t,
            "t_end": w.t[-1] if w.t else w.start_t, "steps": len(w), "instruction": w.instruction.text,
            "category": w.instruction.category.value, "target_speed": w.instruction.target_speed,
            "error": None, "default_error": None, "improvement": None, "crashed": w.crashed, "stalled": None,
            "default_crashed": None,
        }
        if len(w):
            duration = w.t[-1] - w.start_t
            live = _trajectory(w.t, w.s, w.d, w.v, w.ax, w.ay, w.progress1 - w.progress0, w.crashed, duration,
                               racing)
            row["error"] = category_error(w.instruction, live)
            row["stalled"] = is_stalled = stalled(w.instruction, live, MIN_PROGRESS_SPEED)
            if make_sim is not None and w.snapshot is not None:
                base = _baseline(w, make_sim, mpc_config, racing, period)
                row["default_error"] = category_error(w.instruction, base)
                row["default_crashed"] = base.crashed
                row["improvement"] = adaptability(row["error"], row["default_error"],
                                                  failed=w.crashed or is_stalled)
        out.append(row)
    return out
