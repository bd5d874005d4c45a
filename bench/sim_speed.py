"""Speed of the simulator, the MPC and one closed-loop lap evaluation, measured in one run.

    python bench/sim_speed.py [--repeats 5] [--json out.json]

Targets on a 2-core machine (closed-loop RL calls the lap evaluation thousands of times):
physics >= 20,000 steps/s, MPC solve p99 <= 5 ms at horizon 20, one lap evaluation <= 2 s.
Medians over repeats; the machine is shared, so compare ratios rather than absolute numbers.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import numpy as np

from edge_runtime.control import DEFAULT_PARAMS, FrenetMPC, MPCConfig
from edge_runtime.sim.protocol import ControlCommand
from edge_runtime.sim.track_sim import TrackSimConfig, TrackSimulator
from edge_runtime.tasks.closed_loop import EvalConfig, evaluate
from edge_runtime.contracts.task_enums import Category
from edge_runtime.tasks.instructions import Instruction

TARGETS = {"physics_steps_per_s": 20_000.0, "mpc_solve_p99_ms": 5.0, "lap_eval_s": 2.0}


def physics_steps_per_s(track: str, seconds: float = 20.0) -> float:
    """Simulator steps (Frenet tracking and collision checks included) under a centre-line MPC-free driver."""
    sim = TrackSimulator(TrackSimConfig(track=track, start_speed=1.5))
    n_control = int(seconds / 0.05)
    state = sim.state()
    t0 = time.perf_counter()
    for _ in range(n_control):
        # a proportional centre-line follower keeps the car on track without costing much time
        steer = -0.8 * state.d - 1.0 * state.heading_error + 0.33 * float(sim.track.curvature_at(state.s))
        state = sim.step(ControlCommand(steer=steer, accel=1.5 - state.v), 0.05)
    elapsed = time.perf_counter() - t0
    assert not state.crashed, "benchmark driver crashed"
    return n_control * round(0.05 / sim.physics_dt) / elapsed


def mpc_solve_times(track: str, seconds: float = 30.0, horizon: int = 20) -> tuple[np.ndarray, np.ndarray]:
    sim = TrackSimulator(TrackSimConfig(track=track))
    mpc = FrenetMPC(sim.track, DEFAULT_PARAMS, MPCConfig(horizon=horizon))
    state = sim.state()
    solve, step = [], []
    for _ in range(int(seconds * 20)):
        res = mpc.step(state)
        solve.append(res.solve_time)
        step.append(res.wall_time)
        state = sim.step(res.command, 0.05)
    return np.asarray(solve), np.asarray(step)


def lap_eval_seconds(track: str) -> tuple[float, float]:
    ins = Instruction("Drive on the centre line.", Category.CENTRELINE)
    cfg = EvalConfig(track=track, duration=60.0, max_laps=1.0)
    res = evaluate(DEFAULT_PARAMS, ins, cfg)  # baseline cached after the first call
    t0 = time.perf_counter()
    res = evaluate(DEFAULT_PARAMS, ins, cfg)
    return time.perf_counter() - t0, res.sim_time


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--json", help="also write the results as JSON")
    args = parser.parse_args()
    results: dict[str, dict] = {}
    for track in ("oval", "hairpin"):
        phys, lap, lap_sim, solves, steps = [], [], [], [], []
        for _ in range(args.repeats):  # interleave the measurements so drift hits all of them alike
            phys.append(physics_steps_per_s(track))
            s, w = mpc_solve_times(track)
            solves.append(s)
            steps.append(w)
            wall, sim_t = lap_eval_seconds(track)
            lap.append(wall)
            lap_sim.append(sim_t)
        solve = np.concatenate(solves) * 1e3
        step = np.concatenate(steps) * 1e3
        results[track] = {
            "physics_steps_per_s": statistics.median(phys),
            "mpc_solve_p50_ms": float(np.percentile(solve, 50)),
            "mpc_solve_p99_ms": float(np.percentile(solve, 99)),
            "mpc_solve_max_ms": float(solve.max()),
            "mpc_step_p50_ms": float(np.percentile(step, 50)),
            "mpc_step_p99_ms": float(np.percentile(step, 99)),
            "lap_eval_s": statistics.median(lap),
            "lap_sim_time_s": statistics.median(lap_sim),
        }
    print(f"{'metric':24s} {'oval':>10s} {'hairpin':>10s}   target")
    for key in results["oval"]:
        target = ""
        if key in TARGETS:
            worst = min(r[key] for r in results.values()) if key == "physics_steps_per_s" else max(
                r[key] for r in results.values())
            ok = worst >= TARGETS[key] if key == "physics_steps_per_s" else worst <= TARGETS[key]
            target = f"{'>=' if key == 'physics_steps_per_s' else '<='} {TARGETS[key]:g}  {'ok' if ok else 'MISSED'}"
        print(f"{key:24s} {results['oval'][key]:10.3f} {results['hairpin'][key]:10.3f}   {target}")
    print("mpc_solve: OSQP's own solve time; mpc_step: the whole control step (linearisation, updates, solve).")
    print(f"lap_eval_s: wall time of one closed-loop lap evaluation (simulated lap time in lap_sim_time_s); "
          f"median of {args.repeats} repeats.")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
