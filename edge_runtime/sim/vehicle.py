"""Dynamic single-track vehicle model of a 1:10 F1TENTH car, integrated with RK4.

Why this model: it is the model the F1TENTH community (f1tenth_gym, CommonRoad "ST") drives with,
so parameter sets tuned here transfer in spirit to the real platform. Tyre slip is modelled with
linear cornering stiffness; below ``blend_speed_low`` the equations are singular (they divide by the
speed), so the derivative is blended into the kinematic single-track model, which is also used for
reversing (the linear tyre model is not valid backwards and reversing speeds are low).

Everything here is plain ``math`` on Python floats: a state has seven numbers and numpy's per-call
overhead would dominate (the physics must run well above 20,000 steps/s on one core).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

GRAVITY = 9.81


@dataclass(frozen=True)
class VehicleParams:
    """Physical parameters; defaults are the f1tenth_gym values for the 1:10 car."""

    mass: float = 3.74  # kg
    yaw_inertia: float = 0.04712  # kg m^2
    lf: float = 0.15875  # CG to front axle, m
    lr: float = 0.17145  # CG to rear axle, m
    cg_height: float = 0.074  # m
    friction: float = 1.0489
    cornering_stiffness_front: float = 4.718  # 1/rad (normalised by load, CommonRoad convention)
    cornering_stiffness_rear: float = 5.4562  # 1/rad
    steer_min: float = -0.4189  # rad
    steer_max: float = 0.4189  # rad
    steer_rate_max: float = 3.2  # rad/s
    accel_max: float = 9.51  # m/s^2
    v_switch: float = 7.319  # m/s, above it the motor is power limited
    v_min: float = -5.0  # m/s
    v_max: float = 20.0  # m/s
    width: float = 0.31  # m
    length: float = 0.58  # m
    blend_speed_low: float = 0.5  # m/s: pure kinematic model below
    blend_speed_high: float = 1.0  # m/s: pure dynamic model above
    kinematic_relax_time: float = 0.05  # s: pulls yaw rate / slip to kinematic values at low speed

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if not math.isfinite(value):
                raise ValueError(f"VehicleParams.{f.name} must be finite, got {value!r}")
        positive = ("mass", "yaw_inertia", "lf", "lr", "friction", "cornering_stiffness_front",
                    "cornering_stiffness_rear", "steer_rate_max", "accel_max", "v_switch", "width",
                    "length", "kinematic_relax_time")
        for name in positive:
            if getattr(self, name) <= 0:
                raise ValueError(f"VehicleParams.{name} must be > 0, got {getattr(self, name)}")
        if not self.steer_min < 0 < self.steer_max:
            raise ValueError("VehicleParams: need steer_min < 0 < steer_max")
        if not self.v_min < 0 < self.v_max:
            raise ValueError("VehicleParams: need v_min < 0 < v_max")
        if not 0 < self.blend_speed_low < self.blend_speed_high:
            raise ValueError("VehicleParams: need 0 < blend_speed_low < blend_speed_high")

    @property
    def wheelbase(self) -> float:
        return self.lf + self.lr


class SingleTrackModel:
    """Right-hand side and RK4 step of the blended dynamic/kinematic single-track model.

    The parameters are unpacked into plain attributes once (when ``p`` is set), and the RK4 step
    calls an internal derivative on loose floats: the per-step cost is what bounds how fast the
    simulator runs, and attribute look-ups on a dataclass and tuple building dominate otherwise.
    The arithmetic is written in the same order as the readable form, so results do not change.
    """

    def __init__(self, params: VehicleParams | None = None) -> None:
        self.p = params or VehicleParams()

    @property
    def p(self) -> VehicleParams:
        return self._p

    @p.setter
    def p(self, params: VehicleParams) -> None:
        self._p = params
        p = params
        self._steer_min, self._steer_max, self._steer_rate_max = p.steer_min, p.steer_max, p.steer_rate_max
        self._accel_max, self._v_switch, self._v_min, self._v_max = p.accel_max, p.v_switch, p.v_min, p.v_max
        self._accel_switch = p.accel_max * p.v_switch
        self._blend_low = p.blend_speed_low
        self._blend_span = p.blend_speed_high - p.blend_speed_low
        L = p.wheelbase
        self._L = L
        self._ratio = p.lr / L
        self._relax = 1.0 / p.kinematic_relax_time
        lf, lr = p.lf, p.lr
        self._lf, self._lr, self._h, self._mu = lf, lr, p.cg_height, p.friction
        self._csf, self._csr = p.cornering_stiffness_front, p.cornering_stiffness_rear
        self._g_lr, self._g_lf = GRAVITY * lr, GRAVITY * lf
        self._lsum = lf + lr
        self._lf2, self._lr2 = lf * lf, lr * lr
        self._k = p.friction * p.mass / (p.yaw_inertia * (lf + lr))
        self._k_lf = self._k * lf

    # -- input limits (as in f1tenth_gym): applied inside the derivative ------------------------
    def limited_accel(self, v: float, accel: float) -> float:
        p = self.p
        if (v >= p.v_max and accel > 0.0) or (v <= p.v_min and accel < 0.0):
            return 0.0
        pos_limit = p.accel_max * p.v_switch / v if v > p.v_switch else p.accel_max
        return min(max(accel, -p.accel_max), pos_limit)

    def limited_steer_rate(self, steer: float, steer_rate: float) -> float:
        p = self.p
        if (steer >= p.steer_max and steer_rate > 0.0) or (steer <= p.steer_min and steer_rate < 0.0):
            return 0.0
        return min(max(steer_rate, -p.steer_rate_max), p.steer_rate_max)

    def derivative(self, s: tuple, steer_rate: float, accel: float) -> tuple:
        """d/dt of (x, y, steer, v, yaw, yaw_rate, slip) for constant inputs."""
        _, _, delta, v, yaw, yaw_rate, beta = s
        return self._deriv(delta, v, yaw, yaw_rate, beta, steer_rate, accel)

    def _deriv(self, delta: float, v: float, yaw: float, yaw_rate: float, beta: float,
               steer_rate: float, accel: float) -> tuple:
        # Steering-rate limit (servo stops at the steering limits).
        # (Comparisons instead of min/max calls: same results, NaN included, and faster.)
        if (delta >= self._steer_max and steer_rate > 0.0) or (delta <= self._steer_min and steer_rate < 0.0):
            sv = 0.0
        else:
            srm = self._steer_rate_max
            sv = steer_rate
            if sv < -srm:
                sv = -srm
            if sv > srm:
                sv = srm
        # Acceleration limit: none beyond the speed limits, power limited above v_switch.
        if (v >= self._v_max and accel > 0.0) or (v <= self._v_min and accel < 0.0):
            a = 0.0
        else:
            am = self._accel_max
            pos_limit = self._accel_switch / v if v > self._v_switch else am
            a = accel
            if a < -am:
                a = -am
            if a > pos_limit:
                a = pos_limit
        course = yaw + beta
        dx = v * math.cos(course)
        dy = v * math.sin(course)

        w = (v - self._blend_low) / self._blend_span
        w = 0.0 if w < 0.0 else (1.0 if w > 1.0 else w)

        if w < 1.0:
            # Kinematic single-track, written for the same states (CommonRoad "STD" low-speed form).
            L = self._L
            tan_d = math.tan(delta)
            cos_d = math.cos(delta)
            ratio = self._ratio
            beta_k = math.atan(tan_d * ratio)
            cos_b = math.cos(beta_k)
            sin_b = math.sin(beta_k)
            dbeta_k = ratio * sv / (cos_d * cos_d * (1.0 + (tan_d * ratio) ** 2))
            yaw_rate_k = v * cos_b * tan_d / L
            dyaw_rate_k = (a * cos_b * tan_d - v * sin_b * dbeta_k * tan_d + v * cos_b * sv / (cos_d * cos_d)) / L
            relax = self._relax
            dbeta_kin = dbeta_k + (beta_k - beta) * relax
            dyaw_rate_kin = dyaw_rate_k + (yaw_rate_k - yaw_rate) * relax
            if w <= 0.0:
                return (dx, dy, sv, a, yaw_rate, dyaw_rate_kin, dbeta_kin)
        else:
            dbeta_kin = dyaw_rate_kin = 0.0

        lf, lr, h, mu = self._lf, self._lr, self._h, self._mu
        lsum = self._lsum
        front = self._csf * (self._g_lr - a * h)
        rear = self._csr * (self._g_lf + a * h)
        k = self._k
        dyaw_rate_dyn = (-k / v * (self._lf2 * front + self._lr2 * rear) * yaw_rate
                         + k * (lr * rear - lf * front) * beta
                         + self._k_lf * front * delta)
        dbeta_dyn = ((mu / (v * v * lsum) * (rear * lr - front * lf) - 1.0) * yaw_rate
                     - mu / (v * lsum) * (rear + front) * beta
                     + mu / (v * lsum) * front * delta)
        if w >= 1.0:
            return (dx, dy, sv, a, yaw_rate, dyaw_rate_dyn, dbeta_dyn)
        dyaw_rate = w * dyaw_rate_dyn + (1.0 - w) * dyaw_rate_kin
        dbeta = w * dbeta_dyn + (1.0 - w) * dbeta_kin
        return (dx, dy, sv, a, yaw_rate, dyaw_rate, dbeta)

    def rk4_step(self, s: tuple, steer_rate: float, accel: float, dt: float) -> tuple:
        """One classic RK4 step of length ``dt`` with the inputs held constant."""
        f = self._deriv
        x0, y0, d0, v0, p0, r0, b0 = s
        h = 0.5 * dt
        _, _, a2, a3, a4, a5, a6 = k1 = f(d0, v0, p0, r0, b0, steer_rate, accel)
        _, _, b2, b3, b4, b5, b6 = k2 = f(d0 + h * a2, v0 + h * a3, p0 + h * a4, r0 + h * a5, b0 + h * a6,
                                          steer_rate, accel)
        _, _, c2, c3, c4, c5, c6 = k3 = f(d0 + h * b2, v0 + h * b3, p0 + h * b4, r0 + h * b5, b0 + h * b6,
                                          steer_rate, accel)
        k4 = f(d0 + dt * c2, v0 + dt * c3, p0 + dt * c4, r0 + dt * c5, b0 + dt * c6, steer_rate, accel)
        sixth = dt / 6.0
        steer = d0 + sixth * (a2 + 2.0 * b2 + 2.0 * c2 + k4[2])
        v = v0 + sixth * (a3 + 2.0 * b3 + 2.0 * c3 + k4[3])
        # RK4 may overshoot the hard limits by a hair; clamp the states that have physical stops.
        if steer < self._steer_min:
            steer = self._steer_min
        if steer > self._steer_max:
            steer = self._steer_max
        if v < self._v_min:
            v = self._v_min
        if v > self._v_max:
            v = self._v_max
        return (x0 + sixth * (k1[0] + 2.0 * k2[0] + 2.0 * k3[0] + k4[0]),
                y0 + sixth * (k1[1] + 2.0 * k2[1] + 2.0 * k3[1] + k4[1]),
                steer,
                v,
                p0 + sixth * (a4 + 2.0 * b4 + 2.0 * c4 + k4[4]),
                r0 + sixth * (a5 + 2.0 * b5 + 2.0 * c5 + k4[5]),
                b0 + sixth * (a6 + 2.0 * b6 + 2.0 * c6 + k4[6]))

    def body_accelerations(self, s: tuple, steer_rate: float, accel: float) -> tuple[float, float]:
        """IMU-like longitudinal / lateral acceleration in the body frame (m/s^2)."""
        _, _, _, v, _, yaw_rate, beta = s
        d = self.derivative(s, steer_rate, accel)
        dv, dbeta = d[3], d[6]
        cb, sb = math.cos(beta), math.sin(beta)
        vx, vy = v * cb, v * sb
        dvx = dv * cb - v * sb * dbeta
        dvy = dv * sb + v * cb * dbeta
        return dvx - yaw_rate * vy, dvy + yaw_rate * vx
