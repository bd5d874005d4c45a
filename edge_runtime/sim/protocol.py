"""The small simulator protocol every backend implements (embedded track simulator, CARLA).

The control stack only ever sees these types: a ``ControlCommand`` goes in, a ``VehicleState``
(Cartesian pose, body velocities, IMU-like accelerations, Frenet odometry, wall distances,
collision flag) comes out, and the ``Track`` gives the geometry the MPC and metrics need.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from .track import Track


@dataclass(frozen=True)
class ControlCommand:
    """Steering-angle target (rad, the servo is rate limited) and longitudinal acceleration (m/s^2)."""

    steer: float
    accel: float

    def __post_init__(self) -> None:
        if not (math.isfinite(self.steer) and math.isfinite(self.accel)):
            raise ValueError(f"ControlCommand must be finite, got steer={self.steer}, accel={self.accel}")


@dataclass(frozen=True)
class VehicleState:
    t: float  # simulation time, s
    x: float
    y: float
    yaw: float  # rad
    v: float  # signed speed along the heading, m/s (negative when reversing)
    vx: float  # body-frame velocities, m/s
    vy: float
    yaw_rate: float  # rad/s
    slip: float  # side-slip angle, rad
    steer: float  # steering angle, rad
    ax: float  # body-frame accelerations (IMU-like), m/s^2
    ay: float
    s: float  # Frenet arc length in [0, track length)
    d: float  # lateral offset, + left
    heading_error: float  # yaw − centre-line heading, rad
    vs: float  # ds/dt, m/s
    vd: float  # dd/dt, m/s
    wall_left: float  # distance from the car's centre to the left/right wall, m
    wall_right: float
    progress: float  # signed arc length driven since reset, m (laps = progress / length)
    crashed: bool


@runtime_checkable
class Simulator(Protocol):
    """What the control loop needs from a simulator."""

    @property
    def track(self) -> Track: ...

    @property
    def physics_dt(self) -> float: ...

    def reset(self, seed: int | None = None) -> VehicleState: ...

    def step(self, command: ControlCommand, duration: float) -> VehicleState:
        """Hold ``command`` for ``duration`` seconds of simulated time; return the new state.

        ``duration`` may span several control periods: a control loop whose controller is late
        holds the command in force through the periods it missed, as a vehicle's actuators do."""
        ...

    def state(self) -> VehicleState: ...

    def close(self) -> None: ...
