"""Read an ``edge-run`` output directory back, whatever state the run left it in.

A run directory holds ``steps.jsonl`` (``type: "control"`` records, one per control step;
``"llm"`` / ``"llm_superseded"`` records, one per LLM call; ``"gpu"`` samples) and, when the run
got to its end, ``summary.json`` (see docs/runtime.md). A report must also work for the runs
that did not get there, because those are the ones someone wants to look at:

* no ``summary.json`` (``kill -9``, power loss): everything is rebuilt from the log; what only the
  summary knows (the window scores against the default parameters, the track, the rate) is
  inferred where it can be (the rate from ``sim_advance``) or reported as missing;
* a torn last line (power loss between two fsyncs) or a line that is not JSON: skipped and
  counted, never an error -- every whole line before it is used.

Bad input (a missing directory, no ``steps.jsonl``, a log with no control step) raises
:class:`RunLogError` with one line that names the path and what to do.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..contracts.user_input import UserInputError, loads_bounded, read_text_file
from ..control.params import DEFAULT_PARAMS

__all__ = ["ParamSpan", "RunLog", "RunLogError", "load_run"]


class RunLogError(ValueError):
    """The directory is not a readable ``edge-run`` output; the message is one line."""


@dataclass(frozen=True)
class ParamSpan:
    """One MPC parameter set in force from ``t0`` to ``t1`` (sim seconds)."""

    index: int
    t0: float
    t1: float
    params: dict[str, float]
    call: int | None  # the LLM call it came from; None: the initial set (defaults or --params)
    window: int | None

    def changed(self) -> dict[str, float]:
        """The values that differ from the defaults (what the LLM actually chose)."""
        defaults = DEFAULT_PARAMS.to_dict()
        return {k: v for k, v in self.params.items() if defaults.get(k) != v}


@dataclass
class RunLog:
    path: Path
    control: list[dict[str, Any]]
    llm: list[dict[str, Any]]
    gpu: list[dict[str, Any]]
    summary: dict[str, Any] | None
    torn_last_line: bool = False
    bad_lines: int = 0  # lines (other than a torn last one) that were not JSON objects
    notes: list[str] = field(default_factory=list)

    # ---------------------------------------------------------------- facts of the run
    @property
    def complete(self) -> bool:
        """summary.json exists and the run was not stopped by a signal."""
        return self.summary is not None and not self.summary.get("interrupted")

    @property
    def track_name(self) -> str | None:
        return self.summary.get("track") if self.summary else None

    @property
    def rate_hz(self) -> float:
        """The control rate: the summary's, else one period per step that dropped none."""
        if self.summary and isinstance(self.summary.get("rate_hz"), (int, float)):
            return float(self.summary["rate_hz"])
        periods = [r["sim_advance"] / (1 + (r.get("dropped") or 0)) for r in self.control
                   if isinstance(r.get("sim_advance"), (int, float)) and r["sim_advance"] > 0]
        if periods:
            return 1.0 / float(np.median(periods))
        return 20.0  # edge-run's default; said in the notes

    @property
    def period(self) -> float:
        return 1.0 / self.rate_hz

    def column(self, key: str) -> np.ndarray:
        """One field of every control record as floats (missing or null: NaN)."""
        return np.array([_num(r.get(key)) for r in self.control], dtype=float)

    @property
    def crash(self) -> dict[str, Any] | None:
        """The control record at which the car crashed, if it did."""
        return next((r for r in self.control if r.get("crashed")), None)

    # ---------------------------------------------------------------- windows and parameter sets
    def initial_params(self) -> dict[str, float]:
        if self.summary and isinstance(self.summary.get("params"), dict):
            return dict(self.summary["params"])  # no LLM: the --params set drove the whole run
        return DEFAULT_PARAMS.to_dict()

    def param_spans(self) -> list[ParamSpan]:
        """The parameter sets in force over the run: the initial one, then each applied answer."""
        end = self.control[-1]["sim_time"] if self.control else 0.0
        start = self.control[0]["sim_time"] - self.control[0].get("sim_advance", 0.0) if self.control else 0.0
        changes = [(start, self.initial_params(), None, None)]
        for r in sorted((r for r in self.llm if r.get("status") == "applied" and r.get("params")),
                        key=lambda r: r["applied_sim_time"]):
            changes.append((r["applied_sim_time"], r["params"], r.get("call"), r.get("window")))
        spans = []
        for i, (t0, params, call, window) in enumerate(changes):
            t1 = changes[i + 1][0] if i + 1 < len(changes) else end
            spans.append(ParamSpan(i, t0, t1, params, call, window))
        return spans

    def windows(self) -> list[dict[str, Any]]:
        """One row per instruction window: what was asked, what the LLM answered and when it applied,
        and the window's score (from summary.json; None when the run never wrote it)."""
        rows: dict[int, dict[str, Any]] = {}
        for r in self.control:
            w = r.get("window")
            if not isinstance(w, int):
                continue
            row = rows.setdefault(w, _empty_row(w))
            if row["first_step"] is None:
                row["first_step"], row["t_start"] = r["step"], r["sim_time"] - r.get("sim_advance", 0.0)
            row["last_step"], row["t_end"] = r["step"], r["sim_time"]
            row["steps"] += 1
        for r in self.llm:
            w = r.get("window")
            if not isinstance(w, int):
                continue
            row = rows.setdefault(w, _empty_row(w))
            row.update(instruction=r.get("instruction"), category=r.get("category"),
                       target_speed=r.get("target_speed"), status=r.get("status"), call=r.get("call"),
                       failure=r.get("parse_failure"), applied_at=r.get("applied_sim_time"),
                       applied_step=r.get("applied_step"), params=r.get("params"), detail=r.get("detail"))
        for s in (self.summary or {}).get("windows") or []:
            w = s.get("window")
            if not isinstance(w, int):
                continue
            row = rows.setdefault(w, _empty_row(w))
            for key in ("instruction", "category", "target_speed"):
                if row[key] is None:
                    row[key] = s.get(key)
            if row["status"] is None:
                row["status"] = s.get("llm")
            row.update(error=s.get("error"), default_error=s.get("default_error"), improvement=s.get("improvement"),
                       crashed=s.get("crashed"), stalled=s.get("stalled"))
        return [rows[k] for k in sorted(rows)]


def _empty_row(w: int) -> dict[str, Any]:
    return {"window": w, "instruction": None, "category": None, "target_speed": None, "first_step": None,
            "last_step": None, "t_start": None, "t_end": None, "steps": 0, "status": None, "call": None,
            "failure": None, "applied_at": None, "applied_step": None, "params": None, "detail": None,
            "error": None, "default_error": None, "improvement": None, "crashed": None, "stalled": None}


def _num(value: Any) -> float:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else math.nan


def _read_records(path: Path) -> tuple[list[dict[str, Any]], bool, int]:
    """Every whole JSON-object line of ``path``; (records, torn last line?, other bad lines)."""
    try:
        data = path.read_bytes()
    except IsADirectoryError:
        raise RunLogError(f"{path} is a directory, not an edge-run log; pass the run directory that holds "
                          "steps.jsonl") from None
    except OSError as exc:
        raise RunLogError(f"{path}: cannot read the log ({exc.strerror or exc}); check the path and its "
                          "permissions") from None
    lines = data.split(b"\n")
    unterminated = lines.pop() if lines else b""  # bytes after the last newline: a torn line if any
    records, bad = [], 0
    for raw in lines:
        rec = _parse(raw)
        if rec is None:
            bad += raw.strip() != b""
        else:
            records.append(rec)
    torn = False
    if unterminated.strip():
        rec = _parse(unterminated)
        if rec is None:
            torn = True
        else:
            records.append(rec)  # a whole record that only lacks its newline
    if bad and lines and _parse(lines[-1]) is None and not unterminated.strip():
        torn, bad = True, bad - 1  # the last line is the broken one: a torn tail, not corruption
    return records, torn, bad


def _parse(raw: bytes) -> dict[str, Any] | None:
    try:
        rec = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        return None
    return rec if isinstance(rec, dict) else None


def load_run(run_dir: str | Path) -> RunLog:
    """Read ``run_dir`` (see the module docstring); RunLogError (one line) for bad input."""
    run_dir = Path(run_dir)
    if not run_dir.exists():
        raise RunLogError(f"{run_dir}: no such directory; pass the --out directory of an edge-run run")
    if not run_dir.is_dir():
        raise RunLogError(f"{run_dir} is a file, not a run directory; pass the --out directory of an edge-run run "
                          "(the one that holds steps.jsonl)")
    log = run_dir / "steps.jsonl"
    if not log.exists():
        raise RunLogError(f"{run_dir}: no steps.jsonl here, so this is not an edge-run output directory; pass "
                          "the --out directory of a run")
    records, torn, bad = _read_records(log)
    control = [r for r in records if r.get("type") == "control" and isinstance(r.get("step"), int)
               and isinstance(r.get("sim_time"), (int, float))]
    if not control:
        raise RunLogError(f"{log}: holds no control step record, so there is nothing to draw; the run stopped "
                          "before its first step (see its summary.json or stderr)")
    notes = []
    summary = None
    summary_path = run_dir / "summary.json"
    if summary_path.exists():
        try:
            loaded = loads_bounded(read_text_file(summary_path, "summary file"), str(summary_path))
        except UserInputError as exc:
            notes.append(f"summary.json ignored: {exc}")
        else:
            if isinstance(loaded, dict):
                summary = loaded
            else:
                notes.append("summary.json ignored: not a JSON object")
    else:
        notes.append("no summary.json (the run did not finish): window scores against the default parameters "
                     "are missing, the rest is rebuilt from steps.jsonl")
    if torn:
        notes.append("the last line of steps.jsonl is torn (cut off mid-record) and was skipped")
    if bad:
        notes.append(f"{bad} line(s) of steps.jsonl were not JSON records and were skipped")
    if summary is not None and summary.get("interrupted"):
        notes.append(f"the run was stopped by a signal ({', '.join(map(str, summary.get('signals') or [])) or '?'})")
    if summary is None and not any(isinstance(r.get("sim_advance"), (int, float)) for r in control):
        notes.append("control rate unknown: assumed 20 Hz")
    llm = [r for r in records if str(r.get("type", "")).startswith("llm")]
    gpu = [r for r in records if r.get("type") == "gpu"]
    control.sort(key=lambda r: r["step"])
    return RunLog(run_dir, control, llm, gpu, summary, torn, bad, notes)
