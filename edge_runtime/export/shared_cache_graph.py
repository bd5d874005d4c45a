"""The decoder graph with a shared, preallocated KV cache: past and present are one buffer.

Why a second graph: the traced graph of ``onnx_export`` concatenates each layer's past with the
new keys and values, so every decode step allocates a present one token longer and copies the
whole cache into it. Here each layer's cache is a fixed ``[batch, kv_heads_i, capacity, head_dim]``
buffer that the runtime allocates once and binds as both ``past_key_values.{i}.*`` and
``present.{i}.*`` (ONNX Runtime IOBinding); ONNX Runtime's ``GroupQueryAttention`` operator
(``com.microsoft``, CPU and CUDA kernels) writes the new entries in place and attends over the
first ``total_seq`` positions only. Nothing is reallocated or copied per token.

The graph is written node by node from the weights rather than traced, because the in-place
cache is a property of that operator, not of anything the PyTorch model computes:

    x = Gather(embed, input_ids)
    per layer i:   h  = RMSNorm(x) ; qkv = h @ Wqkv_i (+ b)      (q, k, v packed in one MatMul)
                   a, present_k, present_v = GroupQueryAttention(qkv, past_k, past_v, seqlens_k,
                                     total_seq, cos, sin; rotary inside, GQA ratio of layer i)
                   x  = x + a @ Wo_i
                   h  = RMSNorm(x) ; g, u = split(h @ [Wgate|Wup]_i) ; x = x + (silu(g) * u) @ Wdown_i
    logits = RMSNorm(x) @ lm_head          (tied: Transpose(embed), the table is stored once)

Every residual Add followed by an RMSNorm (all but layer 0's input norm) is one
``SkipSimplifiedLayerNormalization`` (com.microsoft, CPU and CUDA kernels): it returns both the
normalised sum and the sum itself, so the sum is not written and read back by a separate Add.

I/O names are the contract's (design.md, "ONNX decoder"); what differs is the cache dimension:

    inputs   input_ids [batch, seq] int64, attention_mask [batch, total_seq] int64,
             position_ids [batch, seq] int64 (kept for the contract; positions follow from
             attention_mask, see below), past_key_values.{i}.key|value [batch, kv_heads_i, capacity, head_dim]
    outputs  logits [batch, seq, vocab], present.{i}.key|value [batch, kv_heads_i, capacity, head_dim]

``attention_mask`` must be all ones (no padding: the runtime decodes one prompt at a time);
its length is ``total_seq`` = tokens already in the cache + ``seq``, and the new tokens take
positions ``total_seq - seq ..``. The file's metadata says ``edge_runtime.kv_cache`` =
``{"layout": "shared", "capacity": N}``; a file without the key has the traced concat layout.

Limits (``ExportError`` otherwise): float32 weights (fp16 stays with the traced graph; the
quantized variants quantize this graph's MatMuls), head_dim a multiple of 16 (the operator's
rotary kernel), default RoPE (no scaling), SiLU MLP.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from ..contracts.arch_spec import ArchSpec
from .errors import ExportError

__all__ = ["DEFAULT_CAPACITY", "LAYOUT_CONCAT", "LAYOUT_SHARED", "build_shared_cache_graph", "check_supported"]

LAYOUT_SHARED, LAYOUT_CONCAT = "shared", "concat"
DEFAULT_CAPACITY = 1024
OPSET = 23  # RMSNormalization
MS_DOMAIN = "com.microsoft"


def check_supported(spec: ArchSpec, capacity: int) -> str | None:
    """None if ``spec`` can be built as a shared-cache graph of ``capacity``, else the reason."""
    if isinstance(capacity, bool) or not isinstance(capacity, int) or capacity < 2:
        return f"capacity must be an integer >= 2, got {capacity!r}"
    if spec.head_dim % 16:
        return f"head_dim {spec.head_dim} is not a multiple of 16 (GroupQueryAttention's rotary kernel needs it)"
    rope = spec.rope_parameters or {}
    if rope.get("rope_type", "default") != "default":
        return f"rope_type {rope.get('rope_type')!r} is not supported (only the default RoPE)"
    if spec.hidden_act != "silu":
        return f"hidden_act {spec.hidden_act!r} is not supported (only silu)"
    return None


def _rope_theta(spec: ArchSpec) -> float:
    rope = spec.rope_parameters or {}
    return float(rope.get("rope_theta", spec.rope_theta))


def _rotary_tables(spec: ArchSpec, capacity: int) -> tuple[np.ndarray, np.ndarray]:
    """cos/sin [capacity, head_dim/2] of the default (non-interleaved, HF ``rotate_half``) RoPE."""
    d = spec.head_dim
    inv_freq = 1.0 / (_rope_theta(spec) ** (np.arange(0, d, 2, dtype=np.float64) / d))
    angles = np.outer(np.arange(capacity, dtype=np.float64), inv_freq)
    return np.cos(angles).astype(np.float32), np.sin(angles).astype(np.float32)


def build_shared_cache_graph(model: Any, spec: ArchSpec, capacity: int = DEFAULT_CAPACITY):
    """The shared-cache decoder (an ``onnx.ModelProto``, no metadata yet) of a float32
    Qwen2/Llama ``model`` whose shapes follow ``spec``."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    reason = check_supported(spec, capacity)
    if reason:
        raise ExportError(f"shared KV cache graph: {reason}; export with kv_cache='concat'")
    state = {k: v.detach().float().cpu().numpy() for k, v in model.state_dict().items()}

    inits: list = []
    nodes: list = []

    def init(name: str, array: np.ndarray) -> str:
        inits.append(numpy_helper.from_array(np.ascontiguousarray(array), name))
        return name

    def node(op: str, inputs: list[str], outputs: list[str], domain: str = "", **attrs) -> None:
        nodes.append(helper.make_node(op, inputs, outputs, name=f"{outputs[0]}/{op}", domain=domain or None, **attrs))

    eps = float(spec.rms_norm_eps)
    d = spec.head_dim
    cos, sin = _rotary_tables(spec, capacity)
    init("rotary.cos", cos)
    init("rotary.sin", sin)
    embed = state["model.embed_tokens.weight"]
    init("embed_tokens", embed)
    if spec.tie_word_embeddings:  # the LM head reads the embedding table: stored once (tied_head)
        node("Transpose", ["embed_tokens"], ["lm_head.T"], perm=[1, 0])
    else:
        init("lm_head.T", state["lm_head.weight"].T)

    # seqlens_k = total_seq - 1 per row; total_sequence_length = attention_mask's length
    init("one.i64", np.array([1], dtype=np.int64))
    init("axis1.i64", np.array([1], dtype=np.int64))
    node("ReduceSum", ["attention_mask", "axis1.i64"], ["mask.sum"], keepdims=0)
    node("Sub", ["mask.sum", "one.i64"], ["seqlens.i64"])
    node("Cast", ["seqlens.i64"], ["seqlens_k"], to=TensorProto.INT32)
    node("Shape", ["attention_mask"], ["mask.shape"], start=1, end=2)
    node("Squeeze", ["mask.shape"], ["total.i64"])
    node("Cast", ["total.i64"], ["total_seq"], to=TensorProto.INT32)

    def skip_norm(delta: str, residual: str, gamma: str, normed: str, summed: str) -> None:
        """summed = residual + delta; normed = RMSNorm(summed) -- one fused contrib kernel instead of
        an Add and a norm that reads the sum back from memory (what onnxruntime-genai's graphs use)."""
        node("SkipSimplifiedLayerNormalization", [delta, residual, gamma], [normed, "", "", summed],
             domain=MS_DOMAIN, epsilon=eps)

    node("Gather", ["embed_tokens", "input_ids"], ["x.0"])
    x = "x.0"
    pending_mlp: tuple[str, str] | None = None  # (residual, mlp output) of the previous layer, not yet added
    for i, layer in enumerate(spec.layers):
        p = f"model.layers.{i}."
        nq, nkv, inter = layer.num_q_heads, layer.num_kv_heads, layer.intermediate_size
        gamma_in = init(f"{p}input_layernorm", state[p + "input_layernorm.weight"])
        if pending_mlp is None:
            node("RMSNormalization", [x, gamma_in], [f"l{i}.h1"], epsilon=eps, axis=-1)
        else:
            skip_norm(pending_mlp[1], pending_mlp[0], gamma_in, f"l{i}.h1", x)
        wqkv = np.concatenate([state[p + f"self_attn.{n}_proj.weight"] for n in "qkv"], axis=0).T
        node("MatMul", [f"l{i}.h1", init(f"{p}qkv.weight", wqkv)], [f"l{i}.qkv_nb"])
        qkv = f"l{i}.qkv_nb"
        if p + "self_attn.q_proj.bias" in state:
            bias = np.concatenate([state[p + f"self_attn.{n}_proj.bias"] for n in "qkv"])
            node("Add", [qkv, init(f"{p}qkv.bias", bias)], [f"l{i}.qkv"])
            qkv = f"l{i}.qkv"
        node("GroupQueryAttention",
             [qkv, "", "", f"past_key_values.{i}.key", f"past_key_values.{i}.value", "seqlens_k", "total_seq",
              "rotary.cos", "rotary.sin"],
             [f"l{i}.attn", f"present.{i}.key", f"present.{i}.value"], domain=MS_DOMAIN,
             num_heads=nq, kv_num_heads=nkv, do_rotary=1, rotary_interleaved=0, scale=1.0 / math.sqrt(d))
        node("MatMul", [f"l{i}.attn", init(f"{p}o.weight", state[p + "self_attn.o_proj.weight"].T)], [f"l{i}.o"])
        skip_norm(f"l{i}.o", x, init(f"{p}post_attention_layernorm", state[p + "post_attention_layernorm.weight"]),
                  f"l{i}.h2", f"l{i}.x_attn")
        wgu = np.concatenate([state[p + "mlp.gate_proj.weight"], state[p + "mlp.up_proj.weight"]], axis=0).T
        node("MatMul", [f"l{i}.h2", init(f"{p}gate_up.weight", wgu)], [f"l{i}.gu"])
        node("Split", [f"l{i}.gu", init(f"{p}split", np.array([inter, inter], dtype=np.int64))],
             [f"l{i}.gate", f"l{i}.up"], axis=-1)
        node("Sigmoid", [f"l{i}.gate"], [f"l{i}.sig"])
        node("Mul", [f"l{i}.gate", f"l{i}.sig"], [f"l{i}.silu"])
        node("Mul", [f"l{i}.silu", f"l{i}.up"], [f"l{i}.act"])
        node("MatMul", [f"l{i}.act", init(f"{p}down.weight", state[p + "mlp.down_proj.weight"].T)], [f"l{i}.mlp"])
        pending_mlp = (f"l{i}.x_attn", f"l{i}.mlp")  # added by the next norm: x.{i + 1} = x_attn + mlp
        x = f"x.{i + 1}"
    skip_norm(pending_mlp[1], pending_mlp[0], init("model.norm", state["model.norm.weight"]), "h.final", x)
    node("MatMul", ["h.final", "lm_head.T"], ["logits"])

    f32, i64 = TensorProto.FLOAT, TensorProto.INT64
    inputs = [helper.make_tensor_value_info("input_ids", i64, ["batch", "seq"]),
              helper.make_tensor_value_info("attention_mask", i64, ["batch", "total_seq"]),
              helper.make_tensor_value_info("position_ids", i64, ["batch", "seq"])]
    outputs = [helper.make_tensor_value_info("logits", f32, ["batch", "seq", spec.vocab_size])]
    for i, layer in enumerate(spec.layers):
        shape = ["batch", layer.num_kv_heads, capacity, d]
        for kind in ("key", "value"):
            inputs.append(helper.make_tensor_value_info(f"past_key_values.{i}.{kind}", f32, shape))
            outputs.append(helper.make_tensor_value_info(f"present.{i}.{kind}", f32, shape))
    # ONNX shape inference does not know com.microsoft operators: state the attention outputs'
    # types and shapes so that tools relying on it (ONNX Runtime's quantizers) see the whole graph
    value_info = [helper.make_tensor_value_info(f"l{i}.attn", f32, ["batch", "seq", layer.num_q_heads * d])
                  for i, layer in enumerate(spec.layers)]
    hidden = ["batch", "seq", spec.hidden_size]
    value_info += [helper.make_tensor_value_info(name, f32, hidden) for i in range(spec.num_layers)
                   for name in (f"l{i}.h1", f"l{i}.h2", f"l{i}.x_attn", f"x.{i}")]
    value_info += [helper.make_tensor_value_info(name, f32, hidden) for name in ("h.final", f"x.{spec.num_layers}")]
    graph = helper.make_graph(nodes, "edge_runtime_decoder_shared_cache", inputs, outputs, inits,
                              value_info=value_info)
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET), helper.make_opsetid(MS_DOMAIN, 1)])
    proto.ir_version = min(proto.ir_version, 10)  # what onnxruntime 1.2x reads
    onnx.checker.check_model(proto)
    return proto
