"""A test double of the part of the ``carla`` 0.9.16 Python API the CARLA backend uses.

No CARLA server can run on the machines this is built on, so the backend is exercised against
this: a client, a world with settings and synchronous ticking, a map with lanes and waypoints
(a closed stadium-shaped loop plus a straight lead-in lane that joins it), blueprints, actors with
a simple kinematic car (single-track, CARLA's left-handed frame: yaw in degrees turning from +x
towards +y, positive steer turns right), collision and lane-invasion sensors, and a Traffic
Manager. It keeps the server's state in a :class:`Server` shared by every client, so a test can
check what the backend left behind: the settings, the live actors.

It is stricter than CARLA where that catches bugs: ``world.tick()`` in asynchronous mode, or
without a ``fixed_delta_seconds``, raises. The real classes are checked separately against the
installed ``carla`` wheel (tests/test_carla_backend.py).
"""

from __future__ import annotations

import copy
import fnmatch
import math
import types
from dataclasses import dataclass, field
from typing import Any, Callable


# -- geometry types (same constructors and fields as carla's) ---------------------------------------
class Vector3D:
    def __init__(self, x: float = 0.0, y: float = 0.0, z: float = 0.0) -> None:
        self.x, self.y, self.z = float(x), float(y), float(z)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(x={self.x:.3f}, y={self.y:.3f}, z={self.z:.3f})"


class Location(Vector3D):
    def distance(self, other: "Location") -> float:
        return math.dist((self.x, self.y, self.z), (other.x, other.y, other.z))


class Rotation:
    def __init__(self, pitch: float = 0.0, yaw: float = 0.0, roll: float = 0.0) -> None:
        self.pitch, self.yaw, self.roll = float(pitch), float(yaw), float(roll)


class Transform:
    def __init__(self, location: Location | None = None, rotation: Rotation | None = None) -> None:
        self.location = location if location is not None else Location()
        self.rotation = rotation if rotation is not None else Rotation()


class WorldSettings:
    def __init__(self, synchronous_mode: bool = False, no_rendering_mode: bool = False,
                 fixed_delta_seconds: float | None = None) -> None:
        self.synchronous_mode = synchronous_mode
        self.no_rendering_mode = no_rendering_mode
        self.fixed_delta_seconds = fixed_delta_seconds

    def key(self) -> tuple:
        return (self.synchronous_mode, self.no_rendering_mode, self.fixed_delta_seconds)


class VehicleControl:
    def __init__(self, throttle: float = 0.0, steer: float = 0.0, brake: float = 0.0, hand_brake: bool = False,
                 reverse: bool = False, manual_gear_shift: bool = False, gear: int = 0) -> None:
        for name, value, lo in (("throttle", throttle, 0.0), ("steer", steer, -1.0), ("brake", brake, 0.0)):
            if not lo <= value <= 1.0:
                raise ValueError(f"VehicleControl.{name}={value} outside [{lo}, 1]")  # carla clamps; we flag it
        self.throttle, self.steer, self.brake = float(throttle), float(steer), float(brake)
        self.hand_brake, self.reverse = bool(hand_brake), bool(reverse)
        self.manual_gear_shift, self.gear = manual_gear_shift, gear


class WheelPhysicsControl:
    def __init__(self, max_steer_angle: float = 70.0, position: Vector3D | None = None) -> None:
        self.max_steer_angle = max_steer_angle
        self.position = position if position is not None else Vector3D()


class VehiclePhysicsControl:
    def __init__(self, wheels: list[WheelPhysicsControl], mass: float = 1845.0) -> None:
        self.wheels, self.mass = wheels, mass


class BoundingBox:
    def __init__(self, extent: Vector3D) -> None:
        self.extent = extent
        self.location = Location()


DOUBLE_TYPES = types.SimpleNamespace(Location=Location, Rotation=Rotation, Transform=Transform, Vector3D=Vector3D,
                                     WorldSettings=WorldSettings, VehicleControl=VehicleControl)


class LaneMarking:
    def __init__(self, type: str) -> None:  # noqa: A002 -- carla's field name
        self.type = type


class CollisionEvent:
    def __init__(self, frame: int, other_actor: Any, normal_impulse: Vector3D) -> None:
        self.frame, self.other_actor, self.normal_impulse = frame, other_actor, normal_impulse


class LaneInvasionEvent:
    def __init__(self, frame: int, crossed_lane_markings: list[LaneMarking]) -> None:
        self.frame, self.crossed_lane_markings = frame, crossed_lane_markings


# -- the map: lanes as analytic centre lines ----------------------------------------------------------
@dataclass
class Lane:
    name: str
    length: float
    at: Callable[[float], tuple[float, float, float]]  # s -> (x, y, yaw_deg)
    closed: bool
    width: float = 3.5
    successor: tuple[str, float] | None = None  # (lane, s) where this lane continues


def stadium(straight: float, radius: float) -> Callable[[float], tuple[float, float, float]]:
    """A loop turning right in CARLA's frame (yaw increasing): bottom straight along +x first."""
    arc = math.pi * radius
    total = 2 * straight + 2 * arc

    def at(s: float) -> tuple[float, float, float]:
        s %= total
        h = straight / 2
        if s < straight:
            return -h + s, -radius, 0.0
        s -= straight
        if s < arc:
            th = -math.pi / 2 + s / radius
            return h + radius * math.cos(th), radius * math.sin(th), math.degrees(th + math.pi / 2)
        s -= arc
        if s < straight:
            return h - s, radius, 180.0
        s -= straight
        th = math.pi / 2 + s / radius
        return -h + radius * math.cos(th), radius * math.sin(th), math.degrees(th + math.pi / 2)

    return at


class Waypoint:
    def __init__(self, carla_map: "Map", lane: Lane, s: float) -> None:
        self._map, self._lane, self.s = carla_map, lane, s
        x, y, yaw = lane.at(s)
        k = carla_map.k
        self.transform = k.Transform(k.Location(x=x, y=y, z=0.0), k.Rotation(pitch=0.0, yaw=yaw, roll=0.0))
        self.lane_width = lane.width
        self.road_id, self.lane_id = hash(lane.name) % 1000, -1

    def next(self, distance: float) -> list["Waypoint"]:
        lane, s = self._lane, self.s + distance
        if s < lane.length:
            return [Waypoint(self._map, lane, s)]
        if lane.closed:
            return [Waypoint(self._map, lane, s - lane.length)]
        if lane.successor is None:
            return []
        name, s0 = lane.successor
        return [Waypoint(self._map, self._map.lanes[name], s0 + s - lane.length)]


class Map:
    def __init__(self, name: str, lanes: list[Lane], spawn: list[tuple[str, float]], k: Any = None) -> None:
        self.name = name
        self.k = k if k is not None else DOUBLE_TYPES
        self.lanes = {lane.name: lane for lane in lanes}
        self._spawn = spawn
        self._samples = [(lane, s) + lane.at(s)[:2] for lane in lanes
                         for s in [i * 0.5 for i in range(int(lane.length / 0.5))]]

    def get_spawn_points(self) -> list[Transform]:
        return [Waypoint(self, self.lanes[n], s).transform for n, s in self._spawn]

    def get_waypoint(self, location: Location, project_to_road: bool = True, lane_type: Any = None) -> Waypoint:
        lane, s, _, _ = min(self._samples, key=lambda r: (r[2] - location.x) ** 2 + (r[3] - location.y) ** 2)
        return Waypoint(self, lane, s)

    def lateral_offset(self, x: float, y: float) -> tuple[float, float]:
        """(signed offset to the right of the nearest lane's centre line, lane width)."""
        wp = self.get_waypoint(self.k.Location(x=x, y=y, z=0.0))
        yaw = math.radians(wp.transform.rotation.yaw)
        dx, dy = x - wp.transform.location.x, y - wp.transform.location.y
        return -math.sin(yaw) * dx + math.cos(yaw) * dy, wp.lane_width


def default_map(town: str = "Town_Test", k: Any = None) -> Map:
    loop = Lane("loop", 2 * 80.0 + 2 * math.pi * 30.0, stadium(80.0, 30.0), closed=True)
    # a straight lead-in that ends at the loop's start (-40, -30) and continues on it
    lead = Lane("lead", 40.0, lambda s: (-80.0 + s, -30.0, 0.0), closed=False, successor=("loop", 0.0))
    dead = Lane("dead", 30.0, lambda s: (200.0 + s, 200.0, 0.0), closed=False)
    return Map(f"Carla/Maps/{town}", [loop, lead, dead], spawn=[("loop", 10.0), ("lead", 0.0), ("dead", 0.0)], k=k)


# -- blueprints and actors ----------------------------------------------------------------------------
class ActorAttribute:
    def __init__(self, value: str) -> None:
        self.value = value

    def as_int(self) -> int:
        return int(self.value)


class ActorBlueprint:
    def __init__(self, id: str, attributes: dict[str, str] | None = None) -> None:  # noqa: A002
        self.id = id
        self._attributes = dict(attributes or {})

    def has_attribute(self, name: str) -> bool:
        return name in self._attributes

    def set_attribute(self, name: str, value: str) -> None:
        if name not in self._attributes:
            raise IndexError(name)
        self._attributes[name] = value

    def get_attribute(self, name: str) -> ActorAttribute:
        return ActorAttribute(self._attributes[name])


class BlueprintLibrary:
    def __init__(self) -> None:
        self._bps = [ActorBlueprint(i, {"role_name": "autopilot", "number_of_wheels": "4"})
                     for i in ("vehicle.lincoln.mkz_2020", "vehicle.tesla.model3")]
        self._bps += [ActorBlueprint("sensor.other.collision"), ActorBlueprint("sensor.other.lane_invasion")]

    def filter(self, pattern: str) -> list[ActorBlueprint]:
        return [copy.deepcopy(b) for b in self._bps if fnmatch.fnmatch(b.id, pattern) or b.id == pattern]

    def find(self, id: str) -> ActorBlueprint:  # noqa: A002
        for b in self._bps:
            if b.id == id:
                return copy.deepcopy(b)
        raise IndexError(f"blueprint {id!r} not found")


class Actor:
    def __init__(self, server: "Server", blueprint: ActorBlueprint, transform: Transform,
                 parent: "Actor | None" = None) -> None:
        server.next_id += 1
        self.id, self.type_id, self._server, self.parent = server.next_id, blueprint.id, server, parent
        self.attributes = dict(blueprint._attributes)
        self.k = server.k
        self._transform = copy_transform(self.k, transform)
        self.is_alive = True

    def get_transform(self) -> Transform:
        return copy_transform(self.k, self._transform)

    def destroy(self) -> bool:
        if not self.is_alive:
            return False
        self.is_alive = False
        self._server.actors.pop(self.id, None)
        return True


class Vehicle(Actor):
    WHEELBASE = 2.9  # m
    MAX_STEER_DEG = 70.0
    THROTTLE_ACCEL = 3.0  # m/s^2 at full throttle
    BRAKE_DECEL = 8.0

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.bounding_box = BoundingBox(self.k.Vector3D(x=2.45, y=1.06, z=0.75))
        self.control = VehicleControl()
        self.controls: list[VehicleControl] = []
        self.v = 0.0  # signed speed along the heading
        self.yaw_rate = 0.0  # deg/s, CARLA sign
        self.acc = (0.0, 0.0)
        self.autopilot = False

    def apply_control(self, control: VehicleControl) -> None:
        self.control = control
        self.controls.append(control)

    def get_control(self) -> VehicleControl:
        return self.control

    def set_transform(self, transform: Transform) -> None:
        self._transform = copy_transform(self.k, transform)

    def set_target_velocity(self, velocity: Vector3D) -> None:
        yaw = math.radians(self._transform.rotation.yaw)
        self.v = velocity.x * math.cos(yaw) + velocity.y * math.sin(yaw)

    def set_target_angular_velocity(self, velocity: Vector3D) -> None:
        self.yaw_rate = velocity.z

    def set_autopilot(self, enabled: bool = True, port: int = 8000) -> None:
        self.autopilot = enabled

    def get_velocity(self) -> Vector3D:
        yaw = math.radians(self._transform.rotation.yaw)
        return self.k.Vector3D(x=self.v * math.cos(yaw), y=self.v * math.sin(yaw), z=0.0)

    def get_acceleration(self) -> Vector3D:
        return self.k.Vector3D(x=self.acc[0], y=self.acc[1], z=0.0)

    def get_angular_velocity(self) -> Vector3D:
        return self.k.Vector3D(x=0.0, y=0.0, z=self.yaw_rate)

    def get_physics_control(self) -> VehiclePhysicsControl:
        t = self._transform
        yaw = math.radians(t.rotation.yaw)
        fx, fy = math.cos(yaw), math.sin(yaw)
        rx, ry = -fy, fx
        wheels = []
        for along, steer in ((0.5 * self.WHEELBASE, self.MAX_STEER_DEG), (-0.5 * self.WHEELBASE, 0.0)):
            for side in (-0.8, 0.8):  # world position in cm, as CARLA 0.9 reports it
                wheels.append(WheelPhysicsControl(steer, self.k.Vector3D(
                    x=100 * (t.location.x + along * fx + side * rx), y=100 * (t.location.y + along * fy + side * ry),
                    z=100 * t.location.z)))
        return VehiclePhysicsControl(wheels)

    def integrate(self, dt: float) -> None:
        """Kinematic single-track car in CARLA's frame, with pedal maps and drag."""
        if self.autopilot:
            return
        c = self.control
        direction = -1.0 if c.reverse else 1.0
        a = direction * c.throttle * self.THROTTLE_ACCEL - 0.05 * self.v - 0.1 * math.copysign(1.0, self.v) * (
            abs(self.v) > 0.05)
        brake = c.brake * self.BRAKE_DECEL + (1e3 if c.hand_brake else 0.0)
        v_old = self.v
        v_new = v_old + a * dt
        if brake:
            step = brake * dt
            v_new = 0.0 if abs(v_new) <= step else v_new - math.copysign(step, v_new)
        delta = math.radians(c.steer * self.MAX_STEER_DEG)
        yaw_rate = v_new * math.tan(delta) / self.WHEELBASE  # rad/s; positive steer -> yaw grows (right)
        t = self._transform
        yaw0 = math.radians(t.rotation.yaw)
        yaw1 = yaw0 + yaw_rate * dt
        vx0, vy0 = v_old * math.cos(yaw0), v_old * math.sin(yaw0)
        vx1, vy1 = v_new * math.cos(yaw1), v_new * math.sin(yaw1)
        k, loc = self.k, t.location
        self._transform = k.Transform(
            k.Location(x=loc.x + 0.5 * (vx0 + vx1) * dt, y=loc.y + 0.5 * (vy0 + vy1) * dt, z=loc.z),
            k.Rotation(pitch=0.0, yaw=math.degrees(yaw1), roll=0.0))
        self.v, self.yaw_rate = v_new, math.degrees(yaw_rate)
        self.acc = ((vx1 - vx0) / dt, (vy1 - vy0) / dt)


class Sensor(Actor):
    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.callback: Callable[[Any], None] | None = None
        self._inside = False

    def listen(self, callback: Callable[[Any], None]) -> None:
        self.callback = callback

    def stop(self) -> None:
        self.callback = None

    @property
    def is_listening(self) -> bool:
        return self.callback is not None

    def emit(self, event: Any) -> None:
        if self.callback is not None:
            self.callback(event)


# -- world, client, traffic manager -----------------------------------------------------------------
@dataclass
class Obstacle:
    x: float
    y: float
    radius: float = 1.0
    type_id: str = "static.prop.barrel"


class Timestamp:
    def __init__(self, frame: int, elapsed: float) -> None:
        self.frame, self.elapsed_seconds = frame, elapsed


class Snapshot:
    def __init__(self, frame: int, elapsed: float) -> None:
        self.frame, self.timestamp = frame, Timestamp(frame, elapsed)


class World:
    def __init__(self, server: "Server") -> None:
        self._server = server

    def get_settings(self) -> WorldSettings:
        sync, no_render, delta = self._server.settings.key()
        settings = self._server.k.WorldSettings()  # the real constructor refuses fixed_delta_seconds=None
        settings.synchronous_mode, settings.no_rendering_mode = sync, no_render
        settings.fixed_delta_seconds = delta
        return settings

    def apply_settings(self, settings: WorldSettings) -> int:
        self._server.settings = WorldSettings(settings.synchronous_mode, settings.no_rendering_mode,
                                              settings.fixed_delta_seconds)
        self._server.settings_history.append(self._server.settings.key())
        return self._server.frame

    def get_map(self) -> Map:
        return self._server.map

    def get_blueprint_library(self) -> BlueprintLibrary:
        return BlueprintLibrary()

    def get_snapshot(self) -> Snapshot:
        return Snapshot(self._server.frame, self._server.elapsed)

    def get_actors(self) -> list[Actor]:
        return list(self._server.actors.values())

    def spawn_actor(self, blueprint: ActorBlueprint, transform: Transform, attach_to: Actor | None = None) -> Actor:
        server = self._server
        if blueprint.id in server.fail_spawn:
            raise RuntimeError(f"Spawn failed because of collision at spawn position ({blueprint.id})")
        kind = Sensor if blueprint.id.startswith("sensor.") else Vehicle
        actor = kind(server, blueprint, transform, attach_to)
        server.actors[actor.id] = actor
        return actor

    def try_spawn_actor(self, blueprint: ActorBlueprint, transform: Transform) -> Actor | None:
        for a in self._server.actors.values():
            if isinstance(a, Vehicle) and a.get_transform().location.distance(transform.location) < 3.0:
                return None
        try:
            return self.spawn_actor(blueprint, transform)
        except RuntimeError:
            return None

    def tick(self, seconds: float = 10.0) -> int:
        server = self._server
        server.check_connected()
        if server.hang_on_tick:
            raise RuntimeError(f"time-out of {int(seconds * 1000)}ms while waiting for the simulator")
        st = server.settings
        if not st.synchronous_mode or not st.fixed_delta_seconds:
            raise RuntimeError("double: world.tick() needs synchronous mode with fixed_delta_seconds")
        dt = st.fixed_delta_seconds
        server.frame += 1
        server.elapsed += dt
        server.ticks += 1
        for actor in list(server.actors.values()):
            if isinstance(actor, Vehicle):
                n = max(1, math.ceil(dt / 0.01))
                for _ in range(n):
                    actor.integrate(dt / n)
                server.events(actor)
        return server.frame


class TrafficManager:
    def __init__(self, server: "Server", port: int) -> None:
        self._server, self._port = server, port

    def set_synchronous_mode(self, mode: bool) -> None:
        self._server.tm_sync = bool(mode)

    def set_random_device_seed(self, seed: int) -> None:
        self._server.tm_seed = seed

    def get_port(self) -> int:
        return self._port


@dataclass
class Server:
    """The state of the pretend CARLA server, shared by all clients of one double module."""

    port: int = 2000
    map: Map = field(default_factory=default_map)
    settings: WorldSettings = field(default_factory=WorldSettings)
    actors: dict[int, Actor] = field(default_factory=dict)
    obstacles: list[Obstacle] = field(default_factory=list)
    fail_spawn: set[str] = field(default_factory=set)
    settings_history: list[tuple] = field(default_factory=list)
    next_id: int = 0
    frame: int = 1000
    elapsed: float = 0.0
    ticks: int = 0
    tm_sync: bool = False
    tm_seed: int | None = None
    hang_on_tick: bool = False
    running: bool = True
    loaded: list[tuple[str, float | None]] = field(default_factory=list)  # (town, client timeout then)
    timeouts: list[float] = field(default_factory=list)
    k: Any = None  # the value classes (Location, Transform, ...): the double's own or the real carla's

    def __post_init__(self) -> None:
        if self.k is None:
            self.k = DOUBLE_TYPES
        self.map.k = self.k

    def check_connected(self, port: int | None = None) -> None:
        if not self.running or (port is not None and port != self.port):
            raise RuntimeError(f"time-out of 2000ms while waiting for the simulator, make sure the simulator is "
                               f"ready and connected to localhost:{port}")

    def events(self, vehicle: Vehicle) -> None:
        """Collision and lane-invasion events for the sensors attached to ``vehicle``."""
        loc = vehicle.get_transform().location
        sensors = [a for a in self.actors.values() if isinstance(a, Sensor) and a.parent is vehicle]
        for ob in self.obstacles:
            if math.hypot(loc.x - ob.x, loc.y - ob.y) < ob.radius + 1.0:
                other = types.SimpleNamespace(type_id=ob.type_id, id=-1)
                for s in sensors:
                    if s.type_id == "sensor.other.collision":
                        s.emit(CollisionEvent(self.frame, other, self.k.Vector3D(x=800.0 * abs(vehicle.v), y=0.0,
                                                                                  z=0.0)))
        offset, width = self.map.lateral_offset(loc.x, loc.y)
        for s in sensors:
            if s.type_id == "sensor.other.lane_invasion":
                inside = abs(offset) <= 0.5 * width
                if s._inside and not inside:
                    s.emit(LaneInvasionEvent(self.frame, [LaneMarking("Broken")]))
                s._inside = inside


def copy_transform(k: Any, t: Any) -> Any:
    """A copy by attributes (the real carla classes cannot be deep-copied)."""
    return k.Transform(k.Location(x=t.location.x, y=t.location.y, z=t.location.z),
                       k.Rotation(pitch=t.rotation.pitch, yaw=t.rotation.yaw, roll=t.rotation.roll))


VALUE_CLASSES = ("Location", "Rotation", "Transform", "Vector3D", "WorldSettings", "VehicleControl")


def make_module(server: Server | None = None, real: types.ModuleType | None = None) -> types.ModuleType:
    """A module object that stands in for ``carla`` (``sys.modules['carla']`` or ``carla_module=``).

    With ``real`` (the installed carla package), the value classes the backend constructs --
    ``Location``, ``Rotation``, ``Transform``, ``Vector3D``, ``WorldSettings``, ``VehicleControl``
    -- are the real ones, in the backend and inside the double alike; only the server is pretend."""
    k = types.SimpleNamespace(**{n: getattr(real if real is not None else DOUBLE_TYPES, n) for n in VALUE_CLASSES})
    server = server if server is not None else Server(k=k)
    server.k = server.map.k = k
    mod = types.ModuleType("carla")
    mod.server = server  # type: ignore[attr-defined]

    class Client:
        def __init__(self, host: str, port: int, worker_threads: int = 0) -> None:
            self.host, self.port, self.timeout = host, port, None

        def set_timeout(self, seconds: float) -> None:
            self.timeout = seconds
            server.timeouts.append(seconds)

        def get_server_version(self) -> str:
            server.check_connected(self.port)
            return "0.9.16"

        def get_client_version(self) -> str:
            return "0.9.16"

        def get_world(self) -> World:
            server.check_connected(self.port)
            return World(server)

        def load_world(self, town: str) -> World:
            server.check_connected(self.port)
            server.map = default_map(town, k=server.k)
            server.loaded.append((town, self.timeout))
            return World(server)

        def get_trafficmanager(self, port: int = 8000) -> TrafficManager:
            return TrafficManager(server, port)

    for name, obj in dict(Client=Client, Location=k.Location, Rotation=k.Rotation, Transform=k.Transform,
                          Vector3D=k.Vector3D, WorldSettings=k.WorldSettings, VehicleControl=k.VehicleControl,
                          WheelPhysicsControl=WheelPhysicsControl, VehiclePhysicsControl=VehiclePhysicsControl,
                          CollisionEvent=CollisionEvent, LaneInvasionEvent=LaneInvasionEvent,
                          LaneMarking=LaneMarking).items():
        setattr(mod, name, obj)
    return mod
