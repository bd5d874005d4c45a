"""Calibrate the parity criterion of quantized exports: mean KL at the answer steps of working
quantized files against files that are broken on purpose, per model.

    python bench/parity_calibration.py --model-dir models/tiny/dense [--model-dir /work/runs/smollm2-sft ...]
        [--kinds int8 int4] [--json bench/results/parity_calibration.json]
    python bench/parity_calibration.py --file WEIGHTS_DIR=FILE.onnx=LABEL [--file ...]   (files made elsewhere)

For each model directory: export the fp32 file (shared KV cache), quantize it with each kind (the
edge-export defaults), and break a copy of the int4 file in two ways a faulty exporter could:
``swap_layers`` exchanges the MLP down-projection weights of the first and last layer (shapes
match, so the file still loads), ``zero_layer`` zeroes the middle layer's attention output
projection. Every file goes through ``check_parity`` with edge-export's parity prompts; the per-file
max over prompts of the mean KL(PyTorch || file) at the answer steps, the max |logit diff| and the
teacher-forced token agreement and the answer-choice agreement are written to the JSON. The
criterion separates the two groups when every working file's KL is well below every broken file's.

``--file`` checks files that were made elsewhere against the weights they came from, with a label
saying what is known of them (say, that ``edge-eval`` found a category broken): the broken files
above break the graph, while a quantization that fails one instruction category keeps the graph
whole, and only such real files show whether the criterion catches it.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import onnx
from onnx import numpy_helper

from edge_runtime.export.cli import parity_prompts
from edge_runtime.export.onnx_export import export_onnx
from edge_runtime.export.parity import check_parity
from edge_runtime.export.quantize import QuantizeConfig, quantize_onnx

REPO = Path(__file__).resolve().parents[1]


def _nbits_weights(proto) -> list[tuple[Any, Any]]:
    """(node, B initializer) of every MatMulNBits in graph order."""
    inits = {i.name: i for i in proto.graph.initializer}
    return [(n, inits[n.input[1]]) for n in proto.graph.node if n.op_type == "MatMulNBits"]


def break_file(src: Path, dst: Path, how: str) -> Path:
    proto = onnx.load(str(src))
    weights = _nbits_weights(proto)
    if how == "swap_layers":
        down = [(n, w) for n, w in weights if n.output[0].endswith(".mlp")]  # l{i}.mlp: the down projection
        if len(down) < 2:
            raise SystemExit(f"{src}: no two down projections found to swap")
        (_, a), (_, b) = down[0], down[-1]
        va, vb = numpy_helper.to_array(a).copy(), numpy_helper.to_array(b).copy()
        a.CopyFrom(numpy_helper.from_array(vb, a.name))
        b.CopyFrom(numpy_helper.from_array(va, b.name))
    elif how == "zero_layer":
        o_proj = [(n, w) for n, w in weights if n.output[0].endswith(".o")]  # l{i}.o: attention output
        _, w = o_proj[len(o_proj) // 2]
        w.CopyFrom(numpy_helper.from_array(np.full_like(numpy_helper.to_array(w), 0x88), w.name))  # 4-bit zeros
    else:
        raise ValueError(how)
    onnx.save(proto, str(dst))
    return dst


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model-dir", action="append", default=[],
                    help="fp32 model directory: export, quantize, break and check (repeatable)")
    ap.add_argument("--file", action="append", default=[], metavar="WEIGHTS_DIR=FILE.onnx=LABEL",
                    help="an existing file to check against the weights it came from (repeatable)")
    ap.add_argument("--kinds", nargs="+", default=["int8", "int4"])
    ap.add_argument("--mpc-prompts", type=int, default=10, help="edge-export's default (default: 10)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    if not args.model_dir and not args.file:
        ap.error("give at least one --model-dir or --file")
    existing = []
    for spec in args.file:
        parts = spec.split("=")
        if len(parts) != 3 or not all(parts):
            ap.error(f"--file {spec!r}: expected WEIGHTS_DIR=FILE.onnx=LABEL")
        existing.append((Path(parts[0]), Path(parts[1]), parts[2]))
    mpc, decision = parity_prompts(args.mpc_prompts, 2)
    prompts = mpc + decision
    budgets = [200] * len(mpc) + [48] * len(decision)
    results: list[dict[str, Any]] = []

    def check(model_dir: Path, path: Path, name: str) -> None:
        rep = check_parity(model_dir, path, prompts, budgets, threads=args.threads)
        row = {"model": str(model_dir), "file": name, "mean_kl_max": rep.mean_kl,
               "mean_kl_per_prompt": [round(d["mean_kl"], 5) for d in rep.details],
               "max_abs_logit_diff": rep.max_abs_logit_diff, "token_agreement": rep.token_agreement,
               "answer_agreement": rep.answer_agreement, "answer_prompts": rep.answer_prompts,
               "choice_misses": [{"prompt": d["prompt"], "weights": d["reference_choice"], "file": d["file_choice"]}
                                 for d in rep.details if d["same_choice"] is False],
               "identical_answers": rep.identical_answers, "prompts": rep.n_prompts, "parity_ok": rep.ok,
               "message": rep.message}
        results.append(row)
        print(json.dumps({k: v for k, v in row.items() if k not in ("mean_kl_per_prompt", "choice_misses")}),
              flush=True)

    for model_dir, path, label in existing:
        check(model_dir, path, f"{path.name}: {label}")
    for model_dir in map(Path, args.model_dir):
        with tempfile.TemporaryDirectory() as td:
            fp32 = export_onnx(model_dir, Path(td) / "fp32.onnx", kv_cache="shared")
            files = {}
            for kind in args.kinds:
                files[kind] = Path(td) / f"{kind}.onnx"
                quantize_onnx(fp32, files[kind], QuantizeConfig(kind))
            if "int4" in files:
                for how in ("swap_layers", "zero_layer"):
                    files[f"int4 broken: {how}"] = break_file(files["int4"], Path(td) / f"broken-{how}.onnx", how)
            for name, path in files.items():
                check(model_dir, path, name)
    out = {"prompts": f"{len(mpc)} MPC + {len(decision)} decision (validation split, edge-export's parity prompts)",
           "results": results}
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1) + "\n", encoding="utf-8")
    return out


if __name__ == "__main__":
    main()
