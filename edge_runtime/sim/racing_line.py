"""Minimum-curvature racing line, solved as a quadratic program with OSQP.

The line is the centre line shifted along its normals by ``alpha_i``. Curvature of a uniformly
sampled closed curve is approximated by its periodic second difference, so the sum of squared
curvature is quadratic in ``alpha``; the bounds keep the car's half width plus a safety margin
inside the walls (the classic minimum-curvature formulation of Heilmeier et al., 2019). Because
the second difference assumes the spacing of the shifted points stays uniform, the problem is
re-linearised a few times around the previous solution (the approximation error shrinks as the
line settles).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import osqp
import scipy.sparse as sp
from scipy.interpolate import CubicSpline

from .track import Track
from .tracks import load_track


@dataclass(frozen=True)
class RacingLineConfig:
    """Knobs of the optimisation; defaults suit 1:10 tracks."""

    vehicle_half_width: float = 0.155 + 0.05  # half the F1TENTH width + tolerance, m
    safety_margin: float = 0.15  # m, kept from each wall
    spacing: float = 0.25  # m between optimisation points
    iterations: int = 3
    regularisation: float = 1e-4  # keeps the QP strictly convex on straights

    def __post_init__(self) -> None:
        if self.vehicle_half_width < 0 or self.safety_margin < 0:
            raise ValueError("RacingLineConfig: half width and margin must be >= 0")
        if self.spacing <= 0 or self.iterations < 1:
            raise ValueError("RacingLineConfig: spacing must be > 0 and iterations >= 1")


@dataclass(frozen=True)
class RacingLine:
    """Lateral offset of the racing line on the track's own ``s`` grid."""

    s: np.ndarray
    d: np.ndarray
    curvature: np.ndarray  # curvature of the racing line itself, on the same grid
    track_length: float

    def offset_at(self, s: float | np.ndarray) -> float | np.ndarray:
        s = np.mod(s, self.track_length)
        return np.interp(s, np.append(self.s, self.track_length), np.append(self.d, self.d[0]))


def _second_difference(n: int) -> sp.csc_matrix:
    main = -2.0 * np.ones(n)
    off = np.ones(n)
    m = sp.diags([off[:-1], main, off[:-1]], [-1, 0, 1], shape=(n, n), format="lil")
    m[0, n - 1] = 1.0
    m[n - 1, 0] = 1.0
    return m.tocsc()


def _closed_curvature(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    dx = (np.roll(x, -1) - np.roll(x, 1)) / 2
    dy = (np.roll(y, -1) - np.roll(y, 1)) / 2
    ddx = np.roll(x, -1) - 2 * x + np.roll(x, 1)
    ddy = np.roll(y, -1) - 2 * y + np.roll(y, 1)
    return (dx * ddy - dy * ddx) / np.maximum((dx * dx + dy * dy) ** 1.5, 1e-12)


def compute_racing_line(track: Track, config: RacingLineConfig | None = None) -> RacingLine:
    cfg = config or RacingLineConfig()
    n = max(16, int(round(track.length / cfg.spacing)))
    s_opt = np.arange(n) * track.length / n
    cx, cy = track.from_frenet(s_opt, np.zeros(n))
    th = track.heading_at(s_opt)
    nx, ny = -np.sin(th), np.cos(th)
    w_left, w_right = track.widths_at(s_opt)
    keep = cfg.vehicle_half_width + cfg.safety_margin
    upper = np.maximum(w_left - keep, 0.0)
    lower = -np.maximum(w_right - keep, 0.0)

    D = _second_difference(n)
    alpha = np.zeros(n)
    solver = None
    for _ in range(cfg.iterations):
        # Re-linearise: scale each normal step by the local spacing of the current line so that
        # the second difference stays a curvature estimate for non-uniform spacing.
        px, py = cx + alpha * nx, cy + alpha * ny
        seg = np.hypot(np.roll(px, -1) - px, np.roll(py, -1) - py)
        h = 0.5 * (seg + np.roll(seg, 1))
        scale = sp.diags(1.0 / (h * h))
        Dx = scale @ D @ sp.diags(nx)
        Dy = scale @ D @ sp.diags(ny)
        P = (Dx.T @ Dx + Dy.T @ Dy + cfg.regularisation * sp.eye(n)).tocsc()
        q = Dx.T @ (scale @ D @ cx) + Dy.T @ (scale @ D @ cy)
        A = sp.eye(n, format="csc")
        solver = osqp.OSQP()
        solver.setup(sp.triu(P, format="csc"), q, A, lower, upper, verbose=False, eps_abs=1e-7,
                     eps_rel=1e-7, max_iter=20000, polishing=True)
        if alpha.any():
            solver.warm_start(x=alpha)
        res = solver.solve(raise_error=False)
        if res.x is None or res.info.status_val not in (1, 2):
            raise RuntimeError(f"racing line QP for track {track.name!r} failed: {res.info.status}")
        alpha = np.clip(res.x, lower, upper)

    # Periodic cubic interpolation onto the track's own grid keeps the line smooth there (linear
    # interpolation of 0.25 m points would add kinks), and its curvature is measured on that grid.
    offset = CubicSpline(np.append(s_opt, track.length), np.append(alpha, alpha[0]), bc_type="periodic")
    d_full = np.clip(offset(track.s), -np.maximum(track.w_right - keep, 0.0), np.maximum(track.w_left - keep, 0.0))
    px, py = track.from_frenet(track.s, d_full)
    kappa = _closed_curvature(px, py)
    return RacingLine(s=track.s.copy(), d=d_full, curvature=kappa, track_length=track.length)


@lru_cache(maxsize=16)
def racing_line_for(track_name: str) -> RacingLine:
    """The racing line of a built-in track or track CSV, computed once per process."""
    return compute_racing_line(load_track(track_name))
