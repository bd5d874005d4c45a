"""Closed-loop evaluation of one parameter set on one instruction: simulator + MPC, then metrics.

This is the function closed-loop RL calls thousands of times, so it is plain, deterministic and
cheap: one simulator, one MPC, a fixed control rate, a bounded window (``duration`` seconds or
``max_laps`` laps, whichever ends first). Everything is built from the config, so a worker
process only needs the config and the parameter set.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from functools import lru_cache

import numpy as np

from ..control.mpc import FrenetMPC, MPCConfig
from ..control.params import DEFAULT_PARAMS, MPCParams
from ..sim.racing_line import racing_line_for
from ..sim.track import Track
from ..sim.track_sim import TrackSimConfig, TrackSimulator
from ..sim.tracks import TRAIN_TRACK, load_track
from .instructions import Instruction
from .metrics import Trajectory, adaptability, category_error, stalled


@dataclass(frozen=True)
class EvalConfig:
    """How a parameter set is evaluated; the same config gives the same numbers."""

    track: str = TRAIN_TRACK
    duration: float = 20.0  # s of simulated time at most
    max_laps: float = 1.0  # stop after this many laps (forward or backward)
    rate_hz: float = 20.0  # control rate
    horizon: int = 20
    physics_hz: float = 200.0
    start_s: float = 0.0
    start_speed: float = 0.0
    min_progress_speed: float = 1.0  # m/s: below this mean progress a run counts as stalled

    def __post_init__(self) -> None:
        if not 0.5 <= self.duration <= 600:
            raise ValueError(f"EvalConfig.duration must be in [0.5, 600] s, got {self.duration}")
        if self.max_laps <= 0:
            raise ValueError("EvalConfig.max_laps must be > 0")
        if self.min_progress_speed < 0:
            raise ValueError("EvalConfig.min_progress_speed must be >= 0")
        if self.physics_hz < self.rate_hz:
            raise ValueError("EvalConfig: physics_hz must be >= rate_hz")

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class EvalResult:
    instruction: Instruction
    params: MPCParams
    error: float  # category error (RMS), see metrics
    default_error: float
    adaptability: float
    crashed: bool
    stalled: bool
    laps: float
    sim_time: float
    mpc_failures: int
    wall_time: float

    def to_dict(self) -> dict:
        return {
            "instruction": self.instruction.text, "category": self.instruction.category.value,
            "target_speed": self.instruction.target_speed, "params": self.params.to_dict(),
            "error": self.error, "default_error": self.default_error, "adaptability": self.adaptability,
            "crashed": self.crashed, "stalled": self.stalled, "laps": self.laps, "sim_time": self.sim_time,
            "mpc_failures": self.mpc_failures, "wall_time": self.wall_time,
        }


def rollout(params: MPCParams, config: EvalConfig, track: Track | None = None) -> tuple[Trajectory, int]:
    """Drive one window; returns the trajectory and the number of failed MPC solves."""
    track = track or load_track(config.track)
    sim = TrackSimulator(TrackSimConfig(track=config.track, physics_hz=config.physics_hz, start_s=config.start_s,
                                        start_speed=config.start_speed), track=track)
    mpc = FrenetMPC(track, params, MPCConfig(horizon=config.horizon, rate_hz=config.rate_hz))
    dt = 1.0 / config.rate_hz
    n_steps = int(round(config.duration / dt))
    lap_distance = config.max_laps * track.length
    state = sim.state()
    t, s, d, v, ax, ay = ([] for _ in range(6))
    for _ in range(n_steps):
        command = mpc.step(state).command
        state = sim.step(command, dt)
        t.append(state.t); s.append(state.s); d.append(state.d); v.append(state.v)
        ax.append(state.ax); ay.append(state.ay)
        if state.crashed or abs(state.progress) >= lap_distance:
            break
    s_arr = np.asarray(s)
    racing = racing_line_for(config.track).offset_at(s_arr)
    traj = Trajectory(t=np.asarray(t), s=s_arr, d=np.asarray(d), v=np.asarray(v), ax=np.asarray(ax),
                      ay=np.asarray(ay), racing_d=np.asarray(racing), progress=state.progress,
                      crashed=state.crashed, duration=state.t)
    return traj, mpc.failures


@lru_cache(maxsize=4096)
def default_error(instruction: Instruction, config: EvalConfig) -> float:
    """The category error of the default parameters: the baseline of control adaptability."""
    traj, _ = rollout(DEFAULT_PARAMS, config)
    if traj.crashed:
        raise RuntimeError(f"the default parameters crash on track {config.track!r}; the baseline is undefined")
    return category_error(instruction, traj)


def evaluate(params: MPCParams, instruction: Instruction, config: EvalConfig | None = None) -> EvalResult:
    """Closed-loop score of ``params`` on ``instruction``."""
    config = config or EvalConfig()
    t0 = time.perf_counter()
    traj, failures = rollout(params, config)
    err = category_error(instruction, traj)
    is_stalled = stalled(instruction, traj, config.min_progress_speed)
    base = default_error(instruction, config)
    score = adaptability(err, base, failed=traj.crashed or is_stalled)
    return EvalResult(instruction=instruction, params=params, error=err, default_error=base, adaptability=score,
                      crashed=traj.crashed, stalled=is_stalled, laps=traj.progress / load_track(config.track).length,
                      sim_time=traj.duration, mpc_failures=failures, wall_time=time.perf_counter() - t0)


def objective(params: MPCParams, instruction: Instruction, config: EvalConfig) -> float:
    """What the oracle minimises: the category error, with failures pushed far above any success."""
    traj, _ = rollout(params, config)
    err = category_error(instruction, traj)
    if traj.crashed or stalled(instruction, traj, config.min_progress_speed) or not math.isfinite(err):
        return 1e3 + (0.0 if not math.isfinite(err) else min(err, 1e3))
    return err
