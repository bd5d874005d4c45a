"""``edge-export``: export a model directory to one ONNX decoder file and check parity.

    edge-export models/pruned -o models/pruned.onnx [--dtype fp16] [--parity-prompts 10]
    edge-export models/pruned -o models/pruned-int8.onnx --quantize int8 [--int8-method dynamic]
    edge-export models/pruned -o models/pruned-int4.onnx --quantize int4 [--block-size 32]
    edge-export models/pruned -o models/pruned.onnx --kv-cache concat   (the traced graph)
    edge-export models/pruned -o models/pruned.gguf [--gguf-type f32|f16|q8_0|q4_0]   (llama.cpp; --format gguf)

Logits (``--logits``, default last): the graph computes the logits of the last position of each run
only (``edge_runtime.export.last_logits``), which is all a decoding loop reads; ``--logits all``
keeps every position's row (perplexity, debugging). Parity checks either kind.

KV cache layout (``--kv-cache``, default auto): fp32 graphs and their quantized variants get the
shared, preallocated cache (``edge_runtime.export.shared_cache_graph``: updated in place, nothing
reallocated per token); fp16 graphs, and models the shared graph does not support, get the traced
graph whose cache grows by concatenation.

int8 defaults to the weight-only method (8-bit MatMulNBits): it is the one that passes the parity
bound on every shipped model; ``--int8-method dynamic`` is faster on CPU but moves the largest
logit of models/tiny/dense and models/tiny/pruned50 past the bound (bench/results/quantization.md).

The graph is written to a temp file next to OUT (with ``--quantize``: the fp32 graph, then its
quantized copy -- ``edge_runtime.export.quantize``), parity is checked on validation-split MPC prompts
(the validation phrasings; never the test split, which is for reporting only) plus a few
validation decision prompts against the tolerance row
of the variant (``edge_runtime.export.parity.TOLERANCES``), and only then is the file moved to
OUT. Exit codes: 0 exported and parity holds; 1 parity failed (OUT is not written or
replaced; with ``--keep-failed`` the graph is kept as ``OUT.parity-failed.onnx`` for
inspection); 2 bad input (one line on stderr: missing directory, bad dtype, ...).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
import uuid
from collections.abc import Sequence
from pathlib import Path

# The quantizer's own names (quantize.py imports only the standard library at module level): its
# QuantizeConfig default is the CLI's default, one source of truth. weight-only is the default
# because on every shipped model it stays inside the parity bound, while the dynamic int8 file of
# models/tiny/dense and models/tiny/pruned50 moves the largest logit past it and is refused
# (bench/results/quantization.md).
from .quantize import DEFAULT_ACCURACY_LEVEL, DEFAULT_INT8_METHOD, INT8_METHODS

DTYPE_CHOICES = ("fp32", "fp16")
QUANTIZE_CHOICES = ("int8", "int4")
INT8_METHOD_CHOICES = INT8_METHODS
KV_CACHE_CHOICES = ("auto", "shared", "concat")
FORMAT_CHOICES = ("onnx", "gguf")
GGUF_TYPE_CHOICES = ("f32", "f16", "q8_0", "q4_0")  # edge_runtime.export.gguf_export.GGUF_TYPES (checked in a test)
BLOCK_SIZE_CHOICES = (16, 32, 64, 128, 256)
LOGITS_CHOICES = ("last", "all")

DESCRIPTION = ("Export a model directory to one ONNX decoder file (KV cache, self-describing metadata) "
               "and write it only if it passes the parity check against PyTorch.")
EPILOG = ("Exit codes: 0 exported and parity holds; 1 parity failed (OUT is not written; --keep-failed keeps "
          "the graph as OUT.parity-failed.onnx); 2 bad input (one line on stderr). Manual: docs/export.md.")


class _UsageError(Exception):
    pass


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, exit 2 (argparse prints usage + message)
        raise _UsageError(message)


def build_parser() -> argparse.ArgumentParser:
    """Every flag says its default (argparse fills in %(default)s); fixed value sets are choices."""
    p = _Parser(prog="edge-export", description=DESCRIPTION, epilog=EPILOG)
    p.add_argument("model_dir", help="model directory written by save_model (arch_spec.json, model.safetensors, "
                                     "tokenizer.json)")
    p.add_argument("-o", "--out", required=True, metavar="OUT", help="output .onnx (or .gguf) file (required)")
    p.add_argument("--format", default=None, choices=FORMAT_CHOICES,
                   help="onnx (the runtime's graph, parity-checked) or gguf (one file for llama.cpp; non-uniform "
                        "models as its 'deci' architecture; docs/export.md, GGUF) (default: from OUT's suffix, "
                        ".gguf -> gguf, else onnx; a mismatching suffix is refused)")
    p.add_argument("--gguf-type", default=None, choices=GGUF_TYPE_CHOICES,
                   help="with --format gguf: tensor type of the 2-D weights (norms and biases stay f32) "
                        "(default: f32)")
    p.add_argument("--dtype", default="fp32", choices=DTYPE_CHOICES, help="graph dtype (default: %(default)s)")
    p.add_argument("--quantize", default=None, choices=QUANTIZE_CHOICES,
                   help="quantize the fp32 graph's projection MatMul weights: int8 (see --int8-method) or int4 "
                        "(weight-only MatMulNBits, see --block-size) (default: none, a float graph)")
    p.add_argument("--int8-method", default=DEFAULT_INT8_METHOD, choices=INT8_METHOD_CHOICES,
                   help="with --quantize int8: weight-only (8-bit MatMulNBits, float activations: close logits, "
                        "passes parity on every shipped model, slower on CPU) or dynamic (int8 weights, uint8 "
                        "activations at run time: faster on CPU, but fails parity on models/tiny/dense and "
                        "models/tiny/pruned50) (default: %(default)s)")
    p.add_argument("--block-size", type=int, default=32, choices=BLOCK_SIZE_CHOICES,
                   help="MatMulNBits block size along K (int4, and int8 weight-only) (default: %(default)s)")
    p.add_argument("--fine-block-layers", default=None, metavar="I,J,...",
                   help="decoder layers whose projections are quantized in --fine-block-size blocks instead of "
                        "--block-size (MatMulNBits; e.g. the few layers that fail parity at the coarse size) "
                        "(default: none)")
    p.add_argument("--fine-block-size", type=int, default=16, choices=BLOCK_SIZE_CHOICES,
                   help="block size of the --fine-block-layers (default: %(default)s)")
    p.add_argument("--accuracy-level", type=int, default=DEFAULT_ACCURACY_LEVEL, choices=(0, 1, 2, 3, 4),
                   metavar="{0..4}",
                   help="MatMulNBits compute precision: 4 multiplies in int8 (activations quantized per block: the "
                        "fast CPU kernels), 0 is ONNX Runtime's float32 compute (several times slower on CPU), 1-3 "
                        "float32/fp16/bf16 where the CPU has them; GPU providers ignore it (default: %(default)s)")
    p.add_argument("--external-data", action="store_true",
                   help="write the weights to OUT.data beside OUT instead of inside the protobuf: ONNX Runtime "
                        "then reads them without a parsed copy of the whole file, which lowers peak memory at load "
                        "(keep both files together) (default: off, one self-contained file)")
    p.add_argument("--head-bits", type=int, default=None, choices=(4, 8),
                   help="MatMulNBits: bit width of the LM head and of a tied embedding table when it differs from "
                        "the projections' (e.g. --quantize int4 --head-bits 8) (default: the projections' bits)")
    p.add_argument("--float-embedding", action="store_true",
                   help="MatMulNBits: keep the embedding Gather's table in float32 (a tied model then stores the "
                        "table twice) instead of reading the quantized LM-head weight through "
                        "GatherBlockQuantized (default: off, the table is quantized and stored once)")
    p.add_argument("--kv-cache", default="auto", choices=KV_CACHE_CHOICES,
                   help="KV cache layout: shared (one preallocated buffer per layer, updated in place; fp32 and "
                        "its quantized variants), concat (traced graph, the cache grows per token; any dtype, and "
                        "what TensorRT builds from) or auto (shared where supported, else concat) "
                        "(default: %(default)s)")
    p.add_argument("--logits", default="last", choices=LOGITS_CHOICES,
                   help="positions the graph computes logits for: 'last' (what decoding reads; the LM head runs "
                        "on one row per run) or 'all' (every position: perplexity, debugging) (default: "
                        "%(default)s)")
    p.add_argument("--kv-capacity", type=int, default=1024, metavar="N",
                   help="positions in the shared KV cache: prompt + generated tokens (default: %(default)s)")
    p.add_argument("--opset", type=int, default=17, metavar="N",
                   help="ONNX opset of the traced (concat) graph (default: %(default)s)")
    p.add_argument("--parity-prompts", type=int, default=10, metavar="N",
                   help="validation-split MPC prompts for the parity check (default: %(default)s)")
    p.add_argument("--decision-prompts", type=int, default=2, metavar="N",
                   help="validation-split decision prompts for the parity check (default: %(default)s)")
    p.add_argument("--max-new-tokens", type=int, default=None, metavar="N",
                   help="greedy token budget per parity prompt (default: the file's generation settings, "
                        "MPC 200 / decision 48)")
    p.add_argument("--threads", type=int, default=1, metavar="N",
                   help="CPU threads for export and the parity check (default: %(default)s)")
    p.add_argument("--keep-failed", action="store_true",
                   help="keep the graph as OUT.parity-failed.onnx when parity fails (default: off, nothing is "
                        "written)")
    return p


def parity_prompts(n_mpc: int, n_decision: int) -> tuple[list[str], list[str]]:
    """``n_mpc`` validation MPC prompts and ``n_decision`` validation decision prompts (validation
    track and phrasings): prompts training never saw, from the split that may be looked at freely
    (the test split stays for reporting only). The MPC prompts take the categories in turn (the
    first instruction of each, then the second, ...), so that every category is checked once
    ``n_mpc`` reaches their number: a quantization can break one category alone."""
    from ..tasks.instructions import instruction_set
    from ..tasks.prompts import build_mpc_prompt

    mpc: list[str] = []
    if n_mpc > 0:
        by_category: dict[object, list] = {}
        for instruction in instruction_set("validation"):
            by_category.setdefault(instruction.category, []).append(instruction)
        rounds = max(len(group) for group in by_category.values())
        in_turn = [group[r] for r in range(rounds) for group in by_category.values() if r < len(group)]
        mpc = [build_mpc_prompt(i.text) for i in in_turn[:n_mpc]]
    decision: list[str] = []
    if n_decision > 0:
        from ..tasks.decision import generate_decision_dataset
        from ..tasks.prompts import build_decision_prompt

        per = max(2, 2 * ((n_decision + 15) // 16))  # 8 instructions x per examples >= n_decision
        examples = generate_decision_dataset(per, split="validation", seed=0)[:n_decision]
        decision = [build_decision_prompt(e.history, e.phrasing) for e in examples]
    return mpc, decision


def _fail(message: str) -> int:
    print(f"edge-export: error: {' '.join(str(message).split())}", file=sys.stderr)
    return 2


def main(argv: Sequence[str] | None = None) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except _UsageError as exc:
        return _fail(exc)
    except SystemExit as exc:  # --help
        return int(exc.code or 0)
    model_dir, out = Path(args.model_dir), Path(args.out)
    try:
        fine_layers = tuple(int(x) for x in (args.fine_block_layers or "").split(",") if x.strip())
    except ValueError:
        return _fail(f"--fine-block-layers must be comma-separated layer indices, got {args.fine_block_layers!r}")
    if fine_layers and args.quantize is None:
        return _fail("--fine-block-layers is a --quantize option")
    if args.quantize is not None and args.dtype != "fp32":
        return _fail(f"--quantize {args.quantize} starts from the fp32 graph; drop --dtype {args.dtype}")
    if not model_dir.is_dir():
        return _fail(f"model directory {model_dir} does not exist")
    fmt = args.format or ("gguf" if out.suffix == ".gguf" else "onnx")
    if out.suffix != f".{fmt}":
        return _fail(f"output {out} must end in .{fmt} for --format {fmt}")
    if fmt == "gguf":
        if args.quantize is not None or args.dtype != "fp32":
            return _fail("--quantize / --dtype are ONNX options; for GGUF use --gguf-type f32|f16|q8_0|q4_0")
        if out.is_dir():
            return _fail(f"output {out} is a directory")
        if args.external_data:
            return _fail("--external-data is an ONNX option; a GGUF file always holds its weights")
        from .gguf_export import run_cli
        return run_cli(model_dir, out, args.gguf_type or "f32")
    if args.gguf_type is not None:
        return _fail("--gguf-type is a GGUF option; add --format gguf (or an OUT ending in .gguf)")
    if out.suffix != ".onnx":
        return _fail(f"output {out} must end in .onnx")
    if out.is_dir():
        return _fail(f"output {out} is a directory")
    for name in ("parity_prompts", "decision_prompts"):
        if getattr(args, name) < 0:
            return _fail(f"--{name.replace('_', '-')} must be >= 0")
    if args.parity_prompts + args.decision_prompts < 1:
        return _fail("parity needs at least one prompt (--parity-prompts / --decision-prompts)")
    if args.max_new_tokens is not None and args.max_new_tokens < 1:
        return _fail("--max-new-tokens must be >= 1")
    if args.threads < 1:
        return _fail("--threads must be >= 1")
    if args.kv_capacity < 2:
        return _fail("--kv-capacity must be >= 2")
    if args.kv_cache == "shared" and args.dtype != "fp32":
        return _fail(f"--kv-cache shared is float32 only (quantized variants included); use --kv-cache concat "
                     f"for --dtype {args.dtype}")

    import torch

    from ..model.io import ModelFormatError
    from ..contracts.arch_spec import ArchSpecError
    from .errors import ExportError
    from .onnx_export import GENERATION_DEFAULTS, export_onnx
    from .parity import TOLERANCES, check_parity
    from .external_data import data_file_name, externalize_weights
    from .last_logits import rewrite_file
    from .quantize import QuantizeConfig, QuantizeError, quantize_onnx
    from .shared_cache_graph import check_supported

    torch.set_num_threads(args.threads)
    layout = args.kv_cache
    if layout != "concat":
        try:
            from ..contracts.arch_spec import ArchSpec
            reason = "the graph dtype is fp16" if args.dtype != "fp32" else check_supported(
                ArchSpec.load(model_dir / "arch_spec.json"), args.kv_capacity)
        except (ArchSpecError, FileNotFoundError, OSError) as exc:
            return _fail(exc)
        if reason and layout == "shared":
            return _fail(f"--kv-cache shared: {reason}; use --kv-cache concat")
        layout = "concat" if reason else "shared"
    kv = dict(kv_cache=layout, capacity=args.kv_capacity if layout == "shared" else None)
    out.parent.mkdir(parents=True, exist_ok=True)
    tag = uuid.uuid4().hex[:8]
    tmp = out.with_name(f".{out.stem}.export-{tag}.onnx")
    tmp_fp32 = out.with_name(f".{out.stem}.export-{tag}.fp32.onnx")
    # --external-data: the graph and its data file are staged in a folder of their own under their
    # final names (the graph refers to the data file by name), then moved beside OUT
    staging = out.with_name(f".{out.stem}.export-{tag}.d") if args.external_data else None
    quant = None
    try:
        t0 = time.perf_counter()
        try:
            if args.quantize is None:
                export_onnx(model_dir, tmp, dtype=args.dtype, opset=args.opset, **kv)
            else:
                export_onnx(model_dir, tmp_fp32, dtype="fp32", opset=args.opset, **kv)
                config = QuantizeConfig(args.quantize, int8_method=args.int8_method, block_size=args.block_size,
                                        accuracy_level=args.accuracy_level,
                                        quantize_embedding=not args.float_embedding, head_bits=args.head_bits,
                                        fine_block_layers=fine_layers, fine_block_size=args.fine_block_size)
                quant = quantize_onnx(tmp_fp32, tmp, config)
            if args.logits == "last":
                rewrite_file(tmp, tmp)
        except (ExportError, QuantizeError, ModelFormatError, ArchSpecError, FileNotFoundError) as exc:
            return _fail(exc)
        if staging is not None:
            staging.mkdir()
            self_contained, tmp = tmp, staging / out.name
            externalize_weights(self_contained, tmp)
            self_contained.unlink()
        t_export = time.perf_counter() - t0
        mpc, decision = parity_prompts(args.parity_prompts, args.decision_prompts)
        budgets = GENERATION_DEFAULTS["max_new_tokens"]
        tokens = ([args.max_new_tokens or budgets["mpc"]] * len(mpc)
                  + [args.max_new_tokens or budgets["decision"]] * len(decision))
        t1 = time.perf_counter()
        report = check_parity(model_dir, tmp, mpc + decision, tokens, threads=args.threads)
        t_parity = time.perf_counter() - t1
        size = tmp.stat().st_size
        data_file = tmp.with_name(data_file_name(tmp.name)) if staging is not None else None
        if data_file is not None:
            size += data_file.stat().st_size
        variant = args.dtype if quant is None else f"{args.quantize} {quant.config.method}"
        cache = f"shared KV cache, capacity {args.kv_capacity}" if layout == "shared" else f"concat KV cache, opset {args.opset}"
        rows = "last-position logits" if args.logits == "last" else "logits at every position"
        print(f"edge-export {model_dir} -> {out} ({variant}, {cache}, {rows})")
        print(f"  size               {size / 2**20:.2f} MiB ({size:,} bytes)"
              + (f"; weights in {out.name}.data" if data_file is not None else ""))
        if quant is not None:
            print(f"  quantized          {len(quant.quantized)} MatMul weights; {100 * quant.ratio:.0f}% of the fp32 "
                  f"file ({quant.src_bytes / 2**20:.2f} MiB)"
                  + (f"; {len(quant.padded)} with K zero-padded to a block multiple" if quant.padded else ""))
        print(f"  export             {t_export:.1f} s")
        print(f"  parity prompts     {len(mpc)} MPC + {len(decision)} decision (validation split), {t_parity:.1f} s")
        kl_bound = TOLERANCES[report.variant].max_mean_kl if report.variant in TOLERANCES else None
        if kl_bound is None:
            print(f"  max |logit diff|   {report.max_abs_logit_diff:.3g} (tolerance {report.logit_tolerance:.3g})")
        else:  # quantized: judged by the answer-step KL; the largest logit move is reported only
            print(f"  mean KL            {report.mean_kl:.3g} nats at the answer steps, worst prompt (tolerance "
                  f"{kl_bound})")
            print(f"  max |logit diff|   {report.max_abs_logit_diff:.3g} (reported, not a criterion for {report.variant})")
        print(f"  identical answers  {report.identical_answers}/{report.n_prompts}"
              + (f" (near ties {report.near_ties})" if report.near_ties else ""))
        print(f"  token agreement    {report.token_agreement:.3f} (teacher forced, over the reference answers)")
        if report.answer_prompts:
            floor = TOLERANCES[report.variant].min_answer_agreement if report.variant in TOLERANCES else None
            print(f"  answer choice      {report.same_answer_choices}/{report.answer_prompts}"
                  f" prompts set the reference's parameters / verdict"
                  + (f" (floor {floor})" if floor is not None else " (reported)"))
        if not report.ok:
            kept = ""
            if args.keep_failed:
                failed = out.with_name(out.stem + ".parity-failed.onnx")
                if data_file is not None:  # the kept graph keeps its weights: re-inline them
                    import onnx

                    onnx.save_model(onnx.load(str(tmp)), str(failed))
                else:
                    os.replace(tmp, failed)
                kept = f"; graph kept as {failed}"
            print(f"edge-export: parity FAILED: {report.message}; {out} was not written{kept}", file=sys.stderr)
            return 1
        if data_file is not None:  # the data first: the graph that refers to it lands last
            os.replace(data_file, out.with_name(data_file.name))
        os.replace(tmp, out)
        print(f"  parity             OK -> {out}" + (f" + {out.name}.data" if data_file is not None else ""))
        if quant is not None:
            print(f"  note               {args.quantize} answers may differ from the fp32 model's; check the validation "
                  f"score: edge-eval --model {out} --task both --split validation")
        return 0
    finally:
        tmp.unlink(missing_ok=True)
        tmp_fp32.unlink(missing_ok=True)
        if staging is not None:
            shutil.rmtree(staging, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
