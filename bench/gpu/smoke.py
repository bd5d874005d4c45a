"""Device call 1 of the SmolLM2 BPF job (bench/gpu/README.md): every code path of the job on the GPU,
on a randomly initialised model of SmolLM2-135M's exact shapes, and the step times the budget is
picked from.

    python bench/gpu/smoke.py --meta DIR_WITH_ARCH_SPEC_AND_TOKENIZER --work /tmp/smoke --timing OUT.json

Why random weights: the pretrained weights do not fit in one call's transfer (the job carries them in
two calls); the shapes, kernels, data pipeline, pruning, GRPO sampling and evaluation are the same.
A random model never writes a parseable answer, so GRPO's generation runs to max_new_tokens (an upper
bound of the real generation time) and its rewards need no rollouts: the rollout time is measured
separately, in this process, on real answers.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
TRAIN = [sys.executable, "-m", "edge_runtime.train.cli"]
EVAL = [sys.executable, "-m", "edge_runtime.evaluation.cli"]


def build_random(meta: Path, out: Path) -> None:
    from edge_runtime.contracts.arch_spec import ArchSpec
    from edge_runtime.model.build import build_model
    from edge_runtime.model.io import save_model

    spec = ArchSpec.load(meta / "arch_spec.json")
    extra = {p.name: p.read_text() for p in meta.iterdir() if p.name in ("chat_template.jinja", "chat_format.json")}
    save_model(build_model(spec, seed=0), out, spec, tokenizer_json=meta / "tokenizer.json", extra_files=extra)


def rollout_seconds(n: int = 8) -> float:
    from edge_runtime.train.grpo import TaskSampler
    from edge_runtime.train.rewards import LocalRewardPool

    sampler = TaskSampler(seed=0, decision_fraction=0.0)
    tasks = [sampler.mpc_task() for _ in range(n + 1)]
    answer = 'Reason: x\n<answer>{"qalpha": 52.5, "v_max": 2.15, "track_safety_margin": 0.786}</answer>'
    pool = LocalRewardPool(workers=0)
    pool.score([(tasks[0], answer)])  # the default-parameter baseline cache
    started = time.time()
    pool.score([(t, answer) for t in tasks[1:]])
    return (time.time() - started) / n


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--meta", type=Path, required=True)
    ap.add_argument("--work", type=Path, required=True)
    ap.add_argument("--timing", type=Path, required=True)
    ap.add_argument("--device", default="cuda")
    args = ap.parse_args()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    args.work.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    model = args.work / "random"
    build_random(args.meta, model)
    print(f"random model built in {time.time() - t0:.1f} s", flush=True)
    runs = {
        "sft": [*TRAIN, "sft", "--init-from", str(model), "--out", str(args.work / "sft"), "--steps", "6",
                "--batch-size", "4", "--lr", "1e-4", "--warmup", "2", "--mpc-examples", "40",
                "--decision-per-instruction", "4", "--eval-every", "0", "--resume-every", "3", "--device", args.device,
                "--threads", "1"],
        "bpf": [*TRAIN, "bpf", "--init-from", str(model), "--out", str(args.work / "bpf"), "--schedule", "sft-rl",
                "--ratio", "0.5", "--shares", "4", "--sft-shares", "2", "--sft-steps", "20", "--rl-steps", "4",
                "--batch-size", "4", "--sft-lr", "1e-4", "--mpc-examples", "60", "--decision-per-instruction", "8",
                "--round-to", "32", "--rl-lr", "1e-5", "--workers", "2", "--threads", "1", "--device", args.device],
        "drop": [*TRAIN, "drop-layers", "--init-from", str(model), "--out", str(args.work / "small"),
                 "--match-params", "84969792"],
    }
    procs = {k: (subprocess.Popen(c, env=env, stdout=open(args.work / f"{k}.log", "w"), stderr=subprocess.STDOUT),
                 time.time()) for k, c in runs.items()}
    timing: dict = {"rollout_s": rollout_seconds()}
    walls = {}
    for name, (proc, started) in procs.items():
        rc = proc.wait()
        walls[name] = time.time() - started
        print(f"{name}: rc {rc}, {walls[name]:.1f} s", flush=True)
        if rc != 0:
            print((args.work / f"{name}.log").read_text()[-3000:])
            return 1
    t1 = time.time()
    rc = subprocess.run([*EVAL, "--model", str(args.work / "bpf"), "--task", "both", "--split", "validation",
                         "--device", args.device, "--batch-size", "64", "--json", str(args.work / "eval.json")],
                        env=env, stdout=open(args.work / "eval.log", "w"), stderr=subprocess.STDOUT).returncode
    timing["eval_wall_s"] = time.time() - t1
    print(f"eval: rc {rc}, {timing['eval_wall_s']:.1f} s", flush=True)
    if rc != 0:
        print((args.work / "eval.log").read_text()[-3000:])
        return 1
    work = args.work / "bpf.training"
    sft = [json.loads(line) for line in (work / "sft" / "metrics.jsonl").read_text().splitlines()]
    rl = [json.loads(line) for line in (work / "rl" / "metrics.jsonl").read_text().splitlines()]
    steps = [b["elapsed_s"] - a["elapsed_s"] for a, b in zip(sft, sft[1:])]
    timing.update({
        "sft_step_s": statistics.median(steps),
        "rl_generation_s": statistics.median(r["generation_s"] for r in rl),
        "rl_update_s": statistics.median(r["update_s"] for r in rl),
        "bpf_wall_s": walls["bpf"],
        "process_overhead_s": walls["bpf"] - sft[-1]["elapsed_s"] - rl[-1]["elapsed_s"],
        "sft_wall_s": walls["sft"],
    })
    args.timing.write_text(json.dumps(timing, indent=1) + "\n")
    print(json.dumps(timing, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
