"""``edge-eval``: closed-loop evaluation of a driving LLM on the validation or test split.

    edge-eval --model models/tiny/dense --task mpc|decision|both --split validation|test [--json OUT]
    edge-eval --model models/tiny/dense.onnx --constrained ...   (grammar-constrained decoding, ONNX only)

Iterate on validation; run test only to report (docs/evaluation.md). Each split brings its own
phrasings, track and, where one is shipped, oracle table. Prints a table with a bootstrap 95 %
interval on every figure and optionally writes the full report (every instruction, answer and
score) as JSON. Errors print one line and exit 2.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from ..decoding.step_api import KVCapacityError
from ..sim.tracks import SPLIT_TRACKS, load_track, split_track
from ..tasks.oracle_table import OracleTable, default_table_path
from .report import EvalSettings, evaluate_decision, evaluate_mpc, format_report


def load_policy(path: str, constrained: bool = False, device: str = "cpu", batch_size: int = 16):
    """A model directory (safetensors + arch spec, run with PyTorch) or an exported ONNX file
    (run with ONNX Runtime, as on the vehicle; ``constrained``: grammar-constrained decoding)."""
    p = Path(path)
    if not p.exists():
        raise ValueError(f"{p}: model not found (pass a model directory with model.safetensors and arch_spec.json, "
                         "or an .onnx file from edge-export)")
    if p.is_dir():
        if constrained:
            raise ValueError(f"{p}: --constrained needs an exported .onnx model (edge-export), not a model directory")
        from .torch_policy import TorchPolicy

        return TorchPolicy.from_dir(p, batch_size=batch_size, device=device)
    if device != "cpu":
        raise ValueError(f"{p}: --device {device} is for model directories (PyTorch); an .onnx file runs on the CPU "
                         "with ONNX Runtime, as on the vehicle")
    if p.suffix == ".onnx":
        from ..decoding.generator import OnnxPolicy
        from ..decoding.model_file import ModelLoadError

        try:
            return OnnxPolicy(p, constrained=constrained)
        except ModelLoadError as exc:
            raise ValueError(str(exc)) from None
    raise ValueError(f"{p}: neither a model directory nor an .onnx file")


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    ap = argparse.ArgumentParser(prog="edge-eval", description=__doc__.split("\n")[0].replace("``", ""))
    ap.add_argument("--model", required=True,
                    help="model directory (safetensors + arch_spec.json) or exported .onnx file")
    ap.add_argument("--task", choices=["mpc", "decision", "both"], default="both",
                    help="which task to evaluate (default: %(default)s)")
    ap.add_argument("--split", choices=list(SPLIT_TRACKS), default="validation",
                    help="phrasings and track to evaluate on: iterate on validation, use test only to report "
                         "(default: %(default)s)")
    ap.add_argument("--track", help="built-in track or track CSV path (default: the split's track, "
                                    + ", ".join(f"{k} {v}" for k, v in SPLIT_TRACKS.items()) + ")")
    ap.add_argument("--decision-examples", type=int, default=20,
                    help="decision examples per instruction, an even number (default: %(default)s)")
    ap.add_argument("--oracle", help="oracle table of the same instructions on the same track, for the fraction of "
                                     "the oracle (default: the shipped tasks/data/oracle_<split>_<track>.json "
                                     "when it exists)")
    ap.add_argument("--json", help="write the full report as JSON to this file (default: none)")
    ap.add_argument("--constrained", action="store_true",
                    help="ONNX models only: grammar-constrained decoding, every answer parses (default: off)")
    ap.add_argument("--device", choices=["cpu", "cuda", "auto"], default="cpu",
                    help="model directories only: where PyTorch generates (default: %(default)s)")
    ap.add_argument("--batch-size", type=int, default=16,
                    help="model directories only: prompts generated together (default: %(default)s)")
    args = ap.parse_args(argv)
    try:
        track = args.track or split_track(args.split)
        load_track(track)
        settings = EvalSettings(split=args.split, track=track, decision_per_instruction=args.decision_examples)
        oracle = None
        default_oracle = default_table_path(args.split, track)
        if args.oracle:
            oracle = OracleTable.load(args.oracle)
        elif default_oracle is not None and default_oracle.exists():
            oracle = OracleTable.load(default_oracle)
        if oracle is not None and Path(str(oracle.eval_config.track)).name != Path(str(track)).name:
            raise ValueError(f"--oracle {oracle.source}: the table is for track {oracle.eval_config.track!r}, "
                             f"not {track!r}; pass the table of this track or leave --oracle out")
        if args.batch_size < 1:
            raise ValueError(f"--batch-size must be >= 1, got {args.batch_size}")
        policy = load_policy(args.model, constrained=args.constrained, device=args.device, batch_size=args.batch_size)
    except (ValueError, OSError) as exc:
        print(f"edge-eval: error: {exc}", file=sys.stderr)
        return 2
    # An ONNX file's parameter count is its arch spec's, which the load checked against every weight
    # matrix of the graph (edge_runtime.decoding.graph_check): a file whose metadata claims another model
    # never gets this far.
    report = {"model": args.model, "parameters": policy.parameter_count(), "file_size": policy.file_size(),
              "constrained": bool(args.constrained)}
    generator = getattr(policy, "generator", None)
    if generator is not None:  # an ONNX file: which weights it was exported from, and how it was quantized
        report["source_sha256"] = generator.source_sha256
        raw = generator.metadata.get("edge_runtime.quantization")
        report["quantization"] = json.loads(raw) if raw else None
    try:
        if args.task in ("mpc", "both"):
            report["mpc"] = evaluate_mpc(policy, settings, oracle)
        if args.task in ("decision", "both"):
            report["decision"] = evaluate_decision(policy, settings)
    except KVCapacityError as exc:  # a task's prompts checked before its first generation
        print(f"edge-eval: error: {exc}", file=sys.stderr)
        return 2
    print(format_report(report))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(report, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
