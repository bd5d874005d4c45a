"""Oracle tables: the best parameter set per (category, target speed) on a track, saved as JSON.

SFT needs an oracle answer for every training instruction, and evaluation needs the oracle's
score on every validation or test instruction on that split's track (the upper bound; shipped as
``data/oracle_<split>_<track>.json``, see :func:`default_table_path`). The best set depends on
the category and, for reference velocity, on the target speed -- not on the phrasing -- so the
table is keyed by category and speed. Reference-velocity targets between grid speeds take the nearest grid entry
with ``v_max`` (and ``v_min`` when it bounds the target) moved by the difference: the oracle's
sets put ``v_max`` close to the target, so this keeps the label consistent with the number
asked for. The file records how it was made (track, eval and search configs), so it can be
regenerated with ``edge-task oracle-table``.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np

from ..control.params import SPEC_BY_NAME, MPCParams
from ..sim.tracks import BUILTIN_TRACKS
from .closed_loop import EvalConfig
from ..contracts.task_enums import Category
from ..contracts.user_input import load_json_file
from .instructions import SPEED_RANGE, Instruction, instruction_set, make_instruction, phrasings
from .oracle import OracleConfig, search

SPEED_GRID = tuple(float(v) for v in np.round(np.arange(SPEED_RANGE[0], SPEED_RANGE[1] + 1e-9, 0.5), 2))
DATA_DIR = Path(__file__).resolve().parent / "data"


def default_table_path(split: str, track: str) -> Path | None:
    """Where the shipped oracle table of ``split``'s instructions on the built-in ``track`` lives
    (the file may not exist yet); None for a track CSV, which has no shipped table."""
    if split == "train" or track not in BUILTIN_TRACKS:
        return None
    return DATA_DIR / f"oracle_{split}_{track}.json"


def _key(category: Category, speed: float | None) -> str:
    return category.value if speed is None else f"{category.value}@{speed:.2f}"


def training_instructions(speeds: tuple[float, ...] = SPEED_GRID) -> list[Instruction]:
    """One instruction per category, and one per grid speed for reference velocity."""
    jobs: list[Instruction] = []
    for category in Category:
        phrase = phrasings(category, "train")[0]
        if category is Category.REFERENCE_VELOCITY:
            jobs += [make_instruction(category, phrase, v) for v in speeds]
        else:
            jobs.append(make_instruction(category, phrase))
    return jobs


def split_instructions(split: str) -> list[Instruction]:
    """The instructions an oracle table of ``split`` covers: for train every category and grid speed
    (the SFT labels); for validation and test exactly the split's evaluation instructions."""
    return training_instructions() if split == "train" else instruction_set(split)


def build_table(eval_config: EvalConfig, oracle_config: OracleConfig, instructions: list[Instruction],
                progress=print) -> dict:
    """Run the oracle once per distinct (category, speed) of ``instructions``; the JSON-able table."""
    unique: dict[str, Instruction] = {}
    for ins in instructions:
        unique.setdefault(_key(ins.category, ins.target_speed), ins)
    entries: dict[str, dict] = {}
    started = time.time()
    for i, (key, ins) in enumerate(unique.items()):
        res = search(ins, eval_config, oracle_config)
        entries[key] = {
            "category": ins.category.value, "target_speed": ins.target_speed, "params": res.best.params.to_dict(),
            "error": res.best.error, "default_error": res.best.default_error,
            "adaptability": res.best.adaptability, "evaluations": res.evaluations}
        progress(f"[{i + 1}/{len(unique)}] {ins.category.value} {ins.target_speed or ''} "
                 f"adaptability {res.best.adaptability:+.3f} ({time.time() - started:.0f} s)")
    return {"eval_config": eval_config.to_dict(), "oracle_config": asdict(oracle_config), "entries": entries,
            "wall_time_s": time.time() - started}


class OracleTable:
    """Lookup of oracle parameter sets (and scores) by instruction."""

    def __init__(self, data: dict, source: str = "<dict>") -> None:
        try:
            self.eval_config = EvalConfig(**data["eval_config"])
            self.entries = data["entries"]
            self.params = {k: MPCParams(**e["params"]) for k, e in self.entries.items()}
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"{source}: not an oracle table ({exc}); regenerate it with 'edge-task oracle-table'") from None
        self.speeds = sorted(e["target_speed"] for e in self.entries.values() if e["target_speed"] is not None)
        self.source = source

    @classmethod
    def load(cls, path: str | Path) -> "OracleTable":
        path = Path(path)
        if not path.is_file():
            raise ValueError(f"{path}: oracle table not found; create it with 'edge-task oracle-table --out {path}'")
        return cls(load_json_file(path, "oracle table"), source=str(path))  # bounded: one line per bad file

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps({"eval_config": self.eval_config.to_dict(), "entries": self.entries},
                                         indent=1) + "\n")

    def score_for(self, instruction: Instruction) -> float | None:
        """The oracle's control adaptability on exactly this instruction, if the table has it."""
        entry = self.entries.get(_key(instruction.category, instruction.target_speed))
        return None if entry is None else float(entry["adaptability"])

    def params_for(self, instruction: Instruction) -> MPCParams:
        if instruction.category is not Category.REFERENCE_VELOCITY:
            return self.params[_key(instruction.category, None)]
        if not self.speeds:
            raise ValueError(f"{self.source}: no reference-velocity entries")
        v = float(instruction.target_speed)
        grid = min(self.speeds, key=lambda g: abs(g - v))
        base = self.params[_key(instruction.category, grid)].to_dict()
        shift = v - grid
        vmax_spec, vmin_spec = SPEC_BY_NAME["v_max"], SPEC_BY_NAME["v_min"]
        base["v_max"] = float(np.clip(base["v_max"] + shift, vmax_spec.low, vmax_spec.high))
        if base["v_min"] > 0.5 * grid:  # a lower bound near the target moves with it
            base["v_min"] = float(np.clip(base["v_min"] + shift, vmin_spec.low, vmin_spec.high))
        base["v_min"] = min(base["v_min"], base["v_max"])
        return MPCParams(**{k: round(x, 4) for k, x in base.items()})
