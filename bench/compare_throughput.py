"""Choose a model for a target: speed, memory, energy and task score of any set of exported models
(and of peer runtimes) measured in one interleaved run on this machine.

    python bench/compare_throughput.py --model dense=models/tiny/dense.onnx \\
        --model pruned50=models/tiny/pruned50.onnx --model small=models/tiny/small-dense.onnx \\
        --eval-report dense=models/tiny/dense/eval_test.json ... \\
        [--peers ortgenai,llamacpp,torch --ortgenai genai=DIR --gguf q8=FILE.gguf --torch eager=MODEL_DIR] \\
        [--prompt-lengths 64,256] [--new-tokens 64] [--repeats 3] [--threads 2] [--instructions N] \\
        [--providers cpu|cuda|tensorrt|auto] --out DIR

Models: ``--model NAME=PATH.onnx`` (repeatable; files written by ``edge-export``: dense, pruned,
smaller dense, any precision). The first model is the reference of every ratio.

Per model, measured in a **fresh child process per (model, repeat)** (``multiprocessing`` spawn:
nothing a previous model allocated, no arena or page cache of its own survives into the next
measurement, and peak RSS -- ``VmHWM`` read inside the child -- is that model's alone). Repeats are
interleaved round-robin (rep 1 of every model, then rep 2, ...), so a drift of the machine (heat,
another process) hits every model alike; every reported number is the median over repeats. Inside
a child, in this order:

* load: importing the runtime's package and constructing its model object (``OnnxGenerator``,
  ``og.Model``, ``Llama``, ``load_model``) -- what a cold start on the vehicle pays (importing torch
  alone takes seconds) -- and RSS right after;
* warm-up (not recorded): an 8-token prefill and two decode steps;
* prefill: one run over ``L`` prompt tokens for every ``--prompt-lengths`` L (ms);
* decode: after a prefill of the first prompt length, ``--new-tokens`` decode steps, each one graph
  run plus the argmax, EOS ignored (the loop appends the argmax token itself, so every model runs
  the full length); p50/p90/p99 ms/token and tokens/s (steps / their total time); energy over
  this loop where a meter exists (``bench/_energy.py``: RAPL, NVML, tegrastats), in J/token;
* instruction -> applied MPC parameters: for each validation-split instruction
  (``instruction_set("validation")``, ``--instructions N`` keeps N of them, spread evenly), the
  time from the instruction text to a parsed ``MPCParams``: ``build_mpc_prompt`` + greedy
  generation with the model's MPC token budget (stops at EOS) + ``parse_mpc_answer`` -- what the
  LLM worker on the vehicle does (``runtime/llm_worker.py``). Both free and grammar-constrained
  decoding (``generate(constrained=True, task="mpc")``) for the ONNX models; peers decode freely
  (they have no grammar). p50/p90 and the parse rate. Before them, the runtime is put in the state
  a vehicle's is in before an instruction: with ``--prefix-cache on`` (default) the MPC prompt's
  instruction-independent prefix is registered (ours: ``register_mpc_prefix``, what the LLM worker
  does at warm-up; llama.cpp: llama-cpp-python's reuse of the longest prefix its context holds,
  what its ``create_completion`` does; genai and torch have none here and say so), and one
  instruction is answered (not recorded).

Parameters come from the file's arch spec; file size is the ONNX file (peers: the GGUF file, the
genai folder, the safetensors). ``--eval-report NAME=eval.json`` (an ``edge-eval --json`` report,
normally the test split) adds the task score: control adaptability overall, fraction of the oracle
and decision accuracy, each with its 95 % interval.

**Peers** (same child-per-repeat protocol, same step loop where the API allows it), each skipped
with a note when its package is missing:

* ``ortgenai`` -- onnxruntime-genai on a folder from its own builder, given with
  ``--ortgenai NAME=DIR``. Build it from a Hugging Face model directory (config.json +
  model.safetensors; our model directories are such), uniform models only::

      python -m onnxruntime_genai.models.builder -m models/tiny/dense -o /tmp/genai-dense-int4 -p int4 -e cpu

  Decoding uses genai's own loop (``generate_next_token``) with ``min_length`` = ``max_length`` so
  that EOS cannot end it early; threads are set through ``Config.overlay``
  (``session_options.intra_op_num_threads``).
* ``llamacpp`` -- llama.cpp through llama-cpp-python on a GGUF file, ``--gguf NAME=FILE``
  (``Llama(n_threads=, n_threads_batch=)``; ``eval`` + argmax of the last logits row).
* ``torch`` -- PyTorch eager on a model directory (``edge_runtime.model.io.load_model``),
  ``--torch NAME=DIR``: the greedy DynamicCache loop of ``bench/_common.TorchSteps``.

Peers render prompts with the ``chat_format.json`` of their folder (the GGUF file's folder) when
there is one, else with the first ONNX model's chat format, and use its MPC token budget.

Output (``--out DIR``): ``results.json`` (manifest, settings, every repeat's raw numbers, medians,
ratios), ``results.md`` (the table, ratios vs the first model and vs each peer), and PNG plots
drawn with ``edge_runtime.report.style`` (ms/token vs parameters, latency CDFs, score vs
parameters). Bad input (malformed NAME=PATH, a missing file, a model that does not load) is one
line on stderr naming the argument, exit status 2.

Run it on an idle machine (no training, no test suite beside it); on a Jetson state
``nvpmodel -q`` and whether ``jetson_clocks`` is on -- the manifest records both. docs/benchmarks.md
has the commands for this machine and for a Jetson.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import multiprocessing as mp
import os
import statistics
import sys
import time
import traceback
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/_common.py, bench/_energy.py (also in spawned children)

from _common import machine_manifest, peak_rss_bytes  # noqa: E402
from _runtimes import ADAPTERS, Adapter  # noqa: E402

PEERS = {  # kind -> (module, pip package, option giving its models)
    "ortgenai": ("onnxruntime_genai", "onnxruntime-genai", "--ortgenai"),
    "llamacpp": ("llama_cpp", "llama-cpp-python", "--gguf"),
    "torch": ("torch", "torch", "--torch"),
}
CHILD_TIMEOUT_S = 3600.0


class InputError(Exception):
    """Bad user input; the message is one line naming the argument."""


@dataclass(frozen=True)
class Entry:
    """One thing to measure: a name, a runtime kind ("onnx" or a peer kind), its path, and the
    option it came from (for error messages)."""

    name: str
    kind: str
    path: str
    option: str

    @property
    def arg(self) -> str:
        return f"{self.option} {self.name}={self.path}"


# ----------------------------------------------------------------------------------------- input
def parse_pairs(values: list[str] | None, option: str, want: str) -> list[tuple[str, Path]]:
    """NAME=PATH values of ``option``; ``want`` "file" or "dir" says what PATH must be."""
    out = []
    for value in values or []:
        name, sep, path = value.partition("=")
        name, path = name.strip(), path.strip()
        if not sep or not name or not path:
            raise InputError(f"{option} {value!r}: expected NAME=PATH (e.g. {option} dense=models/tiny/dense.onnx)")
        p = Path(path)
        if want == "file" and not p.is_file():
            raise InputError(f"{option} {value}: file {path} not found")
        if want == "dir" and not p.is_dir():
            raise InputError(f"{option} {value}: directory {path} not found")
        out.append((name, p))
    return out


def parse_lengths(text: str) -> list[int]:
    try:
        lengths = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise InputError(f"--prompt-lengths {text!r}: expected comma-separated integers, e.g. 64,256") from None
    if not lengths or min(lengths) < 1:
        raise InputError(f"--prompt-lengths {text!r}: expected positive integers, e.g. 64,256")
    return lengths


def load_score(path: Path, option: str) -> dict[str, Any]:
    """The headline scores of an ``edge-eval --json`` report (None where the report lacks them)."""
    try:
        rep = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(f"{option}: {path} is not a JSON report ({str(exc)[:80]})") from None
    if not isinstance(rep, dict) or not ({"mpc", "decision"} & rep.keys()):
        raise InputError(f"{option}: {path} has neither 'mpc' nor 'decision'; give an edge-eval --json report")
    m, d = rep.get("mpc") or {}, rep.get("decision") or {}
    adapt = m.get("adaptability") or {}
    return {"report": str(path), "split": m.get("split") or d.get("split"),
            "adaptability": adapt.get("overall"), "adaptability_ci": (m.get("adaptability_ci") or {}).get("overall"),
            "fraction_of_oracle": m.get("fraction_of_oracle"), "fraction_of_oracle_ci": m.get("fraction_of_oracle_ci"),
            "decision_accuracy": d.get("accuracy"), "decision_accuracy_ci": d.get("accuracy_ci"),
            "parse_failure_rate": m.get("parse_failure_rate"), "constrained": rep.get("constrained")}


# ------------------------------------------------------------------------------------ the child
def filler_ids(adapter: Adapter, n: int) -> list[int]:
    """``n`` token ids of real MPC prompts (validation instructions back to back), for prefill/decode timing."""
    from edge_runtime.tasks.instructions import instruction_set
    from edge_runtime.tasks.prompts import build_mpc_prompt

    ids: list[int] = []
    for ins in instruction_set("validation") * (1 + n // 50):
        ids += adapter.encode(build_mpc_prompt(ins.text))
        if len(ids) >= n:
            break
    return ids[:n]


def pick_instructions(n: int) -> list:
    from edge_runtime.tasks.instructions import instruction_set

    all_ = instruction_set("validation")
    if n <= 0 or n >= len(all_):
        return all_
    return [all_[round(i * len(all_) / n)] for i in range(n)]  # spread over the categories


def measure(entry: Entry, cfg: dict[str, Any]) -> dict[str, Any]:
    """Everything one repeat measures for one model (runs in its own child process)."""
    from edge_runtime.tasks.answers import parse_mpc_answer
    from edge_runtime.tasks.prompts import build_mpc_prompt

    from _energy import open_meters

    adapter = ADAPTERS[entry.kind](entry, cfg)
    t0 = time.perf_counter()
    adapter.load()
    load_s = time.perf_counter() - t0
    rss_after_load = peak_rss_bytes()
    info = adapter.info()
    lengths, steps = cfg["prompt_lengths"], cfg["new_tokens"]
    cap = adapter.capacity()
    if cap is not None and max(max(lengths), lengths[0] + steps + 1) > cap:
        raise ValueError(f"prompt lengths {lengths} / {lengths[0]} + {steps} new tokens exceed the model's context "
                         f"(KV cache capacity) {cap}; lower --prompt-lengths or --new-tokens")
    budget = int(cfg["mpc_budget"] or info.get("mpc_budget") or 200)
    instructions = pick_instructions(cfg["instructions"])
    modes = [False, True] if adapter.supports_constrained else [False]

    adapter.decode_times(filler_ids(adapter, 8), 2)  # warm-up: arenas, kernels
    prefill: dict[str, float] = {}
    for n in lengths:
        ids = filler_ids(adapter, n)
        adapter.reset()
        t = time.perf_counter()
        adapter.append(ids)
        prefill[str(n)] = time.perf_counter() - t

    meters, energy_notes = open_meters()
    decode_ids = filler_ids(adapter, lengths[0])
    for m in meters:
        m.start()
    t = time.perf_counter()
    times = adapter.decode_times(decode_ids, steps)
    decode_wall = time.perf_counter() - t
    energy = {m.source: m.stop() for m in meters}

    # the vehicle's state before its first instruction: the prompt prefix registered (where the runtime
    # has a prefix cache and --prefix-cache is on), one instruction answered before (warm-up, grammar caches)
    prefix_cache = bool(cfg.get("prefix_cache", True)) and adapter.use_prompt_prefix_cache()
    for constrained in modes:
        adapter.answer(build_mpc_prompt(instructions[0].text), budget, constrained)
    answers: dict[str, Any] = {}
    for constrained in modes:
        lat, parsed, tokens = [], [], []
        for ins in instructions:
            t = time.perf_counter()
            text, n_tokens = adapter.answer(build_mpc_prompt(ins.text), budget, constrained)
            ok = parse_mpc_answer(text).ok
            lat.append(time.perf_counter() - t)
            parsed.append(ok)
            tokens.append(n_tokens)
        answers["constrained" if constrained else "free"] = {"latency_s": lat, "parsed": parsed, "tokens": tokens}
    return {"load_s": load_s, "rss_after_load_bytes": rss_after_load, "peak_rss_bytes": peak_rss_bytes(),
            "info": info, "prefill_s": prefill, "decode_prompt_tokens": len(decode_ids), "decode_times_s": times,
            "decode_wall_s": decode_wall, "energy_j": energy, "energy_notes": energy_notes,
            "instructions": answers, "mpc_budget": budget, "instruction_count": len(instructions),
            "prefix_cache": prefix_cache}


def _child(entry: dict[str, Any], cfg: dict[str, Any], conn) -> None:
    try:
        result = measure(Entry(**entry), cfg)
    except Exception as exc:  # noqa: BLE001 -- reported to the parent as one line, never a traceback
        result = {"error": " ".join(f"{type(exc).__name__}: {exc}".split())[:300],
                  "traceback": traceback.format_exc()[-2000:]}
    conn.send(result)
    conn.close()


def run_child(entry: Entry, cfg: dict[str, Any]) -> dict[str, Any]:
    """One measurement of ``entry`` in a fresh spawned process."""
    ctx = mp.get_context("spawn")
    parent, child = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_child, args=(asdict(entry), cfg, child), daemon=True)
    proc.start()
    child.close()
    result = None
    if parent.poll(CHILD_TIMEOUT_S):
        try:
            result = parent.recv()
        except EOFError:
            result = None
    proc.join(30)
    if proc.is_alive():
        proc.kill()
        proc.join(5)
    if result is None:
        result = {"error": f"the measuring process died (exit status {proc.exitcode}) without a result"}
    return result


# ------------------------------------------------------------------------------------ summaries
def _median(values: list[float | None]) -> float | None:
    vals = [v for v in values if v is not None]
    return float(statistics.median(vals)) if vals else None


def _pct(values: list[float], q: float) -> float | None:
    return float(np.percentile(values, q)) if values else None


def summarize(reps: list[dict[str, Any]]) -> dict[str, Any]:
    """Medians over repeats of every per-repeat statistic (each percentile is taken within a
    repeat, then the median over repeats)."""
    out: dict[str, Any] = {
        "load_s": _median([r["load_s"] for r in reps]),
        "peak_rss_bytes": _median([r["peak_rss_bytes"] for r in reps]),
        "rss_after_load_bytes": _median([r["rss_after_load_bytes"] for r in reps]),
        "prefill_ms": {n: 1e3 * _median([r["prefill_s"][n] for r in reps]) for n in reps[0]["prefill_s"]},
    }
    for q in (50, 90, 99):
        out[f"decode_ms_p{q}"] = 1e3 * _median([_pct(r["decode_times_s"], q) for r in reps])
    out["tokens_per_s"] = _median([len(r["decode_times_s"]) / sum(r["decode_times_s"]) for r in reps])
    sources = sorted({s for r in reps for s, v in r["energy_j"].items() if v is not None})
    out["j_per_token"] = {s: _median([(r["energy_j"].get(s) or 0) / len(r["decode_times_s"]) for r in reps
                                       if r["energy_j"].get(s) is not None]) for s in sources}
    out["prefix_cache"] = all(r.get("prefix_cache", False) for r in reps)
    out["instructions"] = {}
    for mode in reps[0]["instructions"]:
        runs = [r["instructions"][mode] for r in reps]
        out["instructions"][mode] = {
            "p50_ms": 1e3 * _median([_pct(x["latency_s"], 50) for x in runs]),
            "p90_ms": 1e3 * _median([_pct(x["latency_s"], 90) for x in runs]),
            "parse_rate": float(np.mean([p for x in runs for p in x["parsed"]])),
            "tokens_mean": float(np.mean([t for x in runs for t in x["tokens"]])),
        }
    return out


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b not in (None, 0) else None


def ratios(results: dict[str, Any], names: list[str], ref: str, peers: list[str]) -> dict[str, Any]:
    """vs the first model (speed-up = reference time / this time, > 1: faster) and each ONNX model
    vs each peer (time ratio ours / peer, < 1: ours faster)."""
    def key(s: dict, what: str) -> float | None:
        if what == "instr":
            return (s["instructions"].get("free") or {}).get("p50_ms")
        if what == "prefill":
            return next(iter(s["prefill_ms"].values()))
        return s[what]

    r = results[ref]["summary"]
    vs_ref = {}
    for n in names:
        s = results[n]["summary"]
        vs_ref[n] = {
            "decode_speedup": _ratio(key(r, "decode_ms_p50"), key(s, "decode_ms_p50")),
            "prefill_speedup": _ratio(key(r, "prefill"), key(s, "prefill")),
            "instruction_speedup": _ratio(key(r, "instr"), key(s, "instr")),
            "rss_ratio": _ratio(s["peak_rss_bytes"], r["peak_rss_bytes"]),
            "file_ratio": _ratio(results[n]["info"].get("file_bytes"), results[ref]["info"].get("file_bytes")),
            "param_ratio": _ratio(results[ref]["info"].get("parameters"), results[n]["info"].get("parameters")),
            # the speed-up a memory-bound decode can reach, and how much of it was reached
            "streamed_bytes_ratio": _ratio(results[ref]["info"].get("streamed_weight_bytes"),
                                           results[n]["info"].get("streamed_weight_bytes")),
        }
        v = vs_ref[n]
        v["decode_vs_bytes"] = _ratio(v["decode_speedup"], v["streamed_bytes_ratio"])
    vs_peer = {}
    for n in names:
        if results[n]["kind"] != "onnx":
            continue
        for p in peers:
            s, q = results[n]["summary"], results[p]["summary"]
            vs_peer[f"{n} / {p}"] = {
                "decode_ms_ratio": _ratio(key(s, "decode_ms_p50"), key(q, "decode_ms_p50")),
                "prefill_ms_ratio": _ratio(key(s, "prefill"), key(q, "prefill")),
                "instruction_ms_ratio": _ratio(key(s, "instr"), key(q, "instr")),
                "rss_ratio": _ratio(s["peak_rss_bytes"], q["peak_rss_bytes"]),
                "file_ratio": _ratio(results[n]["info"].get("file_bytes"), results[p]["info"].get("file_bytes")),
            }
    return {"reference": ref, "vs_reference": vs_ref, "vs_peers": vs_peer}


# --------------------------------------------------------------------------------------- output
def _f(x: float | None, fmt: str = "{:.2f}") -> str:
    return "–" if x is None else fmt.format(x)


def _params(n: int | None) -> str:
    return "–" if n is None else (f"{n / 1e6:.1f}M" if n >= 1e6 else f"{n / 1e3:.0f}k")


def _score_cells(sc: dict[str, Any] | None) -> list[str]:
    from edge_runtime.tasks.stats import format_with_ci

    if not sc:
        return ["–", "–", "–"]
    cells = []
    for key, fmt in (("adaptability", "{:+.3f}"), ("fraction_of_oracle", "{:.0%}"), ("decision_accuracy", "{:.1%}")):
        cells.append("–" if sc.get(key) is None else format_with_ci(sc[key], sc.get(f"{key}_ci"), fmt))
    return cells


def _prefix_note(doc: dict[str, Any]) -> str:
    if not doc["settings"].get("prefix_cache", False):
        return "; prompt-prefix cache off (every prompt prefilled in full)"
    res = doc["results"]
    used = [n for n in doc["order"] if res[n]["summary"].get("prefix_cache")]
    without = [n for n in doc["order"] if n not in used]
    return ("; prompt-prefix cache on, as on the vehicle (" + (", ".join(used) or "no model has one")
            + (f"; without one: {', '.join(without)}" if without else "") + ")")


def markdown(doc: dict[str, Any]) -> str:
    res, names, st = doc["results"], doc["order"], doc["settings"]
    man = doc["manifest"]
    lengths = st["prompt_lengths"]
    lines = ["# Throughput comparison", "",
             f"Machine: {man['cpu_model']}, {man['cpu_count']} CPUs, "
             f"{_f((man['memory_bytes'] or 0) / 2**30, '{:.1f}')} GiB; {man['os']}; onnxruntime "
             f"{man['onnxruntime']['version']}; threads {st['threads']}; providers {st['providers'] or 'cpu'}"
             + (f"; Jetson: {man['jetson']['nv_tegra_release']}" if man.get("jetson") else ""), "",
             f"{st['repeats']} repeats, interleaved round-robin, each in a fresh process; medians over repeats. "
             f"Decode: {st['new_tokens']} steps after a {lengths[0]}-token prompt, EOS ignored. Instruction -> "
             f"parameters: {doc['instruction_count']} validation instructions, MPC prompt + greedy answer + parse"
             + _prefix_note(doc) + ".", ""]
    head = (["model", "runtime", "params", "size MiB", "load s", "RSS MiB"] + [f"prefill {n} ms" for n in lengths]
            + ["ms/tok p50", "p90", "p99", "tok/s", "instr→params p50/p90 ms (free)",
               "(constrained)", "J/token", "adaptability", "of oracle", "decision acc."])
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for n in names:
        r, s = res[n], res[n]["summary"]
        ins = s["instructions"]
        free, con = ins.get("free"), ins.get("constrained")
        energy = ", ".join(f"{v:.3g} ({k})" for k, v in s["j_per_token"].items() if v is not None) or "–"
        row = [n, r["kind"], _params(r["info"].get("parameters")),
               _f((r["info"].get("file_bytes") or 0) / 2**20, "{:.1f}") if r["info"].get("file_bytes") else "–",
               _f(s["load_s"]), _f(s["peak_rss_bytes"] / 2**20, "{:.0f}")]
        row += [_f(s["prefill_ms"].get(str(L)), "{:.1f}") for L in lengths]
        row += [_f(s["decode_ms_p50"]), _f(s["decode_ms_p90"]), _f(s["decode_ms_p99"]), _f(s["tokens_per_s"], "{:.0f}"),
                f"{_f(free['p50_ms'], '{:.0f}')} / {_f(free['p90_ms'], '{:.0f}')} ({free['parse_rate']:.0%} parse)"
                if free else "–",
                f"{_f(con['p50_ms'], '{:.0f}')} / {_f(con['p90_ms'], '{:.0f}')} ({con['parse_rate']:.0%} parse)"
                if con else "–", energy]
        row += _score_cells(r.get("score"))
        lines.append("| " + " | ".join(row) + " |")
    rt = doc["ratios"]
    lines += ["", f"## Ratios vs `{rt['reference']}` (speed-up > 1: faster than the reference)", "",
              "| model | decode speed-up | prefill speed-up | instr→params speed-up | param ratio (ref / model) | "
              "streamed weight bytes ratio (ref / model) | decode speed-up / bytes ratio | RSS ratio | file ratio |",
              "|---|---|---|---|---|---|---|---|---|"]
    for n, v in rt["vs_reference"].items():
        lines.append(f"| {n} | {_f(v['decode_speedup'])} | {_f(v['prefill_speedup'])} | "
                     f"{_f(v['instruction_speedup'])} | {_f(v['param_ratio'])} | {_f(v.get('streamed_bytes_ratio'))} | "
                     f"{_f(v.get('decode_vs_bytes'))} | {_f(v['rss_ratio'])} | {_f(v['file_ratio'])} |")
    lines += ["", "## Ours vs each peer (time ratio ours / peer: < 1 means ours is faster)", ""]
    if rt["vs_peers"]:
        lines += ["| pair | decode ms ratio | prefill ms ratio | instr→params ratio | RSS ratio | file ratio |",
                  "|---|---|---|---|---|---|"]
        for pair, v in rt["vs_peers"].items():
            lines.append(f"| {pair} | {_f(v['decode_ms_ratio'])} | {_f(v['prefill_ms_ratio'])} | "
                         f"{_f(v['instruction_ms_ratio'])} | {_f(v['rss_ratio'])} | {_f(v['file_ratio'])} |")
    else:
        lines.append("No peer measured.")
    if doc["notes"]:
        lines += ["", "## Notes", ""] + [f"- {note}" for note in doc["notes"]]
    lines += ["", "Energy sources: " + (", ".join(doc["energy_notes"]) or "every meter available") + ".",
              "", f"Raw numbers, settings and the full system manifest: `results.json`. Command: `{doc['command']}`", ""]
    return "\n".join(lines)


def plots(doc: dict[str, Any], out: Path) -> list[str]:
    """ms/token vs parameters, latency CDFs, score vs parameters (PNG, report/style.py)."""
    from edge_runtime.report import style

    res, names = doc["results"], doc["order"]
    written = []
    fig, ax = style.figure(size=(6.0, 4.0))
    pts = [(res[n]["info"].get("parameters"), res[n]["summary"]["decode_ms_p50"], n) for n in names]
    pts = [p for p in pts if p[0]]
    if pts:
        for x, y, n in pts:
            ax.scatter([x], [y], color=style.COLORS["measured"])
            ax.annotate(n, (x, y), textcoords="offset points", xytext=(4, 4), fontsize=8)
        ax.set_xlabel("parameters")
        ax.set_ylabel("decode ms/token (p50)")
        ax.set_title("Decode cost vs model size")
    else:
        style.empty(ax, "no parameter counts")
    written.append(str(style.save(fig, out / "ms_per_token_vs_params.png")))

    fig, (a1, a2) = style.figure(1, 2, size=(10.0, 4.0))
    for n in names:
        style.cdf(a1, [t for r in res[n]["repeats"] for t in r["decode_times_s"]], n)
        for mode in res[n]["repeats"][0]["instructions"]:
            if style.cdf(a2, [t for r in res[n]["repeats"] for t in r["instructions"][mode]["latency_s"]],
                         f"{n} {mode}") and mode == "constrained":
                a2.get_lines()[-1].set_linestyle("--")
    a1.set_xlabel("decode ms/token")
    a1.set_title("Per-token decode latency")
    a1.legend()
    a2.set_xlabel("instruction → parsed MPC parameters, ms")
    a2.set_title("Instruction → parameters latency")
    a2.legend()
    written.append(str(style.save(fig, out / "latency_cdfs.png")))

    fig, ax = style.figure(size=(6.0, 4.0))
    scored = [(res[n]["info"].get("parameters"), res[n].get("score"), n) for n in names]
    scored = [s for s in scored if s[0] and s[1] and s[1].get("fraction_of_oracle") is not None]
    if scored:
        for x, sc, n in scored:
            ci = sc.get("fraction_of_oracle_ci")
            yerr = [[sc["fraction_of_oracle"] - ci[0]], [ci[1] - sc["fraction_of_oracle"]]] if ci else None
            ax.errorbar([x], [sc["fraction_of_oracle"]], yerr=yerr, fmt="o", capsize=3, color=style.COLORS["measured"])
            ax.annotate(n, (x, sc["fraction_of_oracle"]), textcoords="offset points", xytext=(4, 4), fontsize=8)
        ax.set_xlabel("parameters")
        ax.set_ylabel("fraction of oracle adaptability (95 % CI)")
        ax.set_title("Task score vs model size")
    else:
        style.empty(ax, "no --eval-report with an MPC score")
    written.append(str(style.save(fig, out / "score_vs_params.png")))
    return written


# ------------------------------------------------------------------------------------------ main
class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, exit 2 (argparse prints the usage too)
        print(f"compare_throughput: {message}", file=sys.stderr)
        raise SystemExit(2)


def build_entries(args: argparse.Namespace) -> tuple[list[Entry], list[str], list[str]]:
    """The entries to measure (ONNX models first, then peers), the peer kinds skipped with a note,
    and the notes."""
    entries = [Entry(n, "onnx", str(p), "--model") for n, p in parse_pairs(args.model, "--model", "file")]
    if not entries:
        raise InputError("--model: give at least one NAME=PATH.onnx (e.g. --model dense=models/tiny/dense.onnx)")
    peer_models = {"ortgenai": parse_pairs(args.ortgenai, "--ortgenai", "dir"),
                   "llamacpp": parse_pairs(args.gguf, "--gguf", "file"),
                   "torch": parse_pairs(args.torch, "--torch", "dir")}
    requested = [p.strip() for p in (args.peers or "").split(",") if p.strip()]
    for p in requested:
        if p not in PEERS:
            raise InputError(f"--peers {args.peers!r}: unknown peer {p!r}; use some of {', '.join(PEERS)}")
    kinds = list(dict.fromkeys(requested + [k for k, v in peer_models.items() if v]))
    notes, skipped = [], []
    for kind in kinds:
        module, package, option = PEERS[kind]
        if importlib.util.find_spec(module) is None:
            notes.append(f"{kind}: skipped: not installed (pip install {package})")
            skipped.append(kind)
        elif not peer_models[kind]:
            notes.append(f"{kind}: skipped: no {option} NAME=PATH given")
            skipped.append(kind)
        else:
            entries += [Entry(n, kind, str(p), option) for n, p in peer_models[kind]]
    names = [e.name for e in entries]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise InputError(f"--model/--peer names must be unique; {', '.join(dup)} is used twice")
    return entries, skipped, notes


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = _Parser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", action="append", metavar="NAME=PATH.onnx", help="exported model (repeatable; the first "
                    "is the reference of the ratios)")
    ap.add_argument("--eval-report", action="append", metavar="NAME=eval.json",
                    help="edge-eval --json report of model NAME (test split) for the score columns")
    ap.add_argument("--peers", default="", help="comma-separated peers: ortgenai,llamacpp,torch (those given a model "
                    "with --ortgenai/--gguf/--torch run anyway)")
    ap.add_argument("--ortgenai", action="append", metavar="NAME=DIR", help="onnxruntime-genai model folder")
    ap.add_argument("--gguf", action="append", metavar="NAME=FILE", help="GGUF file for llama.cpp")
    ap.add_argument("--torch", action="append", metavar="NAME=DIR", help="model directory for PyTorch eager")
    ap.add_argument("--prompt-lengths", default="64,256", help="prefill lengths in tokens; the first is also the "
                    "decode prompt")
    ap.add_argument("--new-tokens", type=int, default=64, help="decode steps per repeat (EOS ignored)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2, help="intra-op threads of every runtime")
    ap.add_argument("--instructions", type=int, default=0, help="validation instructions to answer (0: all)")
    ap.add_argument("--prefix-cache", default="on", choices=["on", "off"],
                    help="instruction -> parameters with the prompt-prefix cache, as the vehicle runs (ours: the LLM "
                    "worker's registered prefix; llama.cpp: its reuse of the longest prefix the context holds; "
                    "runtimes without one answer without) or off (every prompt prefilled in full) (default: on)")
    ap.add_argument("--providers", default=None, choices=["cpu", "cuda", "tensorrt", "auto"],
                    help="ONNX Runtime execution provider of the ONNX models (default cpu; a GPU provider must be "
                    "available, else exit 2; genai and llama.cpp then use CUDA too, torch stays on CPU)")
    ap.add_argument("--trt-cache", default=None, metavar="DIR",
                    help="TensorRT engine cache directory (with --providers tensorrt; without it every fresh "
                    "process rebuilds the engine, which is counted in the load time)")
    ap.add_argument("--out", required=True, help="output directory")
    args = ap.parse_args(argv)
    try:
        if args.new_tokens < 1 or args.repeats < 1 or args.threads < 1 or args.instructions < 0:
            raise InputError("--new-tokens, --repeats and --threads must be >= 1, --instructions >= 0")
        lengths = parse_lengths(args.prompt_lengths)
        entries, _skipped, notes = build_entries(args)
        scores = {}
        for name, path in parse_pairs(args.eval_report, "--eval-report", "file"):
            if name not in {e.name for e in entries}:
                raise InputError(f"--eval-report {name}={path}: no model named {name!r} (names: "
                                 f"{', '.join(e.name for e in entries)})")
            scores[name] = load_score(path, f"--eval-report {name}={path}")
    except InputError as exc:
        print(f"compare_throughput: {exc}", file=sys.stderr)
        raise SystemExit(2) from None

    providers = None if args.providers in (None, "cpu") else args.providers
    cfg: dict[str, Any] = {"prompt_lengths": lengths, "new_tokens": args.new_tokens, "threads": args.threads,
                           "instructions": args.instructions, "providers": providers, "mpc_budget": None,
                           "trt_cache": args.trt_cache, "prefix_cache": args.prefix_cache == "on",
                           "chat_format": None}
    t_start = time.perf_counter()
    raw: dict[str, list[dict[str, Any]]] = {e.name: [] for e in entries}
    for rep in range(args.repeats):
        for e in entries:
            print(f"[rep {rep + 1}/{args.repeats}] {e.name} ({e.kind})", flush=True)  # stderr: errors only
            result = run_child(e, cfg)
            if "error" in result:
                print(f"compare_throughput: {e.arg}: {result['error']}", file=sys.stderr)
                raise SystemExit(2)
            raw[e.name].append(result)
            if e is entries[0] and cfg["mpc_budget"] is None:  # peers answer with the first model's budget and format
                cfg["mpc_budget"] = result["info"].get("mpc_budget")
                cfg["chat_format"] = result["info"].get("chat_format")
    wall = time.perf_counter() - t_start

    results = {}
    for e in entries:
        reps = raw[e.name]
        results[e.name] = {"kind": e.kind, "path": e.path, "info": reps[0]["info"], "score": scores.get(e.name),
                           "summary": summarize(reps), "repeats": reps}
    names = [e.name for e in entries]
    peers = [e.name for e in entries if e.kind != "onnx"]
    first = raw[entries[0].name][0]
    doc: dict[str, Any] = {
        "manifest": machine_manifest(args.threads, providers or "cpu"),
        "settings": {"prompt_lengths": lengths, "new_tokens": args.new_tokens, "repeats": args.repeats,
                     "threads": args.threads, "instructions": args.instructions, "providers": providers,
                     "mpc_budget": first["mpc_budget"], "prefix_cache": args.prefix_cache == "on",
                     "protocol": "fresh spawned process per (model, repeat); round-robin over models per repeat; "
                                 "medians over repeats"},
        "command": " ".join(["python bench/compare_throughput.py", *(argv if argv is not None else sys.argv[1:])]),
        "order": names, "instruction_count": first["instruction_count"], "notes": notes,
        "energy_notes": first["energy_notes"], "results": results,
        "ratios": ratios(results, names, names[0], peers), "wall_s": wall,
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(doc, indent=1) + "\n")
    (out / "results.md").write_text(markdown(doc))
    try:
        doc["plots"] = plots(doc, out)
    except Exception as exc:  # noqa: BLE001 -- the numbers are written; a plotting failure is a note
        doc["plots"] = []
        print(f"compare_throughput: plots not written: {type(exc).__name__}: {exc}", file=sys.stderr)
    print(markdown(doc))
    print(f"wrote {out}/results.json, results.md and {len(doc['plots'])} plots in {wall:.0f} s", file=sys.stderr)
    return doc


if __name__ == "__main__":
    main()
