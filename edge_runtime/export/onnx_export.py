"""Export a (possibly non-uniform, pruned) Qwen2/Llama model directory to one ONNX decoder graph.

The graph (contract in design.md, "ONNX decoder")::

    inputs   input_ids                    [batch, seq]                  int64
             attention_mask               [batch, past_seq + seq]       int64  (1 = real token, 0 = padding)
             position_ids                 [batch, seq]                  int64
             past_key_values.{i}.key      [batch, kv_heads_i, past_seq, head_dim]   graph dtype
             past_key_values.{i}.value    [batch, kv_heads_i, past_seq, head_dim]   graph dtype
    outputs  logits                       [batch, seq, vocab]           graph dtype
             present.{i}.key|value        [batch, kv_heads_i, past_seq + seq, head_dim]   graph dtype

``batch``, ``seq`` and ``past_seq`` are dynamic. Prefill is the same graph fed with empty
``[batch, kv_heads_i, 0, head_dim]`` pasts. ``kv_heads_i`` is layer i's own KV head count (a pruned
model has one per layer). The graph dtype is float32 for ``dtype="fp32"`` and float16 for
``dtype="fp16"``: the fp16 graph is traced from the half-precision model, so its weights, KV
tensors and logits are float16 while the token inputs stay int64; softmax and RMSNorm run in
float32 inside the graph (the Cast nodes of the HF modeling code are kept).

**Exporter.** The TorchScript ("legacy", ``dynamo=False``) exporter of ``torch.onnx.export``. Why:
it needs no extra package (the dynamo exporter needs ``onnxscript``), it exports this model in a
few seconds, and with the precautions below its graph is correct for non-uniform models and for
``past_seq = 0`` (both are tested). Precautions against values that tracing would freeze:

* the 4-D attention mask is built here from ``attention_mask`` with tensor ops (causal +
  padding; every query may always attend to itself, so a left-padding row is never fully masked
  and cannot produce NaN) and handed to the model as a 4-D mask, which the HF mask builders
  return as is (so they never read Python ints from the cache);
* ``position_ids`` are an input, so the model never asks the cache for its length;
* the cache is a ``transformers.DynamicCache`` whose layers are filled directly with the past
  tensors (no lazy init from an empty 1-D tensor), and the trace example has ``seq = 2`` and
  ``past_seq = 3`` so that no shape-dependent branch (e.g. single-token GQA packing) is taken;
* attention runs the "eager" implementation (matmul + float32 softmax), which traces into plain
  ONNX ops with explicit per-layer ``num_key_value_groups``.

The TorchScript exporter is deprecated upstream (torch >= 2.9 warns on every call; the warning is
silenced here). Should a torch release drop it, switch ``export_onnx`` to ``dynamo=True`` (add
``onnxscript`` to the ``train`` extra) -- the wrapper and the tests stay as they are.

**Metadata.** The file is self-describing: ``metadata_props`` hold (all strings)

    edge_runtime.format_version   "1"
    edge_runtime.arch_spec        ArchSpec JSON (per-layer shapes: the runtime's cache shapes)
    edge_runtime.tokenizer        the tokenizer.json text
    edge_runtime.prompt_version   edge_runtime.contracts.answer_format.PROMPT_VERSION
    edge_runtime.answer_schema    JSON {"format", "version", "answer_open", "answer_close",
                                  "parameters": [{name, low, high, default, unit}]}
    edge_runtime.generation       JSON {"eos_id", "pad_id", "max_new_tokens": {"mpc", "decision"}, "greedy"}
                                  (eos/pad: the ids of the chat format's eos_token / pad_token)
    edge_runtime.chat_format      JSON of contracts.chat_format.ChatFormat (the model directory's
                                  chat_format.json; plain without one): how the runtime renders a
                                  prompt; optional for readers, absent in older files = plain
    edge_runtime.source_sha256    sha256 of the source model.safetensors
    edge_runtime.dtype            "fp32" | "fp16" (the graph dtype, see above)
    edge_runtime.kv_cache         optional JSON {"layout": "shared", "capacity": N} for the
                                  shared-cache graph (``shared_cache_graph``); absent = this traced,
                                  concatenating layout

**Tied embeddings.** A model with ``tie_word_embeddings`` stores its vocab x hidden table once:
the LM head MatMul reads ``Transpose`` of the embedding initialiser (``tied_head``), not a copy.

(a tokenizer of a few thousand tokens is well under 1 MB, so no sidecar file is needed).
The file is written atomically (temp file next to it, then ``os.replace``). Weights are stored
inside the file (no external data), which limits a model to protobuf's 2 GB -- about 500M
parameters in fp32, far above the controllers this project deploys.
"""

from __future__ import annotations

import inspect
import json
import os
import tempfile
import uuid
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..contracts.answer_format import ANSWER_CLOSE, ANSWER_OPEN, PROMPT_VERSION
from ..contracts.arch_spec import ArchSpec
from ..contracts.chat_format import ChatFormat, read_chat_format
from ..control.params import PARAM_SPECS
from .errors import ExportError
from .tied_head import share_tied_table

__all__ = [
    "DTYPES", "FORMAT_VERSION", "GENERATION_DEFAULTS", "META_KEYS", "answer_schema",
    "export_onnx", "input_names", "output_names",
]

FORMAT_VERSION = "1"
DTYPES = {"fp32": torch.float32, "fp16": torch.float16}
META = "edge_runtime."
#: Every metadata key the runtime requires (edge_runtime.decoding.model_file checks them all on load).
META_KEYS = tuple(META + k for k in ("format_version", "arch_spec", "tokenizer", "prompt_version",
                                     "answer_schema", "generation", "source_sha256", "dtype"))
#: Generation settings stored in the file: greedy, stop at eos, per-task token budgets.
GENERATION_DEFAULTS: dict[str, Any] = {"greedy": True, "max_new_tokens": {"mpc": 200, "decision": 48}}


def input_names(spec: ArchSpec) -> list[str]:
    names = ["input_ids", "attention_mask", "position_ids"]
    for i in range(spec.num_layers):
        names += [f"past_key_values.{i}.key", f"past_key_values.{i}.value"]
    return names


def output_names(spec: ArchSpec) -> list[str]:
    names = ["logits"]
    for i in range(spec.num_layers):
        names += [f"present.{i}.key", f"present.{i}.value"]
    return names


def answer_schema() -> dict[str, Any]:
    return {
        "format": "edge_runtime.mpc_answer", "version": 1,
        "answer_open": ANSWER_OPEN, "answer_close": ANSWER_CLOSE,
        "parameters": [{"name": p.name, "low": p.low, "high": p.high, "default": p.default, "unit": p.unit}
                       for p in PARAM_SPECS],
    }


def _attention_mask_4d(attention_mask: torch.Tensor, q_len: int, dtype: torch.dtype) -> torch.Tensor:
    """[batch, past+seq] 0/1 -> additive [batch, 1, seq, past+seq] mask (0 allowed, dtype min masked).

    Query i (absolute position past+i) sees key j when j <= past+i and key j is a real token; it
    always sees itself, so that no row is all-masked (padding rows stay finite)."""
    kv_len = attention_mask.shape[1]
    past = kv_len - q_len
    key_pos = torch.arange(kv_len, device=attention_mask.device)
    query_pos = torch.arange(q_len, device=attention_mask.device) + past
    causal = key_pos[None, :] <= query_pos[:, None]                      # [seq, kv]
    diagonal = key_pos[None, :] == query_pos[:, None]
    allowed = (causal[None, :, :] & (attention_mask[:, None, :] != 0)) | diagonal[None, :, :]
    zero = torch.zeros((), dtype=dtype)
    masked = torch.full((), torch.finfo(dtype).min, dtype=dtype)
    return torch.where(allowed, zero, masked)[:, None, :, :]


class DecoderWithCache(nn.Module):
    """Flat-tensor wrapper for export: (input_ids, attention_mask, position_ids, k0, v0, k1, ...)
    -> (logits, present k0, v0, ...), through a DynamicCache built from the pasts."""

    def __init__(self, model, num_layers: int) -> None:
        super().__init__()
        self.model = model
        self.num_layers = num_layers
        params = inspect.signature(model.forward).parameters
        self.cache_kwarg = "cache" if "cache" in params else "past_key_values"

    def forward(self, input_ids, attention_mask, position_ids, *past):
        from transformers import DynamicCache
        from transformers.cache_utils import DynamicLayer

        if len(past) != 2 * self.num_layers:
            raise ValueError(f"expected {2 * self.num_layers} past tensors, got {len(past)}")
        layers = []
        for i in range(self.num_layers):
            layer = DynamicLayer()
            layer.keys, layer.values = past[2 * i], past[2 * i + 1]
            layer.device, layer.dtype, layer.is_initialized = past[2 * i].device, past[2 * i].dtype, True
            layers.append(layer)
        cache = DynamicCache()
        cache.layers = layers
        cache.layer_class_to_replicate = None
        dtype = self.model.get_input_embeddings().weight.dtype
        mask = _attention_mask_4d(attention_mask, input_ids.shape[1], dtype)
        # A 4-D mask is used as is by the HF mask builders (Qwen2 and Llama alike).
        out = self.model(input_ids=input_ids, attention_mask=mask,
                         position_ids=position_ids, use_cache=True, **{self.cache_kwarg: cache})
        new_cache = getattr(out, "cache", None)
        if new_cache is None:
            new_cache = out.past_key_values
        flat = []
        for layer in new_cache.layers:
            flat += [layer.keys, layer.values]
        return (out.logits, *flat)


def _source_files(model_dir: Path) -> tuple[Path, str, str]:
    """(weights path, weights sha256, tokenizer.json text) of a model dir, with clear errors."""
    from ..model.io import META as META_FILE
    from ..model.io import SPEC, TOKENIZER, WEIGHTS, sha256_file

    if not model_dir.is_dir():
        raise ExportError(f"model directory {model_dir} does not exist")
    for name in (SPEC, WEIGHTS, TOKENIZER):
        if not (model_dir / name).is_file():
            hint = (" (pass tokenizer_json= to edge_runtime.model.io.save_model)" if name == TOKENIZER
                    else " (write the directory with edge_runtime.model.io.save_model)")
            raise ExportError(f"{model_dir}: no {name}; the ONNX file embeds it{hint}")
    meta_path = model_dir / META_FILE
    sha = None
    if meta_path.is_file():
        sha = json.loads(meta_path.read_text(encoding="utf-8")).get("model_sha256")
    sha = sha or sha256_file(model_dir / WEIGHTS)
    return model_dir / WEIGHTS, sha, (model_dir / TOKENIZER).read_text(encoding="utf-8")


def build_metadata(spec: ArchSpec, tokenizer_json: str, source_sha256: str, dtype: str,
                   chat_format: ChatFormat | None = None) -> dict[str, str]:
    """The metadata_props of an exported file (see the module docstring); ``chat_format`` None: plain."""
    from tokenizers import Tokenizer

    fmt = chat_format or ChatFormat.plain()
    tok = Tokenizer.from_str(tokenizer_json)
    eos, pad = tok.token_to_id(fmt.eos_token), tok.token_to_id(fmt.pad_token)
    if eos is None:
        raise ExportError(f"the tokenizer has no {fmt.eos_token!r} token (the chat format's eos_token); train it "
                          "with edge_runtime.model.tokenizer.train_tokenizer or fix chat_format.json")
    generation = {"eos_id": eos, "pad_id": pad, **GENERATION_DEFAULTS}
    return {
        META + "format_version": FORMAT_VERSION,
        META + "arch_spec": json.dumps(spec.to_dict()),
        META + "tokenizer": tokenizer_json,
        META + "prompt_version": str(PROMPT_VERSION),
        META + "answer_schema": json.dumps(answer_schema()),
        META + "generation": json.dumps(generation),
        META + "source_sha256": source_sha256,
        META + "dtype": dtype,
        META + "chat_format": fmt.to_json(),
    }


def _example_inputs(spec: ArchSpec, dtype: torch.dtype, batch: int = 2, seq: int = 2, past: int = 3):
    ids = torch.randint(4, spec.vocab_size, (batch, seq), dtype=torch.long)
    mask = torch.ones(batch, past + seq, dtype=torch.long)
    pos = torch.arange(past, past + seq, dtype=torch.long)[None, :].repeat(batch, 1)
    pasts = []
    for b, kv, p, d in spec.kv_cache_shapes(batch, past):
        pasts += [torch.randn(b, kv, p, d).to(dtype), torch.randn(b, kv, p, d).to(dtype)]
    return (ids, mask, pos, *pasts)


def save_with_metadata(proto, metadata: dict[str, str], tmp: Path, dst: Path) -> None:
    """Replace ``proto``'s metadata by ``metadata``, check the graph, write it to ``tmp`` and move it
    onto ``dst`` in one rename, so a reader never sees a half-written or metadata-less file."""
    import onnx

    del proto.metadata_props[:]
    for key, value in metadata.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    proto.producer_name = "edge_runtime"
    onnx.checker.check_model(proto)
    onnx.save(proto, str(tmp))
    os.replace(tmp, dst)


def export_onnx(model_dir: str | os.PathLike, out_path: str | os.PathLike, dtype: str = "fp32",
                opset: int = 17, kv_cache: str = "concat", capacity: int | None = None) -> Path:
    """Export ``model_dir`` (written by edge_runtime.model.io.save_model, with tokenizer.json) to
    ``out_path``: one KV-cache decoder graph with the metadata above. Returns ``out_path``.

    ``kv_cache="concat"``: the traced graph above (pasts grow by concatenation; any dtype).
    ``kv_cache="shared"``: the written graph of ``shared_cache_graph`` (one preallocated cache
    buffer of ``capacity`` positions per layer, updated in place; fp32 only; ``opset`` ignored).

    Does not run the parity check: callers do (``edge_runtime.export.parity.check_parity``; the
    ``edge-export`` CLI always does)."""
    import onnx

    from ..model.io import load_model
    from .shared_cache_graph import DEFAULT_CAPACITY, LAYOUT_CONCAT, LAYOUT_SHARED, build_shared_cache_graph

    if dtype not in DTYPES:
        raise ExportError(f"unknown dtype {dtype!r}; use one of {', '.join(DTYPES)}")
    if isinstance(opset, bool) or not isinstance(opset, int) or opset < 14:
        raise ExportError(f"opset must be an integer >= 14, got {opset!r}")
    if kv_cache not in (LAYOUT_CONCAT, LAYOUT_SHARED):
        raise ExportError(f"unknown kv_cache layout {kv_cache!r}; use {LAYOUT_SHARED!r} or {LAYOUT_CONCAT!r}")
    if kv_cache == LAYOUT_SHARED and dtype != "fp32":
        raise ExportError(f"the shared KV cache graph is float32 only; export {dtype} with kv_cache='concat'")
    model_dir, out_path = Path(model_dir), Path(out_path)
    _, sha, tokenizer_json = _source_files(model_dir)
    model, spec = load_model(model_dir, dtype=DTYPES[dtype])
    model.config._attn_implementation = "eager"
    try:
        chat_format = read_chat_format(model_dir)
    except ValueError as exc:  # ChatFormatError: one line naming the file and the field
        raise ExportError(str(exc)) from None
    metadata = build_metadata(spec, tokenizer_json, sha, dtype, chat_format)
    if kv_cache == LAYOUT_SHARED:
        capacity = DEFAULT_CAPACITY if capacity is None else capacity
        metadata[META + "kv_cache"] = json.dumps({"layout": LAYOUT_SHARED, "capacity": capacity})
        proto = build_shared_cache_graph(model, spec, capacity)
        out_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = out_path.with_name(f".{out_path.name}.tmp-{uuid.uuid4().hex[:8]}")
        try:
            save_with_metadata(proto, metadata, tmp, out_path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        return out_path
    wrapper = DecoderWithCache(model, spec.num_layers).eval()
    ins, outs = input_names(spec), output_names(spec)
    dynamic_axes: dict[str, dict[int, str]] = {
        "input_ids": {0: "batch", 1: "seq"}, "attention_mask": {0: "batch", 1: "total_seq"},
        "position_ids": {0: "batch", 1: "seq"}, "logits": {0: "batch", 1: "seq"}}
    for name in ins[3:]:
        dynamic_axes[name] = {0: "batch", 2: "past_seq"}
    for name in outs[1:]:
        dynamic_axes[name] = {0: "batch", 2: "total_seq"}

    out_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_path.with_name(f".{out_path.name}.tmp-{uuid.uuid4().hex[:8]}")
    try:
        with tempfile.TemporaryDirectory(prefix=f".{out_path.name}.raw-", dir=out_path.parent) as td:
            raw = Path(td) / "raw.onnx"
            with torch.random.fork_rng():  # seeded example inputs, global RNG state untouched
                torch.manual_seed(0)
                example = _example_inputs(spec, DTYPES[dtype])
            with torch.no_grad(), warnings.catch_warnings():
                # the TorchScript exporter announces its deprecation on every call (see module docstring)
                warnings.simplefilter("ignore", DeprecationWarning)
                torch.onnx.export(wrapper, example, str(raw), dynamo=False, input_names=ins, output_names=outs,
                                  dynamic_axes=dynamic_axes, opset_version=opset, do_constant_folding=True)
            proto = onnx.load(str(raw))
        if spec.tie_word_embeddings:
            share_tied_table(proto)
        save_with_metadata(proto, metadata, tmp, out_path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return out_path
