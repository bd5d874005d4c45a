"""The control loop's timing model: a late controller is felt by the simulated car.

A step whose command is late leaves the car holding the command in force for the periods that
passed; skipped periods are counted as dropped; sim time keeps wall time. Deterministic in fast
mode through ``LoopConfig.step_cost``; real-time tests use an injected slow MPC and a hanging LLM
(generous margins: they must not flake on a loaded machine).
"""

from __future__ import annotations

import json
import math
import threading
import time
from typing import ClassVar

import pytest

from edge_runtime.control.mpc import FrenetMPC, MPCConfig
from edge_runtime.control.params import DEFAULT_PARAMS
from edge_runtime.decoding.step_api import GenerationResult
from edge_runtime.runtime.control_loop import NEUTRAL, ControlLoop, LoopConfig, periods_spanned
from edge_runtime.runtime.llm_worker import LLMWorker
from edge_runtime.runtime.scenario import Scenario, ScriptEntry, score_windows
from edge_runtime.sim import TrackSimConfig, TrackSimulator, make_simulator
from edge_runtime.tasks.instructions import classify_instruction

RATE = 20
PERIOD = 1.0 / RATE
TRACK = "oval"


class MemoryLog:
    def __init__(self) -> None:
        self.records: list[dict] = []

    def write(self, record: dict) -> None:
        self.records.append(record)

    def control(self) -> list[dict]:
        return [r for r in self.records if r["type"] == "control"]


class RecordingSim(TrackSimulator):
    """The track simulator, remembering every (command, duration) the loop asked it to hold."""

    def __init__(self, track: str = TRACK) -> None:
        super().__init__(TrackSimConfig(track=track))
        self.calls: list[tuple] = []

    def step(self, command, duration):
        self.calls.append((command, round(duration / PERIOD)))
        return super().step(command, duration)


class SlowMPC(FrenetMPC):
    """FrenetMPC that sleeps ``delay`` s before every ``every``-th solve (a slow controller)."""

    def __init__(self, *args, delay: float, every: int = 1, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.delay, self.every, self.calls = delay, every, 0

    def step(self, state):
        if self.calls % self.every == 0:
            time.sleep(self.delay)
        self.calls += 1
        return super().step(state)


def run_loop(config: LoopConfig, sim=None, mpc_cls=FrenetMPC, **mpc_kwargs) -> tuple[ControlLoop, MemoryLog]:
    sim = sim if sim is not None else make_simulator("track", track=TRACK)
    log = MemoryLog()
    mpc = mpc_cls(sim.track, DEFAULT_PARAMS, MPCConfig(rate_hz=config.rate_hz), **mpc_kwargs)
    loop = ControlLoop(sim, mpc, config, log)
    loop.run()
    return loop, log


def rms(values) -> float:
    return math.sqrt(sum(v * v for v in values) / len(values))


# ------------------------------------------------------------------------------ config
def test_step_cost_is_validated():
    with pytest.raises(ValueError, match="step_cost.*realtime=False"):
        LoopConfig(step_cost=0.1)  # real time measures the wall clock instead
    for bad in (-0.01, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="step_cost"):
            LoopConfig(realtime=False, step_cost=bad)
    assert LoopConfig(realtime=False, step_cost=0.0).step_cost == 0.0


def test_periods_spanned():
    assert [periods_spanned(x, 0.05) for x in (0.0, 0.01, 0.05, 0.0500001, 0.1, 0.12)] == [1, 1, 1, 2, 2, 3]


# ----------------------------------------------------------------- fast mode: declared cost
def test_on_time_fast_run_is_one_period_per_step():
    loop, log = run_loop(LoopConfig(rate_hz=RATE, duration=2.0, realtime=False, step_cost=0.05))
    control = log.control()
    assert loop.steps == 40 and loop.dropped == 0 and loop.overruns == 0 and loop.held_time == 0.0
    assert all(r["sim_advance"] == pytest.approx(PERIOD) and r["held"] == 0.0 for r in control)
    assert [r["sim_time"] for r in control] == pytest.approx([(k + 1) * PERIOD for k in range(40)])


def test_late_command_holds_the_previous_one_then_applies():
    """cost 0.12 s = 2.4 periods: each step's command is ready in its third period, so the car
    holds the command in force for two periods, then the new one drives one period."""
    sim = RecordingSim()
    loop, log = run_loop(LoopConfig(rate_hz=RATE, duration=3.0, realtime=False, step_cost=0.12), sim=sim)
    control = log.control()
    commands = [(r["steer"], r["accel"]) for r in control]
    expected = [(NEUTRAL, 2)]
    for k, (steer, accel) in enumerate(commands):
        expected.append(((steer, accel), 1))
        if k + 1 < len(commands):
            expected.append(((steer, accel), 2))  # held while step k+1 computes
    got = [((c.steer, c.accel) if c is not NEUTRAL else NEUTRAL, n) for c, n in sim.calls]
    assert got == expected
    assert loop.steps == len(control) == 20 and loop.dropped == 40 and loop.overruns == 20
    assert loop.steps + loop.dropped == loop.config.periods  # every period is a step or dropped
    assert all(r["dropped"] == 2 and r["overrun"] and r["held"] == pytest.approx(2 * PERIOD) for r in control)
    assert all(r["sim_advance"] == pytest.approx(3 * PERIOD) for r in control)
    assert loop.summary()["sim_time"] == pytest.approx(3.0) and loop.summary()["held_time"] == pytest.approx(2.0)


def test_a_slow_controller_makes_the_closed_loop_worse():
    """Same track, same parameters: only the controller's cost differs. One period and a fifth of
    latency degrades the tracking; two and a half periods lose the car."""
    config = dict(rate_hz=RATE, duration=8.0, realtime=False)
    on_time, a = run_loop(LoopConfig(**config))
    late, b = run_loop(LoopConfig(**config, step_cost=0.06))
    very_late, _ = run_loop(LoopConfig(**config, step_cost=0.12))
    assert on_time.dropped == 0 and late.dropped == 40 * 2 and late.steps == 80
    assert late.last_state.t == pytest.approx(on_time.last_state.t) == pytest.approx(8.0)
    assert rms([r["d"] for r in b.control()]) > 1.1 * rms([r["d"] for r in a.control()])
    assert max(abs(r["d"]) for r in b.control()) > 1.3 * max(abs(r["d"]) for r in a.control())
    assert not on_time.last_state.crashed and very_late.last_state.crashed


def test_a_late_run_is_scored_over_its_whole_sim_time():
    """Window baselines re-simulate the window's periods (not its fewer steps) with an on-time
    default controller: with the default set itself, the late run's improvement is negative."""
    sim = make_simulator("track", track=TRACK)
    loop = ControlLoop(sim, FrenetMPC(sim.track, DEFAULT_PARAMS, MPCConfig(rate_hz=RATE)),
                       LoopConfig(rate_hz=RATE, duration=4.0, realtime=False, step_cost=0.06))
    scenario = Scenario((ScriptEntry(0.0, classify_instruction("Drive on the centre line."), "test:1"),), "test")
    worker = LLMWorker(FixedGenerator(answer=f"<answer>{json.dumps(DEFAULT_PARAMS.to_dict())}</answer>"))
    loop.attach_llm(worker, scenario, blocking=True)
    worker.start()
    loop.run()
    assert worker.stop(5)
    window = loop.windows[0]
    assert loop.llm_status == {"applied": 1} and len(window) == 40 and window.periods == 80
    row = score_windows(loop.windows, lambda: make_simulator("track", track=TRACK), MPCConfig(rate_hz=RATE),
                        PERIOD)[0]
    assert row["t_end"] == pytest.approx(4.0) and row["improvement"] < 0


# -------------------------------------------------------------------------- real time
@pytest.mark.slow
def test_realtime_slow_controller_is_felt_and_sim_time_keeps_wall_time():
    """Every third MPC solve sleeps 1.6 periods: those steps overrun, the periods they skip are
    dropped, the car holds its command meanwhile (its trajectory leaves the on-time one) and sim
    time stays with the wall clock."""
    duration = 3.0
    periods = int(duration * RATE)
    _, on_time = run_loop(LoopConfig(rate_hz=RATE, duration=duration, realtime=False))
    wall0 = time.time()
    loop, log = run_loop(LoopConfig(rate_hz=RATE, duration=duration, realtime=True, warmup_steps=0),
                         mpc_cls=SlowMPC, delay=1.6 * PERIOD, every=3)
    wall = time.time() - wall0
    control = log.control()
    slow_steps = (loop.steps + 2) // 3
    assert not loop.last_state.crashed
    assert loop.steps + loop.dropped == periods and loop.last_state.t == pytest.approx(duration)
    assert loop.overruns >= slow_steps and loop.dropped >= slow_steps
    assert sum(r["dropped"] for r in control) == loop.dropped and sum(r["overrun"] for r in control) == loop.overruns
    assert all(r["sim_advance"] == pytest.approx((r["dropped"] + 1) * PERIOD) for r in control)
    assert all(r["held"] >= PERIOD - 1e-9 for r in control[::3])  # a slow solve's command came late
    # sim time keeps wall time: each record is written at (or just after) its sim time's tick
    lag = [(r["wall_time"] - wall0) - r["sim_time"] for r in control]
    assert max(abs(x) for x in lag) < 0.25, lag
    assert duration - 0.1 < wall < duration + 1.0
    # the car felt it: at the same sim time it is somewhere else than the on-time car
    by_time = {round(r["sim_time"] / PERIOD): r for r in on_time.control()}
    gaps = [abs(r["s"] - by_time[round(r["sim_time"] / PERIOD)]["s"]) +
            abs(r["d"] - by_time[round(r["sim_time"] / PERIOD)]["d"]) for r in control]
    assert max(gaps) > 0.01


class FixedGenerator:
    """Answers every instruction with one valid set; ``gate`` (an Event) blocks generations until set."""

    generation: ClassVar[dict] = {"eos_id": 0, "max_new_tokens": {"mpc": 50, "decision": 8}}
    path = "fake.onnx"
    ANSWER = '<answer>{"qv": 10, "v_min": 0.5, "v_max": 2}</answer>'

    def __init__(self, gate: threading.Event | None = None, answer: str = ANSWER) -> None:
        self.gate, self.answer = gate, answer
        self.started: list[float] = []

    def generate(self, prompt: str, max_new_tokens: int) -> GenerationResult:
        self.started.append(time.time())
        if self.gate is not None:
            self.gate.wait(30)
        return GenerationResult(text=self.answer, token_ids=(1, 2, 3), prompt_tokens=10, emitted_tokens=3,
                                time_to_first_token_s=0.001, decode_times_s=(0.001, 0.001), total_s=0.003,
                                stopped_at_eos=True)


@pytest.mark.slow
def test_realtime_loop_keeps_its_rate_while_the_llm_hangs():
    """The first answer hangs for 2 s: the loop keeps stepping at its rate on the initial set,
    whose age grows; the answer arrives after the next instruction was issued, so it is
    discarded as stale; the next instruction's answer then applies and the age restarts."""
    gate = threading.Event()
    sim = make_simulator("track", track=TRACK)
    loop = ControlLoop(sim, FrenetMPC(sim.track, DEFAULT_PARAMS, MPCConfig(rate_hz=RATE)),
                       LoopConfig(rate_hz=RATE, duration=3.0, realtime=True, warmup_steps=0), MemoryLog())
    scenario = Scenario((ScriptEntry(0.0, classify_instruction("Drive at 2 m/s."), "test:1"),
                         ScriptEntry(1.0, classify_instruction("Drive smoothly."), "test:2")), "test")
    worker = LLMWorker(FixedGenerator(gate))
    loop.attach_llm(worker, scenario, blocking=False)
    worker.start()
    release = threading.Timer(2.0, gate.set)
    release.start()
    try:
        loop.run()
    finally:
        gate.set()
        release.cancel()
    assert worker.stop(5)
    loop.finish_llm()
    control = loop.log.control()
    llm = [r for r in loop.log.records if r["type"] == "llm"]
    # the loop kept its rate: never waited, (almost) every period had its step
    assert loop.steps + loop.dropped == 60 and loop.steps >= 45
    assert all(r["llm_wait"] == 0.0 for r in control)
    # the initial set aged with sim time while the LLM hung
    before = [r for r in control if r["param_call"] is None]
    assert [r["param_age"] for r in before] == pytest.approx([r["sim_time"] for r in before])
    assert before[-1]["param_age"] >= 1.9
    # the hung answer was for window 0; window 1 was current by then: stale, never applied
    assert [(r["call"], r["status"]) for r in llm] == [(0, "stale"), (1, "applied")]
    assert llm[0]["applied_sim_time"] is None and llm[0]["params_in_use"] == DEFAULT_PARAMS.to_dict()
    k = llm[1]["applied_step"]
    assert llm[1]["applied_sim_time"] >= 1.9 and control[k]["param_call"] == 1
    assert control[k]["param_age"] == pytest.approx(control[k]["sim_advance"])
    assert loop.mpc.params.v_max == 2.0 and loop.llm_status == {"stale": 1, "applied": 1}
