"""The SFT-continuation and GRPO budget of the device job, from the step times that call 1 measured.

    python bench/gpu/pick_budget.py TIMING.json --deadline-s 470 [--workers 2 --parallel-slowdown 1.6]

Prints ``SFT_STEPS RL_STEPS``: the largest GRPO budget of a fixed ladder (SFT continuation = 5x) whose
critical path (dense SFT -> dense GRPO -> post-training prune + GRPO -> evaluation), slowed down by the
other runs sharing the machine, ends before the deadline. The budget is the same for every method; it is
chosen by time, never by a score.
"""

from __future__ import annotations

import argparse
import json
import sys

LADDER = (80, 60, 50, 40, 30, 20)
DENSE_SFT_STEPS = 800  # models/dense/reproduce.sh: 300 + 500
MPC_COMPLETIONS_PER_STEP = 18  # 4 prompts x 6 completions, 3/4 of them MPC answers with a rollout


def critical_path_s(t: dict, rl_steps: int, workers: int) -> float:
    sft_steps = 5 * rl_steps
    rl_step = t["rl_generation_s"] + t["rl_update_s"] + MPC_COMPLETIONS_PER_STEP * t["rollout_s"] / max(1, workers)
    run = t["process_overhead_s"] + sft_steps * t["sft_step_s"] + rl_steps * rl_step
    dense_sft = 2 * t["process_overhead_s"] + DENSE_SFT_STEPS * t["sft_step_s"]
    return dense_sft + 2 * run + t["eval_wall_s"]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("timing")
    ap.add_argument("--deadline-s", type=float, required=True)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--parallel-slowdown", type=float, default=1.6)
    args = ap.parse_args(argv)
    t = json.loads(open(args.timing).read())
    for rl in LADDER:
        est = critical_path_s(t, rl, args.workers) * args.parallel_slowdown
        print(f"GRPO {rl} steps: critical path ~{est:.0f} s", file=sys.stderr)
        if est <= args.deadline_s:
            break
    print(5 * rl, rl)
    return 0


if __name__ == "__main__":
    sys.exit(main())
