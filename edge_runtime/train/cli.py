"""``edge-train``: train the driving LLM.

    edge-train sft --out models/dense --preset qwen2-4m --steps 1500 --seed 0
    edge-train card --model models/dense --eval models/dense/eval_heldout.json

``sft`` trains a tokenizer on the task corpus (unless ``--init-from`` brings a model with its own),
builds the preset, runs SFT on oracle answers for the training phrasings and saves a safetensors
model directory with its architecture spec, tokenizer, metrics.jsonl and train_summary.json.
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

DEFAULT_ORACLE_TABLE = Path(__file__).resolve().parent.parent / "tasks" / "data" / "oracle_oval.json"


def cmd_sft(args: argparse.Namespace) -> int:
    import torch

    from ..model.build import build_model, preset_spec
    from ..model.io import load_pretrained_dir, save_model
    from ..model.spec import spec_from_model
    from ..model.tokenizer import load_tokenizer, save_tokenizer, task_corpus, train_tokenizer
    from ..tasks.oracle_table import OracleTable
    from .sft import OptimConfig, SFTTrainer, seed_everything
    from .sft_data import SFTDataConfig, build_sft_examples

    if args.threads:
        torch.set_num_threads(args.threads)
    started = time.time()
    out = Path(args.out)
    work = out.with_name(out.name + ".training")
    work.mkdir(parents=True, exist_ok=True)
    seed_everything(args.seed)
    table = OracleTable.load(args.oracle_table)
    data_cfg = SFTDataConfig(mpc_examples=args.mpc_examples, decision_per_instruction=args.decision_per_instruction,
                             jitter=args.jitter, seed=args.seed)
    print(f"building SFT data ({data_cfg.mpc_examples} MPC, {8 * data_cfg.decision_per_instruction} decision)...")
    train = build_sft_examples(table, data_cfg)
    held = build_sft_examples(table, SFTDataConfig(mpc_examples=40, decision_per_instruction=6, seed=args.seed + 1))
    if args.init_from:
        model, spec = load_pretrained_dir(args.init_from)
        tokenizer = load_tokenizer(Path(args.init_from) / "tokenizer.json")
        previous = Path(args.init_from) / "metrics.jsonl"
        if previous.exists():  # one log for all stages; the step counter restarts at each stage
            shutil.copyfile(previous, work / "metrics.jsonl")
    else:
        print(f"training the tokenizer (vocab {args.vocab_size})...")
        tokenizer = train_tokenizer(task_corpus(seed=args.seed), vocab_size=args.vocab_size)
        spec = preset_spec(args.preset, vocab_size=tokenizer.get_vocab_size())
        model = build_model(spec, seed=args.seed)
    save_tokenizer(tokenizer, work / "tokenizer.json")
    optim = OptimConfig(steps=args.steps, batch_size=args.batch_size, lr=args.lr, warmup_steps=args.warmup,
                        seed=args.seed, eval_every=args.eval_every, checkpoint_every=args.checkpoint_every)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"model {args.init_from or args.preset}: {n_params:,} parameters; {len(train)} training examples")

    def checkpoint(m, path: Path) -> None:
        save_model(m, path, spec_from_model(m), tokenizer_json=work / "tokenizer.json")

    trainer = SFTTrainer(model, tokenizer, train, optim, work, eval_examples=held, checkpoint_fn=checkpoint)
    history = trainer.train()
    summary = {
        "command": "edge-train " + shlex.join(args.argv),
        "preset": None if args.init_from else args.preset, "init_from": args.init_from, "seed": args.seed,
        "parameters": n_params, "data": asdict(data_cfg), "oracle_table": str(args.oracle_table),
        "history": history, "wall_time_s": time.time() - started, "torch": torch.__version__,
        "threads": torch.get_num_threads(), "machine": platform.processor() or platform.machine(),
        "device": str(trainer.device),
    }
    if args.init_from and (Path(args.init_from) / "train_summary.json").exists():
        # a continued run keeps the history of the run it started from (the model card lists both)
        summary["init_summary"] = json.loads((Path(args.init_from) / "train_summary.json").read_text())
    save_model(trainer.model, out, spec_from_model(trainer.model), tokenizer_json=work / "tokenizer.json",
               metadata={"training": summary})
    (out / "train_summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    os.replace(work / "metrics.jsonl", out / "metrics.jsonl")
    print(f"saved {out} (loss {history['first_loss']:.3f} -> {history['last_loss']:.3f}, "
          f"eval loss {history['eval_loss']:.3f}, {summary['wall_time_s'] / 60:.1f} min)")
    return 0


def cmd_card(args: argparse.Namespace) -> int:
    from .model_card import write_model_card

    path = write_model_card(Path(args.model), Path(args.eval) if args.eval else None)
    print(f"model card written to {path}")
    return 0


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    ap = argparse.ArgumentParser(prog="edge-train", description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="command", required=True)
    p = sub.add_parser("sft", help="supervised fine-tuning on oracle answers")
    p.add_argument("--out", required=True, help="model directory to write")
    p.add_argument("--preset", default="qwen2-4m", help="tiny preset to build from scratch")
    p.add_argument("--init-from", help="start from a local model directory (ours or a Hugging Face checkpoint)")
    p.add_argument("--oracle-table", default=str(DEFAULT_ORACLE_TABLE))
    p.add_argument("--steps", type=int, default=1500)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--warmup", type=int, default=100)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--vocab-size", type=int, default=1024)
    p.add_argument("--mpc-examples", type=int, default=3000)
    p.add_argument("--decision-per-instruction", type=int, default=200)
    p.add_argument("--jitter", type=float, default=0.03)
    p.add_argument("--eval-every", type=int, default=250)
    p.add_argument("--checkpoint-every", type=int, default=0)
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    p.set_defaults(func=cmd_sft)
    c = sub.add_parser("card", help="write the model card from training and evaluation results")
    c.add_argument("--model", required=True)
    c.add_argument("--eval", help="edge-eval --json report")
    c.set_defaults(func=cmd_card)
    args = ap.parse_args(argv)
    args.argv = list(argv if argv is not None else sys.argv[1:])
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError) as exc:
        print(f"edge-train: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
