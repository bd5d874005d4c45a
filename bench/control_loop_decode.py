"""Does a continuously decoding LLM disturb the 20 Hz control loop? Baseline (no LLM) and with-LLM
phases side by side in one run, with the real runtime pieces.

    python bench/control_loop_decode.py [--model models/tiny/dense.onnx] [--duration 30] [--repeats 1]
                                        [--threads 1] [--constrained] [--json out.json]

Each phase runs the control loop (``runtime.control_loop.ControlLoop``: track simulator + OSQP
MPC, real-time pacing at ``--rate`` Hz) for ``--duration`` seconds of wall/sim time. In the
with-LLM phase an ``LLMWorker`` (``runtime.llm_worker``: prompt builder, ONNX Runtime generator,
answer parser) answers a stream of validation instructions back to back: each answer is applied to
the running loop with ``set_params`` (thread-safe, takes effect at the next step) and the next
instruction is submitted at once, so the LLM decodes for the whole phase. A car that crashes is
restarted on a fresh simulator + MPC (counted); the first ``--warmup`` steps of every segment
(cold MPC) are excluded from the statistics, and the exclusion is stated.

Reported per phase: control-step exec time p50/p90/p99/max, overruns (exec time > period) and
dropped periods, MPC solve p99; for the LLM: generations, parse failures, per-token decode
p50, answer latency p50, tokens/s. Ratios with-LLM / baseline. A third phase ("param replay",
``--no-replay`` skips it) applies the parameter sets the LLM phase produced at the same times,
without any LLM: it separates what the new parameters cost the MPC from what sharing the CPU
(and Python's GIL) with the decoder costs. Phases alternate when ``--repeats`` > 1; statistics
pool every repeat. The machine is whatever runs this: state its
cores and what else runs on it when quoting numbers.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import sys
import threading
import time
from pathlib import Path
from typing import Any

from edge_runtime.control.mpc import FrenetMPC, MPCConfig
from edge_runtime.control.params import DEFAULT_PARAMS
from edge_runtime.runtime.control_loop import ControlLoop, LoopConfig
from edge_runtime.decoding.generator import OnnxGenerator
from edge_runtime.runtime.llm_worker import LLMOutcome, LLMWorker, mpc_token_budget
from edge_runtime.sim import make_simulator
from edge_runtime.tasks.instructions import instruction_set
from edge_runtime.telemetry.stats import latency_summary

REPO = Path(__file__).resolve().parents[1]


class _Phase:
    """Control-loop statistics pooled over the segments (restarts after a crash) of a phase."""

    def __init__(self) -> None:
        self.exec_times: list[float] = []
        self.solve_times: list[float] = []
        self.steps = self.overruns = self.dropped = self.crashes = self.segments = self.excluded = 0
        self.mpc_failures = 0

    def add(self, loop: ControlLoop, warmup: int) -> None:
        self.segments += 1
        self.steps += loop.steps
        self.excluded += min(warmup, loop.steps)
        self.exec_times += loop.exec_times[warmup:]
        self.solve_times += loop.solve_times[warmup:]
        self.overruns += sum(t > loop.config.period for t in loop.exec_times[warmup:])
        self.dropped += loop.dropped
        self.mpc_failures += loop.mpc.failures
        self.crashes += int(loop.last_state.crashed)

    def summary(self) -> dict[str, Any]:
        return {"steps": self.steps, "segments": self.segments, "crashes": self.crashes,
                "warmup_excluded": self.excluded, "exec_time": latency_summary(self.exec_times),
                "mpc_solve_time": latency_summary(self.solve_times), "overruns": self.overruns,
                "dropped": self.dropped, "mpc_failures": self.mpc_failures}


def run_phase(args: argparse.Namespace, phase: _Phase, generator: OnnxGenerator | None,
              llm_stats: dict[str, Any] | None, replay: list[tuple[float, Any]] | None = None) -> None:
    """``args.duration`` seconds of control loop, with a continuously answering LLM if ``generator``
    (the parameter sets it applied and when are appended to ``llm_stats["applied_log"]``), or with
    ``replay``'s parameter sets applied at their times by a timer thread (no LLM)."""
    current: dict[str, ControlLoop | None] = {"loop": None}
    stopping = threading.Event()
    instructions = itertools.cycle(instruction_set("validation"))
    worker = None
    applied = [0]
    t_phase = time.perf_counter()
    applied_log: list[tuple[float, Any]] = []
    if generator is not None:
        def on_outcome(outcome: LLMOutcome) -> None:  # worker thread
            loop = current["loop"]
            if outcome.params is not None and loop is not None:
                loop.set_params(outcome.params)
                applied[0] += 1
                applied_log.append((time.perf_counter() - t_phase, outcome.params))
            if not stopping.is_set():
                worker.submit(outcome.request.call + 1, next(instructions), loop.sim_time if loop else 0.0)

        worker = LLMWorker(generator, on_outcome, max_new_tokens=mpc_token_budget(generator.generation))
        worker.warm_up()
        t_phase = time.perf_counter()
    replayer = None
    if replay:
        def replay_params() -> None:
            for offset, params in replay:
                if stopping.wait(max(0.0, t_phase + offset - time.perf_counter())):
                    return
                if current["loop"] is not None:
                    current["loop"].set_params(params)

        replayer = threading.Thread(target=replay_params, daemon=True)
    remaining = args.duration
    period = 1.0 / args.rate
    started = False
    while remaining >= period:
        sim = make_simulator("track", track=args.track)
        mpc = FrenetMPC(sim.track, DEFAULT_PARAMS, MPCConfig(horizon=args.horizon, rate_hz=args.rate))
        loop = ControlLoop(sim, mpc, LoopConfig(rate_hz=args.rate, duration=remaining, realtime=True,
                                                warmup_steps=args.warmup))
        current["loop"] = loop
        if not started:
            t_phase = time.perf_counter()
            if worker is not None:
                worker.start()
                worker.submit(0, next(instructions), 0.0)
            if replayer is not None:
                replayer.start()
            started = True
        loop.run()
        sim.close()
        phase.add(loop, args.warmup)
        remaining -= max(loop.steps, 1) * period
    stopping.set()
    if replayer is not None:
        replayer.join(5.0)
    if worker is not None:
        worker.stop(30.0)
        llm_stats.setdefault("applied_log", []).append(applied_log)
        s = worker.summary()
        llm_stats["generations"] = llm_stats.get("generations", 0) + s["generations"]
        llm_stats["applied"] = llm_stats.get("applied", 0) + applied[0]
        llm_stats["parse_failures"] = llm_stats.get("parse_failures", 0) + s["failure_count"]
        llm_stats.setdefault("decode_times", []).extend(worker.decode_times)
        llm_stats.setdefault("totals", []).extend(worker.totals)
        llm_stats["emitted_tokens"] = llm_stats.get("emitted_tokens", 0) + s["emitted_tokens"]
        llm_stats["forced_tokens"] = llm_stats.get("forced_tokens", 0) + s["forced_tokens"]
        llm_stats["busy_s"] = llm_stats.get("busy_s", 0.0) + float(sum(worker.totals))
        llm_stats["phase_s"] = llm_stats.get("phase_s", 0.0) + args.duration


def _ms(x: float) -> str:
    return f"{1e3 * x:8.2f}"


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=str(REPO / "models" / "tiny" / "dense.onnx"), help="exported ONNX decoder")
    ap.add_argument("--duration", type=float, default=30.0, help="seconds per phase and repeat")
    ap.add_argument("--repeats", type=int, default=1, help="baseline / with-LLM pairs, alternating")
    ap.add_argument("--rate", type=float, default=20.0, help="control rate, Hz")
    ap.add_argument("--horizon", type=int, default=20, help="MPC horizon")
    ap.add_argument("--track", default="oval")
    ap.add_argument("--threads", type=int, default=1, help="ONNX Runtime intra-op threads for the LLM")
    ap.add_argument("--constrained", action="store_true", help="grammar-constrained decoding in the LLM phase")
    ap.add_argument("--warmup", type=int, default=20, help="steps excluded at the start of every segment")
    ap.add_argument("--no-replay", action="store_true",
                    help="skip the third phase (the LLM phase's parameter sets replayed without the LLM)")
    ap.add_argument("--json", metavar="OUT", default=None)
    args = ap.parse_args(argv)
    if args.duration <= 1.0 or args.repeats < 1:
        ap.error("--duration must be > 1 s and --repeats >= 1")

    generator = OnnxGenerator(args.model, threads=args.threads, constrained=args.constrained)
    base, llm, churn = _Phase(), _Phase(), _Phase()
    llm_stats: dict[str, Any] = {}
    t_start = time.perf_counter()
    for _ in range(args.repeats):
        run_phase(args, base, None, None)
        run_phase(args, llm, generator, llm_stats)
        if not args.no_replay:
            run_phase(args, churn, None, None, replay=llm_stats["applied_log"][-1])
    wall = time.perf_counter() - t_start
    llm_stats.pop("applied_log", None)

    b, w, c = base.summary(), llm.summary(), churn.summary()
    dec = latency_summary(llm_stats.get("decode_times", []))
    tot = latency_summary(llm_stats.get("totals", []))
    tokens_per_s = llm_stats.get("emitted_tokens", 0) / max(llm_stats.get("busy_s", 0.0), 1e-9)
    ratios = {k: (w["exec_time"][k] / b["exec_time"][k] if b["exec_time"][k] else None)
              for k in ("p50", "p90", "p99", "max")}
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None

    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, load avg {load:.2f} "
          f"at the end; model {args.model}; ORT threads {args.threads}; constrained {args.constrained}")
    print(f"{args.rate:g} Hz, {args.duration:g} s per phase x {args.repeats}; first {args.warmup} steps of every "
          f"segment excluded; total {wall:.0f} s")
    print()
    print(f"{'phase':16s} {'steps':>6s} {'p50 ms':>8s} {'p90 ms':>8s} {'p99 ms':>8s} {'max ms':>8s} "
          f"{'overrun':>7s} {'dropped':>7s} {'MPC p99':>8s} {'crashes':>7s}")
    rows = [("baseline", b), ("with LLM", w)] + ([] if args.no_replay else [("param replay", c)])
    for name, s in rows:
        e = s["exec_time"]
        print(f"{name:16s} {s['steps']:6d} {_ms(e['p50'])} {_ms(e['p90'])} {_ms(e['p99'])} {_ms(e['max'])} "
              f"{s['overruns']:7d} {s['dropped']:7d} {_ms(s['mpc_solve_time']['p99'])} {s['crashes']:7d}")
    print(f"{'ratio LLM/base':16s} {'':6s} " + " ".join(f"{ratios[k]:8.2f}" if ratios[k] else f"{'-':>8s}"
                                                     for k in ("p50", "p90", "p99", "max")))
    if not args.no_replay:
        print(f"{'ratio replay/base':16s} {'':6s} " + " ".join(
            f"{c['exec_time'][k] / b['exec_time'][k]:8.2f}" for k in ("p50", "p90", "p99", "max")))
    print()
    print(f"LLM: {llm_stats.get('generations', 0)} answers ({llm_stats.get('applied', 0)} applied, "
          f"{llm_stats.get('parse_failures', 0)} parse failures), busy {llm_stats.get('busy_s', 0):.1f} of "
          f"{llm_stats.get('phase_s', 0):.0f} s; per-token decode p50 {_ms(dec['p50']).strip()} ms "
          f"p99 {_ms(dec['p99']).strip()} ms; answer p50 {_ms(tot['p50']).strip()} ms; "
          f"{tokens_per_s:.0f} tokens/s; tokens {llm_stats.get('emitted_tokens', 0)} "
          f"({llm_stats.get('forced_tokens', 0)} forced)")

    result = {
        "machine": {"cpus": os.cpu_count(), "processor": platform.processor(), "load_avg_end": load,
                    "python": sys.version.split()[0]},
        "settings": {k: getattr(args, k) for k in ("model", "duration", "repeats", "rate", "horizon", "track",
                                                   "threads", "constrained", "warmup")},
        "baseline": b, "with_llm": w, "param_replay": None if args.no_replay else c, "ratios_exec_time": ratios,
        "llm": {k: v for k, v in llm_stats.items() if k not in ("decode_times", "totals")}
        | {"decode_per_token": dec, "answer_total": tot, "tokens_per_s": tokens_per_s},
        "wall_s": wall,
    }
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main()
