"""Closed tracks: centre line + left/right widths, Frenet conversion, CSV loading.

A track is resampled at a uniform arc-length step from a periodic cubic spline through its
centre-line points, so curvature is smooth (the MPC linearises around it) and ``s`` is exact
arc length. Frenet coordinates: ``s`` in [0, length), ``d`` positive to the left of the
driving direction, heading error = vehicle yaw − centre-line heading, wrapped to (−π, π].

Degenerate shapes are refused (:class:`TrackFormatError` naming the source and where): centre-line
points that all lie on one line (the loop encloses no area, so ``s`` could not advance), a centre
line that crosses itself (a figure-eight), and a half-width larger than the radius of the turn on
that side (the inner wall would fold over itself). The checks run on the resampled centre line,
the one the car drives, for every track: CSV files, arrays and the built-in ones.

CSV convention (F1TENTH / TUM): ``x_m, y_m, w_tr_right_m, w_tr_left_m`` per row, ``#`` comments,
optional header, the loop not repeated at the end (a repeated first point is dropped).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

TWO_PI = 2.0 * math.pi


class TrackFormatError(ValueError):
    """A track file or array that cannot describe a closed track."""


def wrap_angle(a: float) -> float:
    """Wrap an angle to (−π, π]."""
    a = math.fmod(a + math.pi, TWO_PI)
    if a <= 0.0:
        a += TWO_PI
    return a - math.pi


@dataclass(frozen=True)
class FrenetPoint:
    s: float
    d: float
    index: int  # segment index, a hint for the next local search


class Track:
    """Uniformly resampled closed centre line with widths; Frenet <-> Cartesian."""

    def __init__(self, name: str, x: np.ndarray, y: np.ndarray, w_right: np.ndarray, w_left: np.ndarray,
                 step: float = 0.1, source: str = "<array>") -> None:
        from scipy.interpolate import CubicSpline  # imported here: scipy.interpolate is slow to import

        x, y, w_right, w_left = (np.asarray(a, dtype=float).ravel() for a in (x, y, w_right, w_left))
        _validate_centreline(x, y, w_right, w_left, source)
        if step <= 0:
            raise ValueError(f"Track step must be > 0, got {step}")
        self.name = name
        self.source = source
        # Periodic spline on chord length, then uniform resampling in true arc length.
        px = np.append(x, x[0])
        py = np.append(y, y[0])
        chord = np.concatenate([[0.0], np.cumsum(np.hypot(np.diff(px), np.diff(py)))])
        sx = CubicSpline(chord, px, bc_type="periodic")
        sy = CubicSpline(chord, py, bc_type="periodic")
        fine = np.linspace(0.0, chord[-1], max(2000, 20 * len(x)) + 1)
        speed = np.hypot(sx(fine, 1), sy(fine, 1))
        arc = np.concatenate([[0.0], np.cumsum(0.5 * (speed[1:] + speed[:-1]) * np.diff(fine))])
        self.length = float(arc[-1])
        n = max(8, int(round(self.length / step)))
        self.step = self.length / n
        self.s = np.arange(n) * self.step
        u = np.interp(self.s, arc, fine)
        self.x = sx(u)
        self.y = sy(u)
        dx, dy = sx(u, 1), sy(u, 1)
        ddx, ddy = sx(u, 2), sy(u, 2)
        self.heading = np.unwrap(np.arctan2(dy, dx))
        self.curvature = (dx * ddy - dy * ddx) / np.power(dx * dx + dy * dy, 1.5)
        wr = CubicSpline(chord, np.append(w_right, w_right[0]), bc_type="periodic")(u)
        wl = CubicSpline(chord, np.append(w_left, w_left[0]), bc_type="periodic")(u)
        self.w_right = np.maximum(wr, 1e-3)
        self.w_left = np.maximum(wl, 1e-3)
        _check_shape(self.x, self.y, self.s, self.curvature, self.w_left, self.w_right, self.step, source)
        self.normal_x = -np.sin(self.heading)
        self.normal_y = np.cos(self.heading)
        turn = self.heading[-1] - self.heading[0] + wrap_angle(self.heading[0] - self.heading[-1])
        self.direction = 1.0 if turn > 0 else -1.0  # +1: counter-clockwise lap
        # Closed-loop copies (the first point repeated at s = length; the heading continues by one
        # full turn) for np.interp, built once instead of on every lookup.
        self._grid_ext = np.append(self.s, self.length)
        self._x_ext = np.append(self.x, self.x[0])
        self._y_ext = np.append(self.y, self.y[0])
        self._heading_ext = np.append(self.heading, self.heading[0] + self.direction * TWO_PI)
        self._curvature_ext = np.append(self.curvature, self.curvature[0])
        self._w_left_ext = np.append(self.w_left, self.w_left[0])
        self._w_right_ext = np.append(self.w_right, self.w_right[0])
        # Python lists for the per-physics-step path (numpy scalar access is slow): the local
        # search, and index-based interpolation with the segment (index, fraction) of ``_project``.
        self._xl = self.x.tolist()
        self._yl = self.y.tolist()
        self._n = n
        self._heading_l = self._heading_ext.tolist()
        self._curvature_l = self._curvature_ext.tolist()
        self._w_left_l = self._w_left_ext.tolist()
        self._w_right_l = self._w_right_ext.tolist()

    # -- construction ----------------------------------------------------------------------------
    @classmethod
    def from_csv(cls, path: str | Path, name: str | None = None, step: float = 0.1) -> "Track":
        """Load ``x, y, w_right, w_left`` rows (``,`` or ``;`` separated). Blank lines and ``#``
        comments are skipped, as is one header line before the data; every error names the file
        and, where there is one, the line."""
        path = Path(path)
        if not path.is_file():
            raise TrackFormatError(f"{path}: track file not found")
        columns = ("x", "y", "w_right", "w_left")
        rows: list[list[float]] = []
        linenos: list[int] = []
        try:
            text = path.read_text()
        except (OSError, UnicodeDecodeError) as e:
            raise TrackFormatError(f"{path}: cannot read the track file ({e})") from None
        seen_content = False
        for lineno, raw in enumerate(text.splitlines(), start=1):
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            parts = [p.strip() for p in line.replace(";", ",").split(",")]
            first_content, seen_content = not seen_content, True
            values: list[float] = []
            bad: str | None = None
            for p in parts:
                try:
                    values.append(float(p))
                except ValueError:
                    bad = p if bad is None else bad
            if bad is not None:
                if first_content and not values:
                    continue  # a header line: no cell is a number
                raise TrackFormatError(
                    f"{path}:{lineno}: {bad!r} is not a number (expected 4 numbers 'x, y, w_right, w_left', "
                    f"got {line!r})")
            if len(values) != 4:
                raise TrackFormatError(
                    f"{path}:{lineno}: expected 4 columns 'x, y, w_right, w_left', got {len(values)}: {line!r}")
            for col, v in zip(columns, values):
                if not math.isfinite(v):
                    raise TrackFormatError(f"{path}:{lineno}: column {col} is {v} (NaN or inf is not allowed)")
            for col, v in zip(columns[2:], values[2:]):
                if v <= 0:
                    raise TrackFormatError(
                        f"{path}:{lineno}: {col} must be > 0 (distance from the centre line to the "
                        f"{'right' if col == 'w_right' else 'left'} boundary), got {v}")
            if rows and rows[-1][0] == values[0] and rows[-1][1] == values[1]:
                raise TrackFormatError(
                    f"{path}:{lineno}: centre-line point ({values[0]}, {values[1]}) repeats the point of "
                    f"line {linenos[-1]}")
            rows.append(values)
            linenos.append(lineno)
        if not rows:
            raise TrackFormatError(f"{path}: no data rows (expected 'x, y, w_right, w_left' per line)")
        arr = np.array(rows)
        if len(arr) > 1 and np.hypot(*(arr[0, :2] - arr[-1, :2])) < 1e-9:
            arr = arr[:-1]  # the loop closed by repeating the first point
        if len(arr) < 4:
            raise TrackFormatError(
                f"{path}: a closed track needs at least 4 centre-line points, got {len(arr)}")
        return cls(name or path.stem, arr[:, 0], arr[:, 1], arr[:, 2], arr[:, 3], step=step, source=str(path))

    def to_csv(self, path: str | Path) -> None:
        data = np.column_stack([self.x, self.y, self.w_right, self.w_left])
        np.savetxt(path, data, delimiter=",", fmt="%.6f", header="x_m,y_m,w_tr_right_m,w_tr_left_m")

    # -- geometry lookups ------------------------------------------------------------------------
    def wrap_s(self, s: float | np.ndarray) -> float | np.ndarray:
        return np.mod(s, self.length) if isinstance(s, np.ndarray) else s % self.length

    def _interp(self, values_ext: np.ndarray, s: float | np.ndarray) -> float | np.ndarray:
        s = np.mod(s, self.length)
        return np.interp(s, self._grid_ext, values_ext)

    def curvature_at(self, s: float | np.ndarray) -> float | np.ndarray:
        return self._interp(self._curvature_ext, s)

    def widths_at(self, s: float | np.ndarray) -> tuple:
        """(w_left, w_right) at ``s``."""
        return self._interp(self._w_left_ext, s), self._interp(self._w_right_ext, s)

    def heading_at(self, s: float | np.ndarray) -> float | np.ndarray:
        return self._interp(self._heading_ext, s)

    def from_frenet(self, s: float | np.ndarray, d: float | np.ndarray) -> tuple:
        """Cartesian (x, y) of Frenet (s, d)."""
        s = np.mod(s, self.length)
        grid = self._grid_ext
        cx, cy = np.interp(s, grid, self._x_ext), np.interp(s, grid, self._y_ext)
        th = np.interp(s, grid, self._heading_ext)
        return cx - np.sin(th) * d, cy + np.cos(th) * d

    # -- Frenet projection -----------------------------------------------------------------------
    def to_frenet(self, x: float, y: float, hint: int | None = None) -> FrenetPoint:
        """Project (x, y) onto the centre line: the exact inverse of :meth:`from_frenet` (for
        |d| below the radius of curvature). With ``hint`` (the last segment index) the search is
        local and O(1); without it, global over all points (use it once per reset)."""
        s, d, a, _ = self._project(x, y, hint)
        return FrenetPoint(s, d, a)

    def _project(self, x: float, y: float, hint: int | None = None) -> tuple[float, float, int, float]:
        """``to_frenet`` as a plain tuple (s, d, segment index a, fraction t along the segment).

        ``a`` and ``t`` locate ``s`` on the grid (s = (a + t) * step, modulo the length), so values
        can be interpolated from the ``_*_l`` lists without a search (see ``_at_index``)."""
        n = self._n
        xl, yl = self._xl, self._yl
        if hint is None:
            i = int(np.argmin((self.x - x) ** 2 + (self.y - y) ** 2))
        else:
            i = hint % n
            best = (xl[i] - x) ** 2 + (yl[i] - y) ** 2
            for direction in (1, -1):  # hill-climb along the polyline
                while True:
                    j = (i + direction) % n
                    dj = (xl[j] - x) ** 2 + (yl[j] - y) ** 2
                    if dj < best:
                        i, best = j, dj
                    else:
                        break
        # Project onto the segment after and the one before the nearest point; keep the closer one.
        best_a, best_t = i, 0.0
        best_dist = math.inf
        for a in ((i - 1) % n, i):
            b = a + 1 if a + 1 < n else 0
            ax, ay = xl[a], yl[a]
            ex, ey = xl[b] - ax, yl[b] - ay
            t = ((x - ax) * ex + (y - ay) * ey) / (ex * ex + ey * ey)
            t = 0.0 if t < 0.0 else (1.0 if t > 1.0 else t)
            dist = (x - ax - t * ex) ** 2 + (y - ay - t * ey) ** 2
            if dist < best_dist:
                best_a, best_t, best_dist = a, t, dist
        # Refine to the exact inverse of ``from_frenet``, whose normals turn smoothly (linearly
        # interpolated heading) instead of jumping at the polyline's corners: find t with
        # f(t) = (P - C(t)) . T(t) = 0 by Newton's method, C and T linear in t within a segment.
        # Without it, s would be off by up to ~step * curvature * d (centimetres at the walls).
        a, t = best_a, best_t
        hl = self._heading_l
        for _ in range(8):
            b = a + 1 if a + 1 < n else 0
            ax, ay = xl[a], yl[a]
            ex, ey = xl[b] - ax, yl[b] - ay
            h0 = hl[a]
            dh = hl[a + 1] - h0
            th = h0 + t * dh
            c, s_ = math.cos(th), math.sin(th)
            rx, ry = x - ax - t * ex, y - ay - t * ey
            f = rx * c + ry * s_
            df = -(ex * c + ey * s_) + (ry * c - rx * s_) * dh
            if df > -1e-9:  # at or beyond the centre of curvature: keep the polyline foot
                a, t = best_a, best_t
                break
            dt = f / df
            t -= dt
            if t < 0.0:
                if t < -1e-9:
                    a, t = (a - 1) % n, t + 1.0
                    continue
                t = 0.0
            elif t > 1.0:
                if t > 1.0 + 1e-9:
                    a, t = (a + 1) % n, t - 1.0
                    continue
                t = 1.0
            if -1e-12 < dt < 1e-12:
                break
        else:  # no convergence (pathological geometry): fall back to the polyline foot
            a, t = best_a, best_t
        b = a + 1 if a + 1 < n else 0
        ax, ay = xl[a], yl[a]
        ex, ey = xl[b] - ax, yl[b] - ay
        h0 = hl[a]
        th = h0 + t * (hl[a + 1] - h0)
        d = (y - ay - t * ey) * math.cos(th) - (x - ax - t * ex) * math.sin(th)
        step = self.step
        s = (a * step + t * step) % self.length
        return s, d, a, t

    @staticmethod
    def _at_index(values: list[float], a: int, t: float) -> float:
        """Linear interpolation in one of the closed-loop ``_*_l`` lists at segment (a, t)."""
        v0 = values[a]
        return v0 + t * (values[a + 1] - v0)

    def heading_error(self, s: float, yaw: float) -> float:
        return wrap_angle(yaw - float(self.heading_at(s)))

    def signed_progress(self, s_from: float, s_to: float) -> float:
        """Shortest signed arc-length difference s_to − s_from across the seam."""
        ds = (s_to - s_from) % self.length
        return ds - self.length if ds > 0.5 * self.length else ds

    def __repr__(self) -> str:
        return f"Track({self.name!r}, length={self.length:.1f} m, points={self._n})"


def _validate_centreline(x, y, w_right, w_left, source: str) -> None:
    n = len(x)
    if not (len(y) == len(w_right) == len(w_left) == n):
        raise TrackFormatError(f"{source}: x, y, w_right, w_left must have the same length")
    if n < 4:
        raise TrackFormatError(f"{source}: a closed track needs at least 4 centre-line points, got {n}")
    for name, arr in (("x", x), ("y", y), ("w_right", w_right), ("w_left", w_left)):
        if not np.all(np.isfinite(arr)):
            raise TrackFormatError(f"{source}: column {name} contains NaN or inf")
    for name, arr in (("w_right", w_right), ("w_left", w_left)):
        if np.any(arr <= 0):
            bad = int(np.argmax(arr <= 0))
            raise TrackFormatError(
                f"{source}: {name} must be > 0 (distance from centre line to the boundary); row {bad} has {arr[bad]}")
    seg = np.hypot(np.diff(np.append(x, x[0])), np.diff(np.append(y, y[0])))
    if np.any(seg < 1e-6):
        bad = int(np.argmax(seg < 1e-6))
        raise TrackFormatError(f"{source}: consecutive centre-line points {bad} and {(bad + 1) % n} coincide")


def _check_shape(x: np.ndarray, y: np.ndarray, s: np.ndarray, curvature: np.ndarray, w_left: np.ndarray,
                 w_right: np.ndarray, step: float, source: str) -> None:
    """Refuse a resampled centre line that no car can drive (see the module docstring)."""
    pts = np.column_stack([x, y])
    centred = pts - pts.mean(axis=0)
    sv = np.linalg.svd(centred, compute_uv=False)
    if sv[1] <= 1e-9 * max(sv[0], 1e-300):
        raise TrackFormatError(f"{source}: all centre-line points lie on one straight line, so the loop encloses "
                               "no area; give points around a closed loop")
    crossing = _self_crossing(x, y, step)
    if crossing is not None:
        i, j = crossing
        raise TrackFormatError(
            f"{source}: the centre line crosses itself near ({x[i]:.2f}, {y[i]:.2f}) (at s = {s[i]:.1f} m and "
            f"s = {s[j]:.1f} m); a track must be a simple closed loop (no figure-eight)")
    area = 0.5 * abs(float(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))))
    length = step * len(x)
    if area < 1e-4 * length * length:  # isoperimetric ratio 4*pi*A/L^2 below ~1e-3
        raise TrackFormatError(f"{source}: the centre line encloses almost no area ({area:.3g} m^2 for a "
                               f"{length:.1f} m loop); give points around a closed loop")
    for side, width, sign in (("left", w_left, 1.0), ("right", w_right, -1.0)):
        fold = width * sign * curvature  # >= 1: the half-width reaches the centre of a turn to this side
        i = int(np.argmax(fold))
        if fold[i] >= 1.0:
            raise TrackFormatError(
                f"{source}: the track is wider than its turn radius near ({x[i]:.2f}, {y[i]:.2f}) (s = {s[i]:.1f} m): "
                f"{side} half-width {width[i]:.2f} m > radius {1.0 / abs(curvature[i]):.2f} m of the {side} turn, "
                f"so the {side} wall folds over itself; make the turn wider or the track narrower there")


def _self_crossing(x: np.ndarray, y: np.ndarray, step: float) -> tuple[int, int] | None:
    """Indices (i, j) of two non-adjacent segments of the closed polyline that touch or cross.

    Candidates come from a k-d tree of segment midpoints: two crossing segments of length <= step
    have midpoints at most one step apart, so the test stays near linear in the number of points."""
    from scipy.spatial import cKDTree

    n = len(x)
    x1, y1 = np.roll(x, -1), np.roll(y, -1)
    mid = np.column_stack([(x + x1) / 2, (y + y1) / 2])
    pairs = cKDTree(mid).query_pairs(r=1.5 * step, output_type="ndarray")
    if len(pairs) == 0:
        return None
    i, j = pairs[:, 0], pairs[:, 1]
    gap = np.abs(i - j)
    keep = (gap > 1) & (gap < n - 1)
    i, j = i[keep], j[keep]

    def orient(ax, ay, bx, by, cx, cy):
        return (bx - ax) * (cy - ay) - (by - ay) * (cx - ax)

    o1 = orient(x[i], y[i], x1[i], y1[i], x[j], y[j])
    o2 = orient(x[i], y[i], x1[i], y1[i], x1[j], y1[j])
    o3 = orient(x[j], y[j], x1[j], y1[j], x[i], y[i])
    o4 = orient(x[j], y[j], x1[j], y1[j], x1[i], y1[i])
    hit = (o1 * o2 <= 0) & (o3 * o4 <= 0) & ~((o1 == 0) & (o2 == 0))
    if not hit.any():
        return None
    k = int(np.argmax(hit))
    return int(min(i[k], j[k])), int(max(i[k], j[k]))
