"""``edge-run``: drive the car in a simulator with the MPC at a fixed rate and record telemetry.

    edge-run --sim track --track hairpin --params default --duration 30 --out runs/demo

Writes ``steps.jsonl`` (one JSON line per control step) and ``summary.json`` to ``--out`` and
prints the summary table. The parameter set is a JSON file (or ``default``); the LLM that chooses
parameter sets from instructions plugs into the same loop. Ctrl-C / SIGTERM stop the loop
cleanly: the log is flushed and the summary written. Errors print one line and exit 2.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
import time
from pathlib import Path

from ..control.mpc import FrenetMPC, MPCConfig
from ..control.params import DEFAULT_PARAMS, MPCParams, ParameterError
from ..sim import SimulatorUnavailableError, make_simulator, registered_simulators
from ..sim.track import TrackFormatError
from ..sim.tracks import TRAIN_TRACK
from ..telemetry.writer import JsonlWriter, write_json_atomic
from .control_loop import ControlLoop, LoopConfig


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="edge-run", description=__doc__.split("\n")[0])
    p.add_argument("--sim", default="track", help=f"simulator backend ({', '.join(registered_simulators())})")
    p.add_argument("--track", default=TRAIN_TRACK, help="built-in track name or CSV path (x, y, w_right, w_left)")
    p.add_argument("--params", default="default", help="MPC parameter JSON file, or 'default'")
    p.add_argument("--duration", type=float, default=30.0, help="simulated seconds to drive")
    p.add_argument("--rate", type=float, default=20.0, help="control rate, Hz")
    p.add_argument("--horizon", type=int, default=20, help="MPC horizon, steps")
    p.add_argument("--out", default="runs/latest", help="directory for steps.jsonl and summary.json")
    p.add_argument("--fast", action="store_true", help="do not pace to the wall clock (tests, CI)")
    return p


def _print_summary(summary: dict) -> None:
    ex, so = summary["exec_time"], summary["mpc_solve_time"]
    print(f"steps {summary['steps']} at {summary['rate_hz']:g} Hz ({'real time' if summary['realtime'] else 'fast'}), "
          f"sim {summary['sim_time']:.1f} s, laps {summary['laps']:.2f}, crashed {summary['crashed']}")
    print(f"{'ms':16s} {'p50':>8s} {'p90':>8s} {'p99':>8s} {'max':>8s}   (first {ex['warmup_excluded']} steps excluded)")
    for name, st in (("control step", ex), ("MPC solve", so)):
        print(f"{name:16s} " + " ".join(f"{1e3 * st[k]:8.3f}" for k in ("p50", "p90", "p99", "max")))
    print(f"overruns {summary['overruns']}  dropped {summary['dropped_steps']}  MPC failures {summary['mpc_failures']}  "
          f"RSS {summary['rss'] / 2**20:.1f} MiB (peak {summary['peak_rss'] / 2**20:.1f} MiB)")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        params = DEFAULT_PARAMS if args.params == "default" else MPCParams.from_json_file(args.params)
        loop_config = LoopConfig(rate_hz=args.rate, duration=args.duration, realtime=not args.fast)
        mpc_config = MPCConfig(horizon=args.horizon, rate_hz=args.rate)
        sim = make_simulator(args.sim, track=args.track)
    except (ParameterError, TrackFormatError, SimulatorUnavailableError, ValueError) as exc:
        print(f"edge-run: error: {exc}", file=sys.stderr)
        return 2
    out = Path(args.out)
    stop = threading.Event()

    def on_signal(signum, frame):  # noqa: ARG001 - signal handler signature
        stop.set()

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    started = time.time()
    log = JsonlWriter(out / "steps.jsonl")
    try:
        loop = ControlLoop(sim, FrenetMPC(sim.track, params, mpc_config), loop_config, log)
        loop.run(stop)
    finally:
        log.close()
        for s, handler in previous.items():
            signal.signal(s, handler)
        sim.close()
    summary = loop.summary()
    summary.update({"interrupted": stop.is_set(), "sim": args.sim, "track": args.track, "params": params.to_dict(),
                    "started": started, "log": str(out / "steps.jsonl"), "log_records": log.records})
    write_json_atomic(out / "summary.json", summary)
    _print_summary(summary)
    print(f"telemetry: {out / 'steps.jsonl'} ({log.records} records), summary: {out / 'summary.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
