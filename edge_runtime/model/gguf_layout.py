"""How llama.cpp lays out a Llama / Qwen2 checkpoint in GGUF: tensor names, token types, the q/k permutation.

Why a module of its own: the GGUF importer (:mod:`edge_runtime.model.gguf_import`) and the GGUF
exporter (:mod:`edge_runtime.export.gguf_export`) must agree on these exactly -- a wrong name or a
permutation applied one way but not undone the other gives a file that loads and produces garbage.
One copy, used in both directions, keeps the round trip (export, import, same logits) honest.

numpy only; no gguf, torch or transformers import.
"""

from __future__ import annotations

import numpy as np

__all__ = ["CONTROL_TOKEN", "GLOBAL_TENSORS", "LAYER_TENSORS", "NORMAL_TOKEN", "UNUSED_TOKEN", "USER_DEFINED_TOKEN",
           "gguf_tensor_name", "permute_qk", "unpermute_qk"]

#: llama.cpp token types (``tokenizer.ggml.token_type``): 1 ordinary BPE token; 3 control tokens
#: such as <|im_end|> (never produced from text by the BPE, matched whole); 4 user-defined added
#: tokens (matched whole in text, kept when decoding); 5 unused padding rows of the embedding.
NORMAL_TOKEN, CONTROL_TOKEN, USER_DEFINED_TOKEN, UNUSED_TOKEN = 1, 3, 4, 5
#: Per-layer tensor names: GGUF ``blk.{i}.<key>`` -> HF ``model.layers.{i}.<value>``.
LAYER_TENSORS = {
    "attn_norm.weight": "input_layernorm.weight",
    "ffn_norm.weight": "post_attention_layernorm.weight",
    "attn_q.weight": "self_attn.q_proj.weight", "attn_q.bias": "self_attn.q_proj.bias",
    "attn_k.weight": "self_attn.k_proj.weight", "attn_k.bias": "self_attn.k_proj.bias",
    "attn_v.weight": "self_attn.v_proj.weight", "attn_v.bias": "self_attn.v_proj.bias",
    "attn_output.weight": "self_attn.o_proj.weight", "attn_output.bias": "self_attn.o_proj.bias",
    "ffn_gate.weight": "mlp.gate_proj.weight", "ffn_up.weight": "mlp.up_proj.weight",
    "ffn_down.weight": "mlp.down_proj.weight",
}
#: Model-level tensors: GGUF name -> HF name.
GLOBAL_TENSORS = {"token_embd.weight": "model.embed_tokens.weight", "output_norm.weight": "model.norm.weight",
                  "output.weight": "lm_head.weight"}
_HF_TO_GGUF_LAYER = {hf: g for g, hf in LAYER_TENSORS.items()}
_HF_TO_GGUF_GLOBAL = {hf: g for g, hf in GLOBAL_TENSORS.items()}


def gguf_tensor_name(hf_name: str) -> str:
    """HF tensor name -> llama.cpp's (KeyError for a tensor llama.cpp has no slot for)."""
    if hf_name in _HF_TO_GGUF_GLOBAL:
        return _HF_TO_GGUF_GLOBAL[hf_name]
    prefix, layers, index, rest = hf_name.split(".", 3)
    if (prefix, layers) != ("model", "layers") or not index.isdigit():
        raise KeyError(hf_name)
    return f"blk.{index}.{_HF_TO_GGUF_LAYER[rest]}"


def permute_qk(weight: np.ndarray, n_heads: int) -> np.ndarray:
    """llama.cpp's conversion permutation of q_proj / k_proj rows (``convert_hf_to_gguf.py``):
    within each head, HF's rotate-half layout (first half, second half) becomes interleaved pairs,
    which is what ggml's RoPE kernel expects. ``n_heads`` is the query heads for q, KV heads for k.
    Works for a weight (rows = heads x head_dim) and for a bias (1-D) alike."""
    shape = weight.shape
    return weight.reshape(n_heads, 2, shape[0] // n_heads // 2, *shape[1:]).swapaxes(1, 2).reshape(shape)


def unpermute_qk(weight: np.ndarray, n_heads: int) -> np.ndarray:
    """The inverse of :func:`permute_qk`: GGUF q/k rows back to HF's rotate-half layout."""
    shape = weight.shape
    return weight.reshape(n_heads, shape[0] // n_heads // 2, 2, *shape[1:]).swapaxes(1, 2).reshape(shape)
