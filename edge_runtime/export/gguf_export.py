"""Export a model directory to one GGUF file for llama.cpp, non-uniform (pruned) models included.

Why: llama.cpp is the runtime many robots (RobotxR1 among them) deploy with, and a structurally
pruned model is only worth its pruning if the runtime executes the smaller layers. llama.cpp's
``deci`` architecture (DeciLM / Nemotron-NAS) reads per-layer head counts and MLP widths
(``deci.attention.head_count``, ``deci.attention.head_count_kv``, ``deci.feed_forward_length`` as
arrays), so a BPF-pruned model runs there at its pruned size.

Architecture written (and why):

* uniform Llama -> ``llama``, uniform Qwen2 -> ``qwen2``: the most widely supported loaders, and
  the ones :mod:`edge_runtime.model.gguf_import` reads back (the round-trip test uses that);
* any model whose layers differ -> ``deci``: llama / qwen2 hold one width per kind.

llama.cpp's ``llama`` and ``deci`` RoPE rotates interleaved pairs, HF's rotates halves, so q/k rows
(and q/k biases) are permuted per head (:func:`edge_runtime.model.gguf_layout.permute_qk`, the one
copy the importer undoes); ``qwen2`` uses the rotate-half ("NEOX") RoPE and takes the weights as
they are. Qwen2's q/k/v biases: ``deci`` loads optional biases but expects the q bias to have
``hidden_size`` rows, so a layer whose query heads were pruned gets its query heads padded back
with zero heads (zero q rows and bias, zero o_proj columns, real heads kept in their KV group):
a zero query attends uniformly and its output is multiplied by zero, so the logits are exact, at
the cost of computing those heads. A layer that cannot be padded (hidden_size / head_dim not a
multiple of its KV heads) is refused with one line.

Tensor types (``--gguf-type``): f32; f16 (2-D weights, norms and biases stay f32, as llama.cpp's
converter does); q8_0 (2-D weights through ``gguf.quants.quantize``; a weight whose row length is
not a multiple of 32 falls back to f16); q4_0 (the same, Q4_0 in blocks of 32, except the token
embedding / LM head, which stays Q8_0). Tokenizer: our byte-level BPE (tiny models and imported
SmolLM2) is written as llama.cpp's "gpt2" BPE with the "smollm" pre-tokenizer (every digit alone,
then GPT-2 splitting), which is exactly what our ``tokenizer.json`` does; other pre-tokenizers are
refused. The file is written to a temp file next to OUT, read back and checked tensor by tensor
against the source, and only then moved to OUT (os.replace): no half-written .gguf is ever seen.

Training side (numpy, torch, gguf); the vehicle side never imports this. Module level imports only
the standard library so that ``edge-export --help`` stays fast.
"""

from __future__ import annotations

import json
import os
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["GGUF_TYPES", "GGUFExportError", "GGUFExportResult", "chatml_template", "choose_architecture",
           "export_gguf", "pad_query_heads"]

GGUF_TYPES = ("f32", "f16", "q8_0", "q4_0")
#: Q8_0 / Q4_0 block length along a row (ggml's QK8_0, QK4_0): rows of other lengths cannot use them.
_Q8_BLOCK = 32
#: q4_0 keeps these at Q8_0: the token embedding (the tied LM head) is the error every logit shares, as in
#: edge-export's int4 with --head-bits 8 (llama.cpp's own Q4_0 recipe keeps the head at a higher type too).
_Q4_HEAD_TENSORS = ("token_embd.weight", "output.weight")


class GGUFExportError(ValueError):
    """The model cannot be exported to GGUF; the message names the file / field and what to do (one line)."""


@dataclass
class GGUFExportResult:
    """What :func:`export_gguf` wrote."""

    out: Path
    architecture: str
    gguf_type: str
    n_tensors: int
    n_bytes: int
    tensor_types: dict[str, int] = field(default_factory=dict)
    padded_layers: list[int] = field(default_factory=list)
    tokenizer_pre: str | None = None
    chat_template: bool = False
    max_abs_diff: float = 0.0


# ---------------------------------------------------------------------------------------------------------------
# Architecture
# ---------------------------------------------------------------------------------------------------------------

def pad_query_heads(q_w, q_b, o_w, n_q: int, n_kv: int, target: int, head_dim: int):
    """Pad a layer's query heads from ``n_q`` to ``target`` with zero heads, keeping every real
    head in its KV group: group k's heads move from k*g .. k*g+g-1 to k*g' .. k*g'+g-1 (g = n_q/n_kv,
    g' = target/n_kv). q rows and bias get zeros, o_proj columns get zeros. numpy arrays in HF
    layout (q_w: (n_q*d, h), q_b: (n_q*d,) or None, o_w: (h, n_q*d))."""
    import numpy as np

    g, g_new = n_q // n_kv, target // n_kv
    q_heads = q_w.reshape(n_q, head_dim, -1)
    new_q = np.zeros((target, head_dim, q_heads.shape[-1]), dtype=q_w.dtype)
    o_heads = o_w.reshape(o_w.shape[0], n_q, head_dim)
    new_o = np.zeros((o_w.shape[0], target, head_dim), dtype=o_w.dtype)
    new_b = None if q_b is None else np.zeros((target, head_dim), dtype=q_b.dtype)
    for k in range(n_kv):
        src, dst = slice(k * g, (k + 1) * g), slice(k * g_new, k * g_new + g)
        new_q[dst] = q_heads[src]
        new_o[:, dst] = o_heads[:, src]
        if new_b is not None:
            new_b[dst] = q_b.reshape(n_q, head_dim)[src]
    return (new_q.reshape(target * head_dim, -1), None if new_b is None else new_b.reshape(-1),
            new_o.reshape(o_w.shape[0], target * head_dim))


def choose_architecture(spec, where: Path) -> tuple[str, list[int], list[int]]:
    """-> (GGUF architecture, query heads written per layer, indices of layers whose query heads
    are zero-padded). Raises GGUFExportError for a model llama.cpp cannot represent exactly."""
    if spec.hidden_act != "silu":
        raise GGUFExportError(f"{where}: hidden_act is {spec.hidden_act!r}; llama.cpp's llama/qwen2/deci "
                              f"graphs use SiLU (SwiGLU), so this model cannot be exported to GGUF")
    rope = spec.rope_parameters
    if rope and rope.get("rope_type", "default") != "default":
        raise GGUFExportError(f"{where}: rope_parameters.rope_type is {rope.get('rope_type')!r}; the GGUF "
                              f"exporter writes plain RoPE only, export to ONNX instead")
    heads = [layer.num_q_heads for layer in spec.layers]
    padded: list[int] = []
    if spec.q_bias:
        # llama.cpp's qwen2 / deci loaders expect the q bias (and, for qwen2, q_proj) to have
        # hidden_size rows: pad pruned query heads back with exact zero heads.
        if spec.hidden_size % spec.head_dim:
            raise GGUFExportError(f"{where}: hidden_size {spec.hidden_size} is not a multiple of head_dim "
                                  f"{spec.head_dim}; llama.cpp needs q bias rows = hidden_size, refusing")
        full = spec.hidden_size // spec.head_dim
        for i, layer in enumerate(spec.layers):
            if layer.num_q_heads == full:
                continue
            if layer.num_q_heads > full or full % layer.num_kv_heads:
                raise GGUFExportError(
                    f"{where}: layer {i} has {layer.num_q_heads} query / {layer.num_kv_heads} KV heads and q/k/v "
                    f"biases; llama.cpp's deci architecture needs {full} query heads per biased layer and "
                    f"{full} is not a multiple of {layer.num_kv_heads}, so the heads cannot be zero-padded; "
                    f"export this model to ONNX instead")
            heads[i] = full
            padded.append(i)
    widths = [(h, layer.num_kv_heads, layer.intermediate_size) for h, layer in zip(heads, spec.layers)]
    uniform = all(w == widths[0] for w in widths)
    return (spec.family if uniform else "deci"), heads, padded


# ---------------------------------------------------------------------------------------------------------------
# Tokenizer
# ---------------------------------------------------------------------------------------------------------------

def _pre_tokenizer_name(pre: Any, where: Path) -> str:
    """Our tokenizer.json pre-tokenizer -> llama.cpp's ``tokenizer.ggml.pre`` name."""
    def is_bytelevel(p: Any) -> bool:
        return (isinstance(p, dict) and p.get("type") == "ByteLevel" and not p.get("add_prefix_space", False)
                and p.get("use_regex", True))

    if isinstance(pre, dict) and pre.get("type") == "Sequence":
        parts = pre.get("pretokenizers", [])
        if (len(parts) == 2 and parts[0].get("type") == "Digits" and parts[0].get("individual_digits")
                and is_bytelevel(parts[1])):
            return "smollm"  # llama.cpp: every digit alone, then the GPT-2 regex
    if is_bytelevel(pre):
        return "gpt2"
    raise GGUFExportError(f"{where}: pre_tokenizer {json.dumps(pre)[:120]} has no llama.cpp equivalent; the GGUF "
                          f"exporter supports byte-level BPE with Digits(individual_digits) + ByteLevel "
                          f"('smollm') or plain ByteLevel ('gpt2')")


def chatml_template(system: str | None) -> str:
    """A ChatML Jinja template (what llama.cpp renders for chat) matching
    :meth:`edge_runtime.contracts.chat_format.ChatFormat.render` for one user turn: the recorded
    system message, when there is one, goes first unless the conversation has its own."""
    default = "" if system is None else (
        "{% if messages[0]['role'] != 'system' %}{{ '<|im_start|>system\\n' + " + json.dumps(system)
        + " + '<|im_end|>\\n' }}{% endif %}")
    return (default + "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + "
            "message['content'] + '<|im_end|>' + '\\n' }}{% endfor %}"
            "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}")


def _tokenizer_fields(model_dir: Path, vocab_size: int, spec) -> dict[str, Any]:
    """Everything llama.cpp's gpt2 BPE vocab needs, from tokenizer.json (+ chat format / template)."""
    from ..contracts.chat_format import ChatFormatError, read_chat_format
    from ..model.gguf_layout import CONTROL_TOKEN, NORMAL_TOKEN, UNUSED_TOKEN, USER_DEFINED_TOKEN

    path = model_dir / "tokenizer.json"
    if not path.is_file():
        raise GGUFExportError(f"{path}: not found; a GGUF file carries its tokenizer, save the model with "
                              f"its tokenizer.json")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise GGUFExportError(f"{path}: not valid JSON ({exc})") from None
    model = data.get("model") or {}
    if model.get("type") != "BPE" or data.get("normalizer") is not None:
        raise GGUFExportError(f"{path}: model type {model.get('type')!r} with normalizer "
                              f"{(data.get('normalizer') or {}).get('type')!r}; only byte-level BPE without a "
                              f"normalizer can be written as llama.cpp's 'gpt2' vocabulary")
    pre = _pre_tokenizer_name(data.get("pre_tokenizer"), path)
    by_id: dict[int, str] = {i: t for t, i in model.get("vocab", {}).items()}
    kinds: dict[int, int] = {}
    for entry in data.get("added_tokens", []):
        by_id[entry["id"]] = entry["content"]
        kinds[entry["id"]] = CONTROL_TOKEN if entry.get("special") else USER_DEFINED_TOKEN
    if not by_id or max(by_id) >= vocab_size:
        raise GGUFExportError(f"{path}: token ids reach {max(by_id, default=-1)}, the model's vocab_size is "
                              f"{vocab_size}; the tokenizer does not belong to this model")
    tokens, types = [], []
    for i in range(vocab_size):  # embedding rows without a token: llama.cpp's unused padding tokens
        tokens.append(by_id.get(i, f"[PAD{i}]"))
        types.append(kinds.get(i, NORMAL_TOKEN if i in by_id else UNUSED_TOKEN))
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]
    try:
        fmt = read_chat_format(model_dir)
    except (ChatFormatError, ValueError, OSError) as exc:
        raise GGUFExportError(f"{model_dir}: chat format unreadable ({exc})") from None
    ids = {t: i for i, t in by_id.items()}
    eos, pad = ids.get(fmt.eos_token), ids.get(fmt.pad_token)
    if eos is None:
        raise GGUFExportError(f"{path}: the chat format's eos_token {fmt.eos_token!r} is not in the vocabulary")
    bos = spec.bos_token_id if spec.bos_token_id is not None else eos
    template_file = model_dir / "chat_template.jinja"
    template = None
    if template_file.is_file():
        template = template_file.read_text(encoding="utf-8")
    elif fmt.kind == "chatml":
        template = chatml_template(fmt.system)
    return {"tokens": tokens, "types": types, "merges": merges, "pre": pre, "bos": bos, "eos": eos, "pad": pad,
            "template": template}


# ---------------------------------------------------------------------------------------------------------------
# Tensors
# ---------------------------------------------------------------------------------------------------------------

def _gguf_tensors(state: dict[str, Any], spec, arch: str, heads: list[int], padded: list[int]):
    """HF-named fp32 numpy tensors -> [(GGUF name, array in llama.cpp layout)] in llama.cpp's order."""
    from ..model.gguf_layout import gguf_tensor_name, permute_qk

    out = [("token_embd.weight", state["model.embed_tokens.weight"])]
    permute = arch in ("llama", "deci")
    for i, layer in enumerate(spec.layers):
        p = f"model.layers.{i}."
        t = {k[len(p):]: v for k, v in state.items() if k.startswith(p)}
        if i in padded:
            q_w, q_b, o_w = pad_query_heads(t["self_attn.q_proj.weight"], t.get("self_attn.q_proj.bias"),
                                            t["self_attn.o_proj.weight"], layer.num_q_heads, layer.num_kv_heads,
                                            heads[i], spec.head_dim)
            t["self_attn.q_proj.weight"], t["self_attn.o_proj.weight"] = q_w, o_w
            if q_b is not None:
                t["self_attn.q_proj.bias"] = q_b
        order = ["input_layernorm.weight", "self_attn.q_proj.weight", "self_attn.q_proj.bias",
                 "self_attn.k_proj.weight", "self_attn.k_proj.bias", "self_attn.v_proj.weight",
                 "self_attn.v_proj.bias", "self_attn.o_proj.weight", "self_attn.o_proj.bias",
                 "post_attention_layernorm.weight", "mlp.gate_proj.weight", "mlp.up_proj.weight",
                 "mlp.down_proj.weight"]
        for name in order:
            if name not in t:
                continue
            arr = t[name]
            if permute and name.startswith("self_attn.q_proj."):
                arr = permute_qk(arr, heads[i])
            elif permute and name.startswith("self_attn.k_proj."):
                arr = permute_qk(arr, layer.num_kv_heads)
            out.append((gguf_tensor_name(p + name), arr))
    out.append(("output_norm.weight", state["model.norm.weight"]))
    if not spec.tie_word_embeddings:
        out.append(("output.weight", state["lm_head.weight"]))
    return out


def _encode(arr, gguf_type: str, name: str = ""):
    """-> (array to write, raw GGML type or None for a plain float array, type name)."""
    import numpy as np
    from gguf import GGMLQuantizationType
    from gguf.quants import quantize

    if arr.ndim == 1 or gguf_type == "f32":
        return np.ascontiguousarray(arr, dtype=np.float32), None, "F32"
    if gguf_type == "q4_0" and arr.shape[-1] % _Q8_BLOCK == 0 and name not in _Q4_HEAD_TENSORS:
        return quantize(np.ascontiguousarray(arr, dtype=np.float32), GGMLQuantizationType.Q4_0), \
            GGMLQuantizationType.Q4_0, "Q4_0"
    if gguf_type in ("q8_0", "q4_0") and arr.shape[-1] % _Q8_BLOCK == 0:
        return quantize(np.ascontiguousarray(arr, dtype=np.float32), GGMLQuantizationType.Q8_0), \
            GGMLQuantizationType.Q8_0, "Q8_0"
    return np.ascontiguousarray(arr, dtype=np.float16), None, "F16"


def _check_read_back(path: Path, expected: dict[str, Any], where: Path) -> float:
    """Read the written file back and compare every tensor with what was meant to be written:
    exact for f32 / f16 (compared after the same cast), for Q8_0 / Q4_0 within one quantisation step
    (a block's scale is at most max|w| / 127, resp. max|w| / 8; 1 % slack for the f16-stored scale).
    -> max |difference| over all tensors (0 for f32)."""
    import numpy as np
    from gguf import GGUFReader
    from gguf.quants import dequantize

    reader = GGUFReader(str(path))
    seen, worst = set(), 0.0
    for t in reader.tensors:
        if t.name not in expected:
            raise GGUFExportError(f"{where}: read-back found unexpected tensor {t.name}; nothing written")
        want = expected[t.name]
        got = np.asarray(dequantize(t.data, t.tensor_type), dtype=np.float32).reshape(want.shape)
        diff = float(np.max(np.abs(got - want))) if want.size else 0.0
        limit = 0.0 if t.tensor_type.name == "F32" else (
            float(np.max(np.abs(want))) / 127.0 * 1.01 if t.tensor_type.name == "Q8_0"
            else float(np.max(np.abs(want))) / 8.0 * 1.01 if t.tensor_type.name == "Q4_0"
            else float(np.max(np.abs(want))) * 2.0 ** -10 + 6.2e-5)
        if diff > limit:
            raise GGUFExportError(f"{where}: tensor {t.name} reads back {diff:.3g} off the source (limit "
                                  f"{limit:.3g}, {t.tensor_type.name}); nothing written")
        worst = max(worst, diff)
        seen.add(t.name)
    missing = sorted(set(expected) - seen)
    if missing:
        raise GGUFExportError(f"{where}: read-back misses tensor {missing[0]}; nothing written")
    return worst


# ---------------------------------------------------------------------------------------------------------------
# The export
# ---------------------------------------------------------------------------------------------------------------

def export_gguf(model_dir: str | os.PathLike, out: str | os.PathLike, gguf_type: str = "f32",
                name: str | None = None) -> GGUFExportResult:
    """Write `model_dir` (a save_model directory) as the GGUF file `out` (replaced if it exists).

    Raises GGUFExportError (one line) for input llama.cpp cannot represent; `out` is then untouched.
    """
    import numpy as np
    import torch
    from gguf import GGUFWriter, LlamaFileType

    from ..contracts.arch_spec import ArchSpecError
    from ..model.io import ModelFormatError, load_model

    model_dir, out = Path(model_dir), Path(out)
    if gguf_type not in GGUF_TYPES:
        raise GGUFExportError(f"--gguf-type {gguf_type!r} is not one of {', '.join(GGUF_TYPES)}")
    if out.is_dir():
        raise GGUFExportError(f"output {out} is a directory; pass a .gguf file path")
    try:
        model, spec = load_model(model_dir, dtype=torch.float32)
    except (ModelFormatError, ArchSpecError, FileNotFoundError) as exc:
        raise GGUFExportError(" ".join(str(exc).split())) from None
    arch, heads, padded = choose_architecture(spec, model_dir)
    tok = _tokenizer_fields(model_dir, spec.vocab_size, spec)
    state = {k: v.detach().cpu().numpy().astype(np.float32) for k, v in model.state_dict().items()}
    del model
    tensors = _gguf_tensors(state, spec, arch, heads, padded)

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.export-{uuid.uuid4().hex[:8]}.tmp")
    types: dict[str, int] = {}
    expected: dict[str, Any] = {}
    try:
        writer = GGUFWriter(str(tmp), arch)
        writer.add_name(name or model_dir.resolve().name)
        writer.add_file_type({"f32": LlamaFileType.ALL_F32, "f16": LlamaFileType.MOSTLY_F16,
                              "q8_0": LlamaFileType.MOSTLY_Q8_0, "q4_0": LlamaFileType.MOSTLY_Q4_0}[gguf_type])
        writer.add_block_count(spec.num_layers)
        writer.add_context_length(spec.max_position_embeddings)
        writer.add_embedding_length(spec.hidden_size)
        per_layer = arch == "deci"
        writer.add_feed_forward_length([l.intermediate_size for l in spec.layers] if per_layer
                                       else spec.layers[0].intermediate_size)
        writer.add_head_count(list(heads) if per_layer else heads[0])
        writer.add_head_count_kv([l.num_kv_heads for l in spec.layers] if per_layer else spec.layers[0].num_kv_heads)
        writer.add_key_length(spec.head_dim)
        writer.add_value_length(spec.head_dim)
        writer.add_rope_dimension_count(spec.head_dim)
        writer.add_rope_freq_base(float(spec.rope_theta))
        writer.add_layer_norm_rms_eps(float(spec.rms_norm_eps))
        writer.add_vocab_size(spec.vocab_size)
        writer.add_tokenizer_model("gpt2")
        writer.add_tokenizer_pre(tok["pre"])
        writer.add_token_list(tok["tokens"])
        writer.add_token_types(tok["types"])
        writer.add_token_merges(tok["merges"])
        writer.add_bos_token_id(tok["bos"])
        writer.add_eos_token_id(tok["eos"])
        if tok["pad"] is not None:
            writer.add_pad_token_id(tok["pad"])
        writer.add_add_bos_token(False)  # our prompts never start with BOS (tokenizer adds none)
        writer.add_add_eos_token(False)
        if tok["template"]:
            writer.add_chat_template(tok["template"])
        for tname, arr in tensors:
            data, raw, tname_type = _encode(arr, gguf_type, tname)
            if raw is None:
                writer.add_tensor(tname, data)
                expected[tname] = data.astype(np.float32)
            else:
                writer.add_tensor(tname, data, raw_dtype=raw)
                expected[tname] = arr
            types[tname_type] = types.get(tname_type, 0) + 1
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        worst = _check_read_back(tmp, expected, model_dir)
        n_bytes = tmp.stat().st_size
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    return GGUFExportResult(out=out, architecture=arch, gguf_type=gguf_type, n_tensors=len(tensors),
                            n_bytes=n_bytes, tensor_types=dict(sorted(types.items())), padded_layers=padded,
                            tokenizer_pre=tok["pre"], chat_template=bool(tok["template"]), max_abs_diff=worst)


def run_cli(model_dir: Path, out: Path, gguf_type: str) -> int:
    """``edge-export --format gguf``: export, print a short report; 2 with one line on bad input."""
    import sys

    try:
        result = export_gguf(model_dir, out, gguf_type)
    except GGUFExportError as exc:
        print(f"edge-export: error: {' '.join(str(exc).split())}", file=sys.stderr)
        return 2
    print(f"edge-export {model_dir} -> {out} (GGUF, architecture {result.architecture}, {gguf_type})")
    print(f"  size               {result.n_bytes / 2**20:.2f} MiB ({result.n_bytes:,} bytes)")
    print(f"  tensors            {result.n_tensors} ({', '.join(f'{k} {v}' for k, v in result.tensor_types.items())})")
    if result.padded_layers:
        print(f"  zero-padded heads  layers {result.padded_layers} (q bias needs hidden_size rows in llama.cpp)")
    print(f"  tokenizer          gpt2 BPE, pre '{result.tokenizer_pre}'"
          + (", chat template" if result.chat_template else ", no chat template (plain prompts)"))
    print(f"  read-back check    OK (max |diff| {result.max_abs_diff:.3g}) -> {out}")
    print("  note               run it with llama.cpp: llama-cli -m OUT.gguf; greedy parity: docs/export.md (GGUF)")
    return 0
