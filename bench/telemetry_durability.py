"""What the telemetry durability policy costs the control step, against the old buffered writer.

    python bench/telemetry_durability.py [--steps 1000] [--repeats 5] [--dir DIR] [--json out.json]

The control loop writes one record per step on the control thread, so the write call's time is
added to every step. Three policies write the same realistic control-step record:

* ``buffered, flush every 20`` -- the writer before the policy (a Python file buffer flushed every
  20 lines; up to 19 records lost on ``kill -9``), re-created here for the comparison;
* ``pwrite per record, fsync 1 s`` -- the policy (``JsonlWriter()``): one ``pwrite`` per record,
  nothing lost on ``kill -9``, a background fsync every second bounds a power loss;
* ``fsync every record`` -- ``JsonlWriter(fsync_interval=0)``: what full durability would cost.

Each repeat runs the three policies one after another, in a rotated order (interleaved, so that a
change in the machine's load hits all of them alike), each into a fresh file in ``--dir`` (default:
a temporary directory under the current one, i.e. the disk a run's ``--out`` would use). Reported:
the median over repeats of each policy's per-record median and p99 and the ratio to the old
writer's median. Results: ``bench/results/telemetry_durability.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

from edge_runtime.telemetry.writer import JsonlWriter, json_line

RECORD = {  # a control-step record as ControlLoop writes it (values of a typical step)
    "type": "control", "step": 1234, "sim_time": 61.7, "wall_time": 1.7e9, "exec_time": 0.00213,
    "overrun": False, "dropped": 0, "param_age": 12.35, "param_call": 3, "window": 2, "mpc_ok": True,
    "mpc_status": "solved", "mpc_solve_time": 0.00171, "steer": -0.0412, "accel": 0.318, "s": 812.4,
    "d": 0.0331, "v": 2.49, "ax": 0.12, "ay": 1.31, "crashed": False, "llm_wait": 0.0,
}


class BufferedFlushEvery:
    """The writer before the durability policy: buffered, flushed every ``flush_every`` lines."""

    def __init__(self, path: Path, flush_every: int = 20) -> None:
        self._f = open(path, "w", encoding="utf-8")
        self._every, self._pending = flush_every, 0

    def write(self, record: dict) -> None:
        self._f.write(json_line(record))
        self._pending += 1
        if self._pending >= self._every:
            self._f.flush()
            self._pending = 0

    def close(self) -> None:
        self._f.flush()
        os.fsync(self._f.fileno())
        self._f.close()


POLICIES = {
    "buffered, flush every 20 (old)": lambda p: BufferedFlushEvery(p),
    "pwrite per record, fsync 1 s (policy)": lambda p: JsonlWriter(p),
    "fsync every record": lambda p: JsonlWriter(p, fsync_interval=0),
}


def one_run(make, path: Path, steps: int) -> list[float]:
    writer = make(path)
    times = []
    for k in range(steps):
        record = {**RECORD, "step": k}
        t0 = time.perf_counter()
        writer.write(record)
        times.append(time.perf_counter() - t0)
    writer.close()
    path.unlink()
    return times


def quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def filesystem_of(path: Path) -> str:
    """The mount (type) holding ``path``, from /proc/mounts where it exists."""
    try:
        mounts = [line.split()[:3] for line in Path("/proc/mounts").read_text().splitlines()]
    except OSError:
        return "unknown"
    real = str(path.resolve())
    best = max((m for m in mounts if real == m[1] or real.startswith(m[1].rstrip("/") + "/")),
               key=lambda m: len(m[1]), default=None)
    return f"{best[2]} at {best[1]}" if best else "unknown"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Per-step cost of the telemetry durability policy.")
    p.add_argument("--steps", type=int, default=1000, help="records per policy per repeat (default: %(default)s)")
    p.add_argument("--repeats", type=int, default=5, help="interleaved repeats (default: %(default)s)")
    p.add_argument("--dir", default=None, help="directory for the files (default: a temporary one under the "
                                                 "current directory)")
    p.add_argument("--json", default=None, help="also write the results as JSON to this file (default: none)")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory(dir=args.dir or ".") as tmp:
        where = Path(tmp)
        names = list(POLICIES)
        per = {name: {"median": [], "p99": []} for name in names}
        for r in range(args.repeats):
            for name in names[r % len(names):] + names[:r % len(names)]:
                times = one_run(POLICIES[name], where / "log.jsonl", args.steps)
                per[name]["median"].append(statistics.median(times))
                per[name]["p99"].append(quantile(times, 0.99))
        fs = filesystem_of(where)
    old = statistics.median(per[names[0]]["median"])
    results = {name: {"median_us": 1e6 * statistics.median(v["median"]), "p99_us": 1e6 * statistics.median(v["p99"]),
                      "ratio_to_old": statistics.median(v["median"]) / old} for name, v in per.items()}
    print(f"{args.steps} records x {args.repeats} interleaved repeats, filesystem: {fs}, {os.cpu_count()} CPUs")
    print(f"{'policy':40s} {'median us':>10s} {'p99 us':>10s} {'x old':>7s}")
    for name, v in results.items():
        print(f"{name:40s} {v['median_us']:10.1f} {v['p99_us']:10.1f} {v['ratio_to_old']:7.2f}")
    if args.json:
        Path(args.json).write_text(json.dumps({"steps": args.steps, "repeats": args.repeats, "filesystem": fs,
                                               "python": sys.version.split()[0], "results": results}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
