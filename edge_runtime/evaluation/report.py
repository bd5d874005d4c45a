"""Evaluation on a split: the model answers, the simulator scores, the report says how well.

A split (validation to iterate on, test to report; docs/evaluation.md) has its own phrasings and
its own track. MPC task: every phrasing of the split (reference-velocity phrasings with the
split's seeded speeds) is answered by the model; each answer is parsed (a failure is counted by
reason and scores the worst case) and its parameter set is driven on the evaluation track.
Control adaptability per category and overall follows ``tasks.metrics``. When an oracle table of
the same instructions on the same track is given, the oracle's score and the model's fraction
of it are reported too. Decision task: a balanced dataset (the split's phrasings and track);
accuracy, with unparseable answers counted as wrong, and one row per example (the history's
summary line, the label, the model's answer) so that every wrong answer can be read.
Every adaptability and accuracy figure comes with a bootstrap interval (``tasks.stats``) under
the same key with ``_ci`` appended, and the report names the method, resamples and seed.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from ..sim.tracks import SPLIT_TRACKS, split_track
from ..tasks.answers import count_failures, parse_decision_answer, parse_mpc_answer
from ..tasks.closed_loop import EvalConfig, evaluate
from ..tasks.decision import generate_decision_dataset
from ..contracts.task_enums import Category
from ..tasks.instructions import instruction_set
from ..tasks.metrics import WORST_ADAPTABILITY, summarise_adaptability
from ..tasks.oracle_table import OracleTable
from ..tasks.stats import (DEFAULT_BOOTSTRAP, BootstrapConfig, format_with_ci, mean_ci, mean_of_means_ci,
                           ratio_of_mean_of_means_ci)
from ..tasks.prompts import build_decision_prompt, build_mpc_prompt, history_summary
from ..contracts.generation import TextPolicy

MPC_MAX_NEW_TOKENS = 200
DECISION_MAX_NEW_TOKENS = 48


@dataclass(frozen=True)
class EvalSettings:
    split: str = "validation"
    track: str | None = None  # None: the split's track (sim.tracks.SPLIT_TRACKS)
    speeds_per_phrasing: int = 1
    decision_per_instruction: int = 20
    seed: int = 0
    bootstrap: BootstrapConfig = DEFAULT_BOOTSTRAP

    def __post_init__(self) -> None:
        if self.split not in SPLIT_TRACKS:
            raise ValueError(f"unknown split {self.split!r}: use one of {', '.join(SPLIT_TRACKS)}")
        if self.track is None:
            object.__setattr__(self, "track", split_track(self.split))
        if self.decision_per_instruction < 2 or self.decision_per_instruction % 2:
            raise ValueError("decision_per_instruction must be an even number >= 2")


def evaluate_mpc(policy: TextPolicy, settings: EvalSettings, oracle: OracleTable | None = None) -> dict:
    instructions = instruction_set(settings.split, settings.speeds_per_phrasing, settings.seed)
    started = time.perf_counter()
    gens = policy.generate([build_mpc_prompt(i.text) for i in instructions], MPC_MAX_NEW_TOKENS)
    gen_time = time.perf_counter() - started
    config = EvalConfig(track=settings.track)
    rows, scores, oracle_scores, parses = [], [], [], []
    for ins, gen in zip(instructions, gens):
        parse = parse_mpc_answer(gen.text)
        parses.append(parse)
        if parse.params is None:
            score, result = WORST_ADAPTABILITY, None
        else:
            result = evaluate(parse.params, ins, config)
            score = result.adaptability
        scores.append((ins.category, score))
        row = {"instruction": ins.text, "category": ins.category.value, "target_speed": ins.target_speed,
               "answer": gen.text, "parse_failure": parse.failure.value if parse.failure else None,
               "adaptability": score, "crashed": bool(result and result.crashed),
               "error": result.error if result else None, "emitted_tokens": gen.emitted_tokens}
        if oracle is not None:
            o = oracle.score_for(ins)
            row["oracle_adaptability"] = o
            if o is not None:
                oracle_scores.append((ins.category, o))
        rows.append(row)
    summary = summarise_adaptability(scores)
    boot = settings.bootstrap
    report = {
        "track": settings.track, "split": settings.split, "instructions": len(instructions),
        "adaptability": summary, "adaptability_ci": _adaptability_ci(scores, boot),
        "parse_failures": count_failures(parses),
        "parse_failure_rate": float(np.mean([p.failure is not None for p in parses])),
        "crashes": int(sum(r["crashed"] for r in rows)), "generation_time_s": gen_time, "ci": boot.describe(),
        "rows": rows,
    }
    if oracle is not None and len(oracle_scores) == len(instructions):
        o_summary = summarise_adaptability(oracle_scores)
        report["oracle_adaptability"] = o_summary
        report["oracle_adaptability_ci"] = _adaptability_ci(oracle_scores, boot)
        report["fraction_of_oracle"] = summary["overall"] / o_summary["overall"] if o_summary["overall"] > 0 else None
        if report["fraction_of_oracle"] is not None:
            pairs = _by_group((c, (m, o)) for (c, m), (_, o) in zip(scores, oracle_scores))
            report["fraction_of_oracle_ci"] = list(ratio_of_mean_of_means_ci(list(pairs.values()), boot))
    report["above_default_every_category"] = all(summary.get(c.value, -1) > 0 for c in Category)
    return report


def _by_group(items) -> dict[str, list]:
    groups: dict[str, list] = {}
    for key, value in items:
        groups.setdefault(getattr(key, "value", key), []).append(value)
    return groups


def _adaptability_ci(scores: list[tuple[Category, float]], boot: BootstrapConfig) -> dict[str, list[float]]:
    """Per-category and overall (mean of category means, stratified) bootstrap intervals."""
    groups = _by_group(scores)
    out = {c: list(mean_ci(v, boot)) for c, v in groups.items()}
    out["overall"] = list(mean_of_means_ci(list(groups.values()), boot))
    return out


def evaluate_decision(policy: TextPolicy, settings: EvalSettings) -> dict:
    track = settings.track
    data = generate_decision_dataset(n_per_instruction=settings.decision_per_instruction, split=settings.split,
                                     seed=settings.seed + 12345, track=track)
    gens = policy.generate([build_decision_prompt(ex.history, ex.phrasing) for ex in data], DECISION_MAX_NEW_TOKENS)
    parses = [parse_decision_answer(g.text) for g in gens]
    correct = [p.value is not None and p.value == ex.label for p, ex in zip(parses, data)]
    per_instruction: dict[str, list[bool]] = {}
    for ex, ok in zip(data, correct):
        per_instruction.setdefault(ex.instruction.value, []).append(ok)
    rows = [{"instruction": ex.instruction.value, "phrasing": ex.phrasing, "behaviour": ex.behaviour,
             "summary": history_summary(ex.history), "label": ex.label, "answer": g.text, "prediction": p.value,
             "parse_failure": p.failure.value if p.failure else None, "correct": ok}
            for ex, g, p, ok in zip(data, gens, parses, correct)]
    boot = settings.bootstrap
    return {
        "track": track, "split": settings.split, "examples": len(data), "accuracy": float(np.mean(correct)),
        "accuracy_ci": list(mean_of_means_ci(list(per_instruction.values()), boot)),
        "accuracy_by_instruction": {k: float(np.mean(v)) for k, v in per_instruction.items()},
        "accuracy_by_instruction_ci": {k: list(mean_ci(v, boot)) for k, v in per_instruction.items()},
        "parse_failures": count_failures(parses), "ci": boot.describe(), "rows": rows,
    }


def format_report(report: dict) -> str:
    lines = [f"model {report['model']}: {report['parameters']:,} parameters, "
             f"{report['file_size'] / 2**20:.2f} MiB weights"]
    if "mpc" in report:
        m = report["mpc"]
        lines.append(f"MPC task on {m['track']} ({m['split']}, {m['instructions']} instructions): control adaptability")
        oracle, ci = m.get("oracle_adaptability", {}), m.get("adaptability_ci", {})
        o_ci = m.get("oracle_adaptability_ci", {})
        lines.append(f"  {'category':20s} {'model [95% CI]':>26s} {'oracle [95% CI]':>26s}")
        for key, value in m["adaptability"].items():
            o = oracle.get(key)
            model_cell = format_with_ci(value, ci.get(key), "{:+.3f}")
            oracle_cell = "" if o is None else format_with_ci(o, o_ci.get(key), "{:+.3f}")
            lines.append(f"  {key:20s} {model_cell:>26s} {oracle_cell:>26s}")
        if m.get("fraction_of_oracle") is not None:
            fraction = format_with_ci(m["fraction_of_oracle"], m.get("fraction_of_oracle_ci"), "{:.1%}")
            lines.append(f"  fraction of oracle: {fraction}")
        lines.append(f"  parse failures: {m['parse_failure_rate']:.1%} {m['parse_failures'] or ''}  crashes: {m['crashes']}")
    if "decision" in report:
        d = report["decision"]
        lines.append(f"Decision task on {d['track']} ({d['split']}, {d['examples']} examples): "
                     f"accuracy {format_with_ci(d['accuracy'], d.get('accuracy_ci'), '{:.1%}')}  "
                     f"parse failures {d['parse_failures'] or 0}")
        by_ci = d.get("accuracy_by_instruction_ci", {})
        for key, value in d.get("accuracy_by_instruction", {}).items():
            lines.append(f"  {key:20s} {format_with_ci(value, by_ci.get(key), '{:.1%}'):>26s}")
    ci_info = (report.get("mpc") or report.get("decision") or {}).get("ci")
    if ci_info:
        lines.append(f"[lo, hi]: {ci_info['level']:.0%} {ci_info['method']}, {ci_info['resamples']} resamples, "
                     f"seed {ci_info['seed']}")
    return "\n".join(lines)

