"""Scripted behaviours of the decision task and the state histories they produce.

:class:`FrenetDriver` follows a reference lateral offset ``d_ref(s)`` at a reference speed:
steering = curvature feed-forward + a linear law on the offset error and the heading error,
written in distance travelled so that it behaves the same at every speed and when reversing.
A *behaviour* (``still``, ``forward``, ``reverse``, ``oscillating``, ``left_wall``,
``centreline``, ``fast``, ``racing_line``, ``crash``) is a random draw of driver parameters, a
:class:`BehaviourSpec`; draws include near misses (forward speeds around 3 m/s, small and large
offsets, gentle weaving, slow reversing) so that a label is not a function of the name.
:func:`simulate_history` drives one spec in the embedded simulator and records a
:class:`StateHistory` (cached: each history is simulated once).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from enum import Enum
from functools import lru_cache
from typing import Sequence

import numpy as np

from ..sim.protocol import ControlCommand, VehicleState
from ..sim.racing_line import RacingLine, racing_line_for
from ..sim.track import Track
from ..sim.track_sim import TrackSimConfig, TrackSimulator
from ..sim.tracks import TRAIN_TRACK, load_track

# ---------------------------------------------------------------------------------------------
# Behaviours: random draws of the scripted driver's parameters
# ---------------------------------------------------------------------------------------------
class Behaviour(str, Enum):
    STILL = "still"
    FORWARD = "forward"
    REVERSE = "reverse"
    OSCILLATING = "oscillating"
    LEFT_WALL = "left_wall"
    CENTRELINE = "centreline"
    FAST = "fast"
    RACING_LINE = "racing_line"
    CRASH = "crash"


@dataclass(frozen=True)
class BehaviourSpec:
    """Everything the scripted driver needs; hashable, so simulated histories can be cached.

    ``lateral`` selects the reference offset d_ref(s):
      "offset": d_ref = offset;  "sine": offset + amplitude·sin(2π s/wavelength + phase);
      "racing_line": racing-line offset + offset (a bias);  "left_wall": w_left(s) − offset.
    ``s`` here is the unwrapped arc length (start + progress), so the sine has no seam.
    ``crash_after``: seconds into the recorded window at which the driver steers fully towards
    the ``crash_side`` wall (+1 left, −1 right) and keeps going.
    """

    behaviour: Behaviour
    v_ref: float  # m/s, signed (negative: reverse)
    lateral: str = "offset"
    offset: float = 0.0
    amplitude: float = 0.0
    wavelength: float = 1.0
    phase: float = 0.0
    start_frac: float = 0.0  # start position as a fraction of the lap
    crash_after: float | None = None
    crash_side: int = 1
    variant: str = ""  # which random variant was drawn (for inspection only)

    def __post_init__(self) -> None:
        if self.lateral not in ("offset", "sine", "racing_line", "left_wall"):
            raise ValueError(f"BehaviourSpec.lateral must be offset|sine|racing_line|left_wall, got {self.lateral!r}")
        if self.wavelength <= 0:
            raise ValueError("BehaviourSpec.wavelength must be > 0")
        if not 0.0 <= self.start_frac < 1.0:
            raise ValueError("BehaviourSpec.start_frac must be in [0, 1)")


def _u(rng: np.random.Generator, lo: float, hi: float) -> float:
    return float(rng.uniform(lo, hi))


def _sign(rng: np.random.Generator) -> float:
    return 1.0 if rng.random() < 0.5 else -1.0


def sample_behaviour(behaviour: Behaviour | str, rng: np.random.Generator, track: Track,
                     window_s: float = 3.0) -> BehaviourSpec:
    """Draw the parameters of ``behaviour`` (offsets are kept inside ``track``'s narrowest width)."""
    b = Behaviour(behaviour)
    w = float(min(np.min(track.w_left), np.min(track.w_right)))
    start = _u(rng, 0.0, 1.0) % 1.0
    if b is Behaviour.STILL:  # mostly parked; sometimes creeping (a near miss for "don't move")
        creep = rng.random() < 0.25
        return BehaviourSpec(b, _u(rng, 0.08, 0.4) if creep else 0.0, offset=_u(rng, -0.3, 0.3),
                             start_frac=start, variant="creep" if creep else "parked")
    if b is Behaviour.FORWARD:  # speeds straddling 3 m/s now and then; small or large offsets
        near3 = rng.random() < 0.2
        v = _u(rng, 2.6, 3.4) if near3 else _u(rng, 1.0, 2.8)
        large = rng.random() < 0.5
        off = _sign(rng) * _u(rng, 0.15, w - 0.4) if large else _u(rng, -0.1, 0.1)
        return BehaviourSpec(b, v, offset=off, start_frac=start,
                             variant=("near3 " if near3 else "") + ("large offset" if large else "small offset"))
    if b is Behaviour.REVERSE:
        slow = rng.random() < 0.2
        v = -_u(rng, 0.1, 0.45) if slow else -_u(rng, 0.5, 1.5)
        return BehaviourSpec(b, v, offset=_u(rng, -0.15, 0.15), start_frac=start, variant="slow" if slow else "")
    if b is Behaviour.OSCILLATING:
        gentle = rng.random() < 0.25
        amp = _u(rng, 0.08, 0.18) if gentle else _u(rng, 0.3, min(0.6, w - 0.35))
        kappa = _u(rng, 0.5, 0.8)  # peak curvature of the sine itself, 1/m
        lam = 2.0 * math.pi * math.sqrt(max(amp, 0.3) / kappa)
        v = max(_u(rng, 1.5, 2.8), 1.3 * lam / window_s)  # >= 1.3 wavelengths in the window
        return BehaviourSpec(b, v, lateral="sine", amplitude=amp, wavelength=lam, phase=_u(rng, 0, 2 * math.pi),
                             start_frac=start, variant="gentle" if gentle else "")
    if b is Behaviour.LEFT_WALL:
        loose = rng.random() < 0.25  # a little too far from the wall
        clearance = _u(rng, 0.55, 0.75) if loose else _u(rng, 0.3, 0.45)
        return BehaviourSpec(b, _u(rng, 1.0, 2.5), lateral="left_wall", offset=clearance, start_frac=start,
                             variant="loose" if loose else "")
    if b is Behaviour.CENTRELINE:
        biased = rng.random() < 0.2
        off = _sign(rng) * _u(rng, 0.1, 0.25) if biased else 0.0
        return BehaviourSpec(b, _u(rng, 1.5, 3.0), offset=off, start_frac=start, variant="biased" if biased else "")
    if b is Behaviour.FAST:
        on_race = rng.random() < 0.5
        return BehaviourSpec(b, _u(rng, 3.2, 4.5), lateral="racing_line" if on_race else "offset",
                             start_frac=start, variant="racing line" if on_race else "centre line")
    if b is Behaviour.RACING_LINE:
        biased = rng.random() < 0.25
        bias = _sign(rng) * _u(rng, 0.1, 0.35) if biased else 0.0
        return BehaviourSpec(b, _u(rng, 2.0, 3.5), lateral="racing_line", offset=bias, start_frac=start,
                             variant="biased" if biased else "")
    # CRASH: centre line, then full lock towards a wall partway through the window.
    return BehaviourSpec(b, _u(rng, 1.0, 3.0), start_frac=start, crash_after=_u(rng, 0.2, 0.6 * window_s),
                         crash_side=1 if rng.random() < 0.5 else -1)


# ---------------------------------------------------------------------------------------------
# The scripted driver
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class DriverGains:
    """Gains of :class:`FrenetDriver`. ``omega``/``zeta``: natural frequency (1/m, per metre
    travelled) and damping of the lateral error; speed: P-control with acceleration limit and a
    lateral-acceleration cap on the reference speed, previewed ``preview_s`` ahead."""

    omega: float = 1.5
    zeta: float = 0.9
    k_speed: float = 3.0  # 1/s
    accel_limit: float = 5.0  # m/s^2
    lat_accel_max: float = 7.0  # m/s^2
    preview_s: float = 0.8  # s

    def __post_init__(self) -> None:
        for f in fields(self):
            if not getattr(self, f.name) > 0:
                raise ValueError(f"DriverGains.{f.name} must be > 0, got {getattr(self, f.name)}")


class FrenetDriver:
    """Frenet path follower: steer = atan(L·(κ_ref + d_ref'' − 2ζω·dir·α_e − ω²·e)), where
    e = d − d_ref(s), α_e = heading error − d_ref'(s) and dir = ±1 the direction of travel.

    In distance travelled σ the kinematic lateral error obeys e'' = tan(δ)/L − κ − d_ref'' in both
    directions (two sign flips cancel), while e' = dir·α_e: so only the heading-error term changes
    sign when reversing. Speed: accel = clip(k·(v_ref − v)), |v_ref| capped by the lateral
    acceleration limit on the reference curvature ahead.
    """

    def __init__(self, spec: BehaviourSpec, track: Track, racing_line: RacingLine | None = None,
                 gains: DriverGains | None = None, wheelbase: float = 0.3302, steer_limit: float = 0.4189,
                 crash_time: float | None = None, wall_margin: float = 0.3) -> None:
        if spec.lateral == "racing_line" and racing_line is None:
            raise ValueError("FrenetDriver: a racing-line behaviour needs the track's RacingLine")
        self.spec, self.track, self.racing_line = spec, track, racing_line
        self.gains = gains or DriverGains()
        self.L, self.steer_limit = wheelbase, steer_limit
        self.start_s = spec.start_frac * track.length
        self.crash_time = crash_time  # absolute sim time of the steer-into-the-wall manoeuvre
        self.wall_margin = wall_margin  # m kept between the reference line and either wall

    def d_ref(self, s_u: float) -> float:
        """Reference lateral offset at unwrapped arc length ``s_u``, kept ``wall_margin`` inside
        both walls (a biased racing line could otherwise ask for a crash)."""
        sp = self.spec
        w_left, w_right = (float(w) for w in self.track.widths_at(s_u))
        if sp.lateral == "offset":
            d = sp.offset
        elif sp.lateral == "sine":
            d = sp.offset + sp.amplitude * math.sin(2.0 * math.pi * s_u / sp.wavelength + sp.phase)
        elif sp.lateral == "racing_line":
            d = float(self.racing_line.offset_at(s_u)) + sp.offset
        else:  # left_wall
            d = w_left - sp.offset
        return max(-w_right + self.wall_margin, min(w_left - self.wall_margin, d))

    def _ref_derivatives(self, s_u: float, h: float = 0.3) -> tuple[float, float, float]:
        f0, fp, fm = self.d_ref(s_u), self.d_ref(s_u + h), self.d_ref(s_u - h)
        d2 = max(-1.0, min(1.0, (fp - 2.0 * f0 + fm) / (h * h)))  # clip: piecewise-linear lines
        return f0, (fp - fm) / (2.0 * h), d2

    def _ref_curvature(self, s_u: float) -> float:
        d0, _, d2 = self._ref_derivatives(s_u)
        kappa = float(self.track.curvature_at(s_u))
        return kappa / max(1.0 - d0 * kappa, 0.2) + d2

    def command(self, state: VehicleState) -> ControlCommand:
        g, sp = self.gains, self.spec
        direction = 1.0 if sp.v_ref > 0 else (-1.0 if sp.v_ref < 0 else (1.0 if state.v >= 0 else -1.0))
        s_u = self.start_s + state.progress
        d0, d1, d2 = self._ref_derivatives(s_u)
        kappa = float(self.track.curvature_at(state.s))
        k_ff = kappa / max(1.0 - d0 * kappa, 0.2)
        e = state.d - d0
        alpha_e = state.heading_error - d1
        u = d2 - 2.0 * g.zeta * g.omega * direction * alpha_e - g.omega ** 2 * e
        steer = math.atan(self.L * (k_ff + u))
        if self.crash_time is not None and state.t >= self.crash_time - 1e-9:
            steer = sp.crash_side * self.steer_limit
        steer = max(-self.steer_limit, min(self.steer_limit, steer))
        v_target = sp.v_ref
        if v_target != 0.0:
            reach = max(abs(state.v), abs(v_target)) * g.preview_s
            k_max = max(abs(self._ref_curvature(s_u + direction * reach * f)) for f in (0.0, 0.5, 1.0))
            v_cap = math.sqrt(g.lat_accel_max / max(k_max, 1e-6))
            v_target = math.copysign(min(abs(v_target), v_cap), v_target)
        accel = max(-g.accel_limit, min(g.accel_limit, g.k_speed * (v_target - state.v)))
        return ControlCommand(steer=steer, accel=accel)


# ---------------------------------------------------------------------------------------------
# State histories
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class HistoryConfig:
    """Timing of a simulated history: a warm-up (not recorded) so the behaviour is established,
    then ``duration_s`` recorded at ``sample_hz``; the driver runs at ``control_hz``."""

    warmup_s: float = 2.0
    duration_s: float = 3.0
    sample_hz: float = 10.0
    control_hz: float = 20.0
    physics_hz: float = 200.0

    def __post_init__(self) -> None:
        if self.warmup_s < 0 or self.duration_s <= 0 or self.sample_hz <= 0 or self.control_hz <= 0:
            raise ValueError("HistoryConfig: need warmup_s >= 0 and duration_s, sample_hz, control_hz > 0")
        ratio = self.control_hz / self.sample_hz
        if abs(ratio - round(ratio)) > 1e-9 or round(ratio) < 1:
            raise ValueError(f"HistoryConfig: control_hz ({self.control_hz}) must be an integer multiple "
                             f"of sample_hz ({self.sample_hz})")
        if round(self.duration_s * self.sample_hz) < 2:
            raise ValueError("HistoryConfig: the recorded window must hold at least 2 samples")


_FLOAT_FIELDS = ("s", "d", "v", "vs", "wall_left", "wall_right")


@dataclass(frozen=True)
class StateHistory:
    """Evenly sampled states, oldest first. Sequences are stored as tuples (immutable, comparable);
    ``arr(name)`` gives a numpy array. ``race_d`` is the racing-line offset at each sample's ``s``
    (None when unknown); ``reversing`` is derived: v < −0.05 m/s."""

    s: tuple[float, ...]
    d: tuple[float, ...]
    v: tuple[float, ...]
    vs: tuple[float, ...]
    wall_left: tuple[float, ...]
    wall_right: tuple[float, ...]
    crashed: tuple[bool, ...] | None = None  # default: never crashed
    race_d: tuple[float, ...] | None = None
    sample_hz: float = 10.0
    track: str = ""

    REVERSING_SPEED = -0.05  # m/s

    def __post_init__(self) -> None:
        n = len(self.s)
        if n < 1:
            raise ValueError("StateHistory needs at least one sample")
        for name in _FLOAT_FIELDS + (("race_d",) if self.race_d is not None else ()):
            values = tuple(float(x) for x in np.asarray(getattr(self, name), dtype=float).ravel())
            if len(values) != n:
                raise ValueError(f"StateHistory.{name} has {len(values)} samples, s has {n}")
            if not all(math.isfinite(x) for x in values):
                raise ValueError(f"StateHistory.{name} contains NaN or inf")
            object.__setattr__(self, name, values)
        crashed = (False,) * n if self.crashed is None else tuple(bool(x) for x in np.asarray(self.crashed).ravel())
        if len(crashed) != n:
            raise ValueError(f"StateHistory.crashed has {len(crashed)} samples, s has {n}")
        object.__setattr__(self, "crashed", crashed)
        if not self.sample_hz > 0:
            raise ValueError("StateHistory.sample_hz must be > 0")

    def __len__(self) -> int:
        return len(self.s)

    @property
    def reversing(self) -> tuple[bool, ...]:
        return tuple(v < self.REVERSING_SPEED for v in self.v)

    def arr(self, name: str) -> np.ndarray:
        value = self.reversing if name == "reversing" else getattr(self, name)
        if value is None:
            raise ValueError(f"StateHistory.{name} is not available")
        return np.asarray(value)

    @classmethod
    def from_states(cls, states: Sequence[VehicleState], racing_line: RacingLine | None = None,
                    sample_hz: float = 10.0, track: str = "") -> "StateHistory":
        s = [st.s for st in states]
        race = None if racing_line is None else np.asarray(racing_line.offset_at(np.asarray(s)), dtype=float)
        return cls(s=s, d=[st.d for st in states], v=[st.v for st in states], vs=[st.vs for st in states],
                   wall_left=[st.wall_left for st in states], wall_right=[st.wall_right for st in states],
                   crashed=[bool(st.crashed) for st in states], race_d=race, sample_hz=sample_hz, track=track)

    def to_text(self, decimals: int = 2) -> str:
        """Compact table for a prompt: a legend line, a header, one line per sample."""
        has_race = self.race_d is not None
        legend = (f"State history, {self.sample_hz:g} Hz, {len(self)} samples, oldest first. "
                  "s: distance along track, d: offset from centre line (+ left), wl/wr: distance to "
                  "left/right wall" + (", dr: offset from racing line" if has_race else "")
                  + " [m]; v: speed (< 0 reversing), vs: speed along track [m/s]; rev, crash: 1 = yes.")
        cols = ["s", "d", "v", "vs", "wl", "wr"] + (["dr"] if has_race else []) + ["rev", "crash"]
        lines = [legend, " ".join(cols)]

        def f(x: float, nd: int = decimals) -> str:
            text = f"{x:.{nd}f}"
            return text[1:] if text.startswith("-") and float(text) == 0.0 else text

        rev = self.reversing
        for i in range(len(self)):
            row = [f(self.s[i], 1), f(self.d[i]), f(self.v[i]), f(self.vs[i]), f(self.wall_left[i]),
                   f(self.wall_right[i])]
            if has_race:
                row.append(f(self.d[i] - self.race_d[i]))
            row += [str(int(rev[i])), str(int(self.crashed[i]))]
            lines.append(" ".join(row))
        return "\n".join(lines)


@lru_cache(maxsize=8192)
def simulate_history(spec: BehaviourSpec, track: str = TRAIN_TRACK,
                     config: HistoryConfig = HistoryConfig()) -> StateHistory:
    """Drive ``spec`` on ``track`` (name or CSV path) and record the history (cached per arguments)."""
    tr = load_track(track)
    rl = racing_line_for(track)
    probe = FrenetDriver(spec, tr, rl)
    start_s = probe.start_s
    sim = TrackSimulator(TrackSimConfig(track=track, start_s=start_s, start_d=probe.d_ref(start_s),
                                        start_speed=spec.v_ref, physics_hz=config.physics_hz), track=tr)
    state = sim.reset()
    control_dt = 1.0 / config.control_hz
    n_warm = int(round(config.warmup_s * config.control_hz))
    n_rec = int(round(config.duration_s * config.control_hz))
    every = int(round(config.control_hz / config.sample_hz))
    crash_time = None if spec.crash_after is None else state.t + config.warmup_s + spec.crash_after
    driver = FrenetDriver(spec, tr, rl, crash_time=crash_time)
    samples: list[VehicleState] = []
    for k in range(n_warm + n_rec):
        state = sim.step(driver.command(state), control_dt)
        if k >= n_warm and (k - n_warm + 1) % every == 0:
            samples.append(state)
    return StateHistory.from_states(samples, rl, sample_hz=config.sample_hz, track=tr.name)
