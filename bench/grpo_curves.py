"""GRPO training curves of BPF runs: reward and parse-failure rate per step, with the prunes marked.

    python bench/grpo_curves.py --run BPF-RL=runs/rl50/metrics.jsonl --run ptp+GRPO=runs/ptprl50/metrics.jsonl.gz \
        --out bench/results/bpf/smollm2/rl/grpo_curves.png

Each ``--run NAME=FILE`` is the ``metrics.jsonl`` (plain or gzipped) that ``edge-train bpf`` writes: one
row per optimiser step, the GRPO phase's rows with ``"phase": "rl"``, a prune recorded in the row of
the step after whose update it happened (so it acts from the next step's rollouts on). Writes the PNG and prints, per run, the mean reward and parse-failure rate
of each window between prunes (Markdown), because a final evaluation says *that* a pruned model
failed and these windows say *when* during training it did: which prune the GRPO steps after it
did not recover from.
"""

from __future__ import annotations

import argparse
import gzip
import json
import sys
from pathlib import Path
from typing import Any


class CurveError(Exception):
    """Bad input: one line for the user."""


def load_rl_rows(path: Path) -> list[dict[str, Any]]:
    """The GRPO rows of one metrics file, in step order."""
    if not path.is_file():
        raise CurveError(f"{path}: missing (give the metrics.jsonl[.gz] edge-train bpf wrote)")
    opener = gzip.open if path.suffix == ".gz" else open
    rows = []
    try:
        with opener(path, "rt") as fh:
            for line in fh:
                if line.strip():
                    row = json.loads(line)
                    if row.get("phase") == "rl":
                        rows.append(row)
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CurveError(f"{path}: not a metrics.jsonl ({exc})") from None
    missing = [r.get("step") for r in rows if not {"step", "reward_mean", "parse_failure_rate"} <= r.keys()]
    if missing:
        raise CurveError(f"{path}: GRPO rows without step, reward_mean or parse_failure_rate (steps {missing[:3]})")
    if not rows:
        raise CurveError(f"{path}: no GRPO rows (\"phase\": \"rl\"); was the run's RL phase empty?")
    return sorted(rows, key=lambda r: r["step"])


def windows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Consecutive steps split where a prune happened: a prune recorded in step k's row happened after
    that step's update, so the window it opens starts at step k + 1."""
    out: list[dict[str, Any]] = []
    pending = None
    for r in rows:
        if not out or pending is not None:
            out.append({"first": r["step"], "prune": pending, "rows": []})
            pending = None
        out[-1]["rows"].append(r)
        if "prune" in r:
            pending = r["prune"].get("target")
    for w in out:
        rs = w.pop("rows")
        w.update(last=rs[-1]["step"], steps=len(rs),
                 reward_mean=sum(r["reward_mean"] for r in rs) / len(rs),
                 parse_failure_rate=sum(r["parse_failure_rate"] for r in rs) / len(rs))
    return out


def markdown(runs: dict[str, list[dict[str, Any]]]) -> str:
    lines = ["| run | steps | pruned just before, to | mean reward | mean parse-failure rate |", "|---|---|---|---|---|"]
    for name, rows in runs.items():
        for w in windows(rows):
            pruned = "—" if w["prune"] is None else f"{w['prune']:.3f} of the prunable parameters"
            lines.append(f"| {name} | {w['first']}–{w['last']} | {pruned} | {w['reward_mean']:+.2f} | "
                         f"{w['parse_failure_rate']:.2f} |")
    return "\n".join(lines) + "\n"


def plot(runs: dict[str, list[dict[str, Any]]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (top, bottom) = plt.subplots(2, 1, figsize=(7.5, 5.5), sharex=True)
    for k, (name, rows) in enumerate(runs.items()):
        steps = [r["step"] for r in rows]
        top.plot(steps, [r["reward_mean"] for r in rows], marker=".", color=f"C{k}", label=name)
        bottom.plot(steps, [r["parse_failure_rate"] for r in rows], marker=".", color=f"C{k}", label=name)
        for r in rows:
            if "prune" in r:
                for ax in (top, bottom):
                    ax.axvline(r["step"] + 0.5, color=f"C{k}", ls="--", lw=0.8, alpha=0.7)
    top.set_ylabel("mean reward per step")
    bottom.set_ylabel("parse-failure rate")
    bottom.set_xlabel("GRPO step (dashed: a prune between two steps)")
    top.legend(fontsize=8)
    for ax in (top, bottom):
        ax.grid(alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--run", action="append", required=True, metavar="NAME=FILE",
                   help="a run's name and its metrics.jsonl[.gz] (repeatable)")
    p.add_argument("--out", required=True, help="the PNG to write")
    args = p.parse_args(argv)
    try:
        runs: dict[str, list[dict[str, Any]]] = {}
        for item in args.run:
            name, sep, file = item.partition("=")
            if not sep or not name or not file:
                raise CurveError(f"--run {item!r}: expected NAME=FILE")
            runs[name] = load_rl_rows(Path(file))
    except CurveError as exc:
        print(f"grpo_curves: error: {exc}", file=sys.stderr)
        return 2
    plot(runs, Path(args.out))
    print(markdown(runs), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
