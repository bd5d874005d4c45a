"""``edge-eval``: held-out closed-loop evaluation of a driving LLM.

    edge-eval --model models/dense --task mpc|decision|both --split heldout [--track hairpin] [--json OUT]
    edge-eval --model models/dense.onnx --constrained ...   (grammar-constrained decoding, ONNX only)

Prints a table and optionally writes the full report (every instruction, answer and score) as
JSON. Errors print one line and exit 2.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from ..sim.tracks import VALIDATION_TRACK, load_track
from ..tasks.oracle_table import OracleTable
from .report import EvalSettings, evaluate_decision, evaluate_mpc, format_report

DEFAULT_ORACLE = Path(__file__).resolve().parent.parent / "tasks" / "data" / "oracle_validation_hairpin.json"


def load_policy(path: str, constrained: bool = False):
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

        return TorchPolicy.from_dir(p)
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
    ap = argparse.ArgumentParser(prog="edge-eval", description=__doc__.split("\n")[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--task", choices=["mpc", "decision", "both"], default="both")
    ap.add_argument("--split", choices=["train", "validation"], default="validation")
    ap.add_argument("--track", default=VALIDATION_TRACK)
    ap.add_argument("--decision-examples", type=int, default=20, help="per instruction (even)")
    ap.add_argument("--oracle", help=f"oracle table of the same instructions and track (default: {DEFAULT_ORACLE.name} "
                                     "when evaluating held-out on hairpin)")
    ap.add_argument("--json", help="write the full report as JSON")
    ap.add_argument("--constrained", action="store_true",
                    help="ONNX models: grammar-constrained decoding (every answer parses; edge_runtime.runtime.constrained)")
    args = ap.parse_args(argv)
    try:
        load_track(args.track)
        settings = EvalSettings(split=args.split, track=args.track, decision_per_instruction=args.decision_examples)
        oracle = None
        if args.oracle:
            oracle = OracleTable.load(args.oracle)
        elif args.split == "validation" and args.track == VALIDATION_TRACK and DEFAULT_ORACLE.exists():
            oracle = OracleTable.load(DEFAULT_ORACLE)
        policy = load_policy(args.model, constrained=args.constrained)
    except (ValueError, OSError) as exc:
        print(f"edge-eval: error: {exc}", file=sys.stderr)
        return 2
    report = {"model": args.model, "parameters": policy.parameter_count(), "file_size": policy.file_size(),
              "constrained": bool(args.constrained)}
    if args.task in ("mpc", "both"):
        report["mpc"] = evaluate_mpc(policy, settings, oracle)
    if args.task in ("decision", "both"):
        report["decision"] = evaluate_decision(policy, settings)
    print(format_report(report))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(report, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
