"""CARLA routes as the embedded simulator's :class:`~edge_runtime.sim.track.Track`.

Why a ``Track``: the MPC, the Frenet state, the racing line, the metrics and the prompts all read
a closed centre line with left/right widths. A CARLA lane is turned into exactly that, so every
one of them works unchanged on a CARLA map.

Frames. CARLA (Unreal) is left-handed: x forward, y to the *right*, z up, yaw in degrees turning
from +x towards +y (clockwise seen from above), a positive ``VehicleControl.steer`` turns right.
The track and the control stack are right-handed (d and yaw positive to the left). Mirroring the y
axis maps one onto the other: ``(x, y) -> (x, -y)``, ``yaw -> -yaw``, yaw rate and steering change
sign. :func:`to_track_xy` / :func:`from_track_xy` are the only places that know it.

Two ways to get a route:

* :func:`trace_lane_loop` follows ``waypoint.next(step)`` along the lane from a start waypoint,
  taking the straightest successor at junctions, until the lane returns to the start -- or to any
  point already visited, heading the same way: the route is then that cycle (a lane that joins a
  loop after a lead-in). A lane that ends, or does not close within ``max_length``, is refused
  with a message that says to give a route file.
* :func:`load_route_file`: a CSV file of waypoints ``x, y[, lane_width]`` in CARLA map
  coordinates (metres, as ``waypoint.transform.location`` prints them), ``#`` comments, one
  optional header line, the loop not repeated at the end. A missing lane width is read from the
  map at that point.

Lane width -> track width: the lane's half width on each side of its centre line, so the "walls"
the MPC keeps away from are the lane's markings.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

from .track import Track, TrackFormatError, wrap_angle


class RouteError(ValueError):
    """A CARLA route that cannot become a closed track (one line, names the source)."""


@dataclass(frozen=True)
class RoutePoint:
    """One route point in CARLA map coordinates (left-handed, metres) with its lane width."""

    x: float
    y: float
    lane_width: float


def to_track_xy(x: float, y: float) -> tuple[float, float]:
    """CARLA map (x, y) -> track frame (right-handed): mirror the y axis."""
    return x, -y


def from_track_xy(x: float, y: float) -> tuple[float, float]:
    return x, -y


def carla_yaw_to_track(yaw_deg: float) -> float:
    """CARLA yaw (degrees, clockwise from above) -> track yaw (rad, counter-clockwise), wrapped."""
    return wrap_angle(-math.radians(yaw_deg))


def track_yaw_to_carla(yaw: float) -> float:
    return -math.degrees(yaw)


def trace_lane_loop(start: Any, step: float = 2.0, max_length: float = 5000.0,
                    heading_tolerance_deg: float = 30.0) -> list[RoutePoint]:
    """Follow the lane of waypoint ``start`` until it closes; returns the loop's points.

    ``start`` is a ``carla.Waypoint`` (anything with ``transform``, ``lane_width`` and
    ``next(d)``). Raises :class:`RouteError` for a lane that ends or does not close."""
    if not (step > 0 and math.isfinite(step)):
        raise RouteError(f"route step must be > 0 m, got {step}")
    tol = math.radians(heading_tolerance_deg)
    points: list[RoutePoint] = []
    yaws: list[float] = []
    grid: dict[tuple[int, int], list[int]] = {}
    wp = start
    travelled = 0.0
    while True:
        loc = wp.transform.location
        yaw = math.radians(wp.transform.rotation.yaw)
        if points:
            hit = _revisit(grid, points, yaws, loc.x, loc.y, yaw, step, tol, len(points))
            if hit is not None and travelled >= 4 * step:
                loop = points[hit:]
                if len(loop) < 4:
                    raise RouteError(f"the lane at ({start.transform.location.x:.1f}, "
                                     f"{start.transform.location.y:.1f}) closes after only {len(loop)} points; "
                                     "use a smaller route step")
                return loop
        i = len(points)
        points.append(RoutePoint(float(loc.x), float(loc.y), float(wp.lane_width)))
        yaws.append(yaw)
        grid.setdefault((math.floor(loc.x / step), math.floor(loc.y / step)), []).append(i)
        if travelled > max_length:
            raise RouteError(
                f"the lane from ({start.transform.location.x:.1f}, {start.transform.location.y:.1f}) does not close "
                f"within {max_length:g} m of waypoints; pick another start or give a route file (--carla-route)")
        successors = list(wp.next(step))
        if not successors:
            raise RouteError(
                f"the lane from ({start.transform.location.x:.1f}, {start.transform.location.y:.1f}) ends at "
                f"({loc.x:.1f}, {loc.y:.1f}) after {travelled:.0f} m (dead end); pick another start or give a "
                "route file (--carla-route)")
        wp = min(successors, key=lambda w: abs(wrap_angle(math.radians(w.transform.rotation.yaw) - yaw)))
        travelled += step


def _revisit(grid: dict[tuple[int, int], list[int]], points: list[RoutePoint], yaws: list[float], x: float,
             y: float, yaw: float, step: float, tol: float, n: int) -> int | None:
    """Index of an earlier point within half a step of (x, y) heading the same way (the oldest)."""
    cx, cy = math.floor(x / step), math.floor(y / step)
    best = None
    for gx in (cx - 1, cx, cx + 1):
        for gy in (cy - 1, cy, cy + 1):
            for i in grid.get((gx, gy), ()):
                if i >= n - 2:
                    continue  # the last points are always near
                p = points[i]
                if math.hypot(p.x - x, p.y - y) <= 0.5 * step and abs(wrap_angle(yaws[i] - yaw)) <= tol:
                    best = i if best is None else min(best, i)
    return best


def load_route_file(path: str | Path, lane_width_at: Callable[[float, float], float] | None = None,
                    default_lane_width: float = 3.5) -> list[RoutePoint]:
    """Read ``x, y[, lane_width]`` rows (CARLA map coordinates); see the module docstring."""
    path = Path(path)
    if not path.is_file():
        raise RouteError(f"{path}: route file not found (expected CSV rows 'x, y[, lane_width]' in CARLA map "
                         "coordinates)")
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise RouteError(f"{path}: cannot read the route file ({exc})") from None
    points: list[RoutePoint] = []
    seen = False
    for lineno, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        cells = [c.strip() for c in line.replace(";", ",").split(",")]
        first, seen = not seen, True
        try:
            values = [float(c) for c in cells]
        except ValueError:
            if first:
                continue  # header
            raise RouteError(f"{path}:{lineno}: expected numbers 'x, y[, lane_width]', got {line!r}") from None
        if len(values) not in (2, 3):
            raise RouteError(f"{path}:{lineno}: expected 2 or 3 columns 'x, y[, lane_width]', got {len(values)}")
        if not all(math.isfinite(v) for v in values):
            raise RouteError(f"{path}:{lineno}: NaN or inf is not allowed")
        if len(values) == 3:
            width = values[2]
        elif lane_width_at is not None:
            width = float(lane_width_at(values[0], values[1]))
        else:
            width = default_lane_width
        if not width > 0:
            raise RouteError(f"{path}:{lineno}: lane_width must be > 0 m, got {width}")
        points.append(RoutePoint(values[0], values[1], width))
    if len(points) > 1 and math.hypot(points[0].x - points[-1].x, points[0].y - points[-1].y) < 1e-6:
        points.pop()
    if len(points) < 4:
        raise RouteError(f"{path}: a closed route needs at least 4 waypoints, got {len(points)}")
    return points


def route_to_track(points: Sequence[RoutePoint], name: str, source: str, step: float = 0.25) -> Track:
    """The closed track of a route: centre line in the track frame, half the lane width each side."""
    xs, ys, half = [], [], []
    for p in points:
        x, y = to_track_xy(p.x, p.y)
        xs.append(x)
        ys.append(y)
        half.append(0.5 * p.lane_width)
    try:
        return Track(name, xs, ys, half, half, step=step, source=source)
    except TrackFormatError as exc:
        raise RouteError(f"the route cannot be driven as a closed track: {exc}") from None


class OpenRoute:
    """An open route (A to B, as the CARLA Leaderboard gives one) with the lookups the MPC reads
    from a track -- ``curvature_at``, ``widths_at``, ``heading_at`` -- and a Frenet projection.

    Points are in the track frame (use :func:`to_track_xy`). The centre line is a natural cubic
    spline through them, resampled every ``step`` metres; ``s`` runs from 0 at the first point to
    ``length`` and lookups beyond either end hold the end value (the MPC's horizon may look past
    the goal)."""

    def __init__(self, x: Sequence[float], y: Sequence[float], half_width: Sequence[float] | float,
                 step: float = 0.5, name: str = "route") -> None:
        import numpy as np
        from scipy.interpolate import CubicSpline

        x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
        keep = np.concatenate([[True], np.hypot(np.diff(x), np.diff(y)) > 1e-6])  # drop repeated points
        x, y = x[keep], y[keep]
        hw = np.broadcast_to(np.asarray(half_width, dtype=float), keep.shape)[keep]
        if len(x) < 2:
            raise RouteError(f"{name}: a route needs at least 2 distinct points, got {len(x)}")
        if not (np.all(np.isfinite(x)) and np.all(np.isfinite(y)) and np.all(hw > 0)):
            raise RouteError(f"{name}: route points must be finite with positive widths")
        chord = np.concatenate([[0.0], np.cumsum(np.hypot(np.diff(x), np.diff(y)))])
        sx = sy = None  # two points: a straight segment
        if len(x) >= 3:
            sx, sy = CubicSpline(chord, x, bc_type="natural"), CubicSpline(chord, y, bc_type="natural")
        n = max(2, int(math.ceil(chord[-1] / step)) + 1)
        u = np.linspace(0.0, chord[-1], n)
        if sx is None:
            px, py = np.interp(u, chord, x), np.interp(u, chord, y)
            dx, dy = np.full(n, x[1] - x[0]), np.full(n, y[1] - y[0])
            ddx = ddy = np.zeros(n)
        else:
            px, py, dx, dy, ddx, ddy = sx(u), sy(u), sx(u, 1), sy(u, 1), sx(u, 2), sy(u, 2)
        seg = np.hypot(np.diff(px), np.diff(py))
        self.s = np.concatenate([[0.0], np.cumsum(seg)])
        self.length = float(self.s[-1])
        self.name = name
        self.x, self.y = px, py
        self.heading = np.unwrap(np.arctan2(dy, dx))
        self.curvature = (dx * ddy - dy * ddx) / np.maximum(np.power(dx * dx + dy * dy, 1.5), 1e-12)
        self.w_left = self.w_right = np.interp(u, chord, hw)
        self._xl, self._yl, self._n = px.tolist(), py.tolist(), n

    def curvature_at(self, s):  # noqa: ANN001 -- float or array, like Track
        import numpy as np

        return np.interp(s, self.s, self.curvature)

    def heading_at(self, s):  # noqa: ANN001
        import numpy as np

        return np.interp(s, self.s, self.heading)

    def widths_at(self, s) -> tuple:  # noqa: ANN001
        import numpy as np

        return np.interp(s, self.s, self.w_left), np.interp(s, self.s, self.w_right)

    def project(self, x: float, y: float, hint: int | None = None) -> tuple[float, float, int]:
        """(s, d, segment index) of the point: nearest segment, searched locally from ``hint``."""
        xl, yl, n = self._xl, self._yl, self._n
        if hint is None:
            i = min(range(n), key=lambda j: (xl[j] - x) ** 2 + (yl[j] - y) ** 2)
        else:
            i = min(max(hint, 0), n - 1)
            best = (xl[i] - x) ** 2 + (yl[i] - y) ** 2
            for direction in (1, -1):
                while 0 <= i + direction < n:
                    j = i + direction
                    dj = (xl[j] - x) ** 2 + (yl[j] - y) ** 2
                    if dj >= best:
                        break
                    i, best = j, dj
        best_s, best_d, best_dist, best_a = 0.0, 0.0, math.inf, i
        for a in (i - 1, i):
            if a < 0 or a + 1 >= n:
                continue
            ex, ey = xl[a + 1] - xl[a], yl[a + 1] - yl[a]
            seg2 = ex * ex + ey * ey
            t = ((x - xl[a]) * ex + (y - yl[a]) * ey) / seg2 if seg2 > 0 else 0.0
            if a > 0:
                t = max(t, 0.0)
            if a + 2 < n:
                t = min(t, 1.0)  # the first / last segment extend past the route's ends
            fx, fy = xl[a] + t * ex, yl[a] + t * ey
            dist = (x - fx) ** 2 + (y - fy) ** 2
            if dist < best_dist:
                length = math.sqrt(seg2) if seg2 > 0 else 0.0
                cross = (ex * (y - yl[a]) - ey * (x - xl[a])) / length if length else 0.0
                best_s, best_d, best_dist, best_a = float(self.s[a]) + t * length, cross, dist, a
        return best_s, best_d, best_a
