"""Fixed-rate control loop: simulator and MPC step once per period on the control thread.

The MPC's parameter set comes from outside the loop: a fixed set, ``set_params`` from any thread,
or an attached LLM worker (:meth:`ControlLoop.attach_llm`, see ``llm_worker``). A new set only
swaps a reference; it applies at the next control step, and the parameter age (sim time since
the set in use took effect) is recorded with every step.

With an LLM attached, the loop follows an instruction script (``scenario``): at the first step
whose sim time reaches an instruction's time it submits a request to the worker and opens a new
instruction *window* (each step record carries its window index). The worker answers on its own
thread and delivers outcomes to the loop's inbox (:meth:`ControlLoop.deliver`, thread-safe); at
the start of each step the loop drains the inbox: a parsed set for the current window applies
now (``param_age`` restarts), an answer for an older window is discarded as ``stale``, a failed
parse keeps the last good set. Each outcome becomes one ``type: "llm"`` record in the log, with
the sim time and step at which it applied.

Real-time mode never waits for the LLM. ``llm_blocking`` mode (``--fast``: tests, CI) pauses the
loop at each instruction until its outcome is delivered, so that the answer applies at the very
step the instruction was issued and runs are deterministic; the pause is excluded from
``exec_time`` and recorded as ``llm_wait`` (and ``llm_blocking: true`` in the summary).

Timing model -- the simulated car feels the controller's latency. Time is counted in control
periods (*ticks*); a step starts at a tick, reads the state there and computes its command. A
command applies from the start of the period in which it became ready: on time (ready within the
step's own period) it drives that period, as in any discrete controller. A late command (ready
after ``j`` further ticks) leaves the car holding the command in force (the previous one) for
those ``j`` periods, exactly as a vehicle's actuators hold their last command, and then drives one
period. The next step starts at the first tick that has not passed yet; the periods in between
are *dropped* (no step of their own) and the car keeps the command in force through them. So
``steps + dropped steps`` equals the run's periods, in real time sim time equals wall time since
the start to within a period, and a slow controller makes the closed-loop result worse, as on the car.

In real time the lateness is the wall clock since the step's tick (MPC solve, simulator step,
anything else the step spent); the loop sleeps to the next tick and never catches up with a burst
of late steps. ``realtime=False`` (``--fast``: tests, CI) runs as fast as it can and, by default,
gives every step exactly one period (deterministic; overruns of the measured ``exec_time`` are
still counted, but not felt); ``LoopConfig.step_cost`` declares a per-step compute time instead,
and the car then feels that latency as above -- deterministically. ``exec_time`` is the wall time
of the control step itself (MPC solve + simulator steps).

Telemetry never stops the loop: :class:`~edge_runtime.telemetry.writer.JsonlWriter` catches the
disk's errors (full, failing, read-only) and counts the records it could not write, so on a
vehicle the controller keeps driving when its log cannot be written.
"""

from __future__ import annotations

import math
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..control.mpc import FrenetMPC
from ..control.params import MPCParams
from ..sim.protocol import ControlCommand, Simulator, VehicleState
from ..telemetry.memory import process_memory
from ..telemetry.stats import latency_summary
from ..telemetry.writer import JsonlWriter
from .scenario import WindowTrace

if TYPE_CHECKING:
    from .llm_worker import LLMOutcome, LLMWorker
    from .scenario import Scenario


@dataclass(frozen=True)
class LoopConfig:
    rate_hz: float = 20.0
    duration: float = 30.0  # s of simulated time (0 < duration)
    realtime: bool = True
    warmup_steps: int = 20  # excluded from the latency summaries, and stated there
    memory_every: int = 20  # sample RSS every N steps (a psutil call per step would cost control time)
    # Fast mode only: the seconds of the car's time each control step is taken to cost (None: none,
    # every step lasts one period). Reproduces a slow controller's effect on the car deterministically.
    step_cost: float | None = None

    def __post_init__(self) -> None:
        if not 1.0 <= self.rate_hz <= 1000.0:
            raise ValueError(f"LoopConfig.rate_hz must be in [1, 1000], got {self.rate_hz}")
        if not (self.duration > 0 and math.isfinite(self.duration)):
            raise ValueError(f"LoopConfig.duration must be a positive number of seconds, got {self.duration}")
        if self.warmup_steps < 0 or self.memory_every < 1:
            raise ValueError("LoopConfig: warmup_steps >= 0 and memory_every >= 1 required")
        if self.step_cost is not None:
            if not (self.step_cost >= 0 and math.isfinite(self.step_cost)):
                raise ValueError(f"LoopConfig.step_cost must be a finite number of seconds >= 0, got {self.step_cost}")
            if self.realtime:
                raise ValueError("LoopConfig.step_cost needs realtime=False: a real-time loop's step costs "
                                 "what the wall clock says")

    @property
    def period(self) -> float:
        return 1.0 / self.rate_hz

    @property
    def periods(self) -> int:
        """The run's length in control periods."""
        return int(round(self.duration * self.rate_hz))


#: What the car holds before the controller's first command: wheels straight, no acceleration.
NEUTRAL = ControlCommand(steer=0.0, accel=0.0)


def periods_spanned(seconds: float, period: float) -> int:
    """How many periods a step that ends ``seconds`` after its tick occupies (at least one; a step
    that ends exactly on the next tick is on time)."""
    return max(1, math.ceil(seconds / period - 1e-9))


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
        self.held_time = 0.0  # sim seconds the car held a previous command because a step was late
        self.in_force: ControlCommand = NEUTRAL  # the command the car holds now
        self.steps = 0
        self.peak_rss = 0
        # Backends with telemetry of their own (CARLA: frame id, server time, tick wall time) add it to
        # every control record; the record's other fields stay as they are.
        self._sim_telemetry = getattr(sim, "telemetry", None)
        self.last_state: VehicleState = sim.state()
        self.sim_time = self.last_state.t  # read by other threads (a float assignment is atomic)
        # LLM (see attach_llm)
        self.worker: LLMWorker | None = None
        self.scenario: Scenario | None = None
        self.llm_blocking = False
        self._inbox: list[LLMOutcome] = []
        self._inbox_cond = threading.Condition()
        self._delivered: set[int] = set()
        self._window = -1  # index of the current instruction window (-1: none yet)
        self._params_call: int | None = None  # LLM call whose set is in use (None: initial set)
        self.windows: list[WindowTrace] = []
        self.llm_status: dict[str, int] = {}  # outcome status -> count
        self.window_llm: dict[int, str] = {}  # window -> what its LLM call did (status or failure reason)
        self.llm_wait = 0.0

    def set_params(self, params: MPCParams) -> None:
        """Thread-safe: the new set applies at the next control step."""
        with self._lock:
            self._pending = params

    def attach_llm(self, worker: LLMWorker, scenario: Scenario, blocking: bool) -> None:
        """Follow ``scenario`` with ``worker`` (bound here to this loop's inbox and sim clock; start
        it afterwards); ``blocking``: wait for each instruction's answer -- fast mode only, because a
        real-time loop that waited would have to invent a deadline policy for the pause."""
        if blocking and self.config.realtime:
            raise ValueError("ControlLoop.attach_llm: blocking=True needs LoopConfig(realtime=False) "
                             "(a real-time loop never waits for the LLM)")
        self.worker, self.scenario, self.llm_blocking = worker, scenario, bool(blocking)
        worker.bind(self.deliver, lambda: self.sim_time)

    def deliver(self, outcome: LLMOutcome) -> None:
        """Thread-safe inbox of the worker's outcomes; acted on at the next control step."""
        with self._inbox_cond:
            self._inbox.append(outcome)
            self._delivered.add(outcome.request.call)
            self._inbox_cond.notify_all()

    def _wait_for(self, call: int, stop: threading.Event | None) -> float:
        """Blocking mode: wait until request ``call`` has an outcome (or stop / a dead worker)."""
        t0 = time.perf_counter()
        with self._inbox_cond:
            while call not in self._delivered:
                if (stop is not None and stop.is_set()) or self.worker is None or not self.worker.alive:
                    break
                self._inbox_cond.wait(0.05)
        return time.perf_counter() - t0

    def _issue_due(self, k: int, state: VehicleState, stop: threading.Event | None) -> float:
        """Submit every script instruction whose time has come; returns the seconds waited."""
        waited = 0.0
        entries = self.scenario.entries
        while self._window + 1 < len(entries) and entries[self._window + 1].t <= state.t + 1e-9:
            self._window += 1
            entry = entries[self._window]
            snapshot = self.sim.snapshot() if hasattr(self.sim, "snapshot") else None
            self.windows.append(WindowTrace.start(self._window, entry.instruction, entry.t, k, state, snapshot))
            request = self.worker.submit(self._window, entry.instruction, state.t)
            if self.llm_blocking:
                waited += self._wait_for(request.call, stop)
        return waited

    def _act_on_outcomes(self, k: int, state: VehicleState) -> list[dict[str, Any]]:
        """Drain the inbox: apply, discard or count each outcome; returns their log records."""
        with self._inbox_cond:
            outcomes, self._inbox = self._inbox, []
        records = []
        for o in outcomes:
            applied_t = applied_step = None
            if o.status == "answered":
                if o.request.window == self._window:
                    self.mpc.set_params(o.params)
                    self._params_since = state.t
                    self._params_call = o.request.call
                    status, applied_t, applied_step = "applied", state.t, k
                else:
                    status = "stale"
            else:
                status = o.status
            self._count(o, status)
            records.append(o.record(status, applied_t, applied_step, self.mpc.params))
        return records

    def _count(self, outcome: LLMOutcome, status: str) -> None:
        self.llm_status[status] = self.llm_status.get(status, 0) + 1
        self.window_llm[outcome.request.window] = outcome.failure or status

    def finish_llm(self) -> None:
        """After the run (and after the worker stopped): log outcomes that arrived too late."""
        with self._inbox_cond:
            outcomes, self._inbox = self._inbox, []
        for o in outcomes:
            status = "unapplied" if o.status == "answered" else o.status
            self._count(o, status)
            if self.log is not None:
                self.log.write(o.record(status, None, None, self.mpc.params))

    def run(self, stop: threading.Event | None = None) -> VehicleState:
        """Drive for ``config.duration`` of sim time (see the module docstring for the timing model)."""
        cfg = self.config
        period, n_periods = cfg.period, cfg.periods
        state = self.sim.state()
        tick = 0  # the period the next step starts at
        origin = time.perf_counter()  # wall time of tick 0 (real time)
        k = 0
        while tick < n_periods:
            if stop is not None and stop.is_set():
                break
            tick_wall = origin + tick * period
            remaining = n_periods - tick
            t_before = state.t
            llm_records: list[dict[str, Any]] = []
            waited = 0.0
            if self.worker is not None:
                waited = self._issue_due(k, state, stop)  # > 0 only when blocking, i.e. not real time
                self.llm_wait += waited
            t0 = time.perf_counter()
            with self._lock:
                pending, self._pending = self._pending, None
            if pending is not None:
                self.mpc.set_params(pending)
                self._params_since = state.t
                self._params_call = None
            if self.worker is not None:
                llm_records = self._act_on_outcomes(k, state)
            result = self.mpc.step(state)
            # Periods that ended before the command was ready: the car holds the command in force.
            late = time.perf_counter() - tick_wall if cfg.realtime else (cfg.step_cost or 0.0)
            held = min(periods_spanned(late, period) - 1, remaining)
            if held:
                state = self.sim.step(self.in_force, held * period)
            if held < remaining:
                state = self.sim.step(result.command, period)
                self.in_force = result.command
            exec_time = time.perf_counter() - t0
            # Ticks the step used up; the car keeps the command in force through any it skipped.
            if cfg.realtime:
                spanned = periods_spanned(time.perf_counter() - tick_wall, period)
            else:
                spanned = periods_spanned(cfg.step_cost, period) if cfg.step_cost is not None else 1
            spanned = min(max(spanned, held + 1), remaining)
            extra = spanned - min(held + 1, remaining)
            if extra > 0:
                state = self.sim.step(self.in_force, extra * period)
            overrun = spanned > 1 if (cfg.realtime or cfg.step_cost is not None) else exec_time > period
            dropped_now = spanned - 1
            tick += spanned
            if cfg.realtime:
                delay = origin + tick * period - time.perf_counter()
                if delay > 0:
                    time.sleep(delay)
            self.steps += 1
            self.overruns += int(overrun)
            self.dropped += dropped_now
            self.held_time += held * period
            self.exec_times.append(exec_time)
            self.solve_times.append(result.solve_time)
            self.sim_time = state.t
            if self.windows:
                self.windows[-1].add(state, spanned)
            record = {
                "type": "control", "step": k, "sim_time": state.t, "wall_time": time.time(),
                "exec_time": exec_time, "overrun": overrun, "dropped": dropped_now,
                "sim_advance": state.t - t_before, "held": held * period,
                "param_age": state.t - self._params_since, "param_call": self._params_call,
                "window": self._window if self._window >= 0 else None,
                "mpc_ok": result.ok, "mpc_status": result.status,
                "mpc_solve_time": result.solve_time, "steer": result.command.steer, "accel": result.command.accel,
                "s": state.s, "d": state.d, "v": state.v, "ax": state.ax, "ay": state.ay, "crashed": state.crashed,
            }
            if self.worker is not None:
                record["llm_wait"] = waited
            if self._sim_telemetry is not None:
                record.update(self._sim_telemetry())
            if k % cfg.memory_every == 0:
                rss, peak = process_memory()
                self.peak_rss = max(self.peak_rss, peak)
                record.update(rss=rss, peak_rss=peak)
            if self.log is not None:
                for llm_record in llm_records:
                    self.log.write(llm_record)
                self.log.write(record)
            self.last_state = state
            k += 1
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
            "overruns": self.overruns, "dropped_steps": self.dropped, "held_time": self.held_time,
            "step_cost": self.config.step_cost, "mpc_failures": self.mpc.failures,
            "crashed": state.crashed, "laps": state.progress / self.sim.track.length,
            "rss": rss, "peak_rss": max(peak, self.peak_rss),
            "llm_blocking": self.llm_blocking if self.worker is not None else None,
        }
