"""Reproduce the BPF comparison on our own models: every method at every ratio, trained on this
machine, scored on the phrasings and the track of one evaluation split (``--split``: validation
while developing, test for the numbers that are reported; docs/evaluation.md), in one report.

    python bench/reproduce_bpf.py --dense models/tiny/dense --small-dense runs/small-dense-sft \
        --ratios 0.25 0.5 --seeds 0 --sft-steps 300 --rl-steps 100 --out bench/results/bpf

Methods (see ``edge_runtime.train.bpf``; all start from the same trained dense SFT model and get the
same SFT-continuation + GRPO budget, except where the method says otherwise):

- ``dense``        no pruning (the reference every ratio is measured against)
- ``bpf-rl``       pruning in equal shares during GRPO
- ``bpf-sft-rl``   the first shares during the SFT continuation, the rest during GRPO
- ``sft-prune``    all shares during the SFT continuation, then GRPO (SFT-stage pruning)
- ``ptp``          the trained ``dense`` result pruned once, no recovery
- ``ptp-rl``       the same, then GRPO recovery (an extra RL budget, as in the paper)
- ``small-dense``  a smaller dense model of the same family (``--small-dense``: an SFT-trained
                   directory with the dense model's SFT budget) given the same continuation budget

Every run is an ``edge-train bpf`` command (printed and stored), every score an ``edge-eval``
report; finished runs and evaluations are reused, so an interrupted report resumes. Output:
``report.json``, ``report.md`` and ``score_vs_params.png`` in ``--out``.

Trade-off metric (the paper's): removed parameters per lost percentage point of control
adaptability on the split, relative to ``dense``; BPF-SFT/RL against ``small-dense`` at the closest size. When a
method loses nothing (or gains) the metric is unbounded and reported as such, not as a number.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from edge_runtime.sim.tracks import split_track  # noqa: E402

# The tools as modules of this interpreter: works where the package is installed and where it is only
# on PYTHONPATH (the GPU machine runs the parallel runner from a bare checkout).
EDGE_TRAIN = [sys.executable, "-m", "edge_runtime.train.cli"]
EDGE_EVAL = [sys.executable, "-m", "edge_runtime.evaluation.cli"]
METHODS_PER_RATIO = ("bpf-rl", "bpf-sft-rl", "sft-prune", "ptp", "ptp-rl")
THREADS = 1
SCHEDULE_OF = {"bpf-rl": "rl", "bpf-sft-rl": "sft-rl", "sft-prune": "sft", "ptp": "ptp", "ptp-rl": "ptp-rl"}


def run(cmd: list[str], log: Path) -> None:
    print("$ " + shlex.join(cmd), flush=True)
    started = time.time()
    with open(log, "w", encoding="utf-8") as fh:
        proc = subprocess.run(cmd, stdout=fh, stderr=subprocess.STDOUT, env={**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": str(THREADS)})
    if proc.returncode != 0:
        tail = log.read_text()[-2000:]
        raise SystemExit(f"command failed ({proc.returncode}) after {time.time() - started:.0f} s; log {log}:\n{tail}")
    print(f"  done in {time.time() - started:.0f} s", flush=True)


def train(name: str, schedule: str, init: Path, ratio: float, seed: int, args, out_root: Path,
          reference_spec: Path) -> Path | None:
    out, cmd = bpf_command(name, schedule, init, ratio, seed, args, out_root, reference_spec)
    if args.report_only:
        return out if (out / "train_summary.json").exists() else None
    if not claim(out):
        return out
    try:
        run(cmd, out_root / "logs" / f"{name}-s{seed}.log")
    finally:
        out.with_name(out.name + ".lock").unlink(missing_ok=True)
    return out


def bpf_command(name: str, schedule: str, init: Path, ratio: float, seed: int, args, out_root: Path,
                reference_spec: Path) -> tuple[Path, list[str]]:
    """Where run ``name`` (seed ``seed``) of the comparison lives and the ``edge-train bpf`` command that
    makes it: one definition for this script and for ``bench/reproduce_bpf_parallel.py``, so that a
    report made from the parallel runner's output describes the runs this script would have made."""
    out = out_root / "models" / f"{name}-s{seed}"
    cmd = [*EDGE_TRAIN, "bpf", "--init-from", str(init), "--out", str(out), "--schedule", schedule,
           "--ratio", str(ratio), "--shares", str(args.shares), "--sft-shares", str(args.shares // 2),
           "--sft-steps", str(args.sft_steps), "--rl-steps", str(args.rl_steps), "--seed", str(seed),
           "--reference-spec", str(reference_spec), "--workers", str(args.workers), "--threads", str(args.threads),
           *args.extra]
    return out, cmd


def claim(out: Path) -> bool:
    """True when this process should produce ``out``; False when it exists (reused) or another
    report process is producing it (then wait for it), so several report processes can share the
    work of one report on a multi-core machine."""
    summary, lock = out / "train_summary.json", out.with_name(out.name + ".lock")
    while True:
        if summary.exists():
            print(f"reusing {out}")
            return False
        try:
            lock.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            os.write(fd, str(os.getpid()).encode())
            os.close(fd)
            return True
        except FileExistsError:
            time.sleep(10)  # another process trains it; its lock goes when it finishes (or fails)


def eval_path(model: Path, out_root: Path, split: str, track: str) -> Path:
    """Where the ``edge-eval --json`` report of ``model`` on ``split`` / ``track`` is kept (and reused)."""
    return out_root / "eval" / f"{model.name}-{split}-{track}.json"


def evaluate(model: Path, out_root: Path, split: str, track: str) -> dict:
    path = eval_path(model, out_root, split, track)
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{path.stem}.{os.getpid()}.tmp")
        cmd = [*EDGE_EVAL, "--model", str(model), "--task", "both", "--split", split, "--track", track,
               "--json", str(tmp)]
        run(cmd, out_root / "logs" / f"eval-{model.name}-{split}.{os.getpid()}.log")
        os.replace(tmp, path)
    return json.loads(path.read_text())


def row(method: str, ratio: float, seed: int, model: Path, reports: dict[str, dict], split: str) -> dict:
    summary = json.loads((model / "train_summary.json").read_text()) if (model / "train_summary.json").exists() else {}
    held = reports[split]
    out = {"method": method, "ratio": ratio, "seed": seed, "model": str(model),
           "parameters": held["parameters"], "file_size": held["file_size"],
           "adaptability": held["mpc"]["adaptability"]["overall"], "by_category": held["mpc"]["adaptability"],
           "parse_failure_rate": held["mpc"]["parse_failure_rate"], "decision_accuracy": held["decision"]["accuracy"],
           "wall_time_s": summary.get("wall_time_s")}
    if "train" in reports:
        out["adaptability_seen_phrasings"] = reports["train"]["mpc"]["adaptability"]["overall"]
        out["decision_accuracy_seen_phrasings"] = reports["train"]["decision"]["accuracy"]
    reports_ = summary.get("prune_reports") or []
    if reports_:
        out["achieved_prunable_ratio"] = reports_[-1].get("achieved_ratio")
    return out


def tradeoff(removed: float, lost_pp: float) -> float | None:
    """Removed parameters per lost percentage point; None when nothing was lost (unbounded)."""
    return removed / lost_pp if lost_pp > 0 else None


def aggregate(rows: list[dict], dense: dict[str, float]) -> list[dict]:
    groups: dict[tuple[str, float], list[dict]] = {}
    for r in rows:
        groups.setdefault((r["method"], r["ratio"]), []).append(r)
    table = []
    for (method, ratio), rs in groups.items():
        def stat(key: str) -> tuple[float, float]:
            vals = [r[key] for r in rs if r.get(key) is not None]
            if not vals:
                return float("nan"), float("nan")
            return statistics.mean(vals), (statistics.stdev(vals) if len(vals) > 1 else 0.0)

        adapt, adapt_sd = stat("adaptability")
        params = statistics.mean(r["parameters"] for r in rs)
        removed = dense["parameters"] - params
        lost_pp = 100.0 * (dense["adaptability"] - adapt)
        entry = {"method": method, "ratio": ratio, "seeds": len(rs), "parameters": params,
                 "whole_model_reduction": removed / dense["parameters"], "adaptability": adapt,
                 "adaptability_sd": adapt_sd, "decision_accuracy": stat("decision_accuracy")[0],
                 "decision_accuracy_sd": stat("decision_accuracy")[1],
                 "parse_failure_rate": stat("parse_failure_rate")[0],
                 "lost_pp": lost_pp, "removed_per_lost_pp": tradeoff(removed, lost_pp),
                 "fraction_of_dense": adapt / dense["adaptability"] if dense["adaptability"] > 0 else None}
        if any("adaptability_seen_phrasings" in r for r in rs):
            entry["adaptability_seen_phrasings"], entry["adaptability_seen_phrasings_sd"] = \
                stat("adaptability_seen_phrasings")
        table.append(entry)
    order = {m: i for i, m in enumerate(("dense-sft", "dense", *METHODS_PER_RATIO, "small-dense"))}
    return sorted(table, key=lambda e: (e["ratio"], order.get(e["method"], 99)))


def markdown(table: list[dict], verdict: list[str], meta: dict) -> str:
    lines = [f"# BPF reproduction on this machine ({meta['date']})", "",
             f"{meta['split'].capitalize()} phrasings on the {meta['split']} track `{meta['track']}`; "
             f"seeds {meta['seeds']}; SFT continuation "
             f"{meta['sft_steps']} steps, GRPO {meta['rl_steps']} steps, {meta['shares']} pruning shares. "
             "Ratio = fraction of the prunable parameters removed; the reduction column is the whole model's.", "",
             f"| method | ratio | seeds | params | whole-model reduction | {meta['split']} adaptability (sd) | decision acc | "
             "parse fail | lost pp vs dense | removed / lost pp | seen phrasings adaptability |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for e in table:
        per = "no loss (unbounded)" if e["removed_per_lost_pp"] is None else f"{e['removed_per_lost_pp']:,.0f}"
        seen = e.get("adaptability_seen_phrasings")
        lines.append(f"| {e['method']} | {e['ratio']:.2f} | {e['seeds']} | {e['parameters']:,.0f} | "
                     f"{e['whole_model_reduction']:.1%} | {e['adaptability']:+.3f} ({e['adaptability_sd']:.3f}) | "
                     f"{e['decision_accuracy']:.1%} | {e['parse_failure_rate']:.1%} | {e['lost_pp']:+.1f} | {per} | "
                     + ("" if seen is None else f"{seen:+.3f}") + " |")
    lines += ["", "## Verdict", "", *[f"- {v}" for v in verdict], ""]
    return "\n".join(lines)


def verdicts(table: list[dict], dense: dict[str, float]) -> list[str]:
    out = []
    by = {(e["method"], e["ratio"]): e for e in table}
    for ratio in sorted({e["ratio"] for e in table if e["ratio"] > 0}):
        bpf = by.get(("bpf-sft-rl", ratio))
        if bpf is None:
            continue
        frac = bpf["fraction_of_dense"]
        out.append(f"BPF-SFT/RL at {ratio:.0%}: adaptability {bpf['adaptability']:+.3f} vs dense "
                   f"{dense['adaptability']:+.3f} -> " + (f"{frac:.1%} of the dense score" if frac is not None else
                                                          "fraction undefined (dense score <= 0)")
                   + (" (target >= 90%: met)" if frac is not None and frac >= 0.9 else " (target >= 90%: NOT met)"))
        for other in ("bpf-rl", "sft-prune", "ptp", "ptp-rl"):
            o = by.get((other, ratio))
            if o is not None:
                better = bpf["adaptability"] > o["adaptability"]
                out.append(f"  vs {other} at {ratio:.0%}: {bpf['adaptability']:+.3f} vs {o['adaptability']:+.3f} "
                           f"({'BPF-SFT/RL better' if better else 'BPF-SFT/RL NOT better'})")
    seen_dense = dense.get("adaptability_seen_phrasings")
    if seen_dense:
        for e in (e for e in table if e["method"] != "dense" and e.get("adaptability_seen_phrasings") is not None):
            seen = e["adaptability_seen_phrasings"]
            lost = 100.0 * (seen_dense - seen)
            per = tradeoff(dense["parameters"] - e["parameters"], lost)
            out.append(f"seen phrasings (supplement): {e['method']} {e['ratio']:.0%}: {seen:+.3f} vs dense "
                       f"{seen_dense:+.3f} = {seen / seen_dense:.1%} of dense; removed per lost pp "
                       + ("no loss" if per is None else f"{per:,.0f}"))
    small = [e for e in table if e["method"] == "small-dense"]
    bpfs = [e for e in table if e["method"] == "bpf-sft-rl"]
    for s in small:
        if not bpfs:
            break
        b = min(bpfs, key=lambda e: abs(e["parameters"] - s["parameters"]))
        bm, sm = b["removed_per_lost_pp"], s["removed_per_lost_pp"]
        if bm is not None and sm is not None:
            out.append(f"trade-off: BPF-SFT/RL {b['ratio']:.0%} removes {bm:,.0f} parameters per lost pp, small-dense "
                       f"({s['parameters']:,.0f} params) {sm:,.0f} -> {bm / sm:.2f}x (paper: 1.69x)")
        else:
            out.append(f"trade-off: BPF-SFT/RL {b['ratio']:.0%} {'no loss' if bm is None else f'{bm:,.0f}'} vs "
                       f"small-dense {'no loss' if sm is None else f'{sm:,.0f}'} removed parameters per lost pp "
                       "(a method without loss has an unbounded metric)")
    return out


def plot(table: list[dict], dense: dict[str, float], path: Path, split: str, track: str) -> None:
    from edge_runtime.report import style  # the project's one plotting style (Agg, sizes, metadata)

    fig, ax = style.figure(size=(7, 4.5))
    for method in sorted({e["method"] for e in table}):
        es = [e for e in table if e["method"] == method]
        ax.errorbar([e["parameters"] for e in es], [e["adaptability"] for e in es],
                    yerr=[e["adaptability_sd"] for e in es], marker="o", linestyle="-" if len(es) > 1 else "",
                    capsize=3, label=method)
    ax.axhline(dense["adaptability"], color="grey", linestyle=":", linewidth=1)
    ax.set_xlabel("parameters (whole model)")
    ax.set_ylabel(f"{split} control adaptability")
    ax.set_title(f"score vs size ({split} phrasings, track {track})")
    ax.legend(fontsize=8)
    style.save(fig, path)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--dense", default="models/tiny/dense", help="trained dense SFT model directory")
    ap.add_argument("--small-dense", help="trained smaller dense SFT model directory (same family)")
    ap.add_argument("--ratios", type=float, nargs="+", default=[0.25, 0.5])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--methods", nargs="+", default=list(METHODS_PER_RATIO))
    ap.add_argument("--sft-steps", type=int, default=300)
    ap.add_argument("--rl-steps", type=int, default=100)
    ap.add_argument("--shares", type=int, default=4)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1, help="torch threads per run (1 is fastest on a busy 2-core box)")
    ap.add_argument("--split", choices=["validation", "test"], default="validation",
                    help="the evaluation split: validation while developing, test only for the reported comparison "
                         "(default: %(default)s)")
    ap.add_argument("--splits", nargs="+", default=[], choices=["train"],
                    help="supplements: train adds the seen phrasings, on the split's track (default: none)")
    ap.add_argument("--report-only", action="store_true",
                    help="train nothing: report the finished runs (missing seeds / methods are left out)")
    ap.add_argument("--extra", nargs=argparse.REMAINDER, default=[], help="more edge-train bpf flags (last)")
    ap.add_argument("--out", default="bench/results/bpf")
    args = ap.parse_args(argv)
    global THREADS
    THREADS = args.threads
    splits = [args.split] + [s for s in args.splits if s != args.split]
    track = split_track(args.split)
    out_root = Path(args.out)
    (out_root / "logs").mkdir(parents=True, exist_ok=True)
    dense_dir = Path(args.dense)
    ref_spec = dense_dir / "arch_spec.json"
    started = time.time()
    rows = []

    def scored(method: str, ratio: float, seed: int, model: Path | None) -> None:
        if model is None:  # --report-only and this run was not trained
            return
        rows.append(row(method, ratio, seed, model, {s: evaluate(model, out_root, s, track) for s in splits},
                        args.split))
        r = rows[-1]
        print(f"  {method:11s} ratio {ratio:.2f} seed {seed}: {r['parameters']:,} params, adaptability "
              f"{r['adaptability']:+.3f}, decision {r['decision_accuracy']:.1%}", flush=True)

    scored("dense-sft", 0.0, 0, dense_dir)
    post_training = ("ptp", "ptp-rl")  # they prune the trained dense result, so they come after it
    for seed in args.seeds:
        def method_runs(methods: list[str], init: Path) -> None:
            for ratio in args.ratios:
                for method in methods:
                    model = train(f"{method}-{int(round(ratio * 100))}", SCHEDULE_OF[method], init, ratio, seed,
                                  args, out_root, ref_spec)
                    scored(method, ratio, seed, model)

        method_runs([m for m in args.methods if m not in post_training], dense_dir)
        dense_rl = train("dense", "none", dense_dir, 0.0, seed, args, out_root, ref_spec)
        scored("dense", 0.0, seed, dense_rl)
        if args.small_dense:
            small = train("small-dense", "none", Path(args.small_dense), 0.0, seed, args, out_root,
                          Path(args.small_dense) / "arch_spec.json")
            scored("small-dense", 0.0, seed, small)
        if dense_rl is not None:
            method_runs([m for m in args.methods if m in post_training], dense_rl)
    dense_rows = [r for r in rows if r["method"] == "dense"]
    dense = {"parameters": statistics.mean(r["parameters"] for r in dense_rows),
             "adaptability": statistics.mean(r["adaptability"] for r in dense_rows)}
    if all("adaptability_seen_phrasings" in r for r in dense_rows):
        dense["adaptability_seen_phrasings"] = statistics.mean(r["adaptability_seen_phrasings"] for r in dense_rows)
    table = aggregate(rows, dense)
    verdict = verdicts(table, dense)
    meta = {"date": time.strftime("%Y-%m-%d"), "seeds": args.seeds, "sft_steps": args.sft_steps,
            "rl_steps": args.rl_steps, "shares": args.shares, "ratios": args.ratios, "splits": splits,
            "split": args.split, "track": track,
            "wall_time_s": time.time() - started, "command": "python bench/reproduce_bpf.py " + shlex.join(sys.argv[1:] if argv is None else argv)}
    (out_root / "report.json").write_text(json.dumps({"meta": meta, "dense": dense, "table": table, "runs": rows,
                                                      "verdict": verdict}, indent=1) + "\n")
    (out_root / "report.md").write_text(markdown(table, verdict, meta))
    plot(table, dense, out_root / "score_vs_params.png", args.split, track)
    print(markdown(table, verdict, meta))
    print(f"wrote {out_root}/report.json, report.md, score_vs_params.png ({(time.time() - started) / 60:.1f} min)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
