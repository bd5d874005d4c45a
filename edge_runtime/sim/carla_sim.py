"""The CARLA backend: a CARLA 0.9.16 server behind the :class:`~edge_runtime.sim.protocol.Simulator`
protocol, so the control loop, the MPC and the LLM drive a CARLA car exactly as the embedded one.

Lifecycle (see docs/carla.md):

* **Connect** with a client timeout (``timeout``): no server within it is one
  :class:`~edge_runtime.sim.SimulatorUnavailableError` line, never a hang.
* **Synchronous mode** with ``fixed_delta_seconds = physics_dt`` (the control period when
  ``edge-run`` builds it): the server advances only on our ``world.tick()``, one tick per physics
  step, so the car feels the controller's latency exactly as on the embedded simulator. With
  ``traffic > 0`` the Traffic Manager runs synchronous too.
* **Spawn** the ego vehicle (``blueprint``, default the Leaderboard's Lincoln MKZ 2020) at the route
  start, with a collision sensor (-> ``crashed``) and a lane-invasion sensor (-> counted
  infractions).
* **Close** destroys every actor we spawned and puts the world's original settings back -- also
  when setup fails half-way, after an exception (``with`` block, or ``atexit``), and after SIGTERM
  (a default SIGTERM handler is turned into ``SystemExit`` while the simulator is open, so the
  clean-up runs; SIGINT already raises ``KeyboardInterrupt``; ``edge-run`` has its own handlers and
  closes in its clean-up). A server left in synchronous mode would hang every later client.

Control mapping (documented, deterministic): the MPC's steering target is followed by a
rate-limited steering "servo" at ``steer_rate_max`` (the MPC plans with that limit too) and sent as
``steer = -delta / max_steer`` (CARLA steers right for positive values), ``max_steer`` being the
largest ``max_steer_angle`` of the vehicle's wheels read from its physics control. The MPC's
acceleration goes through :class:`LongitudinalController` (acceleration feed-forward plus a
proportional term on the integrated reference speed) to throttle or brake.

``carla`` is imported when a simulator is built, never at package import; ``carla_module`` lets
a test pass a double of the API.
"""

from __future__ import annotations

import atexit
import importlib
import math
import signal
import threading
import time
import weakref
from dataclasses import dataclass
from typing import Any

from .carla_route import (RouteError, RoutePoint, carla_yaw_to_track, load_route_file, route_to_track,
                          to_track_xy, trace_lane_loop, track_yaw_to_carla)
from .protocol import ControlCommand, VehicleState
from .track import Track, wrap_angle
from .vehicle import VehicleParams

#: s the client waits for ``load_world`` (a map load takes tens of seconds, longer than an RPC).
LOAD_WORLD_TIMEOUT = 120.0

#: The Leaderboard's ego vehicle; any 4-wheeled ``vehicle.*`` blueprint works.
DEFAULT_BLUEPRINT = "vehicle.lincoln.mkz_2020"


class CarlaUnavailable(RuntimeError):
    """The carla package is missing or no server answers; the registry re-raises it as
    ``SimulatorUnavailableError`` (one line for the CLI, exit 2)."""


@dataclass(frozen=True)
class CarlaSimConfig:
    """Everything the CARLA backend needs; validated on construction."""

    host: str = "localhost"
    port: int = 2000
    timeout: float = 10.0  # s, client timeout for every RPC (connect included)
    town: str | None = None  # load this map first (e.g. "Town04"); None keeps the loaded one
    route: str | None = None  # CSV file of waypoints 'x, y[, lane_width]'; None: trace the lane
    start_x: float | None = None  # where to start tracing (CARLA coordinates); None: first spawn point
    start_y: float | None = None
    route_step: float = 2.0  # m between traced waypoints
    max_route_length: float = 5000.0  # m; a lane that does not close within it is refused
    track_step: float = 0.25  # m, resampling step of the track built from the route
    start_s: float = 0.0  # m along the route where the car is placed
    physics_dt: float = 0.05  # s, fixed_delta_seconds; one world.tick() per physics step
    blueprint: str = DEFAULT_BLUEPRINT
    traffic: int = 0  # NPC vehicles driven by the Traffic Manager (synchronous)
    tm_port: int = 8000
    seed: int = 0  # Traffic Manager seed
    no_rendering: bool = False
    steer_rate_max: float = 0.7  # rad/s at the road wheels (servo model and MPC limit)
    throttle_accel: float = 3.0  # m/s^2 that full throttle gives (feed-forward scale)
    brake_decel: float = 8.0  # m/s^2 that full brake gives
    coast_decel: float = 0.3  # m/s^2 below which a deceleration is left to drag (no brake)
    speed_gain: float = 1.0  # 1/s, proportional gain on the reference-speed error
    max_offset: float = 5.0  # m beyond the lane edge: farther off the route ends the run (crashed)
    spawn_lift: float = 0.3  # m above the road surface at spawn
    wheelbase: float | None = None  # m; None: from the wheel positions of the physics control

    def __post_init__(self) -> None:
        if not isinstance(self.host, str) or not self.host:
            raise ValueError("CarlaSimConfig.host must be a non-empty string")
        if not (isinstance(self.port, int) and 1 <= self.port <= 65535):
            raise ValueError(f"CarlaSimConfig.port must be an integer in [1, 65535], got {self.port!r}")
        if not (isinstance(self.tm_port, int) and 1 <= self.tm_port <= 65535):
            raise ValueError(f"CarlaSimConfig.tm_port must be an integer in [1, 65535], got {self.tm_port!r}")
        if not (0 < self.timeout <= 600):
            raise ValueError(f"CarlaSimConfig.timeout must be in (0, 600] s, got {self.timeout}")
        if not (0.001 <= self.physics_dt <= 0.1):
            raise ValueError(f"CarlaSimConfig.physics_dt must be in [0.001, 0.1] s (CARLA's physics needs "
                             f"fixed_delta_seconds <= 0.1), got {self.physics_dt}")
        if self.traffic < 0:
            raise ValueError("CarlaSimConfig.traffic must be >= 0")
        if (self.start_x is None) != (self.start_y is None):
            raise ValueError("CarlaSimConfig: give both start_x and start_y, or neither")
        positive = ("route_step", "max_route_length", "track_step", "steer_rate_max", "throttle_accel",
                    "brake_decel", "speed_gain", "max_offset")
        for name in positive:
            value = getattr(self, name)
            if not (value > 0 and math.isfinite(value)):
                raise ValueError(f"CarlaSimConfig.{name} must be a finite number > 0, got {value}")
        if self.coast_decel < 0 or self.spawn_lift < 0:
            raise ValueError("CarlaSimConfig: coast_decel and spawn_lift must be >= 0")
        if self.wheelbase is not None and not self.wheelbase > 0:
            raise ValueError(f"CarlaSimConfig.wheelbase must be > 0 m, got {self.wheelbase}")
        if not math.isfinite(self.start_s):
            raise ValueError("CarlaSimConfig.start_s must be finite")


class LongitudinalController:
    """MPC acceleration -> (throttle, brake, reverse).

    The MPC plans in accelerations; CARLA takes pedal positions. Feed-forward ``a / throttle_accel``
    (or ``a / brake_decel``) does most of the work; the proportional term on the error to the
    reference speed -- the MPC's accelerations integrated from the measured speed -- removes what
    the feed-forward misses (drag, slope, engine map). The reference restarts from the measured
    speed when it drifts more than 2 m/s away (a blocked car must not wind up). Small decelerations
    (below ``coast_decel``) are left to rolling and air drag. A negative reference speed selects the
    reverse gear, where the pedals act mirrored."""

    def __init__(self, config: CarlaSimConfig) -> None:
        self.c = config
        self.v_ref: float | None = None

    def reset(self) -> None:
        self.v_ref = None

    def __call__(self, accel: float, v: float, dt: float) -> tuple[float, float, bool]:
        c = self.c
        if self.v_ref is None or abs(self.v_ref - v) > 2.0:
            self.v_ref = v
        self.v_ref += accel * dt
        a_cmd = accel + c.speed_gain * (self.v_ref - v)
        reverse = self.v_ref < 0.0 or (v < -0.1 and self.v_ref <= 0.0)
        drive = -a_cmd if reverse else a_cmd  # acceleration in the direction of travel of the gear
        if drive >= 0.0:
            return min(drive / c.throttle_accel, 1.0), 0.0, reverse
        if -drive <= c.coast_decel:
            return 0.0, 0.0, reverse
        return 0.0, min(-drive / c.brake_decel, 1.0), reverse


class ControlMapper:
    """An MPC :class:`ControlCommand` -> CARLA pedal and steering values, once per physics tick.

    Steering: the MPC's target angle is followed at ``steer_rate_max`` (the servo the MPC plans
    with) within ``max_steer`` and sent normalised, ``steer = -delta / max_steer`` (CARLA steers
    right for positive values, the control stack left). Longitudinal: :class:`LongitudinalController`.
    Used by the simulator backend and by the Leaderboard agent, so both drive the same way."""

    def __init__(self, config: CarlaSimConfig, max_steer: float, steer_rate_max: float) -> None:
        if not max_steer > 0:
            raise ValueError(f"max_steer must be > 0 rad, got {max_steer}")
        self.max_steer, self.steer_rate_max = float(max_steer), float(steer_rate_max)
        self.longitudinal = LongitudinalController(config)
        self.steer = 0.0  # rad, the road-wheel angle the servo holds now (+ left)

    def reset(self) -> None:
        self.steer = 0.0
        self.longitudinal.reset()

    def normalised_steer(self, delta: float) -> float:
        return min(max(-delta / self.max_steer, -1.0), 1.0)

    def __call__(self, command: ControlCommand, v: float, dt: float) -> tuple[float, float, float, bool]:
        """(throttle, steer, brake, reverse) for one tick of ``dt`` seconds at measured speed ``v``."""
        limit, rate = self.max_steer, self.steer_rate_max * dt
        target = min(max(command.steer, -limit), limit)
        self.steer += min(max(target - self.steer, -rate), rate)
        throttle, brake, reverse = self.longitudinal(command.accel, v, dt)
        return throttle, self.normalised_steer(self.steer), brake, reverse


def import_carla(module: Any = None) -> Any:
    """The ``carla`` module (or ``module`` when given); a missing package is one clear line."""
    if module is not None:
        return module
    try:
        return importlib.import_module("carla")
    except ImportError as exc:
        raise CarlaUnavailable(
            f"the carla Python package is not installed ({exc}); install the CARLA client with "
            "pip install -e \".[carla]\" (carla==0.9.16, Python 3.11 x86_64)") from None


def vehicle_params_from_physics(physics: Any, extent: Any, steer_rate_max: float,
                                wheelbase: float | None = None) -> VehicleParams:
    """The MPC's geometry of a CARLA vehicle: wheelbase from the wheel positions (front = wheels
    that steer), steering limit = the largest ``max_steer_angle`` (degrees), width and length from
    the bounding box. The wheel positions are in Unreal units (cm) in CARLA 0.9; values that already
    look like metres are taken as such. The dynamic fields of :class:`VehicleParams` keep their
    defaults: the MPC only reads the geometry and the steering limits."""
    wheels = list(physics.wheels)
    if len(wheels) < 3:
        raise CarlaUnavailable(f"the vehicle has {len(wheels)} wheels; a car with 4 wheels is needed")
    max_steer_deg = max(float(w.max_steer_angle) for w in wheels)
    if not max_steer_deg > 0:
        raise CarlaUnavailable("the vehicle's physics control reports no steered wheel (max_steer_angle 0)")
    if wheelbase is None:
        front = [w for w in wheels if float(w.max_steer_angle) > 0]
        rear = [w for w in wheels if float(w.max_steer_angle) <= 0] or wheels[2:]
        if len(front) == len(wheels):
            front, rear = wheels[:2], wheels[2:]

        def centre(ws: list) -> tuple[float, float, float]:
            n = len(ws)
            return (sum(w.position.x for w in ws) / n, sum(w.position.y for w in ws) / n,
                    sum(w.position.z for w in ws) / n)

        f, r = centre(front), centre(rear)
        raw = math.dist(f, r)
        wheelbase = raw / 100.0 if raw > 20.0 else raw  # cm (CARLA 0.9) or metres
    if not 0.5 <= wheelbase <= 10.0:
        raise CarlaUnavailable(f"implausible wheelbase {wheelbase:.2f} m from the vehicle's wheel positions; "
                               "give CarlaSimConfig.wheelbase")
    max_steer = math.radians(max_steer_deg)
    mass = float(getattr(physics, "mass", 1500.0)) or 1500.0
    return VehicleParams(mass=mass, yaw_inertia=mass * 1.5, lf=0.5 * wheelbase, lr=0.5 * wheelbase,
                         cg_height=0.5, steer_min=-max_steer, steer_max=max_steer, steer_rate_max=steer_rate_max,
                         accel_max=8.0, v_switch=15.0, v_min=-10.0, v_max=60.0,
                         width=2.0 * float(extent.y), length=2.0 * float(extent.x))


class CarlaSimulator:
    """Implements :class:`edge_runtime.sim.protocol.Simulator` on a CARLA server (module docstring)."""

    def __init__(self, config: CarlaSimConfig | None = None, carla_module: Any = None) -> None:
        self.config = c = config or CarlaSimConfig()
        self.carla = import_carla(carla_module)
        self._actors: list[Any] = []  # everything we spawned, destroyed in close()
        self._sensors: list[Any] = []
        self._original_settings: Any = None
        self._tm: Any = None
        self._world: Any = None
        self._closed = False
        self._lock = threading.Lock()
        self._collisions: list[dict[str, Any]] = []
        self._invasions: list[list[str]] = []
        self._previous_sigterm: Any = None
        self._dt = float(c.physics_dt)
        self._tick_wall = 0.0
        self._frame, self._server_time = -1, 0.0
        try:
            self._setup()
            self._install_cleanup()
            self.reset()
        except BaseException as exc:
            self.close()
            if isinstance(exc, RuntimeError) and not isinstance(exc, CarlaUnavailable):
                raise CarlaUnavailable(self._server_error(exc)) from None
            raise

    # -- setup ------------------------------------------------------------------------------------
    def _server_error(self, exc: BaseException) -> str:
        c = self.config
        text = " ".join(str(exc).split()) or type(exc).__name__
        return (f"CARLA server at {c.host}:{c.port} failed or did not answer within the {c.timeout:g} s client "
                f"timeout ({text}); start a CARLA 0.9.16 server (see docs/carla.md) or check "
                "--carla-host/--carla-port/--carla-timeout")

    def _setup(self) -> None:
        carla, c = self.carla, self.config
        self.client = client = carla.Client(c.host, c.port)
        client.set_timeout(float(c.timeout))
        self.server_version = str(client.get_server_version())  # the first RPC: fails fast without a server
        if c.town is not None:
            # Loading a map takes tens of seconds; the server has already answered within the
            # configured timeout, so this one call may take longer.
            client.set_timeout(max(float(c.timeout), LOAD_WORLD_TIMEOUT))
            world = client.load_world(c.town)
            client.set_timeout(float(c.timeout))
        else:
            world = client.get_world()
        self._world = world
        self.map = world.get_map()
        self._original_settings = world.get_settings()
        settings = world.get_settings()
        settings.synchronous_mode = True
        settings.fixed_delta_seconds = self._dt
        settings.no_rendering_mode = bool(c.no_rendering)
        world.apply_settings(settings)
        if c.traffic:
            self._tm = client.get_trafficmanager(c.tm_port)
            self._tm.set_synchronous_mode(True)
            self._tm.set_random_device_seed(int(c.seed))
        self.route = self._route()
        self._track = route_to_track(self.route, name=f"carla:{self._map_name()}",
                                     source=c.route or f"carla map {self._map_name()}", step=c.track_step)
        blueprints = world.get_blueprint_library()
        found = blueprints.filter(c.blueprint)
        if not found:
            raise CarlaUnavailable(f"no vehicle blueprint matches {c.blueprint!r} on this server; "
                                   "pick one from world.get_blueprint_library().filter('vehicle.*')")
        bp = found[0]
        if bp.has_attribute("role_name"):
            bp.set_attribute("role_name", "hero")
        self._start_transform = self._route_transform(c.start_s)
        self.vehicle = world.try_spawn_actor(bp, self._start_transform)
        if self.vehicle is None:
            raise CarlaUnavailable(f"could not spawn {c.blueprint} at the route start (s = {c.start_s:g} m): the spot "
                                   "is occupied; choose another start_s")
        self._actors.append(self.vehicle)
        world.tick()  # the vehicle's physics control is valid after the first tick
        physics = self.vehicle.get_physics_control()
        self._vehicle_params = vehicle_params_from_physics(physics, self.vehicle.bounding_box.extent,
                                                           c.steer_rate_max, c.wheelbase)
        self._mapper = ControlMapper(c, self._vehicle_params.steer_max, c.steer_rate_max)
        ref = weakref.ref(self)
        for kind, handler in (("sensor.other.collision", CarlaSimulator._on_collision),
                              ("sensor.other.lane_invasion", CarlaSimulator._on_invasion)):
            sensor = world.spawn_actor(blueprints.find(kind), carla.Transform(), attach_to=self.vehicle)
            self._actors.append(sensor)
            self._sensors.append(sensor)
            sensor.listen(lambda event, h=handler: (lambda s: s is not None and h(s, event))(ref()))
        if c.traffic:
            self._spawn_traffic(blueprints)

    def _map_name(self) -> str:
        return str(self.map.name).rsplit("/", 1)[-1]

    def _route(self) -> list[RoutePoint]:
        carla, c = self.carla, self.config
        if c.route is not None:
            def lane_width_at(x: float, y: float) -> float:
                wp = self.map.get_waypoint(carla.Location(x=x, y=y, z=0.0), project_to_road=True)
                return float(wp.lane_width) if wp is not None else 3.5
            return load_route_file(c.route, lane_width_at)
        if c.start_x is not None:
            location = carla.Location(x=float(c.start_x), y=float(c.start_y), z=0.0)
        else:
            spawn_points = self.map.get_spawn_points()
            if not spawn_points:
                raise RouteError(f"map {self._map_name()} has no spawn points; give a route file")
            location = spawn_points[0].location
        start = self.map.get_waypoint(location, project_to_road=True)
        if start is None:
            raise RouteError(f"no driving lane near ({location.x:.1f}, {location.y:.1f}) on {self._map_name()}")
        return trace_lane_loop(start, step=c.route_step, max_length=c.max_route_length)

    def _route_transform(self, s: float) -> Any:
        """CARLA transform at arc length ``s`` of the track: on the centre line, along its heading."""
        carla, tr = self.carla, self._track
        x, y = (float(v) for v in tr.from_frenet(s, 0.0))
        cx, cy = to_track_xy(x, y)  # the mirror is its own inverse
        wp = self.map.get_waypoint(carla.Location(x=cx, y=cy, z=0.0), project_to_road=True)
        z = float(wp.transform.location.z) if wp is not None else 0.0
        yaw = track_yaw_to_carla(float(tr.heading_at(s)))
        return carla.Transform(carla.Location(x=cx, y=cy, z=z + self.config.spawn_lift),
                               carla.Rotation(pitch=0.0, yaw=yaw, roll=0.0))

    def _spawn_traffic(self, blueprints: Any) -> None:
        import random

        rng = random.Random(self.config.seed)
        candidates = [bp for bp in blueprints.filter("vehicle.*")
                      if not bp.has_attribute("number_of_wheels")
                      or int(bp.get_attribute("number_of_wheels").as_int()) == 4]
        points = list(self.map.get_spawn_points())
        rng.shuffle(points)
        start = self._start_transform.location
        for transform in points:
            if len(self._actors) - 3 >= self.config.traffic:
                break
            if transform.location.distance(start) < 15.0:
                continue  # keep the ego's start free
            npc = self._world.try_spawn_actor(rng.choice(candidates), transform)
            if npc is not None:
                self._actors.append(npc)
                npc.set_autopilot(True, self.config.tm_port)

    def _install_cleanup(self) -> None:
        """Restore the server also after an uncaught exception (atexit) and a default SIGTERM."""
        ref = weakref.ref(self)
        self._atexit = lambda: (lambda s: s is not None and s.close())(ref())
        atexit.register(self._atexit)
        if threading.current_thread() is threading.main_thread():
            try:
                if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
                    self._previous_sigterm = signal.signal(signal.SIGTERM, _sigterm_to_exit)
            except (ValueError, OSError):
                self._previous_sigterm = None

    # -- sensor callbacks (CARLA's client thread) ---------------------------------------------------
    def _on_collision(self, event: Any) -> None:
        impulse = getattr(event, "normal_impulse", None)
        magnitude = math.sqrt(impulse.x ** 2 + impulse.y ** 2 + impulse.z ** 2) if impulse is not None else 0.0
        other = getattr(getattr(event, "other_actor", None), "type_id", "unknown")
        with self._lock:
            self._collisions.append({"frame": int(getattr(event, "frame", -1)), "other": str(other),
                                     "impulse": magnitude})

    def _on_invasion(self, event: Any) -> None:
        kinds = [str(getattr(m, "type", m)) for m in getattr(event, "crossed_lane_markings", [])]
        with self._lock:
            self._invasions.append(kinds)

    # -- protocol ---------------------------------------------------------------------------------
    @property
    def track(self) -> Track:
        return self._track

    @property
    def physics_dt(self) -> float:
        return self._dt

    @property
    def vehicle_params(self) -> VehicleParams:
        """The ego vehicle's geometry and steering limits, for the MPC (``vehicle_params_of``)."""
        return self._vehicle_params

    def reset(self, seed: int | None = None) -> VehicleState:
        """Put the car back at the route start, at rest, and restart time, progress and events.
        ``seed`` reseeds the Traffic Manager when there is traffic (the start is not randomised)."""
        self._check_open()
        carla = self.carla
        if seed is not None and self._tm is not None:
            self._tm.set_random_device_seed(int(seed))
        v = self.vehicle
        v.set_transform(self._start_transform)
        zero = carla.Vector3D(x=0.0, y=0.0, z=0.0)
        v.set_target_velocity(zero)
        v.set_target_angular_velocity(zero)
        v.apply_control(carla.VehicleControl(throttle=0.0, steer=0.0, brake=1.0))
        self._tick()
        with self._lock:
            self._collisions.clear()
            self._invasions.clear()
        self._mapper.reset()
        self._ticks = 0
        self._tick_wall = 0.0
        self._progress = 0.0
        self._crashed = False
        self._off_route = False
        self._hint: int | None = None
        self._collision_count = self._invasion_count = 0
        self._server_t0 = self._server_time
        self._state = self._read_state(first=True)
        return self._state

    def step(self, command: ControlCommand, duration: float) -> VehicleState:
        """Hold ``command`` for ``duration`` s: round(duration / physics_dt) ticks, at least one."""
        self._check_open()
        carla, dt = self.carla, self._dt
        n = max(1, int(round(duration / dt)))
        self._tick_wall = 0.0
        mapper = self._mapper
        for _ in range(n):
            if self._crashed:  # a crashed car brakes and holds its steering
                control = carla.VehicleControl(throttle=0.0, steer=mapper.normalised_steer(mapper.steer), brake=1.0)
            else:
                throttle, steer, brake, reverse = mapper(command, self._state.v, dt)
                control = carla.VehicleControl(throttle=throttle, steer=steer, brake=brake, reverse=reverse)
            self.vehicle.apply_control(control)
            self._tick()
            self._ticks += 1
            self._state = self._read_state()
        return self._state

    def state(self) -> VehicleState:
        return self._state

    def telemetry(self) -> dict[str, Any]:
        """Extra fields of the control step's telemetry record (see docs/runtime.md)."""
        return {"sim_frame": self._frame, "sim_server_time": self._server_time,
                "sim_tick_wall": self._tick_wall, "collisions": self._collision_count,
                "lane_invasions": self._invasion_count}

    def info(self) -> dict[str, Any]:
        """What the run summary records about the backend."""
        with self._lock:
            collisions = list(self._collisions)
        return {"backend": "carla", "server_version": getattr(self, "server_version", None),
                "host": self.config.host, "port": self.config.port, "map": self._map_name(),
                "blueprint": self.config.blueprint, "physics_dt": self._dt, "route_points": len(self.route),
                "track_length": self._track.length, "collisions": collisions[:20],
                "collision_count": self._collision_count, "lane_invasions": self._invasion_count,
                "off_route": self._off_route}

    def close(self) -> None:
        """Destroy every actor we spawned, restore the world's settings; safe to call twice."""
        if self._closed:
            return
        self._closed = True
        errors: list[str] = []
        for sensor in self._sensors:
            try:
                sensor.stop()
            except Exception as exc:  # noqa: BLE001 -- clean up as much as possible
                errors.append(f"stop {exc}")
        if self._tm is not None:
            try:
                self._tm.set_synchronous_mode(False)
            except Exception as exc:  # noqa: BLE001
                errors.append(f"traffic manager {exc}")
        if self._world is not None and self._original_settings is not None:
            try:
                self._world.apply_settings(self._original_settings)
            except Exception as exc:  # noqa: BLE001
                errors.append(f"settings {exc}")
        for actor in reversed(self._actors):
            try:
                actor.destroy()
            except Exception as exc:  # noqa: BLE001
                errors.append(f"destroy {exc}")
        self._actors.clear()
        self._sensors.clear()
        if getattr(self, "_atexit", None) is not None:
            atexit.unregister(self._atexit)
        if self._previous_sigterm is not None and threading.current_thread() is threading.main_thread():
            try:
                if signal.getsignal(signal.SIGTERM) is _sigterm_to_exit:
                    signal.signal(signal.SIGTERM, self._previous_sigterm)
            except (ValueError, OSError):
                pass
        self.close_errors = errors

    def __enter__(self) -> "CarlaSimulator":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # -- internals --------------------------------------------------------------------------------
    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError("the CARLA simulator is closed")

    def _tick(self) -> None:
        t0 = time.perf_counter()
        self._frame = int(self._world.tick(self.config.timeout))
        self._tick_wall += time.perf_counter() - t0
        self._server_time = float(self._world.get_snapshot().timestamp.elapsed_seconds)

    def _read_state(self, first: bool = False) -> VehicleState:
        v = self.vehicle
        tf = v.get_transform()
        vel, acc, ang = v.get_velocity(), v.get_acceleration(), v.get_angular_velocity()
        x, y = to_track_xy(tf.location.x, tf.location.y)
        yaw = carla_yaw_to_track(tf.rotation.yaw)
        vwx, vwy = to_track_xy(vel.x, vel.y)
        awx, awy = to_track_xy(acc.x, acc.y)
        cy, sy = math.cos(yaw), math.sin(yaw)
        vx, vy = cy * vwx + sy * vwy, -sy * vwx + cy * vwy
        ax, ay = cy * awx + sy * awy, -sy * awx + cy * awy
        yaw_rate = -math.radians(ang.z)
        speed = math.hypot(vx, vy)
        v_signed = math.copysign(speed, vx) if speed > 1e-3 else 0.0
        slip = math.atan2(vy, abs(vx)) if speed > 0.5 else 0.0
        tr = self._track
        s_prev = None if first else self._state.s
        s, d, a, t = tr._project(x, y, self._hint)
        self._hint = a
        if s_prev is not None:
            self._progress += tr.signed_progress(s_prev, s)
        at = tr._at_index
        kappa = at(tr._curvature_l, a, t)
        heading = at(tr._heading_l, a, t)
        w_left, w_right = at(tr._w_left_l, a, t), at(tr._w_right_l, a, t)
        with self._lock:
            self._collision_count = len(self._collisions)
            self._invasion_count = len(self._invasions)
        if not first:
            if self._collision_count:
                self._crashed = True
            if d > w_left + self.config.max_offset or d < -(w_right + self.config.max_offset):
                self._crashed = self._off_route = True
        alpha = wrap_angle(yaw + slip - heading)
        one = 1.0 - d * kappa
        vs = v_signed * math.cos(alpha) / one if abs(one) > 1e-6 else 0.0
        return VehicleState(
            t=self._ticks * self._dt, x=x, y=y, yaw=yaw, v=v_signed, vx=vx, vy=vy, yaw_rate=yaw_rate, slip=slip,
            steer=self._mapper.steer, ax=ax, ay=ay, s=s, d=d, heading_error=wrap_angle(yaw - heading), vs=vs,
            vd=v_signed * math.sin(alpha), wall_left=w_left - d, wall_right=w_right + d, progress=self._progress,
            crashed=self._crashed)


def _sigterm_to_exit(signum: int, frame: Any) -> None:
    """SIGTERM while a CARLA simulator is open: unwind (``finally`` / ``with`` / ``atexit`` run
    ``close()``) instead of dying with the server in synchronous mode."""
    raise SystemExit(128 + signum)
