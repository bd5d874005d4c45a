"""Constrained vs unconstrained decoding of an exported model on the validation prompts, in one run.

    python bench/constrained_decode.py [--model models/tiny/dense.onnx] [--repeats 3] [--threads 1] [--json out.json]

For every validation MPC instruction and a validation decision set (``--decision-examples`` per
instruction, validation track), both modes answer greedily with the evaluation's token budgets,
back to back on each prompt (the order alternating between repeats, so that a busy machine's
load drifts hit both alike); each prompt's time is its median over repeats. Reported per task: time
per answer, graph runs (forward passes) per answer, tokens emitted / forced by the grammar, parse
failures, and how many answers are identical in both modes (the mask only changes a greedy
answer where the model's own token was not allowed).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path
from typing import Any

from edge_runtime.decoding.generator import OnnxGenerator
from edge_runtime.sim.tracks import VALIDATION_TRACK
from edge_runtime.tasks.answers import parse_decision_answer, parse_mpc_answer
from edge_runtime.tasks.decision import generate_decision_dataset
from edge_runtime.tasks.instructions import instruction_set
from edge_runtime.tasks.prompts import build_decision_prompt, build_mpc_prompt

REPO = Path(__file__).resolve().parents[1]
BUDGET = {"mpc": 200, "decision": 48}  # edge_runtime.evaluation.report's budgets


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=str(REPO / "models" / "tiny" / "dense.onnx"))
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--decision-examples", type=int, default=4, help="per decision instruction (even)")
    ap.add_argument("--json", metavar="OUT", default=None)
    args = ap.parse_args(argv)
    gen = OnnxGenerator(args.model, threads=args.threads)
    prompts = {
        "mpc": [build_mpc_prompt(i.text) for i in instruction_set("validation")],
        "decision": [build_decision_prompt(ex.history, ex.phrasing) for ex in generate_decision_dataset(
            n_per_instruction=args.decision_examples, split="validation", seed=12345, track=VALIDATION_TRACK)],
    }
    parse = {"mpc": parse_mpc_answer, "decision": parse_decision_answer}
    for task, ps in prompts.items():  # warm-up: arenas, and the grammar's mask caches
        for p in ps[:3]:
            gen.generate(p, BUDGET[task])
            gen.generate(p, BUDGET[task], constrained=True)
    times: dict[tuple[str, bool], list[list[float]]] = {}
    last: dict[tuple[str, bool], list] = {}
    t0 = time.perf_counter()
    for rep in range(args.repeats):
        for task, ps in prompts.items():
            results: dict[bool, list] = {False: [], True: []}
            for p in ps:  # both modes back to back on every prompt, the order alternating by repeat
                for constrained in ((False, True) if rep % 2 == 0 else (True, False)):
                    results[constrained].append(gen.generate(p, BUDGET[task], constrained=constrained))
            for constrained, rs in results.items():
                times.setdefault((task, constrained), []).append([r.total_s for r in rs])
                last[(task, constrained)] = rs
    wall = time.perf_counter() - t0
    out: dict[str, Any] = {"machine": {"cpus": os.cpu_count(), "processor": platform.processor(),
                                       "load_avg_end": os.getloadavg()[0]},
                           "settings": vars(args), "wall_s": wall, "tasks": {}}
    print(f"model {args.model}; ORT threads {args.threads}; {args.repeats} repeats (modes paired per prompt, medians); "
          f"{os.cpu_count()} CPUs, load avg {os.getloadavg()[0]:.2f}")
    print(f"{'task':9s} {'mode':13s} {'answers':>7s} {'ms/answer':>9s} {'runs/ans':>8s} {'tokens':>7s} {'forced':>7s} "
          f"{'ms/run':>7s} {'fail':>5s}")
    for task, task_prompts in prompts.items():
        row = {}
        for constrained in (False, True):
            rs = last[(task, constrained)]
            per_prompt = [statistics.median(col) for col in zip(*times[(task, constrained)])]
            ms = 1e3 * statistics.mean(per_prompt)
            runs = statistics.mean(r.forward_passes for r in rs)
            tokens = statistics.mean(r.emitted_tokens for r in rs)
            forced = statistics.mean(r.forced_tokens for r in rs)
            fails = sum(not parse[task](r.text).ok for r in rs)
            name = "constrained" if constrained else "unconstrained"
            row[name] = {"answers": len(rs), "ms_per_answer": ms, "forward_passes": runs, "emitted_tokens": tokens,
                         "forced_tokens": forced, "parse_failures": fails}
            print(f"{task:9s} {name:13s} {len(rs):7d} {ms:9.1f} {runs:8.1f} {tokens:7.1f} {forced:7.1f} "
                  f"{ms / runs:7.2f} {fails:5d}")
        same = sum(a.token_ids == b.token_ids for a, b in zip(last[(task, False)], last[(task, True)]))
        row["identical_answers"] = same
        row["speedup"] = row["unconstrained"]["ms_per_answer"] / row["constrained"]["ms_per_answer"]
        print(f"{task:9s} identical answers {same}/{len(task_prompts)}, constrained speed-up {row['speedup']:.2f}x")
        out["tasks"][task] = row
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2) + "\n")
    return out


if __name__ == "__main__":
    main()
