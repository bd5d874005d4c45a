"""A Gymnasium environment around the embedded track simulator (id ``edge_runtime/Track-v0``).

For RL baselines and for poking at the simulator with standard tools; the LLM controllers do not
use it (they drive through the MPC). Importing this module registers the environment::

    import gymnasium, edge_runtime.sim.gym_env
    env = gymnasium.make("edge_runtime/Track-v0", track="hairpin")

Action: ``[steer (rad), accel (m/s^2)]`` within the vehicle's steering limits and ``±accel_max``
(or ``[-1, 1]^2`` scaled to those limits with ``normalize_actions=True``, as many RL libraries
prefer). Observation (float32): ``[d, heading_error, v, yaw_rate, slip, steer, wall_left,
wall_right, curvature at s + l for each lookahead l]``; every entry has finite bounds and is
clipped into them (only reachable by a crashing or spinning car). Reward: metres of progress
along the centre line in the step, minus ``crash_penalty`` on the step that crashes; a crash
terminates, ``max_episode_steps`` truncates (handled here, not by a ``TimeLimit`` wrapper).
"""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Any, Sequence

import gymnasium
import numpy as np
from gymnasium import spaces

from .protocol import ControlCommand, VehicleState
from .track_sim import TrackSimConfig, TrackSimulator
from .tracks import TRAIN_TRACK

ENV_ID = "edge_runtime/Track-v0"

OBSERVATION_NAMES = ("d", "heading_error", "v", "yaw_rate", "slip", "steer", "wall_left", "wall_right")
YAW_RATE_BOUND = 20.0  # rad/s, far beyond what the car reaches without spinning
SLIP_BOUND = math.pi / 2  # rad
DEFAULT_RESET_NOISE = 1.0  # TrackSimConfig.reset_noise: up to ±1 m along, ±0.2 m across, ±0.1 rad


class TrackDrivingEnv(gymnasium.Env):
    """Drive laps on a closed track; see the module docstring for spaces and reward."""

    metadata = {"render_modes": [], "render_fps": 20}

    def __init__(self, track: str | None = None, control_period: float = 0.05, max_episode_steps: int = 1000,
                 crash_penalty: float = 10.0, reset_noise: float | None = None,
                 lookahead: Sequence[float] = (0.5, 1.0, 2.0, 4.0), normalize_actions: bool = False,
                 sim_config: TrackSimConfig | None = None, render_mode: str | None = None) -> None:
        """``sim_config`` gives every simulator setting (default: the train track with
        ``reset_noise=DEFAULT_RESET_NOISE``); ``track`` and ``reset_noise``, when given, override
        its fields of the same name."""
        if render_mode is not None:
            raise ValueError(f"TrackDrivingEnv has no render modes, got render_mode={render_mode!r}")
        if not (math.isfinite(control_period) and control_period > 0):
            raise ValueError(f"control_period must be a positive number of seconds, got {control_period}")
        if int(max_episode_steps) != max_episode_steps or max_episode_steps < 1:
            raise ValueError(f"max_episode_steps must be a positive integer, got {max_episode_steps}")
        if not (math.isfinite(crash_penalty) and crash_penalty >= 0):
            raise ValueError(f"crash_penalty must be >= 0, got {crash_penalty}")
        lookahead = tuple(float(x) for x in lookahead)
        if not all(math.isfinite(x) and x >= 0 for x in lookahead):
            raise ValueError(f"lookahead distances must be finite and >= 0, got {lookahead}")
        config = sim_config if sim_config is not None else TrackSimConfig(
            track=TRAIN_TRACK, reset_noise=DEFAULT_RESET_NOISE)
        overrides = {k: v for k, v in (("track", track), ("reset_noise", reset_noise)) if v is not None}
        if overrides:
            config = replace(config, **overrides)
        self.sim = TrackSimulator(config)
        if control_period < self.sim.physics_dt - 1e-12:
            raise ValueError(
                f"control_period {control_period} s is shorter than the physics step {self.sim.physics_dt} s")
        self.render_mode = render_mode
        self.control_period = float(control_period)
        self.max_episode_steps = int(max_episode_steps)
        self.crash_penalty = float(crash_penalty)
        self.lookahead = np.asarray(lookahead, dtype=float)
        self.normalize_actions = bool(normalize_actions)
        self.observation_names = OBSERVATION_NAMES + tuple(f"curvature_{x:g}m" for x in lookahead)

        vp = config.vehicle
        self._act_low = np.array([vp.steer_min, -vp.accel_max], dtype=np.float32)
        self._act_high = np.array([vp.steer_max, vp.accel_max], dtype=np.float32)
        if self.normalize_actions:
            self.action_space = spaces.Box(-1.0, 1.0, shape=(2,), dtype=np.float32)
        else:
            self.action_space = spaces.Box(self._act_low, self._act_high, dtype=np.float32)

        tr = self.sim.track
        w = float(max(tr.w_left.max(), tr.w_right.max())) + 1.0  # walls plus a crash's overshoot
        k = float(np.abs(tr.curvature).max()) * 1.01 + 1e-3
        low = [-w, -math.pi, vp.v_min, -YAW_RATE_BOUND, -SLIP_BOUND, vp.steer_min, -w, -w] + [-k] * len(lookahead)
        high = [w, math.pi, vp.v_max, YAW_RATE_BOUND, SLIP_BOUND, vp.steer_max, 2 * w, 2 * w] + [k] * len(lookahead)
        self.observation_space = spaces.Box(np.array(low, dtype=np.float32), np.array(high, dtype=np.float32),
                                            dtype=np.float32)
        self._steps = 0
        self._last: VehicleState = self.sim.state()

    # -- Gymnasium API ----------------------------------------------------------------------------
    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)
        if options:
            raise ValueError(f"TrackDrivingEnv.reset takes no options, got {sorted(options)}")
        # The start perturbation comes from the env's seeded generator, so reset(seed=...) is
        # reproducible and successive unseeded resets continue one reproducible stream.
        sim_seed = int(self.np_random.integers(0, 2**63 - 1))
        self._last = self.sim.reset(seed=sim_seed)
        self._steps = 0
        return self._observation(self._last), self._info(self._last)

    def step(self, action):
        a = np.asarray(action, dtype=np.float64).reshape(-1)
        if a.shape != (2,) or not np.all(np.isfinite(a)):
            raise ValueError(f"action must be 2 finite numbers [steer, accel], got {action!r}")
        if self.normalize_actions:
            a = np.clip(a, -1.0, 1.0)
            a = self._act_low + 0.5 * (a + 1.0) * (self._act_high - self._act_low)
        a = np.clip(a, self._act_low, self._act_high)
        before = self._last
        state = self.sim.step(ControlCommand(float(a[0]), float(a[1])), self.control_period)
        self._last = state
        self._steps += 1
        crashed_now = state.crashed and not before.crashed
        reward = state.progress - before.progress - (self.crash_penalty if crashed_now else 0.0)
        terminated = state.crashed
        truncated = not terminated and self._steps >= self.max_episode_steps
        return self._observation(state), float(reward), terminated, truncated, self._info(state)

    def close(self) -> None:
        self.sim.close()

    # -- helpers ----------------------------------------------------------------------------------
    def _observation(self, st: VehicleState) -> np.ndarray:
        kappa = self.sim.track.curvature_at(st.s + self.lookahead)
        obs = np.empty(self.observation_space.shape, dtype=np.float32)
        obs[:8] = (st.d, st.heading_error, st.v, st.yaw_rate, st.slip, st.steer, st.wall_left, st.wall_right)
        obs[8:] = kappa
        return np.clip(obs, self.observation_space.low, self.observation_space.high)

    def _info(self, st: VehicleState) -> dict[str, Any]:
        return {"t": st.t, "s": st.s, "progress": st.progress, "laps": st.progress / self.sim.track.length,
                "crashed": st.crashed, "x": st.x, "y": st.y, "yaw": st.yaw, "steps": self._steps}


def _register() -> None:
    if ENV_ID not in gymnasium.registry:
        gymnasium.register(id=ENV_ID, entry_point=f"{__name__}:TrackDrivingEnv")


_register()

__all__ = ["DEFAULT_RESET_NOISE", "ENV_ID", "OBSERVATION_NAMES", "TrackDrivingEnv"]
