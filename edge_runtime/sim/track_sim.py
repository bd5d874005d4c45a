"""The embedded track simulator: single-track physics on a closed track with walls.

Fixed physics step (default 200 Hz) with the command held between control updates, as on the car:
the steering servo turns towards the commanded angle at its rate limit, the motor applies the
commanded acceleration within the power limit. Each physics step updates the Frenet position
with an O(1) local search and checks the car's footprint against both walls; a collision
freezes the car (``crashed``), as a real crash ends a run.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field

from .protocol import ControlCommand, VehicleState
from .track import Track, wrap_angle
from .tracks import TRAIN_TRACK, load_track
from .vehicle import SingleTrackModel, VehicleParams


@dataclass(frozen=True)
class TrackSimConfig:
    """Configuration of the embedded simulator; validated on construction."""

    track: str = TRAIN_TRACK  # built-in name or CSV path
    physics_hz: float = 200.0
    start_s: float = 0.0  # m along the centre line
    start_d: float = 0.0  # m, + left
    start_speed: float = 0.0  # m/s
    reset_noise: float = 0.0  # scale of the seeded random perturbation of the start pose
    vehicle: VehicleParams = field(default_factory=VehicleParams)
    steer_servo_gain: float = 40.0  # 1/s: servo speed command = gain * angle error, rate limited

    def __post_init__(self) -> None:
        if not 50.0 <= self.physics_hz <= 2000.0:
            raise ValueError(f"TrackSimConfig.physics_hz must be in [50, 2000], got {self.physics_hz}")
        if self.reset_noise < 0:
            raise ValueError("TrackSimConfig.reset_noise must be >= 0")
        if self.steer_servo_gain <= 0:
            raise ValueError("TrackSimConfig.steer_servo_gain must be > 0")
        if not math.isfinite(self.start_s + self.start_d + self.start_speed):
            raise ValueError("TrackSimConfig: start pose must be finite")


@dataclass(frozen=True)
class TrackSimSnapshot:
    """What :meth:`TrackSimulator.snapshot` captures (treat as opaque)."""

    x: tuple[float, ...]  # vehicle model state (x, y, steer, v, yaw, yaw_rate, slip)
    s: float
    d: float
    hint: int  # track segment of s
    seg_t: float  # position inside that segment
    ticks: int  # physics steps since reset
    progress: float
    crashed: bool
    state: VehicleState
    track_length: float


class TrackSimulator:
    """Implements :class:`edge_runtime.sim.protocol.Simulator`."""

    def __init__(self, config: TrackSimConfig | None = None, track: Track | None = None) -> None:
        self.config = config or TrackSimConfig()
        self._track = track if track is not None else load_track(self.config.track)
        self.model = SingleTrackModel(self.config.vehicle)
        self._dt = 1.0 / self.config.physics_hz
        half_w = 0.5 * self.config.vehicle.width
        half_l = 0.5 * self.config.vehicle.length
        self._half_w, self._half_l = half_w, half_l
        self._rng = random.Random()
        self.reset()

    @property
    def track(self) -> Track:
        return self._track

    @property
    def physics_dt(self) -> float:
        return self._dt

    @property
    def vehicle_params(self) -> VehicleParams:
        """The simulated car's parameters: the MPC plans with the same geometry (``vehicle_params_of``)."""
        return self.config.vehicle

    # -- episode control --------------------------------------------------------------------------
    def reset(self, seed: int | None = None) -> VehicleState:
        """Put the car at the configured start pose (perturbed by ``reset_noise``, drawn from the
        simulator's own RNG, seeded here when ``seed`` is given). A start pose whose footprint
        touches a wall starts crashed (and, like any crashed car, at rest)."""
        if seed is not None:
            self._rng.seed(seed)
        c, tr = self.config, self._track
        noise = c.reset_noise
        s0 = c.start_s + (self._rng.uniform(-1.0, 1.0) * noise if noise else 0.0)
        d0 = c.start_d + (self._rng.uniform(-0.2, 0.2) * noise if noise else 0.0)
        yaw_noise = self._rng.uniform(-0.1, 0.1) * noise if noise else 0.0
        x, y = tr.from_frenet(s0, d0)
        yaw = float(tr.heading_at(s0)) + yaw_noise
        x, y = float(x), float(y)
        s, d, a, t = tr._project(x, y)
        self._hint, self._seg_t = a, t
        self._s, self._d = s, d
        self._ticks = 0  # physics steps since reset
        self._t = 0.0
        self._progress = 0.0
        self._crashed = self._collides(s, d, yaw)
        self._x = (x, y, 0.0, 0.0 if self._crashed else float(c.start_speed), yaw, 0.0, 0.0)
        self._state = self._make_state(0.0, 0.0)
        return self._state

    def step(self, command: ControlCommand, duration: float) -> VehicleState:
        """Hold ``command`` for ``duration`` s (rounded to whole physics steps, at least one).

        This is the hot path: per physics step one RK4 step, one local Frenet projection and a
        footprint-against-walls check, all on Python floats with index-based interpolation (no
        numpy calls, no per-step objects)."""
        dt = self._dt
        n = max(1, int(round(duration / dt)))
        if self._crashed:
            self._ticks += n
            self._t = self._ticks * dt
            self._state = self._make_state(0.0, 0.0)
            return self._state
        steer_target = command.steer
        accel = command.accel
        rk4 = self.model.rk4_step
        gain = self.config.steer_servo_gain
        tr = self._track
        project = tr._project
        heading_l, w_left_l, w_right_l = tr._heading_l, tr._w_left_l, tr._w_right_l
        length = tr.length
        half_length = 0.5 * length
        half_l, half_w = self._half_l, self._half_w
        sin, cos, fmod, pi, two_pi = math.sin, math.cos, math.fmod, math.pi, 2.0 * math.pi
        x = self._x
        s = self._s
        d = self._d
        hint = self._hint
        progress = self._progress
        steer_rate = 0.0
        crashed = False
        for _ in range(n):
            steer_rate = gain * (steer_target - x[2])
            x = rk4(x, steer_rate, accel, dt)
            s_new, d, hint, t = project(x[0], x[1], hint)
            ds = (s_new - s) % length  # signed progress across the seam
            progress += ds - length if ds > half_length else ds
            s = s_new
            # Footprint against the walls: the car's half extent along the normal of the line.
            h0 = heading_l[hint]
            alpha = fmod(x[4] - (h0 + t * (heading_l[hint + 1] - h0)) + pi, two_pi)
            if alpha <= 0.0:
                alpha += two_pi
            alpha -= pi
            extent = half_l * abs(sin(alpha)) + half_w * abs(cos(alpha))
            wl0, wr0 = w_left_l[hint], w_right_l[hint]
            if (d + extent > wl0 + t * (w_left_l[hint + 1] - wl0)
                    or d - extent < -(wr0 + t * (w_right_l[hint + 1] - wr0))):
                crashed = True
                break
        self._hint, self._seg_t = hint, t
        self._s, self._d = s, d
        self._progress = progress
        # The remaining physics steps of a crashed command still pass, frozen. Time is counted in
        # whole physics steps (no drift from summing dt).
        self._ticks += n
        self._t = self._ticks * dt
        if crashed:
            self._crashed = True
            self._x = (x[0], x[1], x[2], 0.0, x[4], 0.0, 0.0)
            self._state = self._make_state(0.0, 0.0)
        else:
            self._x = x
            self._state = self._make_state(steer_rate, accel)
        return self._state

    def state(self) -> VehicleState:
        return self._state

    def snapshot(self) -> TrackSimSnapshot:
        """The complete dynamic state of the car (pose, speeds, steering, Frenet position, time,
        progress, crash flag): cheap (a tuple of floats), immutable. :meth:`restore` on this or
        another simulator of the same track and configuration continues exactly from here."""
        return TrackSimSnapshot(x=self._x, s=self._s, d=self._d, hint=self._hint, seg_t=self._seg_t,
                                ticks=self._ticks, progress=self._progress, crashed=self._crashed,
                                state=self._state, track_length=self._track.length)

    def restore(self, snapshot: TrackSimSnapshot) -> VehicleState:
        """Put the car back into the state of ``snapshot`` (taken on this track); returns that state."""
        if not isinstance(snapshot, TrackSimSnapshot):
            raise TypeError(f"restore() needs a TrackSimSnapshot, got {type(snapshot).__name__}")
        if abs(snapshot.track_length - self._track.length) > 1e-9:
            raise ValueError(f"snapshot was taken on a track of length {snapshot.track_length:.3f} m, "
                             f"this simulator's track is {self._track.length:.3f} m long")
        self._x, self._s, self._d = snapshot.x, snapshot.s, snapshot.d
        self._hint, self._seg_t = snapshot.hint, snapshot.seg_t
        self._ticks = snapshot.ticks
        self._t = self._ticks * self._dt
        self._progress, self._crashed = snapshot.progress, snapshot.crashed
        self._state = snapshot.state
        return self._state

    def close(self) -> None:
        """Nothing to release for the embedded simulator (kept for the protocol)."""

    # -- internals --------------------------------------------------------------------------------
    def _collides(self, s: float, d: float, yaw: float) -> bool:
        """Whether the car's footprint (at Frenet s, d with this yaw) reaches either wall."""
        alpha = wrap_angle(yaw - float(self._track.heading_at(s)))
        extent = self._half_l * abs(math.sin(alpha)) + self._half_w * abs(math.cos(alpha))
        w_left, w_right = self._track.widths_at(s)
        return bool(d + extent > float(w_left) or d - extent < -float(w_right))

    def _make_state(self, steer_rate: float, accel: float) -> VehicleState:
        x, y, steer, v, yaw, yaw_rate, slip = self._x
        tr = self._track
        if self._crashed:
            ax = ay = 0.0
        else:
            ax, ay = self.model.body_accelerations(self._x, steer_rate, accel)
        s, d = self._s, self._d
        a, t = self._hint, self._seg_t  # the segment of s: index-based interpolation
        at = tr._at_index
        kappa = at(tr._curvature_l, a, t)
        heading = at(tr._heading_l, a, t)
        w_left, w_right = at(tr._w_left_l, a, t), at(tr._w_right_l, a, t)
        alpha = wrap_angle(yaw + slip - heading)  # course relative to the line
        heading_error = wrap_angle(yaw - heading)
        vs = v * math.cos(alpha) / (1.0 - d * kappa) if abs(1.0 - d * kappa) > 1e-6 else 0.0
        vd = v * math.sin(alpha)
        return VehicleState(
            t=self._t, x=x, y=y, yaw=yaw, v=v, vx=v * math.cos(slip), vy=v * math.sin(slip),
            yaw_rate=yaw_rate, slip=slip, steer=steer, ax=ax, ay=ay, s=s, d=d,
            heading_error=heading_error, vs=vs, vd=vd, wall_left=w_left - d,
            wall_right=w_right + d, progress=self._progress, crashed=self._crashed)
