"""The SmolLM2 BPF comparison as one parallel job: every run of ``bench/reproduce_bpf.py`` (same commands,
same directories) plus the dense and smaller-dense SFT stages, as a dependency graph of processes on one
machine, under a wall-clock deadline.

    python bench/reproduce_bpf_parallel.py --base runs/smollm2/smollm2-135m --out runs/bpf-smollm2 \
        --device cuda --deadline-s 480 --sft-steps 200 --rl-steps 40

Why a runner of its own: on SmolLM2 a run is minutes on a GPU but a GPU is lent for minutes, not
hours, so the runs that do not depend on each other must share the machine (one GPU, many cores for
the closed-loop rewards), and whatever the deadline leaves unfinished must be left out of the report,
not half-reported. ``bench/reproduce_bpf.py --report-only`` then writes the report from ``--out``.

The graph (each node a process; ``models/NAME`` and ``eval/NAME-SPLIT-TRACK.json`` as in reproduce_bpf):

- ``dense-sft``: the shipped dense model's recipe (``models/dense/reproduce.sh``: SFT stage 1, then
  stage 2) from ``--base``; every method starts from it.
- ``small-dense-sft``: the same recipe from ``--base`` with whole layers dropped to the parameter count
  of the dense model pruned to 50 % (``edge-train drop-layers``): the smaller dense model of the same
  family, since no smaller pretrained SmolLM2 is available offline.
- per seed and ratio: ``bpf-rl``, ``bpf-sft-rl``, ``sft-prune`` from ``dense-sft``; ``dense`` (same budget,
  no pruning) and ``small-dense`` from their SFT models; ``ptp`` and ``ptp-rl`` from that seed's ``dense``.
- an evaluation of every model on ``--report-split`` (test), and of the dense models and the main ratio's
  pruned models also on ``--select-split`` (validation, where the shipped model is chosen), on the GPU.

Runs start in ``--priority`` order as their inputs exist, at most ``--max-parallel`` at once. No run
starts after ``--last-start-s``; at ``--deadline-s`` every process still running is stopped (its
directory is left incomplete and is not reported). Finished outputs are reused when the job is run
again (it resumes). ``status.json`` in ``--out`` lists each node's command, state and wall time.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import reproduce_bpf as rb  # noqa: E402  (same commands and directory layout as the sequential script)

#: The dense model's SFT recipe (models/dense/reproduce.sh), as (steps, flags) per stage; without its resume
#: state (weights + optimizer, 1.6 GB per write): the job runs within one device call.
DENSE_SFT_STAGES = (
    (300, ["--batch-size", "4", "--lr", "1e-4", "--warmup", "20", "--mpc-examples", "700",
           "--decision-per-instruction", "64", "--synonym-rate", "0.3", "--distractor-fraction", "0.1",
           "--insertion-rate", "0.3", "--history-augment", "0.5", "--eval-every", "0", "--resume-every", "0",
           "--seed", "0"]),
    (500, ["--batch-size", "4", "--lr", "5e-5", "--warmup", "10", "--mpc-examples", "600",
           "--decision-per-instruction", "176", "--synonym-rate", "0.3", "--distractor-fraction", "0.1",
           "--insertion-rate", "0.3", "--history-augment", "0.5", "--eval-every", "0", "--resume-every", "0",
           "--seed", "1"]),
)
METHOD_RANK = {"dense": 0, "bpf-sft-rl": 1, "sft-prune": 2, "bpf-rl": 3, "ptp": 4, "ptp-rl": 5, "small-dense": 6}


@dataclass
class Node:
    name: str
    cmd: list[str]
    done: Path  # the file whose existence means "finished"
    deps: list[str]
    priority: tuple
    log: Path
    tmp_json: Path | None = None  # evaluations write here and are renamed to ``done`` on success
    state: str = "waiting"  # waiting | running | done | failed | stopped | not started
    proc: subprocess.Popen | None = field(default=None, repr=False)
    log_fh: object = field(default=None, repr=False)  # the open log file while the process runs
    started: float | None = None
    wall_s: float | None = None
    rc: int | None = None

    def record(self) -> dict:
        return {"name": self.name, "state": self.state, "wall_s": self.wall_s, "rc": self.rc,
                "command": shlex.join(self.cmd), "deps": self.deps, "log": str(self.log)}


def plan(args) -> list[Node]:
    out = Path(args.out)
    models, logs = out / "models", out / "logs"
    nodes: list[Node] = []
    tracks = {split: rb.split_track(split) for split in (args.report_split, args.select_split)}

    def add(name, cmd, done, deps, priority, tmp_json=None):
        nodes.append(Node(name, cmd, done, deps, priority, logs / f"{name}.log", tmp_json))

    def evaluations(model_name: str, model_dir: Path, priority: tuple, select: bool = True) -> None:
        """The report split for every model; the selection split for the candidates (and the dense reference)."""
        for split in dict.fromkeys([args.report_split, *([args.select_split] if select else [])]):
            path = rb.eval_path(model_dir, out, split, tracks[split])
            tmp = path.with_name(path.stem + ".partial.json")
            add(f"eval-{model_name}-{split}",
                [*rb.EDGE_EVAL, "--model", str(model_dir), "--task", "both", "--split", split, "--device",
                 args.device, "--batch-size", str(args.eval_batch_size), "--json", str(tmp)],
                path, [model_name], (priority[0], -1, *priority[1:]), tmp)

    def sft_chain(prefix: str, init: Path, extra_deps: list[str], priority: int) -> Path:
        prev, deps = init, list(extra_deps)
        for stage, (steps, flags) in enumerate(DENSE_SFT_STAGES, 1):
            steps = args.dense_steps[stage - 1] if args.dense_steps else steps
            name = prefix if stage == len(DENSE_SFT_STAGES) else f"{prefix}{stage}"
            target = models / name
            add(name, [*rb.EDGE_TRAIN, "sft", "--init-from", str(prev), "--out", str(target), "--steps", str(steps),
                       *flags, "--device", args.device, "--threads", str(args.threads)],
                target / "train_summary.json", deps, (priority, stage))
            prev, deps = target, [name]
        return prev

    dense_sft = sft_chain("dense-sft", Path(args.base), [], 0)
    evaluations("dense-sft", dense_sft, (1,))
    small_base = models / "small-dense-base"
    add("small-dense-base", [*rb.EDGE_TRAIN, "drop-layers", "--init-from", str(args.base), "--out", str(small_base),
                             "--match-params", str(small_parameter_target(Path(args.base), args))],
        small_base / "arch_spec.json", [], (0, 0))  # save_model renames a finished directory into place
    small_sft = sft_chain("small-dense-sft", small_base, ["small-dense-base"], 1)
    ref = dense_sft / "arch_spec.json"
    bpf_args = argparse.Namespace(shares=args.shares, sft_steps=args.sft_steps, rl_steps=args.rl_steps,
                                  workers=args.workers, threads=args.threads,
                                  extra=[*args.extra, "--device", args.device])
    for seed in args.seeds:
        first_seed = seed == args.seeds[0]
        for ratio in args.ratios:
            tag = int(round(ratio * 100))
            if not first_seed and tag not in args.extra_seed_ratios:
                continue
            main_ratio = ratio == args.ratios[0]
            for method in ("bpf-sft-rl", "sft-prune", "bpf-rl"):
                name = f"{method}-{tag}"
                target, cmd = rb.bpf_command(name, rb.SCHEDULE_OF[method], dense_sft, ratio, seed, bpf_args, out, ref)
                pri = (2 + seed * 2 + (0 if main_ratio else 3), METHOD_RANK[method])
                add(f"{name}-s{seed}", cmd, target / "train_summary.json", ["dense-sft"], pri)
                evaluations(f"{name}-s{seed}", target, pri, select=main_ratio)
        dense_target, cmd = rb.bpf_command("dense", "none", dense_sft, 0.0, seed, bpf_args, out, ref)
        add(f"dense-s{seed}", cmd, dense_target / "train_summary.json", ["dense-sft"], (2 + seed * 2, -1))
        evaluations(f"dense-s{seed}", dense_target, (2 + seed * 2, -1))
        small_target, cmd = rb.bpf_command("small-dense", "none", small_sft, 0.0, seed, bpf_args, out,
                                           small_sft / "arch_spec.json")
        add(f"small-dense-s{seed}", cmd, small_target / "train_summary.json", ["small-dense-sft"],
            (2 + seed * 2, METHOD_RANK["small-dense"]))
        evaluations(f"small-dense-s{seed}", small_target, (2 + seed * 2, METHOD_RANK["small-dense"]), select=False)
        for ratio in args.ratios:
            tag = int(round(ratio * 100))
            if not first_seed and tag not in args.extra_seed_ratios:
                continue
            main_ratio = ratio == args.ratios[0]
            for method in ("ptp", "ptp-rl"):
                name = f"{method}-{tag}"
                target, cmd = rb.bpf_command(name, rb.SCHEDULE_OF[method], dense_target, ratio, seed, bpf_args, out,
                                             ref)
                pri = (3 + seed * 2 + (0 if main_ratio else 3), METHOD_RANK[method])
                add(f"{name}-s{seed}", cmd, target / "train_summary.json", [f"dense-s{seed}"], pri)
                evaluations(f"{name}-s{seed}", target, pri, select=main_ratio)
    return nodes


def small_parameter_target(base: Path, args) -> int:
    """The whole-model parameter count of ``base`` pruned to the first ``--ratios`` ratio, by the planner's
    definition of prunable parameters (first and last layers kept dense, as ``edge-train bpf`` defaults)."""
    from edge_runtime.contracts.arch_spec import ArchSpec
    from edge_runtime.prune.config import PruneConfig, prunable_parameters

    spec = ArchSpec.load(base / "arch_spec.json")
    return int(round(spec.num_parameters() - args.ratios[0] * prunable_parameters(spec, PruneConfig())))


def _stop(node: Node, state: str) -> None:
    if node.proc is not None and node.proc.poll() is None:
        try:
            os.killpg(node.proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    node.state = state


def run_graph(nodes: list[Node], *, max_parallel: int, last_start_s: float, deadline_s: float,
              env: dict[str, str], poll_s: float = 0.5, log=print) -> None:
    by_name = {n.name: n for n in nodes}
    for n in nodes:
        missing = [d for d in n.deps if d not in by_name]
        if missing:
            raise ValueError(f"{n.name}: depends on unknown node(s) {missing}")
        if n.done.exists():
            n.state = "done"
    started = time.time()
    while True:
        now = time.time() - started
        for n in nodes:
            if n.state == "running" and n.proc.poll() is not None:
                n.rc, n.wall_s = n.proc.returncode, time.time() - n.started
                n.log_fh.close()
                if n.rc == 0 and n.tmp_json is not None and n.tmp_json.exists():
                    os.replace(n.tmp_json, n.done)
                n.state = "done" if n.rc == 0 and n.done.exists() else "failed"
                log(f"[{now:6.0f} s] {n.state:6s} {n.name} ({n.wall_s:.0f} s)")
                if n.state == "failed":
                    log("    " + "\n    ".join(n.log.read_text(errors="replace").splitlines()[-5:]))
        for n in nodes:  # a node whose input failed can never run
            if n.state == "waiting" and any(by_name[d].state in ("failed", "stopped", "not started") for d in n.deps):
                n.state = "not started"
        running = [n for n in nodes if n.state == "running"]
        if now >= deadline_s:
            for n in running:
                _stop(n, "stopped")
                log(f"[{now:6.0f} s] stopped {n.name} at the deadline")
            break
        ready = sorted((n for n in nodes if n.state == "waiting" and all(by_name[d].state == "done" for d in n.deps)
                        and (now < last_start_s or n.tmp_json is not None)),  # too late to train; evaluations
                       key=lambda n: n.priority)                                # may start until the deadline
        for n in ready[: max(0, max_parallel - len(running))]:
            n.log.parent.mkdir(parents=True, exist_ok=True)
            n.log_fh = open(n.log, "w", encoding="utf-8")
            n.proc = subprocess.Popen(n.cmd, stdout=n.log_fh, stderr=subprocess.STDOUT, env=env, start_new_session=True)
            n.state, n.started = "running", time.time()
            log(f"[{now:6.0f} s] start  {n.name}")
        if not running and not ready:
            break
        time.sleep(poll_s)
    for n in nodes:
        if n.state == "waiting":
            n.state = "not started"
    time.sleep(2)
    for n in nodes:
        if n.proc is not None and n.proc.poll() is None:
            os.killpg(n.proc.pid, signal.SIGKILL)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--base", required=True, help="the pretrained model directory (edge-train import-gguf)")
    ap.add_argument("--out", required=True, help="the comparison's directory (models/, eval/, logs/)")
    ap.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    ap.add_argument("--ratios", type=float, nargs="+", default=[0.5, 0.25],
                    help="first: the main ratio (its runs first; the smaller dense model matches it)")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--extra-seed-ratios", type=int, nargs="*", default=[50],
                    help="ratios (percent) that get the seeds after the first (default: %(default)s)")
    ap.add_argument("--sft-steps", type=int, default=200, help="SFT continuation of every method")
    ap.add_argument("--rl-steps", type=int, default=40, help="GRPO steps of every method")
    ap.add_argument("--shares", type=int, default=4)
    ap.add_argument("--dense-steps", type=int, nargs=2, help="override the dense recipe's two SFT stages (tests)")
    ap.add_argument("--report-split", default="test", choices=["validation", "test"],
                    help="evaluated for every model: the split the comparison reports (default: %(default)s)")
    ap.add_argument("--select-split", default="validation", choices=["validation", "test"],
                    help="also evaluated for the dense models and the main ratio's pruned models: the split the "
                         "shipped model is chosen on (default: %(default)s)")
    ap.add_argument("--workers", type=int, default=2, help="reward worker processes per run")
    ap.add_argument("--threads", type=int, default=1, help="torch threads per process")
    ap.add_argument("--eval-batch-size", type=int, default=64)
    ap.add_argument("--max-parallel", type=int, default=10)
    ap.add_argument("--last-start-s", type=float, default=float("inf"), help="no training starts after this")
    ap.add_argument("--deadline-s", type=float, default=float("inf"), help="every process is stopped at this")
    ap.add_argument("--dry-run", action="store_true", help="print the graph and exit")
    ap.add_argument("--extra", nargs=argparse.REMAINDER, default=[], help="more edge-train bpf flags (last)")
    args = ap.parse_args(argv)
    nodes = plan(args)
    if args.dry_run:
        for n in sorted(nodes, key=lambda n: n.priority):
            print(f"{n.priority} {n.name} <- {n.deps}\n    {shlex.join(n.cmd)}")
        return 0
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": str(args.threads), "PYTHONUNBUFFERED": "1"}
    started = time.time()
    try:
        run_graph(nodes, max_parallel=args.max_parallel, last_start_s=args.last_start_s,
                  deadline_s=args.deadline_s, env=env, log=lambda m: print(m, flush=True))
    finally:
        status = {"command": "python bench/reproduce_bpf_parallel.py " + shlex.join(sys.argv[1:] if argv is None
                                                                                     else argv),
                  "wall_s": time.time() - started, "nodes": [n.record() for n in nodes]}
        (out / "status.json").write_text(json.dumps(status, indent=1) + "\n")
    counts = {}
    for n in nodes:
        counts[n.state] = counts.get(n.state, 0) + 1
    print(f"finished in {time.time() - started:.0f} s: " + ", ".join(f"{v} {k}" for k, v in sorted(counts.items())))
    return 0


if __name__ == "__main__":
    sys.exit(main())
