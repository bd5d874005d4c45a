"""Kinematic MPC in Frenet coordinates, solved with OSQP (RobotxR1's cost, 11 tunable parameters).

State  xi = [n, alpha, v, delta]   (lateral offset, heading error, signed speed, steering angle)
Input  u  = [a, delta_rate]
Model  n' = v sin(alpha);  alpha' = v tan(delta)/L - kappa(s) v cos(alpha)/(1 - n kappa);
       v' = a;  delta' = delta_rate;  s' = v cos(alpha)/(1 - n kappa)
Cost   sum_k qn n^2 + qalpha alpha^2 + qv (v - v_max)^2 + qac a^2 + qddelta delta_rate^2
Constraints: |delta| <= steer limit, |delta_rate| <= rate limit, a_min <= a <= a_max (hard);
       walls minus half the car and track_safety_margin, |v^2 tan(delta)/L| <= alat_max and
       v_min <= v <= v_max (soft, with penalised slacks, so that the QP is always feasible).

Each control step linearises the model around the previous solution shifted by one step (a
real-time iteration of sequential quadratic programming), discretises it with forward Euler at
the control period, and updates the values of the sparse constraint matrix in place: its
sparsity pattern is built once, so OSQP keeps its factorisation structure, and both primal and
dual solutions warm-start the next solve. A solve that fails returns a safe command (brake to a
stop, hold the steering) and is counted.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np
import osqp
import scipy.sparse as sp

from ..sim.protocol import ControlCommand, VehicleState
from ..sim.track import Track
from ..sim.vehicle import VehicleParams
from .params import DEFAULT_PARAMS, MPCParams

NX, NU, NS = 4, 2, 3  # states, inputs, slacks per stage (walls, lateral acceleration, speed)
_ACCEPTED_STATUS = {1, 2}  # solved, solved inaccurate


@dataclass(frozen=True)
class MPCConfig:
    """Structure of the controller (fixed for its lifetime); tunables live in MPCParams."""

    horizon: int = 20
    rate_hz: float = 20.0
    vehicle: VehicleParams = VehicleParams()
    steer_reg: float = 0.01  # small weight on delta^2: keeps the steering centred on straights
    wall_slack_weight: float = 2000.0  # linear + quadratic penalty on wall-constraint violation
    alat_slack_weight: float = 50.0
    speed_slack_weight: float = 50.0
    first_solve_iterations: int = 3  # SQP iterations on the first solve (no previous solution yet)
    max_iter: int = 400
    eps: float = 1e-3
    fallback_decel: float = 4.0  # m/s^2 used to brake to a stop after a failed solve

    def __post_init__(self) -> None:
        if not 2 <= self.horizon <= 200:
            raise ValueError(f"MPCConfig.horizon must be in [2, 200], got {self.horizon}")
        if not 1.0 <= self.rate_hz <= 200.0:
            raise ValueError(f"MPCConfig.rate_hz must be in [1, 200], got {self.rate_hz}")
        for name in ("steer_reg", "wall_slack_weight", "alat_slack_weight", "speed_slack_weight", "eps",
                     "fallback_decel"):
            if getattr(self, name) < 0:
                raise ValueError(f"MPCConfig.{name} must be >= 0")
        if self.first_solve_iterations < 1 or self.max_iter < 10:
            raise ValueError("MPCConfig: first_solve_iterations >= 1 and max_iter >= 10 required")

    @property
    def dt(self) -> float:
        return 1.0 / self.rate_hz


@dataclass(frozen=True)
class MPCResult:
    """One control step: the command and what the solver did (for telemetry)."""

    command: ControlCommand
    ok: bool  # False: the fallback command was used
    status: str
    solve_time: float  # s, OSQP's own solve time (all SQP iterations)
    wall_time: float  # s, the whole step including matrix updates
    iterations: int


class FrenetMPC:
    """Real-time-iteration MPC; one instance per vehicle, ``step`` once per control period."""

    def __init__(self, track: Track, params: MPCParams = DEFAULT_PARAMS, config: MPCConfig | None = None) -> None:
        self.config = config or MPCConfig()
        self.track = track
        self.params = params
        self.failures = 0
        self.solves = 0
        N = self.config.horizon
        self._N = N
        # Variable layout: [xi_0 .. xi_N | u_0 .. u_{N-1} | slack_1 .. slack_N]
        self._ix = 0
        self._iu = NX * (N + 1)
        self._is = self._iu + NU * N
        self._nvar = self._is + NS * N
        self._build_structure()
        self._solver: osqp.OSQP | None = None
        self._xbar: np.ndarray | None = None  # (N+1, NX) linearisation trajectory
        self._ubar: np.ndarray | None = None  # (N, NU)
        self._sbar: np.ndarray | None = None  # (N+1,) predicted arc length

    # -- public ---------------------------------------------------------------------------------
    def set_params(self, params: MPCParams) -> None:
        """Swap the tunable parameters; takes effect at the next step (cost and bounds only)."""
        self.params = params
        if self._solver is not None:
            self._solver.update(Px=self._cost_values(), q=self._linear_cost())

    def reset(self) -> None:
        """Forget the previous solution (e.g. after a simulator reset)."""
        self._xbar = self._ubar = self._sbar = None

    def step(self, state: VehicleState) -> MPCResult:
        t0 = time.perf_counter()
        self.solves += 1
        x0 = np.array([state.d, state.heading_error, state.v, state.steer])
        first = self._xbar is None
        if first:
            self._initial_guess(x0, state.s)
        else:
            self._shift_guess(x0, state.s)
        iterations = self.config.first_solve_iterations if first else 1
        solve_time = 0.0
        total_iter = 0
        status, status_val, res = "not solved", 0, None
        for _ in range(iterations):
            self._update_qp(x0)
            res = self._solver.solve(raise_error=False)
            solve_time += res.info.solve_time
            total_iter += res.info.iter
            status, status_val = res.info.status, res.info.status_val
            if status_val not in _ACCEPTED_STATUS or res.x is None or not np.all(np.isfinite(res.x)):
                break
            self._store_solution(res.x)
        ok = status_val in _ACCEPTED_STATUS and res is not None and res.x is not None and np.all(np.isfinite(res.x))
        if ok:
            u0 = self._ubar[0]
            steer_target = float(self._xbar[1, 3])
            command = ControlCommand(steer=steer_target, accel=float(u0[0]))
        else:
            self.failures += 1
            self.reset()
            command = self.fallback_command(state)
        return MPCResult(command=command, ok=bool(ok), status=status, solve_time=solve_time,
                         wall_time=time.perf_counter() - t0, iterations=total_iter)

    def fallback_command(self, state: VehicleState) -> ControlCommand:
        """Brake to a stop and hold the steering: the safe action when no plan is available."""
        decel = self.config.fallback_decel
        step_brake = abs(state.v) / self.config.dt
        accel = -math.copysign(min(decel, step_brake), state.v) if state.v != 0 else 0.0
        return ControlCommand(steer=float(state.steer), accel=accel)

    def predicted_trajectory(self) -> np.ndarray | None:
        """(N+1, 5) array of [s, n, alpha, v, delta] of the last plan, or None."""
        if self._xbar is None:
            return None
        return np.column_stack([self._sbar, self._xbar])

    # -- QP structure -----------------------------------------------------------------------------
    def _build_structure(self) -> None:
        """Sparsity pattern of A (built once) and the index maps used to update it in place."""
        N, ix, iu, is_ = self._N, self._ix, self._iu, self._is
        rows: list[int] = []
        cols: list[int] = []
        r = 0
        # 1) initial state: xi_0 = x0
        for i in range(NX):
            rows.append(r + i); cols.append(ix + i)
        r += NX
        # 2) dynamics: (I + dt A_k) xi_k + dt B u_k - xi_{k+1} = -c_k
        #    A_k has structural entries: n<-alpha,v ; alpha<-n,alpha,v,delta (plus identity).
        self._dyn_rows = r
        a_entries = [(0, 0), (0, 1), (0, 2), (1, 0), (1, 1), (1, 2), (1, 3), (2, 2), (3, 3)]
        self._a_entries = a_entries
        self._dyn_pos = []  # position in the COO list of each A_k entry, per k
        for k in range(N):
            pos = []
            for (a, b) in a_entries:
                pos.append(len(rows)); rows.append(r + NX * k + a); cols.append(ix + NX * k + b)
            self._dyn_pos.append(pos)
            # B: v <- a, delta <- delta_rate (constant dt)
            rows.append(r + NX * k + 2); cols.append(iu + NU * k + 0)
            rows.append(r + NX * k + 3); cols.append(iu + NU * k + 1)
            for i in range(NX):  # -xi_{k+1}
                rows.append(r + NX * k + i); cols.append(ix + NX * (k + 1) + i)
        r += NX * N
        # 3) soft walls: n_k - e_k <= ub ; n_k + e_k >= lb   (k = 1..N)
        self._wall_rows = r
        for k in range(N):
            n_col = ix + NX * (k + 1)
            e_col = is_ + NS * k
            rows += [r + 2 * k, r + 2 * k, r + 2 * k + 1, r + 2 * k + 1]
            cols += [n_col, e_col, n_col, e_col]
        r += 2 * N
        # 4) soft lateral acceleration: ay_lin(v_k, delta_k) -/+ s_k within +-alat_max
        self._alat_rows = r
        self._alat_pos = []
        for k in range(N):
            v_col = ix + NX * (k + 1) + 2
            d_col = ix + NX * (k + 1) + 3
            s_col = is_ + NS * k + 1
            pos = len(rows)
            rows += [r + 2 * k, r + 2 * k, r + 2 * k, r + 2 * k + 1, r + 2 * k + 1, r + 2 * k + 1]
            cols += [v_col, d_col, s_col, v_col, d_col, s_col]
            self._alat_pos.append(pos)
        r += 2 * N
        # 5) soft speed bounds: v_k - s <= v_max ; v_k + s >= v_min
        self._speed_rows = r
        for k in range(N):
            v_col = ix + NX * (k + 1) + 2
            s_col = is_ + NS * k + 2
            rows += [r + 2 * k, r + 2 * k, r + 2 * k + 1, r + 2 * k + 1]
            cols += [v_col, s_col, v_col, s_col]
        r += 2 * N
        # 6) box bounds on every variable (inf where unbounded)
        self._box_rows = r
        for j in range(self._nvar):
            rows.append(r + j); cols.append(j)
        r += self._nvar
        self._nrows = r
        nnz = len(rows)
        # Permutation from our COO order to CSC data order (distinct non-zero markers survive).
        marker = sp.csc_matrix((np.arange(1, nnz + 1, dtype=float), (rows, cols)), shape=(r, self._nvar))
        marker.sort_indices()
        self._perm = marker.data.astype(np.int64) - 1
        self._A_indices, self._A_indptr = marker.indices.copy(), marker.indptr.copy()
        self._coo = np.zeros(nnz)
        self._fill_constant_entries(rows, cols)

    def _fill_constant_entries(self, rows: list[int], cols: list[int]) -> None:
        dt = self.config.dt
        coo = self._coo
        rows_a = np.asarray(rows)
        cols_a = np.asarray(cols)
        # default every entry to 1; overwrite the special ones
        coo[:] = 1.0
        dyn = (rows_a >= self._dyn_rows) & (rows_a < self._wall_rows)
        # -xi_{k+1} entries: column is a state of stage k+1 with the same state index as the row
        k_row = (rows_a - self._dyn_rows) // NX
        is_next = dyn & (cols_a >= self._ix + NX) & (cols_a < self._iu) & ((cols_a - self._ix) // NX == k_row + 1)
        coo[is_next] = -1.0
        is_b = dyn & (cols_a >= self._iu) & (cols_a < self._is)
        coo[is_b] = dt
        # wall rows: n - e (upper row), n + e (lower row)
        wall = (rows_a >= self._wall_rows) & (rows_a < self._alat_rows)
        upper_row = ((rows_a - self._wall_rows) % 2) == 0
        slack_col = cols_a >= self._is
        coo[wall & upper_row & slack_col] = -1.0
        speed = (rows_a >= self._speed_rows) & (rows_a < self._box_rows)
        upper_speed = ((rows_a - self._speed_rows) % 2) == 0
        coo[speed & upper_speed & slack_col] = -1.0

    # -- numbers that change --------------------------------------------------------------------
    def _cost_values(self) -> np.ndarray:
        """Diagonal of P (OSQP minimises 1/2 z'Pz + q'z, so P = 2 W)."""
        p, c, N = self.params, self.config, self._N
        w = np.zeros(self._nvar)
        for k in range(1, N + 1):
            b = self._ix + NX * k
            w[b:b + NX] = (p.qn, p.qalpha, p.qv, c.steer_reg)
        for k in range(N):
            b = self._iu + NU * k
            w[b:b + NU] = (p.qac, p.qddelta)
            b = self._is + NS * k
            w[b:b + NS] = (c.wall_slack_weight, c.alat_slack_weight, c.speed_slack_weight)
        return 2.0 * w + 1e-6  # tiny regulariser keeps P positive definite for the factorisation

    def _linear_cost(self) -> np.ndarray:
        p, c, N = self.params, self.config, self._N
        q = np.zeros(self._nvar)
        for k in range(1, N + 1):
            q[self._ix + NX * k + 2] = -2.0 * p.qv * p.v_max
        for k in range(N):
            b = self._is + NS * k
            q[b:b + NS] = (c.wall_slack_weight, c.alat_slack_weight, c.speed_slack_weight)
        return q

    def _initial_guess(self, x0: np.ndarray, s0: float) -> None:
        """First linearisation point: hold the speed, follow the centre line's curvature."""
        N, dt, L = self._N, self.config.dt, self.config.vehicle.wheelbase
        xbar = np.tile(x0, (N + 1, 1))
        sbar = s0 + dt * x0[2] * np.arange(N + 1)
        kappa = np.asarray(self.track.curvature_at(sbar))
        xbar[1:, 0] = 0.0
        xbar[1:, 1] = 0.0
        xbar[1:, 3] = np.clip(np.arctan(L * kappa[1:]), -self.config.vehicle.steer_max, self.config.vehicle.steer_max)
        self._xbar, self._ubar, self._sbar = xbar, np.zeros((N, NU)), sbar
        self._solver = None

    def _shift_guess(self, x0: np.ndarray, s0: float) -> None:
        self._xbar = np.vstack([self._xbar[1:], self._xbar[-1:]])
        self._xbar[0] = x0
        self._ubar = np.vstack([self._ubar[1:], self._ubar[-1:]])
        self._sbar = self._predict_s(s0)

    def _predict_s(self, s0: float) -> np.ndarray:
        dt = self.config.dt
        xb = self._xbar
        kappa = np.asarray(self.track.curvature_at(s0 + dt * np.cumsum(np.r_[0.0, xb[:-1, 2]])))
        sdot = xb[:-1, 2] * np.cos(xb[:-1, 1]) / np.maximum(1.0 - xb[:-1, 0] * kappa[:-1], 0.1)
        return s0 + np.concatenate([[0.0], np.cumsum(dt * sdot)])

    def _store_solution(self, z: np.ndarray) -> None:
        N = self._N
        self._xbar = z[self._ix:self._iu].reshape(N + 1, NX).copy()
        self._ubar = z[self._iu:self._is].reshape(N, NU).copy()
        self._sbar = self._predict_s(float(self._sbar[0]))

    def _update_qp(self, x0: np.ndarray) -> None:
        c, p, N = self.config, self.params, self._N
        dt, L = c.dt, c.vehicle.wheelbase
        xb = self._xbar
        sb = self._sbar
        kappa = np.asarray(self.track.curvature_at(sb))
        n, al, v, de = xb[:N, 0], xb[:N, 1], xb[:N, 2], xb[:N, 3]
        kk = kappa[:N]
        one = np.maximum(1.0 - n * kk, 0.1)
        cos_a, sin_a = np.cos(al), np.sin(al)
        tan_d = np.tan(de)
        cos_d2 = np.cos(de) ** 2
        # continuous Jacobian entries in the order of self._a_entries
        j_n_al = v * cos_a
        j_n_v = sin_a
        j_al_n = -kk * kk * v * cos_a / one ** 2
        j_al_al = kk * v * sin_a / one
        j_al_v = tan_d / L - kk * cos_a / one
        j_al_de = v / (L * cos_d2)
        vals = np.column_stack([
            1.0 + np.zeros(N), dt * j_n_al, dt * j_n_v,
            dt * j_al_n, 1.0 + dt * j_al_al, dt * j_al_v, dt * j_al_de,
            1.0 + np.zeros(N), 1.0 + np.zeros(N)])
        coo = self._coo
        pos = np.asarray(self._dyn_pos)
        coo[pos.ravel()] = vals.ravel()
        # affine term c_k = dt (f(xbar) - A xbar)
        f_n = v * sin_a
        f_al = v * tan_d / L - kk * v * cos_a / one
        ax_n = j_n_al * al + j_n_v * v
        ax_al = j_al_n * n + j_al_al * al + j_al_v * v + j_al_de * de
        c_n = dt * (f_n - ax_n)
        c_al = dt * (f_al - ax_al)
        # lateral acceleration linearised at stage k+1: ay = v^2 tan(d)/L
        v1, d1 = xb[1:, 2], xb[1:, 3]
        ay0 = v1 * v1 * np.tan(d1) / L
        g_v = 2.0 * v1 * np.tan(d1) / L
        g_d = v1 * v1 / (L * np.cos(d1) ** 2)
        apos = np.asarray(self._alat_pos)
        coo[apos + 0] = g_v
        coo[apos + 1] = g_d
        coo[apos + 2] = -1.0
        coo[apos + 3] = g_v
        coo[apos + 4] = g_d
        coo[apos + 5] = 1.0
        ay_const = ay0 - g_v * v1 - g_d * d1

        lo = np.empty(self._nrows)
        hi = np.empty(self._nrows)
        lo[:NX] = hi[:NX] = x0
        r = self._dyn_rows
        cvec = np.zeros((N, NX))
        cvec[:, 0] = c_n
        cvec[:, 1] = c_al
        lo[r:r + NX * N] = hi[r:r + NX * N] = -cvec.ravel()
        # walls at the predicted s of stage k+1
        w_left, w_right = self.track.widths_at(sb[1:])
        keep = 0.5 * c.vehicle.width + p.track_safety_margin
        ub = np.maximum(np.asarray(w_left) - keep, 0.0)
        lb = -np.maximum(np.asarray(w_right) - keep, 0.0)
        r = self._wall_rows
        lo[r:r + 2 * N:2], hi[r:r + 2 * N:2] = -np.inf, ub
        lo[r + 1:r + 2 * N:2], hi[r + 1:r + 2 * N:2] = lb, np.inf
        r = self._alat_rows
        lo[r:r + 2 * N:2], hi[r:r + 2 * N:2] = -np.inf, p.alat_max - ay_const
        lo[r + 1:r + 2 * N:2], hi[r + 1:r + 2 * N:2] = -p.alat_max - ay_const, np.inf
        r = self._speed_rows
        lo[r:r + 2 * N:2], hi[r:r + 2 * N:2] = -np.inf, p.v_max
        lo[r + 1:r + 2 * N:2], hi[r + 1:r + 2 * N:2] = p.v_min, np.inf
        # boxes
        r = self._box_rows
        box_lo = np.full(self._nvar, -np.inf)
        box_hi = np.full(self._nvar, np.inf)
        veh = c.vehicle
        d_idx = self._ix + NX * np.arange(1, N + 1) + 3
        box_lo[d_idx], box_hi[d_idx] = veh.steer_min, veh.steer_max
        a_idx = self._iu + NU * np.arange(N)
        box_lo[a_idx], box_hi[a_idx] = p.a_min, p.a_max
        box_lo[a_idx + 1], box_hi[a_idx + 1] = -veh.steer_rate_max, veh.steer_rate_max
        box_lo[self._is:] = 0.0
        lo[r:], hi[r:] = box_lo, box_hi

        Ax = coo[self._perm]
        if self._solver is None:
            A = sp.csc_matrix((Ax, self._A_indices, self._A_indptr), shape=(self._nrows, self._nvar))
            P = sp.diags(self._cost_values(), format="csc")
            self._solver = osqp.OSQP()
            self._solver.setup(P, self._linear_cost(), A, lo, hi, verbose=False, warm_starting=True,
                               polishing=False, max_iter=c.max_iter, eps_abs=c.eps, eps_rel=c.eps,
                               adaptive_rho=True, check_termination=10)
        else:
            self._solver.update(Ax=Ax, l=lo, u=hi)
        # warm start from the shifted trajectory
        z = np.zeros(self._nvar)
        z[self._ix:self._iu] = self._xbar.ravel()
        z[self._iu:self._is] = self._ubar.ravel()
        self._solver.warm_start(x=z)
