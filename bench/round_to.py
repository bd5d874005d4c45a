"""Which MLP width multiple (``edge-train bpf --round-to``) the vehicle runtime prefers: ONNX Runtime decode
time per token against the MLP width, in the precisions we ship, measured in one interleaved run.

    python bench/round_to.py [--widths 608 616 ... 768] [--rounds 7] [--json bench/results/round_to/result.json]

Models (random weights): SmolLM2-135M's pruned50 layer shape (hidden 576, 6 query / 3 KV heads of 64,
Llama family) with ``--layers`` decoder layers, every layer the same MLP width W, and a small vocabulary
(1024) so that the decoder layers, not the LM head, are what the time measures. Each W is exported the
way ``edge-export`` does: fp32 with the shared in-place KV cache, and int4 MatMulNBits (blocks of 16,
8-bit head, accuracy level 4, as models/pruned50.onnx). Decode time per token is the median step of a
greedy generation after a 100-token prompt, rounds interleaved over every width and precision.

Why a fit and residuals rather than raw times: a wider MLP is slower because it streams more weights, so
the question is whether a width runs faster or slower *than its size predicts*. Per precision the script
fits time = a + b * W over all widths and reports each width's residual (%), and the mean residual of the
widths whose largest power-of-two divisor is 8, 16, 32, 64 and 128 or more: a multiple the kernels like
shows as a negative residual. Writes JSON and a Markdown table next to it.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import machine_manifest  # noqa: E402
from decode_speed import corpus, make_prompt  # noqa: E402  (the same tokenizer corpus and prompt builder)

DEFAULT_WIDTHS = (608, 616, 624, 632, 640, 648, 656, 664, 672, 704, 768)


def alignment(width: int) -> int:
    """The largest power of two dividing ``width``, capped at 128 (">= 128")."""
    a = 1
    while width % (a * 2) == 0 and a < 128:
        a *= 2
    return a


def build(width: int, layers: int, tok_path: Path, tok, work: Path) -> dict[str, Path]:
    from edge_runtime.export.onnx_export import export_onnx
    from edge_runtime.export.quantize import QuantizeConfig, quantize_onnx
    from edge_runtime.model.build import build_model, preset_spec
    from edge_runtime.model.io import save_model
    from edge_runtime.model.tokenizer import EOS_TOKEN, PAD_TOKEN

    eos, pad = tok.token_to_id(EOS_TOKEN), tok.token_to_id(PAD_TOKEN)
    spec = preset_spec("llama-4m", vocab_size=tok.get_vocab_size(), hidden_size=576, head_dim=64, num_q_heads=6,
                       num_kv_heads=3, intermediate_size=width, num_layers=layers, eos_token_id=eos,
                       pad_token_id=pad, bos_token_id=eos, tie_word_embeddings=True)  # tied, as SmolLM2
    model_dir = save_model(build_model(spec, seed=width), work / f"w{width}", tokenizer_json=tok_path)
    fp32 = export_onnx(model_dir, work / f"w{width}-fp32.onnx", dtype="fp32", kv_cache="shared")
    int4 = work / f"w{width}-int4.onnx"
    quantize_onnx(fp32, int4, QuantizeConfig("int4", block_size=16, head_bits=8))
    return {"fp32": fp32, "int4": int4}


def decode_ms(gen, prompt: str, new_tokens: int) -> float:
    res = gen.generate(prompt, max_new_tokens=new_tokens, stop_at_eos=False)
    return 1e3 * statistics.median(res.decode_times_s)


def fit_residuals(widths: list[int], ms: list[float]) -> list[float]:
    """Per width: (measured - linear fit) / fit, in percent."""
    b, a = np.polyfit(np.asarray(widths, float), np.asarray(ms, float), 1)
    return [100.0 * (m - (a + b * w)) / (a + b * w) for w, m in zip(widths, ms)]


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--widths", type=int, nargs="+", default=list(DEFAULT_WIDTHS))
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--new-tokens", type=int, default=33)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", default=None, help="write the result here (and a .md beside it)")
    args = ap.parse_args(argv)
    if len(args.widths) < 3 or any(w < 8 or w % 8 for w in args.widths):
        ap.error("--widths: at least three multiples of 8")
    from edge_runtime.decoding.generator import OnnxGenerator
    from edge_runtime.model.tokenizer import save_tokenizer, train_tokenizer

    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="round_to-") as td:
        work = Path(td)
        tok = train_tokenizer(corpus(), vocab_size=1024)
        tok_path = save_tokenizer(tok, work / "tokenizer.json")
        files = {w: build(w, args.layers, tok_path, tok, work) for w in args.widths}
        gens = {(w, p): OnnxGenerator(path, threads=args.threads) for w, fs in files.items() for p, path in fs.items()}
        sizes = {f"{w}-{p}": path.stat().st_size for w, fs in files.items() for p, path in fs.items()}
        prompt = make_prompt(tok, 100)
        for g in gens.values():  # warm-up: arenas, kernel choice
            decode_ms(g, prompt, 6)
        samples: dict[tuple[int, str], list[float]] = {k: [] for k in gens}
        rng = np.random.default_rng(0)
        for _ in range(args.rounds):
            order = list(gens)
            rng.shuffle(order)  # interleaved, in a different order each round
            for key in order:
                samples[key].append(decode_ms(gens[key], prompt, args.new_tokens))
    result: dict = {"widths": args.widths, "layers": args.layers, "rounds": args.rounds, "new_tokens": args.new_tokens,
                    "threads": args.threads, "file_bytes": sizes, "precisions": {},
                    "machine": machine_manifest(threads=args.threads), "wall_s": time.perf_counter() - started,
                    "command": "python bench/round_to.py " + " ".join(sys.argv[1:] if argv is None else argv)}
    for precision in ("fp32", "int4"):
        ms = [statistics.median(samples[(w, precision)]) for w in args.widths]
        res = fit_residuals(args.widths, ms)
        by_alignment: dict[str, list[float]] = {}
        for w, r in sorted(zip(args.widths, res), key=lambda x: alignment(x[0])):
            a = alignment(w)
            by_alignment.setdefault(str(a) if a < 128 else ">=128", []).append(r)
        result["precisions"][precision] = {
            "ms_per_token": dict(zip(map(str, args.widths), ms)),
            "spread_ms": {str(w): [min(samples[(w, precision)]), max(samples[(w, precision)])] for w in args.widths},
            "residual_pct": dict(zip(map(str, args.widths), res)),
            "mean_residual_pct_by_alignment": {k: statistics.mean(v) for k, v in by_alignment.items()},
            "widths_by_alignment": {k: [w for w in args.widths if (str(alignment(w)) if alignment(w) < 128 else ">=128")
                                        == k] for k in by_alignment}}
    md = markdown(result)
    print(md)
    if args.json:
        path = Path(args.json)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(result, indent=1) + "\n")
        path.with_suffix(".md").write_text(md)
    return result


def markdown(result: dict) -> str:
    m = result["machine"]
    lines = [f"# MLP width multiple vs ONNX Runtime decode ({m.get('cpu_model') or m.get('machine')}, "
             f"{result['threads']} threads)", "",
             f"{result['layers']} decoder layers of SmolLM2's pruned50 shape, every layer MLP width W; median decode "
             f"step of {result['new_tokens']} tokens, {result['rounds']} interleaved rounds. Residual: measured vs the "
             "linear fit of time on W over all widths (negative: faster than the width predicts).", "",
             "| W | largest power-of-2 divisor | fp32 ms/token | fp32 residual | int4 ms/token | int4 residual |",
             "|---|---|---|---|---|---|"]
    f, q = result["precisions"]["fp32"], result["precisions"]["int4"]
    for w in result["widths"]:
        k = str(w)
        lines.append(f"| {w} | {alignment(w)} | {f['ms_per_token'][k]:.3f} | {f['residual_pct'][k]:+.1f} % | "
                     f"{q['ms_per_token'][k]:.3f} | {q['residual_pct'][k]:+.1f} % |")
    lines += ["", "| alignment | widths | fp32 mean residual | int4 mean residual |", "|---|---|---|---|"]
    for a in f["mean_residual_pct_by_alignment"]:
        lines.append(f"| {a} | {', '.join(map(str, f['widths_by_alignment'][a]))} | "
                     f"{f['mean_residual_pct_by_alignment'][a]:+.1f} % | {q['mean_residual_pct_by_alignment'][a]:+.1f} % |")
    lines += ["", f"Command: `{result['command']}`", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
