"""The BPF report on SmolLM2: shipped model directories compared with the dense reference on one split.

    python bench/bpf_smollm2_report.py --model dense=models/dense --model pruned50=models/pruned50 \
        [--report eval_test_onnx.json] [--out bench/results/bpf/smollm2]

Each ``--model NAME=DIR`` is a card directory (``arch_spec.json``, ``train_summary.json``, the
``edge-eval --json`` report named by ``--report``) with its vehicle file beside it as
``DIR.onnx`` -- or, where that file is not kept, the record ``DIR/vehicle_file.json`` that
``--record-vehicle-files`` wrote from it (its size and streamed bytes; the scores never need the
file, only the report); the first is the reference. Per model: parameters, prunable parameters removed (the
planner's definition: attention and MLP of the prunable layers), whole-model reduction, streamed
weight bytes per decode step, training wall time, and the report's scores with their intervals.
Against the reference, **paired** on the same instructions and examples: the share of the
reference's control adaptability kept (ratio of mean-of-category-means, stratified bootstrap over
instructions) and the decision-accuracy difference in points (stratified by decision instruction),
plus the trade-off metric of the paper (prunable parameters removed per lost point of
adaptability). ``--versus A:B`` also compares two models (or methods) head to head -- "does BPF-RL
beat post-training pruning + GRPO from the same start" -- as paired differences (adaptability A - B,
stratified over instructions; decision points), which stay defined where B is below the default
parameters and a share of B's adaptability is not. Writes ``report.json``, ``report.md`` and
``score_vs_params.png``.

**Seeds.** ``--model NAME@SEED=DIR`` marks one training seed of method NAME; two or more seeds of
one method also get a row ``NAME (mean of N seeds)``: every instruction's adaptability and every
decision example's correctness averaged over the seeds (the seeds were evaluated on the same items),
then scored and bootstrapped over items exactly as ``edge-eval`` scores one model -- so its
interval covers the item sample, and the per-seed rows beside it show the seed spread. Method-level
comparisons (each pruned method against each smaller dense model) use that mean, not the seeds.

Why a script of its own: ``bench/reproduce_bpf.py`` trains and evaluates every method at tiny scale
in one go; on SmolLM2 each training run is hours on a CPU, so runs are made one by one (their
commands are in the model cards) and this script only gathers and compares what they produced.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import streamed_weight_bytes  # noqa: E402
from edge_runtime.contracts.arch_spec import ArchSpec  # noqa: E402
from edge_runtime.deploy.manifest import sha256_file  # noqa: E402
from edge_runtime.prune.config import PruneConfig, prunable_parameters  # noqa: E402
from edge_runtime.tasks.stats import (DEFAULT_BOOTSTRAP, mean_of_means_ci,  # noqa: E402
                                      ratio_of_mean_of_means_ci, stratified_bootstrap)

TARGET_RETENTION = 0.95
TARGET_DECISION_POINTS = 2.0


class ReportError(ValueError):
    """A model directory or report that cannot be compared (one line, exit 2)."""


VEHICLE_RECORD = "vehicle_file.json"


def vehicle_file_record(entry: dict[str, Any]) -> dict[str, Any]:
    """What the report needs of a vehicle file, as ``load_entry`` measured it, plus its hash. Why a
    record: the ONNX files of the unshipped baselines are 85 MB each and are not kept between
    sessions, yet a report re-made with a new seed must still show their size; the hash keeps the
    record traceable to the file it was measured on."""
    onnx_path = Path(entry["onnx"])
    return {"file": onnx_path.name, "sha256": sha256_file(onnx_path), "file_bytes": entry["file_bytes"],
            "streamed_bytes": entry["streamed_bytes"]}


def _vehicle_file(directory: Path, onnx_path: Path, report_name: str) -> dict[str, Any]:
    if onnx_path.is_file():
        return {"onnx": str(onnx_path), "file_bytes": onnx_path.stat().st_size,
                "streamed_bytes": streamed_weight_bytes(onnx_path)}
    record_path = directory / VEHICLE_RECORD
    if not record_path.is_file():
        raise ReportError(f"{onnx_path}: missing (a --model DIR needs arch_spec.json, {report_name} and DIR.onnx "
                          f"or its {VEHICLE_RECORD})")
    try:
        record = json.loads(record_path.read_text())
        file_bytes, streamed = int(record["file_bytes"]), int(record["streamed_bytes"])
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        raise ReportError(f"{record_path}: not a vehicle-file record ({exc}); re-write it with --record-vehicle-files") from None
    return {"onnx": str(record_path), "file_bytes": file_bytes, "streamed_bytes": streamed}


def load_entry(name: str, directory: Path, report_name: str) -> dict[str, Any]:
    spec_path, report_path, onnx_path = directory / "arch_spec.json", directory / report_name, directory.with_suffix(".onnx")
    for path in (spec_path, report_path):
        if not path.is_file():
            raise ReportError(f"{path}: missing (a --model DIR needs arch_spec.json, {report_name} and DIR.onnx)")
    try:
        report = json.loads(report_path.read_text())
        mpc, decision = report["mpc"], report["decision"]
    except (json.JSONDecodeError, KeyError) as exc:
        raise ReportError(f"{report_path}: not an edge-eval --json report ({exc})") from None
    vehicle = _vehicle_file(directory, onnx_path, report_name)
    summary_path = directory / "train_summary.json"
    summary = json.loads(summary_path.read_text()) if summary_path.is_file() else {}
    wall = summary.get("wall_time_s")
    stage = summary.get("init_summary")
    while stage:  # a staged run: the card's total is every stage's wall time
        wall = (wall or 0) + (stage.get("wall_time_s") or 0)
        stage = stage.get("init_summary")
    method, at, seed = name.partition("@")
    if at and (not method or not seed):
        raise ReportError(f"--model {name}={directory}: a seed is marked NAME@SEED")
    return {"name": name, "method": method, "dir": str(directory), "spec": ArchSpec.load(spec_path),
            "report": report, "mpc": mpc, "decision": decision, **vehicle,
            "train_wall_min": wall / 60 if wall else None, "recipe": summary.get("command")}


def _groups(rows: list[dict], key: str, value) -> dict[str, list]:
    out: dict[str, list] = {}
    for r in rows:
        out.setdefault(r[key], []).append(value(r))
    return out


def seed_mean(method: str, seeds: list[dict]) -> dict[str, Any]:
    """One entry for ``method`` from its seeds' entries: per-item scores averaged over the seeds, then
    summarised and bootstrapped over items as edge-eval does for one model (module docstring)."""
    first = seeds[0]
    for e in seeds[1:]:
        if e["spec"].to_dict() != first["spec"].to_dict():
            raise ReportError(f"{e['name']}: a different architecture from {first['name']}; seeds of one method "
                              f"must share it")
        for task, key in (("mpc", "instruction"), ("decision", "summary")):
            if [r[key] for r in e[task]["rows"]] != [r[key] for r in first[task]["rows"]]:
                raise ReportError(f"{e['name']}: its {task} report covers other items than {first['name']}'s "
                                  f"(evaluate every seed on the same split)")
    n = len(seeds)
    mpc_rows = [dict(r, adaptability=float(np.mean([e["mpc"]["rows"][i]["adaptability"] for e in seeds])),
                     crashed=sum(bool(e["mpc"]["rows"][i]["crashed"]) for e in seeds) / n)
                for i, r in enumerate(first["mpc"]["rows"])]
    dec_rows = [dict(r, correct=float(np.mean([float(e["decision"]["rows"][i]["correct"]) for e in seeds])))
                for i, r in enumerate(first["decision"]["rows"])]
    by_cat = _groups(mpc_rows, "category", lambda r: r["adaptability"])
    overall = float(np.mean([np.mean(v) for v in by_cat.values()]))
    oracle = _groups(mpc_rows, "category", lambda r: r.get("oracle_adaptability"))
    pairs = _groups(mpc_rows, "category", lambda r: (r["adaptability"], r.get("oracle_adaptability")))
    o_overall = (float(np.mean([np.mean(v) for v in oracle.values()]))
                 if all(x is not None for v in oracle.values() for x in v) else None)
    mpc = {"split": first["mpc"]["split"], "track": first["mpc"]["track"], "rows": mpc_rows,
           "adaptability": {"overall": overall}, "adaptability_ci": {"overall": list(mean_of_means_ci(list(by_cat.values())))},
           "fraction_of_oracle": overall / o_overall if o_overall else None,
           "fraction_of_oracle_ci": list(ratio_of_mean_of_means_ci(list(pairs.values()))) if o_overall else None,
           "parse_failure_rate": float(np.mean([e["mpc"]["parse_failure_rate"] for e in seeds])),
           "crashes": sum(e["mpc"].get("crashes") or 0 for e in seeds) / n}
    per_ins = _groups(dec_rows, "instruction", lambda r: r["correct"])
    decision = {"rows": dec_rows, "accuracy": float(np.mean([r["correct"] for r in dec_rows])),
                "accuracy_ci": list(mean_of_means_ci(list(per_ins.values())))}
    walls = [e["train_wall_min"] for e in seeds if e["train_wall_min"]]
    return {"name": f"{method} (mean of {n} seeds)", "method": method, "seeds": [e["name"] for e in seeds],
            "dir": None, "onnx": None, "spec": first["spec"], "report": None, "mpc": mpc, "decision": decision,
            "file_bytes": first["file_bytes"], "streamed_bytes": first["streamed_bytes"],
            "train_wall_min": float(np.mean(walls)) if walls else None, "recipe": None}


def with_seed_means(entries: list[dict]) -> list[dict]:
    """``entries`` plus one seed-mean entry after the last seed of every method with two or more seeds."""
    methods: dict[str, list[dict]] = {}
    for e in entries:
        methods.setdefault(e["method"], []).append(e)
    out = []
    for e in entries:
        out.append(e)
        group = methods[e["method"]]
        if len(group) > 1 and e is group[-1]:
            out.append(seed_mean(e["method"], group))
    return out


def _paired_adaptability(model: dict, ref: dict) -> dict[str, list[tuple[float, float]]]:
    """Per category, (model, reference) adaptability of every instruction, paired by instruction."""
    ref_rows = {r["instruction"]: r for r in ref["mpc"]["rows"]}
    groups: dict[str, list[tuple[float, float]]] = {}
    for row in model["mpc"]["rows"]:
        other = ref_rows.get(row["instruction"])
        if other is None:
            raise ReportError(f"{model['name']}: instruction {row['instruction']!r} is not in {ref['name']}'s report "
                              f"(evaluate both on the same split)")
        groups.setdefault(row["category"], []).append((row["adaptability"], other["adaptability"]))
    return groups


def paired_retention(model: dict, ref: dict) -> tuple[float, tuple[float, float]]:
    """Share of the reference's overall adaptability the model keeps, with its paired interval."""
    groups = _paired_adaptability(model, ref)
    num = np.mean([np.mean([a for a, _ in g]) for g in groups.values()])
    den = np.mean([np.mean([b for _, b in g]) for g in groups.values()])
    return float(num / den) if den > 0 else float("nan"), ratio_of_mean_of_means_ci(list(groups.values()))


def paired_adaptability_difference(model: dict, other: dict) -> tuple[float, tuple[float, float]]:
    """Overall adaptability of ``model`` minus ``other``'s, paired by instruction (mean of category means
    of the differences). Unlike the retention ratio it stays defined when ``other`` is below the
    default parameters, as a destroyed baseline is."""
    diffs = [[a - b for a, b in g] for g in _paired_adaptability(model, other).values()]
    return float(np.mean([np.mean(d) for d in diffs])), mean_of_means_ci(diffs)


def paired_decision_points(model: dict, ref: dict) -> tuple[float, tuple[float, float]]:
    """Decision accuracy difference (model - reference) in points, paired by example."""
    def key(r: dict) -> tuple:
        return r["instruction"], r["phrasing"], r["summary"], r["label"]

    ref_rows = {key(r): r for r in ref["decision"]["rows"]}
    groups: dict[str, list[float]] = {}
    for row in model["decision"]["rows"]:
        other = ref_rows.get(key(row))
        if other is None:
            raise ReportError(f"{model['name']}: a decision example is not in {ref['name']}'s report "
                              f"(evaluate both on the same split)")
        groups.setdefault(row["instruction"], []).append(100.0 * (float(row["correct"]) - float(other["correct"])))
    diffs = [d for g in groups.values() for d in g]
    ci = stratified_bootstrap([np.asarray(g) for g in groups.values()],
                              lambda s: np.concatenate(s, axis=1).mean(axis=1), DEFAULT_BOOTSTRAP)
    return float(np.mean(diffs)), ci


#: A pruned model and a smaller dense model are compared when their parameter counts differ by at
#: most this share of the pruned one's: the question is which of two models of one size drives better,
#: and a 25 % pruned model has no smaller dense counterpart in the comparison.
SAME_SIZE = 0.05


def _named(name: str, entries: list[dict]) -> dict:
    """The entry called ``name``, or the one entry of method ``name`` (its seed mean when it has seeds)."""
    exact = [e for e in entries if e["name"] == name]
    of_method = [e for e in entries if e["method"] == name]
    means = [e for e in of_method if e.get("seeds")]
    found = exact or means or (of_method if len(of_method) == 1 else [])
    if not found:
        raise ReportError(f"--versus: no model or method named {name!r} (names: "
                          f"{', '.join(sorted({e['name'] for e in entries} | {e['method'] for e in entries}))})")
    return found[0]


def head_to_head(model: dict, other: dict) -> dict[str, Any]:
    """Two models compared with each other directly, paired on the same items: the question "does
    method A beat method B", which the comparison with the reference answers only indirectly."""
    diff, diff_ci = paired_adaptability_difference(model, other)
    points, points_ci = paired_decision_points(model, other)
    return {"model": model["name"], "baseline": other["name"], "adaptability_difference": diff,
            "adaptability_difference_ci": diff_ci, "decision_points": points, "decision_points_ci": points_ci}


def compare(entries: list[dict], versus: list[tuple[str, str]] | None = None) -> dict[str, Any]:
    """The table against the reference (``entries[0]``), the pruned-vs-smaller-dense pairs, and the
    ``versus`` pairs (model or method names) compared head to head."""
    ref = entries[0]
    cfg = PruneConfig()
    ref_prunable = prunable_parameters(ref["spec"], cfg)
    entries = with_seed_means(entries)
    rows = []
    for e in entries:
        spec, mpc, dec = e["spec"], e["mpc"], e["decision"]
        row = {"name": e["name"], "parameters": spec.num_parameters(),
               "prunable_removed": 1 - prunable_parameters(spec, cfg) / ref_prunable,
               "whole_model_reduction": 1 - spec.num_parameters() / ref["spec"].num_parameters(),
               "layers_uniform": spec.is_uniform, "file_mib": e["file_bytes"] / 2**20,
               "streamed_mib_per_token": e["streamed_bytes"] / 2**20, "train_wall_min": e["train_wall_min"],
               "recipe": e["recipe"], "adaptability": mpc["adaptability"]["overall"],
               "adaptability_ci": mpc["adaptability_ci"]["overall"], "fraction_of_oracle": mpc["fraction_of_oracle"],
               "fraction_of_oracle_ci": mpc["fraction_of_oracle_ci"], "decision_accuracy": dec["accuracy"],
               "decision_accuracy_ci": dec["accuracy_ci"], "parse_failure_rate": mpc["parse_failure_rate"],
               "crashes": mpc.get("crashes"), "split": mpc["split"], "track": mpc["track"],
               "method": e["method"], "seeds": e.get("seeds")}
        if e is not ref:
            row["retention"], row["retention_ci"] = paired_retention(e, ref)
            row["decision_points"], row["decision_points_ci"] = paired_decision_points(e, ref)
            lost = 100.0 * (ref["mpc"]["adaptability"]["overall"] - row["adaptability"])
            removed = ref_prunable - prunable_parameters(spec, cfg)
            row["lost_points"] = lost
            row["removed_per_lost_point"] = removed / lost if lost > 0 else None  # None: nothing lost
            row["streamed_bytes_ratio"] = ref["streamed_bytes"] / e["streamed_bytes"]
        rows.append(row)
    by_name = {r["name"]: r for r in rows}
    # every pruned method against every smaller dense one of its size (uniform layers, not the reference), at
    # the method level: a method with several seeds by its seed mean, not by each seed
    multi = {e["method"] for e in entries if e.get("seeds")}
    level = [e for e in entries[1:] if e.get("seeds") or e["method"] not in multi]
    pairs = []
    for p in (e for e in level if not e["spec"].is_uniform):
        size = p["spec"].num_parameters()
        for small in (e for e in level if e["spec"].is_uniform
                      and abs(e["spec"].num_parameters() - size) <= SAME_SIZE * size):
            kept, kept_ci = paired_retention(p, small)
            points, points_ci = paired_decision_points(p, small)
            mine, theirs = by_name[p["name"]]["removed_per_lost_point"], by_name[small["name"]]["removed_per_lost_point"]
            pairs.append({"pruned": p["name"], "smaller_dense": small["name"], "retention": kept,
                          "retention_ci": kept_ci, "decision_points": points, "decision_points_ci": points_ci,
                          "tradeoff_ratio": mine / theirs if mine is not None and theirs is not None else None})
    heads = [head_to_head(_named(a, entries), _named(b, entries)) for a, b in (versus or [])]
    return {"reference": ref["name"], "split": ref["mpc"]["split"], "track": ref["mpc"]["track"],
            "bootstrap": DEFAULT_BOOTSTRAP.describe(), "rows": rows, "pairs": pairs, "head_to_head": heads}


def verdicts(doc: dict) -> list[str]:
    out = []
    for row in doc["rows"][1:]:
        lo, hi = row["retention_ci"]
        keeps = row["retention"] >= TARGET_RETENTION
        out.append(f"`{row['name']}` keeps {row['retention']:.1%} [{lo:.1%}, {hi:.1%}] of `{doc['reference']}`'s "
                   f"control adaptability (target >= {TARGET_RETENTION:.0%}: {'met' if keeps else 'NOT met'}; "
                   f"the interval {'includes' if lo <= 1 <= hi else 'excludes'} 100 %).")
        lo, hi = row["decision_points_ci"]
        within = abs(row["decision_points"]) <= TARGET_DECISION_POINTS or row["decision_points"] > 0
        out.append(f"`{row['name']}` decision accuracy differs by {row['decision_points']:+.1f} points "
                   f"[{lo:+.1f}, {hi:+.1f}] (target: within {TARGET_DECISION_POINTS:.0f} points: "
                   f"{'met' if within else 'NOT met'}).")
    rows = {r["name"]: r for r in doc["rows"]}
    for pair in doc.get("pairs", []):
        p, small = rows[pair["pruned"]], rows[pair["smaller_dense"]]
        lo, hi = pair["retention_ci"]
        dlo, dhi = pair["decision_points_ci"]
        better = "better" if lo > 1 else "worse" if hi < 1 else "not distinguishable: the interval includes 100 %"
        out.append(f"`{p['name']}` against the smaller dense `{small['name']}` ({small['parameters'] / 1e6:.1f} M vs "
                   f"{p['parameters'] / 1e6:.1f} M parameters), paired: {pair['retention']:.1%} [{lo:.1%}, {hi:.1%}] of "
                   f"its adaptability ({better}); decision accuracy {pair['decision_points']:+.1f} points "
                   f"[{dlo:+.1f}, {dhi:+.1f}].")
        if pair["tradeoff_ratio"] is not None:
            out.append(f"Trade-off (removed prunable parameters per lost point of adaptability): `{p['name']}` "
                       f"{p['removed_per_lost_point']:,.0f}, `{small['name']}` {small['removed_per_lost_point']:,.0f} "
                       f"-> {pair['tradeoff_ratio']:.2f}x (above 1: pruning loses less per removed parameter; a ratio of point "
                       "estimates, as uncertain as the paired comparison above).")
        else:
            out.append(f"Trade-off: undefined for `{p['name']}` vs `{small['name']}` (a model that loses nothing "
                       "against the reference has an unbounded metric).")
    for h in doc.get("head_to_head", []):
        a, b = f"`{h['model']}`", f"`{h['baseline']}`"
        lo, hi = h["adaptability_difference_ci"]
        dlo, dhi = h["decision_points_ci"]
        out.append(f"{a} against {b}, head to head (paired): control adaptability {h['adaptability_difference']:+.3f} "
                   f"[{lo:+.3f}, {hi:+.3f}] ({_winner(a, b, lo, hi)}); decision accuracy "
                   f"{h['decision_points']:+.1f} points [{dlo:+.1f}, {dhi:+.1f}] ({_winner(a, b, dlo, dhi)}).")
    return out


def _winner(a: str, b: str, lo: float, hi: float) -> str:
    """Which of two models a paired difference (a - b) with interval [lo, hi] favours."""
    return f"{a} better" if lo > 0 else f"{b} better" if hi < 0 else "not distinguishable: the interval includes 0"


def markdown(doc: dict, notes: list[str], command: str) -> str:
    lines = [f"# BPF on SmolLM2-135M: {doc['split']} split (track `{doc['track']}`)", "",
             f"Reference: `{doc['reference']}`. Intervals: 95 % {doc['bootstrap']['method']}, "
             f"{doc['bootstrap']['resamples']} resamples, seed {doc['bootstrap']['seed']}. Retention and decision "
             "difference are paired (the same instructions and examples for both models)."
             + "".join(f" `{r['name']}`: every item's score averaged over {', '.join(f'`{x}`' for x in r['seeds'])}, "
                       "then scored and bootstrapped over items like one model; the seed rows show the spread."
                       for r in doc["rows"] if r.get("seeds")), "",
             "| model | params | prunable removed | whole model | file MiB | streamed MiB/token | train min (all stages) | "
             "adaptability [95 % CI] | of oracle | decision acc. | kept of reference | decision Δ points | "
             "removed / lost point |", "|" + "---|" * 13]
    for r in doc["rows"]:
        ci = r["adaptability_ci"]
        fo = r["fraction_of_oracle_ci"]
        dc = r["decision_accuracy_ci"]
        kept = (f"{r['retention']:.1%} [{r['retention_ci'][0]:.1%}, {r['retention_ci'][1]:.1%}]"
                if "retention" in r else "—")
        dp = (f"{r['decision_points']:+.1f} [{r['decision_points_ci'][0]:+.1f}, {r['decision_points_ci'][1]:+.1f}]"
              if "decision_points" in r else "—")
        tr = ("—" if "lost_points" not in r else "no loss" if r["removed_per_lost_point"] is None
              else f"{r['removed_per_lost_point']:,.0f}")
        wall = f"{r['train_wall_min']:.0f}" if r["train_wall_min"] else "—"
        lines.append(f"| {r['name']} | {r['parameters'] / 1e6:.1f} M | {r['prunable_removed']:.1%} | "
                     f"{r['whole_model_reduction']:.1%} | {r['file_mib']:.1f} | {r['streamed_mib_per_token']:.1f} | "
                     f"{wall} | {r['adaptability']:+.3f} [{ci[0]:+.3f}, {ci[1]:+.3f}] | "
                     f"{r['fraction_of_oracle']:.1%} [{fo[0]:.1%}, {fo[1]:.1%}] | "
                     f"{r['decision_accuracy']:.1%} [{dc[0]:.1%}, {dc[1]:.1%}] | {kept} | {dp} | {tr} |")
    lines += ["", "## Verdict", ""] + [f"- {v}" for v in verdicts(doc)]
    if notes:
        lines += ["", "## Notes", ""] + [f"- {n}" for n in notes]
    lines += ["", "## Recipes", ""] + [f"- `{r['name']}`: `{r['recipe']}`" for r in doc["rows"] if r["recipe"]]
    lines += ["", f"Command: `{command}`", ""]
    return "\n".join(lines)


def plot(doc: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    # One column per row of the table, with its size in the label: the pruned models and the smaller
    # dense model have the same parameter count, so on a parameter axis their points and labels overlap.
    rows = doc["rows"]
    fig, ax = plt.subplots(figsize=(max(6.0, 1.1 * len(rows)), 4.5))
    for x, r in enumerate(rows):
        lo, hi = r["adaptability_ci"]
        mean_row = bool(r.get("seeds"))
        ax.errorbar(x, r["adaptability"], yerr=[[r["adaptability"] - lo], [hi - r["adaptability"]]],
                    fmt="s" if mean_row else "o", capsize=4, color="black" if mean_row else f"C{x}",
                    alpha=0.6 if "@" in r["name"] else 1.0)  # one seed of several: lighter
    ax.axhline(0.0, color="grey", lw=0.8, ls="--")
    ax.set_xticks(range(len(rows)), [f"{r['name'].replace(' (mean of ', chr(10) + '(mean of ')}\n{r['parameters'] / 1e6:.1f} M"
                                     for r in rows], fontsize=8)
    ax.set_ylabel(f"control adaptability, {doc['split']} split (95 % CI)")
    ax.set_title("SmolLM2-135M: control adaptability by model\n(0: the default MPC parameters; squares: means over seeds)",
                 fontsize=10)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", action="append", required=True, metavar="NAME=DIR",
                   help="card directory with DIR.onnx beside it; the first is the reference")
    p.add_argument("--report", default="eval_test_onnx.json", help="the edge-eval report in each DIR (default: %(default)s)")
    p.add_argument("--note", action="append", default=[], help="a line for the report's notes (repeatable)")
    p.add_argument("--out", default="bench/results/bpf/smollm2", help="output folder (default: %(default)s)")
    p.add_argument("--versus", action="append", default=[], metavar="A:B",
                   help="also compare model or method A with B head to head, paired (repeatable; a method with "
                        "several seeds by its seed mean)")
    p.add_argument("--record-vehicle-files", action="store_true",
                   help=f"also write DIR/{VEHICLE_RECORD} (size, streamed bytes, sha256) for every DIR whose DIR.onnx "
                        "is here, so the report can be re-made once the file is gone")
    args = p.parse_args(argv)
    try:
        entries = []
        for item in args.model:
            name, sep, directory = item.partition("=")
            if not sep or not name or not directory:
                raise ReportError(f"--model {item!r}: expected NAME=DIR")
            entries.append(load_entry(name, Path(directory), args.report))
            if args.record_vehicle_files and entries[-1]["onnx"].endswith(".onnx"):  # measured on the file itself
                record = json.dumps(vehicle_file_record(entries[-1]), indent=1) + "\n"
                (Path(directory) / VEHICLE_RECORD).write_text(record)
        if len(entries) < 2:
            raise ReportError("--model: give the reference and at least one model to compare with it")
        versus = []
        for item in args.versus:
            a, sep, b = item.partition(":")
            if not sep or not a or not b:
                raise ReportError(f"--versus {item!r}: expected A:B (two model or method names)")
            versus.append((a, b))
        doc = compare(entries, versus)
    except ReportError as exc:
        print(f"bpf_smollm2_report: error: {exc}", file=sys.stderr)
        return 2
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    command = "python bench/bpf_smollm2_report.py " + " ".join(
        [f"--model {m}" for m in args.model] + [f"--report {args.report}"] + [f"--note {json.dumps(n)}" for n in args.note]
        + [f"--versus {v}" for v in args.versus] + [f"--out {args.out}"])
    doc.update(notes=args.note, command=command, verdicts=verdicts(doc))
    (out / "report.json").write_text(json.dumps(doc, indent=1) + "\n")
    (out / "report.md").write_text(markdown(doc, args.note, command))
    plot(doc, out / "score_vs_params.png")
    print((out / "report.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
