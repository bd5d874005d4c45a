"""LLM decode speed on this machine: ONNX Runtime vs the weight-streaming floor, vs PyTorch eager,
and dense vs a structurally pruned ("pruned50") model -- measured in one run.

    python bench/decode_speed.py [--repeats 3] [--new-tokens 64] [--prompt-tokens 250] [--json out.json]

Models (random weights, fp32): a Qwen2-shaped dense model (~79M parameters, hidden 768, 12 layers,
12 query / 6 KV heads, MLP 2048) and its pruned50 counterpart (every layer except the first and the
last keeps half the query heads of every GQA group -- 1 of 2 -- and half the MLP channels), built
with `resize_layer`, saved with `save_model` and exported with `export_onnx` into a temp dir --
both with the shared, in-place KV cache (what `edge-export` writes for fp32), and the dense model
also as the traced graph whose cache grows by concatenation, for comparison.

Targets (the issue's): ORT decode within 1.25x the weight-streaming floor (ONNX bytes / measured copy
bandwidth); pruned50 decode speed-up >= 0.9x its parameter ratio; ORT >= 2x faster per token than
PyTorch eager. PyTorch eager is a manual greedy loop with a DynamicCache (sdpa attention, no
generate()), timed per decode step like the ONNX generator. Repeats are interleaved (dense ORT,
pruned ORT, eager, bandwidth in each round) and every reported number is a median.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import torch

from edge_runtime.export.onnx_export import export_onnx
from edge_runtime.model.build import build_model, preset_spec, resize_layer
from edge_runtime.model.io import save_model
from edge_runtime.contracts.arch_spec import LayerSpec
from edge_runtime.model.tokenizer import EOS_TOKEN, PAD_TOKEN, save_tokenizer, train_tokenizer
from edge_runtime.decoding.generator import OnnxGenerator

from _common import TorchSteps  # bench/_common.py (this script's directory is on sys.path)

TARGETS = {"decode_over_floor_max": 1.25, "pruned_speedup_over_param_ratio_min": 0.9,
           "ort_over_eager_speedup_min": 2.0}

DENSE = dict(hidden_size=768, num_layers=12, num_q_heads=12, num_kv_heads=6, intermediate_size=2048)

_SENTENCES = [
    "You are the driving controller of a small racing car on a closed track.",
    "Drive on the centre line and keep a safe distance from the walls.",
    "Overtake the car ahead on the left side when the straight is long enough.",
    "Reduce the speed in the tight corners and accelerate on the straights.",
    "The current speed is 3.2 m/s, the lateral offset is -0.15 m and the heading error is 0.04 rad.",
    "Set the MPC weights: q_d 4.0, q_v 1.5, r_steer 0.2, r_accel 0.1, v_ref 5.5, d_ref 0.0.",
    "Stay on the racing line, brake late, and never leave the track boundaries.",
    "Answer with the parameter block only, in the schema given above.",
]


def corpus() -> list[str]:
    rng = np.random.default_rng(0)
    out = list(_SENTENCES)
    for _ in range(400):  # numbers and shuffled sentences, so the BPE learns a useful vocabulary
        k = rng.integers(2, 5)
        out.append(" ".join(rng.choice(_SENTENCES, size=k)) + f" v={rng.uniform(0, 9):.2f} d={rng.uniform(-1, 1):.2f}")
    return out


def make_prompt(tok, n_tokens: int) -> str:
    text, i = "", 0
    while len(tok.encode(text).ids) < n_tokens:
        text += _SENTENCES[i % len(_SENTENCES)] + f" Step {i}: speed {1.0 + 0.37 * i:.2f} m/s. "
        i += 1
    ids = tok.encode(text).ids[:n_tokens]
    return tok.decode(ids)


def pruned_layer(layer: LayerSpec) -> LayerSpec:
    # half the query heads in every GQA group (kept evenly: the q:kv ratio halves), KV heads unchanged
    assert layer.gqa_ratio % 2 == 0, "pruned50 needs an even GQA ratio"
    return LayerSpec(layer.num_q_heads // 2, layer.num_kv_heads, layer.intermediate_size // 2)


def build_models(tok_path: Path, vocab: int, eos: int, pad: int, work: Path):
    spec = preset_spec("qwen2-30m", vocab_size=vocab, eos_token_id=eos, pad_token_id=pad, bos_token_id=eos, **DENSE)
    dense = build_model(spec, seed=0)
    dense_dir = save_model(dense, work / "dense", tokenizer_json=tok_path)

    pruned = build_model(spec, seed=1)
    n = spec.num_layers
    with torch.no_grad():
        for i in range(1, n - 1):
            resize_layer(pruned, i, pruned_layer(spec.layers[i]))
        gen = torch.Generator().manual_seed(2)
        for i in range(1, n - 1):  # resize_layer leaves uninitialised weights: give them random values
            for p in pruned.model.layers[i].parameters():
                if p.dim() == 2:
                    p.copy_(torch.randn(p.shape, generator=gen) * 0.02)
                else:
                    p.zero_()  # biases (q/k/v in Qwen2)
    pruned_dir = save_model(pruned, work / "pruned50", tokenizer_json=tok_path)
    return dense, dense_dir, pruned_dir


def n_params(model) -> int:
    return sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())


def bandwidth_gbs(mib: int = 512, copies: int = 5) -> float:
    """Copy bandwidth, (bytes read + bytes written) / time, median over `copies` copies."""
    src = np.ones(mib * 2**20 // 8, dtype=np.float64)
    dst = np.empty_like(src)
    np.copyto(dst, src)  # fault the pages in
    times = []
    for _ in range(copies):
        t = time.perf_counter()
        np.copyto(dst, src)
        times.append(time.perf_counter() - t)
    return 2 * src.nbytes / statistics.median(times) / 1e9


def time_ort(gen: OnnxGenerator, prompt: str, new_tokens: int) -> tuple[float, float, int]:
    res = gen.generate(prompt, max_new_tokens=new_tokens, stop_at_eos=False)
    assert len(res.decode_times_s) == new_tokens - 1, (len(res.decode_times_s), new_tokens)
    return res.time_to_first_token_s, statistics.median(res.decode_times_s), res.prompt_tokens


def time_eager(model, ids: list[int], new_tokens: int) -> tuple[float, float]:
    """(time to first token, median decode step) of the eager greedy loop (bench/_common.TorchSteps)."""
    steps = TorchSteps(model)
    t0 = time.perf_counter()
    token = int(steps.append(ids).argmax())
    ttft = time.perf_counter() - t0
    times = []
    for _ in range(new_tokens - 1):
        t = time.perf_counter()
        token = int(steps.append([token]).argmax())
        times.append(time.perf_counter() - t)
    return ttft, statistics.median(times)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--new-tokens", type=int, default=65, help="tokens generated per run (decode steps = this - 1)")
    ap.add_argument("--prompt-tokens", type=int, default=250)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", metavar="OUT", default=None)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    t_start = time.perf_counter()

    with tempfile.TemporaryDirectory(prefix="decode_speed-") as td:
        work = Path(td)
        tok = train_tokenizer(corpus(), vocab_size=1024)
        tok_path = save_tokenizer(tok, work / "tokenizer.json")
        vocab = tok.get_vocab_size()
        dense_model, dense_dir, pruned_dir = build_models(tok_path, vocab, tok.token_to_id(EOS_TOKEN),
                                                          tok.token_to_id(PAD_TOKEN), work)
        t_export = time.perf_counter()
        dense_onnx = export_onnx(dense_dir, work / "dense.onnx", dtype="fp32", kv_cache="shared")
        pruned_onnx = export_onnx(pruned_dir, work / "pruned50.onnx", dtype="fp32", kv_cache="shared")
        concat_onnx = export_onnx(dense_dir, work / "dense-concat.onnx", dtype="fp32", kv_cache="concat")
        export_s = time.perf_counter() - t_export
        g_dense = OnnxGenerator(dense_onnx, threads=args.threads)
        g_pruned = OnnxGenerator(pruned_onnx, threads=args.threads)
        g_concat = OnnxGenerator(concat_onnx, threads=args.threads)
        dense_params, pruned_params = g_dense.spec.num_parameters(), g_pruned.spec.num_parameters()
        assert dense_params == n_params(dense_model), (dense_params, n_params(dense_model))
        dense_bytes, pruned_bytes = dense_onnx.stat().st_size, pruned_onnx.stat().st_size
        concat_onnx_bytes = concat_onnx.stat().st_size
        prompt = make_prompt(tok, args.prompt_tokens)
        prompt_ids = g_dense.encode(prompt)

        # warm-up (first runs allocate arenas / pick kernels), not recorded
        time_ort(g_dense, prompt, 8)
        time_ort(g_pruned, prompt, 8)
        time_ort(g_concat, prompt, 8)
        time_eager(dense_model, prompt_ids, 8)

        rec: dict[str, list[float]] = {k: [] for k in (
            "bw_gbs", "dense_ttft", "dense_tok", "pruned_ttft", "pruned_tok", "concat_ttft", "concat_tok",
            "eager_ttft", "eager_tok")}
        for _ in range(args.repeats):
            rec["bw_gbs"].append(bandwidth_gbs())
            ttft, tok_s, n_prompt = time_ort(g_dense, prompt, args.new_tokens)
            rec["dense_ttft"].append(ttft)
            rec["dense_tok"].append(tok_s)
            ttft, tok_s, _ = time_ort(g_pruned, prompt, args.new_tokens)
            rec["pruned_ttft"].append(ttft)
            rec["pruned_tok"].append(tok_s)
            ttft, tok_s, _ = time_ort(g_concat, prompt, args.new_tokens)
            rec["concat_ttft"].append(ttft)
            rec["concat_tok"].append(tok_s)
            ttft, tok_s = time_eager(dense_model, prompt_ids, args.new_tokens)
            rec["eager_ttft"].append(ttft)
            rec["eager_tok"].append(tok_s)

    med = {k: statistics.median(v) for k, v in rec.items()}
    bw = med["bw_gbs"] * 1e9
    floor_dense_ms = dense_bytes / bw * 1e3
    floor_pruned_ms = pruned_bytes / bw * 1e3
    dense_ms, pruned_ms, eager_ms = med["dense_tok"] * 1e3, med["pruned_tok"] * 1e3, med["eager_tok"] * 1e3
    concat_ms = med["concat_tok"] * 1e3
    param_ratio = dense_params / pruned_params
    pruned_speedup = dense_ms / pruned_ms
    ratios = {
        "decode_over_floor": dense_ms / floor_dense_ms,
        "pruned_decode_over_floor": pruned_ms / floor_pruned_ms,
        "pruned_speedup": pruned_speedup,
        "param_ratio": param_ratio,
        "pruned_speedup_over_param_ratio": pruned_speedup / param_ratio,
        "ort_over_eager_speedup": eager_ms / dense_ms,
        "concat_decode_over_floor": concat_ms / floor_dense_ms,
        "shared_over_concat_speedup": concat_ms / dense_ms,
    }
    checks = {
        "decode within 1.25x floor": ratios["decode_over_floor"] <= TARGETS["decode_over_floor_max"],
        "pruned50 speed-up >= 0.9x param ratio":
            ratios["pruned_speedup_over_param_ratio"] >= TARGETS["pruned_speedup_over_param_ratio_min"],
        "ORT >= 2x faster than eager": ratios["ort_over_eager_speedup"] >= TARGETS["ort_over_eager_speedup_min"],
    }

    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs; threads={args.threads}; "
          f"repeats={args.repeats} (interleaved, medians); prompt={n_prompt} tokens; "
          f"decode steps/run={args.new_tokens - 1}; export {export_s:.0f} s")
    print(f"memory copy bandwidth (read+write, 512 MiB): {med['bw_gbs']:.1f} GB/s  "
          f"(runs: {', '.join(f'{x:.1f}' for x in rec['bw_gbs'])})")
    print()
    print(f"{'model':24s} {'params':>11s} {'onnx MB':>8s} {'TTFT ms':>8s} {'ms/token':>9s} {'floor ms':>9s} {'x floor':>8s}")
    print(f"{'dense ORT fp32':24s} {dense_params:11,d} {dense_bytes / 1e6:8.1f} {med['dense_ttft'] * 1e3:8.1f} "
          f"{dense_ms:9.2f} {floor_dense_ms:9.2f} {ratios['decode_over_floor']:8.2f}")
    print(f"{'dense ORT fp32, concat':24s} {dense_params:11,d} {concat_onnx_bytes / 1e6:8.1f} "
          f"{med['concat_ttft'] * 1e3:8.1f} {concat_ms:9.2f} {floor_dense_ms:9.2f} "
          f"{ratios['concat_decode_over_floor']:8.2f}")
    print(f"{'pruned50 ORT fp32':24s} {pruned_params:11,d} {pruned_bytes / 1e6:8.1f} {med['pruned_ttft'] * 1e3:8.1f} "
          f"{pruned_ms:9.2f} {floor_pruned_ms:9.2f} {ratios['pruned_decode_over_floor']:8.2f}")
    print(f"{'dense PyTorch eager':24s} {dense_params:11,d} {'-':>8s} {med['eager_ttft'] * 1e3:8.1f} "
          f"{eager_ms:9.2f} {'-':>9s} {'-':>8s}")
    print()
    print(f"per-run ms/token  dense: {', '.join(f'{x * 1e3:.2f}' for x in rec['dense_tok'])}   "
          f"pruned50: {', '.join(f'{x * 1e3:.2f}' for x in rec['pruned_tok'])}   "
          f"concat: {', '.join(f'{x * 1e3:.2f}' for x in rec['concat_tok'])}   "
          f"eager: {', '.join(f'{x * 1e3:.2f}' for x in rec['eager_tok'])}")
    print(f"pruned50: speed-up {pruned_speedup:.2f}x, param ratio {param_ratio:.2f}x, "
          f"speed-up / param ratio {ratios['pruned_speedup_over_param_ratio']:.2f}")
    print(f"ORT vs PyTorch eager (manual DynamicCache loop, sdpa): {ratios['ort_over_eager_speedup']:.2f}x faster per token")
    print(f"shared in-place KV cache vs the traced concat graph: {ratios['shared_over_concat_speedup']:.2f}x faster per token")
    print()
    print(f"{'target':40s} {'value':>7s} {'goal':>7s}  result")
    rows = [("decode within 1.25x floor", ratios["decode_over_floor"], "<= 1.25"),
            ("pruned50 speed-up >= 0.9x param ratio", ratios["pruned_speedup_over_param_ratio"], ">= 0.90"),
            ("ORT >= 2x faster than eager", ratios["ort_over_eager_speedup"], ">= 2.00")]
    for name, value, goal in rows:
        print(f"{name:40s} {value:7.2f} {goal:>7s}  {'ok' if checks[name] else 'MISSED'}")
    print(f"total {time.perf_counter() - t_start:.0f} s")

    result = {
        "machine": {"cpus": os.cpu_count(), "processor": platform.processor(), "threads": args.threads,
                    "python": sys.version.split()[0], "torch": torch.__version__},
        "settings": {"repeats": args.repeats, "prompt_tokens": n_prompt, "decode_steps": args.new_tokens - 1,
                     "dense_arch": DENSE, "eager_method": "manual greedy loop, DynamicCache, sdpa",
                     "kv_cache": "shared (dense, pruned50); concat for the comparison row"},
        "params": {"dense": dense_params, "pruned50": pruned_params},
        "onnx_bytes": {"dense": dense_bytes, "pruned50": pruned_bytes, "dense_concat": concat_onnx_bytes},
        "runs": rec, "medians": med,
        "floor_ms": {"dense": floor_dense_ms, "pruned50": floor_pruned_ms},
        "ratios": ratios, "targets": TARGETS, "checks": checks,
    }
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main()
