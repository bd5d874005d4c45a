"""How often the decision labels can be recomputed from the text of the decision prompt, per split.

    python bench/label_recovery.py [--per-instruction 40] [--seed 0] [--steps 0.3 0.2] [--out bench/results/label_recovery.md]

The decision prompt shows the 3 s history as a subsampled table in whole centimetres plus a summary
line (``edge_runtime.tasks.prompts``). A model can only learn the labelling rules if they can be
recomputed from that text. For every split this script generates a seeded decision set
(``generate_decision_dataset``, ``--per-instruction`` examples per instruction, the split's own
track), builds each prompt, reads the table back and applies the rules of
``edge_runtime.tasks.decision.LabelThresholds`` to it with the reader the prompt tests
use (``edge_runtime.tasks.history_reader``), and counts how often the
result equals the true label (computed on every recorded sample). Besides the prompt's own row
step (``HISTORY_STEP_S``) other ``--steps`` are measured by swapping the table in the same prompt,
with the prompt length in characters and, when ``models/tiny/dense/tokenizer.json`` exists, in tokens.
The MPC prompts of every split's instructions (no context) are measured the same way, since the
prompt module's brevity argument is about both. Deterministic in ``--seed``; no model runs.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import time
from pathlib import Path
from typing import Any

import numpy as np

from edge_runtime.tasks.decision import generate_decision_dataset
from edge_runtime.tasks.history_reader import rules_from_text
from edge_runtime.tasks.instructions import instruction_set
from edge_runtime.tasks.prompts import HISTORY_STEP_S, build_decision_prompt, build_mpc_prompt, history_text

REPO = Path(__file__).resolve().parents[1]

SPLITS = ("train", "validation", "test")
TOKENIZER = REPO / "models" / "tiny" / "dense" / "tokenizer.json"


def _prompt(ex: Any, step_s: float) -> str:
    prompt = build_decision_prompt(ex.history, ex.phrasing)
    if step_s == HISTORY_STEP_S:
        return prompt
    return prompt.replace(history_text(ex.history), history_text(ex.history, step_s=step_s), 1)


def measure(per_instruction: int, seed: int, steps: list[float]) -> dict[str, Any]:
    tok = None
    if TOKENIZER.is_file():
        from edge_runtime.model.tokenizer import load_tokenizer
        tok = load_tokenizer(TOKENIZER)
    rows = []
    for split in SPLITS:
        data = generate_decision_dataset(n_per_instruction=per_instruction, split=split, seed=seed)
        for step_s in steps:
            prompts = [_prompt(ex, step_s) for ex in data]
            agree = [rules_from_text(p, ex.instruction) == ex.label for p, ex in zip(prompts, data)]
            table_rows = len(history_text(data[0].history, step_s=step_s).split("\n")) - 4
            row = {"split": split, "step_s": step_s, "rows": table_rows, "examples": len(data),
                   "agree": int(np.sum(agree)), "agreement": float(np.mean(agree)),
                   "chars_min": min(map(len, prompts)), "chars_max": max(map(len, prompts))}
            if tok is not None:
                n_tok = [len(tok.encode(p).ids) for p in prompts]
                row.update(tokens_min=min(n_tok), tokens_max=max(n_tok))
            rows.append(row)
            print(f"{split:<10} step {step_s:g} s ({table_rows} rows): {row['agree']}/{len(data)} = "
                  f"{100 * row['agreement']:.1f} %, {row['chars_min']}-{row['chars_max']} chars"
                  + (f", {row['tokens_min']}-{row['tokens_max']} tokens" if tok is not None else ""), flush=True)
    mpc = []
    for split in SPLITS:
        prompts = [build_mpc_prompt(ins.text) for ins in instruction_set(split, seed=seed)]
        row = {"split": split, "prompts": len(prompts), "chars_min": min(map(len, prompts)),
               "chars_max": max(map(len, prompts))}
        if tok is not None:
            n_tok = [len(tok.encode(p).ids) for p in prompts]
            row.update(tokens_min=min(n_tok), tokens_max=max(n_tok))
        mpc.append(row)
        print(f"{split:<10} MPC prompts: {row['chars_min']}-{row['chars_max']} chars"
              + (f", {row['tokens_min']}-{row['tokens_max']} tokens" if tok is not None else ""), flush=True)
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True,
                                text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        commit = "unknown"
    return {"per_instruction": per_instruction, "seed": seed, "commit": commit,
            "tokenizer": str(TOKENIZER.relative_to(REPO)) if tok is not None else None,
            "python": platform.python_version(), "results": rows, "mpc_prompts": mpc}


def markdown(res: dict[str, Any]) -> str:
    has_tok = res["tokenizer"] is not None
    lines = [
        "# Decision labels recovered from the prompt text",
        "",
        "`python bench/label_recovery.py` (the method is in the script's docstring): the labelling rules",
        "of `edge_runtime.tasks.decision.LabelThresholds` applied to the history table of the decision",
        "prompt, read back from the text, against the true labels (computed on every recorded sample).",
        f"`tests/test_prompts.py` requires at least 97 % on every split. Last run: commit {res['commit']},",
        f"{res['per_instruction']} examples per instruction (8 instructions) per split, seed {res['seed']}"
        + (f", token counts with `{res['tokenizer']}`." if has_tok else "."),
        "",
        "| split | row step | rows | labels recovered | prompt chars" + (" | prompt tokens |" if has_tok else " |"),
        "|---|---|---|---|---" + ("|---|" if has_tok else "|"),
    ]
    for r in res["results"]:
        default = " (prompt)" if r["step_s"] == HISTORY_STEP_S else ""
        lines.append(f"| {r['split']} | {r['step_s']:g} s{default} | {r['rows']} | {r['agree']}/{r['examples']} "
                     f"({100 * r['agreement']:.1f} %) | {r['chars_min']}-{r['chars_max']}"
                     + (f" | {r['tokens_min']}-{r['tokens_max']} |" if has_tok else " |"))
    lines += ["", "Disagreements come from what the table leaves out: the rules see every recorded sample, the",
              "text only the rows shown, rounded to 1 cm (1 cm/s).", "",
              "## MPC prompt lengths", "",
              "Every instruction of the split, without context (`build_mpc_prompt(text)`):", "",
              "| split | prompts | chars" + (" | tokens |" if has_tok else " |"),
              "|---|---|---" + ("|---|" if has_tok else "|")]
    for r in res["mpc_prompts"]:
        lines.append(f"| {r['split']} | {r['prompts']} | {r['chars_min']}-{r['chars_max']}"
                     + (f" | {r['tokens_min']}-{r['tokens_max']} |" if has_tok else " |"))
    lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--per-instruction", type=int, default=40, help="examples per instruction and split (default 40)")
    ap.add_argument("--seed", type=int, default=0, help="dataset seed (default 0)")
    ap.add_argument("--steps", type=float, nargs="+", default=[HISTORY_STEP_S, 0.2],
                    help=f"row steps of the history table in s (default {HISTORY_STEP_S:g} 0.2)")
    ap.add_argument("--out", default=str(REPO / "bench" / "results" / "label_recovery.md"),
                    help="markdown result file (a .json file next to it holds the raw numbers)")
    args = ap.parse_args(argv)
    if args.per_instruction < 2 or args.per_instruction % 2:
        ap.error("--per-instruction must be even and at least 2 (half True, half False examples per instruction)")
    t0 = time.perf_counter()
    res = measure(args.per_instruction, args.seed, args.steps)
    out = Path(args.out)
    out.write_text(markdown(res), encoding="utf-8")
    out.with_suffix(".json").write_text(json.dumps(res, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {out} and {out.with_suffix('.json')} in {time.perf_counter() - t0:.0f} s")
    return res


if __name__ == "__main__":
    main()
