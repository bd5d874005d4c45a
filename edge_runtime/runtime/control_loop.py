"""Fixed-rate control loop: simulator and MPC step once per period on the control thread.

The MPC's parameter set comes from outside the loop (today a fixed set; the LLM generator will
post new sets from its own thread): ``set_params`` only swaps a reference, the change applies at
the next control step, and the parameter age is recorded with every step.

Timing honesty: ``exec_time`` is the wall time of the control step itself (MPC solve +
simulator step). In real-time mode the loop sleeps to the next deadline; when a step ends past
the next deadline, the missed periods are counted as dropped and skipped (the controller never
tries to catch up with a burst of late steps, as a real vehicle loop would not). In
``realtime=False`` mode the loop runs as fast as it can and overruns are still counted against
the period.
"""

from __future__ import annotations

import math
import threading
import time
from dataclasses import dataclass

from ..control.mpc import FrenetMPC
from ..control.params import MPCParams
from ..sim.protocol import Simulator, VehicleState
from ..telemetry.memory import process_memory
from ..telemetry.stats import latency_summary
from ..telemetry.writer import JsonlWriter


@dataclass(frozen=True)
class LoopConfig:
    rate_hz: float = 20.0
    duration: float = 30.0  # s of simulated time (0 < duration)
    realtime: bool = True
    warmup_steps: int = 20  # excluded from the latency summaries, and stated there
    memory_every: int = 20  # sample RSS every N steps (psutil costs ~20 us)

    def __post_init__(self) -> None:
        if not 1.0 <= self.rate_hz <= 1000.0:
            raise ValueError(f"LoopConfig.rate_hz must be in [1, 1000], got {self.rate_hz}")
        if not (self.duration > 0 and math.isfinite(self.duration)):
            raise ValueError(f"LoopConfig.duration must be a positive number of seconds, got {self.duration}")
        if self.warmup_steps < 0 or self.memory_every < 1:
            raise ValueError("LoopConfig: warmup_steps >= 0 and memory_every >= 1 required")

    @property
    def period(self) -> float:
        return 1.0 / self.rate_hz


class ControlLoop:
    def __init__(self, sim: Simulator, mpc: FrenetMPC, config: LoopConfig, log: JsonlWriter | None = None) -> None:
        self.sim, self.mpc, self.config, self.log = sim, mpc, config, log
        self._pending: MPCParams | None = None
        self._lock = threading.Lock()
        self._params_since = 0.0  # sim time at which the current parameters took effect
        self.exec_times: list[float] = []
        self.solve_times: list[float] = []
        self.overruns = 0
        self.dropped = 0
        self.steps = 0
        self.peak_rss = 0
        self.last_state: VehicleState = sim.state()

    def set_params(self, params: MPCParams) -> None:
        """Thread-safe: the new set applies at the next control step."""
        with self._lock:
            self._pending = params

    def run(self, stop: threading.Event | None = None) -> VehicleState:
        cfg = self.config
        period = cfg.period
        n_steps = int(round(cfg.duration * cfg.rate_hz))
        state = self.sim.state()
        next_deadline = time.perf_counter() + period
        for k in range(n_steps):
            if stop is not None and stop.is_set():
                break
            with self._lock:
                pending, self._pending = self._pending, None
            if pending is not None:
                self.mpc.set_params(pending)
                self._params_since = state.t
            t0 = time.perf_counter()
            result = self.mpc.step(state)
            state = self.sim.step(result.command, period)
            exec_time = time.perf_counter() - t0
            overrun = exec_time > period
            dropped_now = 0
            if cfg.realtime:
                now = time.perf_counter()
                if now > next_deadline:
                    dropped_now = int((now - next_deadline) // period)
                    next_deadline += (dropped_now + 1) * period
                else:
                    time.sleep(next_deadline - now)
                    next_deadline += period
            self.steps += 1
            self.overruns += int(overrun)
            self.dropped += dropped_now
            self.exec_times.append(exec_time)
            self.solve_times.append(result.solve_time)
            record = {
                "type": "control", "step": k, "sim_time": state.t, "wall_time": time.time(),
                "exec_time": exec_time, "overrun": overrun, "dropped": dropped_now,
                "param_age": state.t - self._params_since, "mpc_ok": result.ok, "mpc_status": result.status,
                "mpc_solve_time": result.solve_time, "steer": result.command.steer, "accel": result.command.accel,
                "s": state.s, "d": state.d, "v": state.v, "crashed": state.crashed,
            }
            if k % cfg.memory_every == 0:
                rss, peak = process_memory()
                self.peak_rss = max(self.peak_rss, peak)
                record.update(rss=rss, peak_rss=peak)
            if self.log is not None:
                self.log.write(record)
            self.last_state = state
            if state.crashed:
                break
        return state

    def summary(self) -> dict:
        rss, peak = process_memory()
        state = self.last_state
        return {
            "steps": self.steps, "rate_hz": self.config.rate_hz, "realtime": self.config.realtime,
            "sim_time": state.t, "exec_time": latency_summary(self.exec_times, self.config.warmup_steps),
            "mpc_solve_time": latency_summary(self.solve_times, self.config.warmup_steps),
            "overruns": self.overruns, "dropped_steps": self.dropped, "mpc_failures": self.mpc.failures,
            "crashed": state.crashed, "laps": state.progress / self.sim.track.length,
            "rss": rss, "peak_rss": max(peak, self.peak_rss),
        }
