"""The 11 tunable MPC parameters the LLM chooses (RobotxR1's MPCxR1 set), as one validated type.

Ranges follow the RobotxR1 prompt table with one documented change: RobotxR1 publishes
``qv`` with range [0, 2] but default 10 (their code uses 10). We keep the working default 10 and
widen the range to [0, 20] so that the default lies inside it and the LLM sees a consistent table.

Out-of-range policy: the constructor **rejects** out-of-range values (``ParameterError`` naming
the field, the value and the range). On the vehicle a rejected LLM answer keeps the last good
parameter set, so silently clamping would hide a model error. ``from_mapping(..., clamp=True)``
is available for tools that prefer clamping; it returns the list of clamped names so that the
caller can report them. Unknown names are always an error, as are v_min > v_max and non-numbers.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Mapping

from ..contracts.user_input import UserInputError, load_json_file, name_list, quote


class ParameterError(ValueError):
    """A parameter set that cannot be used: unknown name, bad value, out of range, inconsistent."""


@dataclass(frozen=True)
class ParamSpec:
    name: str
    low: float
    high: float
    default: float
    unit: str
    meaning: str


PARAM_SPECS: tuple[ParamSpec, ...] = (
    ParamSpec("qv", 0.0, 20.0, 10.0, "-", "weight on (v - v_max)^2: how hard the car tracks its target speed v_max"),
    ParamSpec("qn", 0.0, 100.0, 20.0, "-", "weight on the lateral offset n^2 from the centre line"),
    ParamSpec("qalpha", 0.0, 100.0, 7.0, "-", "weight on the heading error alpha^2 relative to the centre line"),
    ParamSpec("qac", 0.0, 1.0, 0.01, "-", "weight on the acceleration (change of speed per second)^2"),
    ParamSpec("qddelta", 0.0, 100.0, 0.1, "-", "weight on the steering rate (change of steering angle per second)^2"),
    ParamSpec("alat_max", 0.0, 20.0, 10.0, "m/s^2", "maximum lateral acceleration v^2*tan(delta)/L"),
    ParamSpec("a_min", -20.0, 0.0, -5.0, "m/s^2", "minimum longitudinal acceleration (strongest braking)"),
    ParamSpec("a_max", 0.0, 20.0, 5.0, "m/s^2", "maximum longitudinal acceleration"),
    ParamSpec("v_min", -2.0, 5.0, 1.0, "m/s", "minimum speed (negative allows reversing)"),
    ParamSpec("v_max", -1.0, 10.0, 5.0, "m/s", "maximum speed, also the target speed of the qv term"),
    ParamSpec("track_safety_margin", 0.0, 1.0, 0.45, "m", "distance kept from the walls"),
)
SPEC_BY_NAME: dict[str, ParamSpec] = {p.name: p for p in PARAM_SPECS}
PARAM_NAMES: tuple[str, ...] = tuple(p.name for p in PARAM_SPECS)


@dataclass(frozen=True)
class MPCParams:
    """One MPC parameter set; validated on construction (see module docstring for the policy)."""

    qv: float = 10.0
    qn: float = 20.0
    qalpha: float = 7.0
    qac: float = 0.01
    qddelta: float = 0.1
    alat_max: float = 10.0
    a_min: float = -5.0
    a_max: float = 5.0
    v_min: float = 1.0
    v_max: float = 5.0
    track_safety_margin: float = 0.45

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ParameterError(f"parameter {f.name}: expected a number, got {quote(value)}")
            if isinstance(value, float) and not math.isfinite(value):
                raise ParameterError(f"parameter {f.name}: must be finite, got {value!r}")
            spec = SPEC_BY_NAME[f.name]
            if not spec.low <= value <= spec.high:  # exact for ints of any size (no float overflow)
                if not isinstance(value, float):  # a huge int prints as +-inf
                    value = float(value) if abs(value) < 1e300 else (math.inf if value > 0 else -math.inf)
                raise ParameterError(
                    f"parameter {f.name}={value:g} is outside its range [{spec.low:g}, {spec.high:g}]")
            object.__setattr__(self, f.name, float(value))
        if self.v_min > self.v_max:
            raise ParameterError(f"parameters v_min={self.v_min:g} > v_max={self.v_max:g}: v_min must be <= v_max")

    # -- conversions ----------------------------------------------------------------------------
    @classmethod
    def from_mapping(cls, values: Mapping[str, Any], clamp: bool = False,
                     base: "MPCParams | None" = None) -> tuple["MPCParams", list[str]]:
        """Build from a (partial) mapping; missing names come from ``base`` (default parameters).

        Returns the parameter set and the names that were clamped (always empty unless ``clamp``).
        """
        if not isinstance(values, Mapping):
            raise ParameterError(f"parameter set must be a JSON object of name: number, got {type(values).__name__}")
        unknown = [k for k in values if k not in SPEC_BY_NAME]
        if unknown:
            raise ParameterError(f"unknown parameter name(s) {name_list(unknown)}; "
                                 f"valid names: {', '.join(PARAM_NAMES)}")
        merged = asdict(base or cls())
        clamped: list[str] = []
        for name, value in values.items():
            if clamp and isinstance(value, (int, float)) and not isinstance(value, bool) and not (
                    isinstance(value, float) and not math.isfinite(value)):
                spec = SPEC_BY_NAME[name]
                bounded = spec.low if value < spec.low else (spec.high if value > spec.high else float(value))
                if bounded != value:
                    clamped.append(name)
                value = bounded
            merged[name] = value
        return cls(**merged), clamped

    @classmethod
    def from_json_file(cls, path: str | Path, clamp: bool = False) -> "MPCParams":
        """A (partial) parameter set from a JSON object file, read with the bounded user-JSON loader
        (``edge_runtime.contracts.user_input``: no deep nesting, repeated keys or over-long numbers);
        every failure is one ParameterError line naming the file and, where there is one, the field."""
        path = Path(path)
        try:
            data = load_json_file(path, "parameter file")
        except UserInputError as exc:
            hint = "; expected an object like {\"qn\": 50, \"v_max\": 3}" if "JSON" in str(exc) else ""
            raise ParameterError(f"{exc}{hint}") from None
        try:
            return cls.from_mapping(data, clamp=clamp)[0]
        except ParameterError as exc:
            raise ParameterError(f"{path}: {exc}") from None

    def to_dict(self) -> dict[str, float]:
        return asdict(self)

    def to_vector(self) -> list[float]:
        return [getattr(self, n) for n in PARAM_NAMES]

    @classmethod
    def from_unit_vector(cls, u: list[float]) -> "MPCParams":
        """Map a point of [0, 1]^11 onto the parameter box (used by the oracle's search).

        v_min > v_max is repaired by lowering v_min to v_max, so every point is a valid set."""
        values = {}
        for spec, ui in zip(PARAM_SPECS, u):
            ui = min(max(float(ui), 0.0), 1.0)
            values[spec.name] = round(spec.low + ui * (spec.high - spec.low), 6)  # short, exact in text
        values["v_min"] = min(values["v_min"], values["v_max"])
        return cls(**values)

    def to_unit_vector(self) -> list[float]:
        return [(getattr(self, s.name) - s.low) / (s.high - s.low) for s in PARAM_SPECS]


DEFAULT_PARAMS = MPCParams()


def parameter_table_markdown() -> str:
    """The parameter table as Markdown (README, prompts)."""
    lines = ["| name | range | default | unit | meaning |", "|---|---|---|---|---|"]
    for p in PARAM_SPECS:
        lines.append(f"| `{p.name}` | [{p.low:g}, {p.high:g}] | {p.default:g} | {p.unit} | {p.meaning} |")
    return "\n".join(lines)
