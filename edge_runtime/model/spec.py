"""Hugging Face side of the architecture spec: configs built from a spec, specs read from configs and models.

The spec itself (:class:`~edge_runtime.contracts.arch_spec.ArchSpec`, its validation and JSON
file) is a torch-free contract in :mod:`edge_runtime.contracts.arch_spec`, read by the vehicle
side too. What needs transformers or a built model lives here, on the training side:
:func:`to_hf_config` (build a model), :func:`spec_from_hf_config` (a loaded config) and
:func:`spec_from_model` (the real widths after pruning). transformers is imported lazily, so
importing this module stays cheap.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from ..contracts.arch_spec import FAMILIES, ArchSpec, ArchSpecError, LayerSpec

__all__ = ["hf_kwargs", "to_hf_config", "spec_from_hf_config", "spec_from_model"]


def hf_kwargs(spec: ArchSpec) -> dict[str, Any]:
    """Keyword arguments for Qwen2Config/LlamaConfig; per-layer widths are layer 0's."""
    first = spec.layers[0]
    rope = dict(spec.rope_parameters) if spec.rope_parameters is not None else {
        "rope_type": "default", "rope_theta": float(spec.rope_theta)}
    kwargs: dict[str, Any] = {
        "vocab_size": spec.vocab_size, "hidden_size": spec.hidden_size, "head_dim": spec.head_dim,
        "num_hidden_layers": spec.num_layers, "num_attention_heads": first.num_q_heads,
        "num_key_value_heads": first.num_kv_heads, "intermediate_size": first.intermediate_size,
        "hidden_act": spec.hidden_act, "max_position_embeddings": spec.max_position_embeddings,
        "rms_norm_eps": float(spec.rms_norm_eps), "rope_parameters": rope,
        "tie_word_embeddings": spec.tie_word_embeddings, "use_cache": True,
        "bos_token_id": spec.bos_token_id, "pad_token_id": spec.pad_token_id,
        "eos_token_id": list(spec.eos_token_id) if isinstance(spec.eos_token_id, tuple) else spec.eos_token_id,
    }
    if spec.family == "llama":
        kwargs.update(attention_bias=bool(spec.attention_bias), mlp_bias=False)
    return kwargs


def to_hf_config(spec: ArchSpec):
    """A Qwen2Config/LlamaConfig. Exact for a uniform spec; for a non-uniform one it holds
    layer 0's widths and `edge_runtime.model.build` resizes the other layers."""
    from transformers import LlamaConfig, Qwen2Config

    config_class = Qwen2Config if spec.family == "qwen2" else LlamaConfig
    kwargs = hf_kwargs(spec)
    heads = kwargs["num_attention_heads"]
    if spec.family == "llama" and spec.hidden_size % heads:
        # LlamaConfig's strict validation demands hidden_size % num_attention_heads == 0,
        # which is meaningless once head_dim is explicit (a pruned model may keep 6 of 8
        # heads). Construct with a valid count and set the real one afterwards.
        kwargs["num_attention_heads"] = kwargs["num_key_value_heads"] = 1
        config = config_class(**kwargs)
        config.num_attention_heads = heads
        config.num_key_value_heads = spec.layers[0].num_kv_heads
    else:
        config = config_class(**kwargs)
    config.head_dim = spec.head_dim  # Qwen2Config has no head_dim field: set it explicitly
    return config


def spec_from_hf_config(config) -> ArchSpec:
    """Uniform spec from any Qwen2/Llama HF config; unsupported features raise."""
    family = getattr(config, "model_type", None)
    if family not in FAMILIES:
        raise ArchSpecError(f"unsupported model_type {family!r}; supported: {', '.join(FAMILIES)}")
    if getattr(config, "mlp_bias", False):
        raise ArchSpecError("mlp_bias=True is not supported by ArchSpec")
    if family == "qwen2" and getattr(config, "use_sliding_window", False):
        raise ArchSpecError("qwen2 use_sliding_window=True is not supported by ArchSpec")
    heads = config.num_attention_heads
    kv = getattr(config, "num_key_value_heads", None) or heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    rope = getattr(config, "rope_parameters", None) or {}
    rope = dict(rope)
    theta = float(rope.get("rope_theta", getattr(config, "rope_theta", 10000.0)))
    is_default_rope = set(rope) <= {"rope_type", "rope_theta"} and rope.get("rope_type", "default") == "default"
    layer = LayerSpec(num_q_heads=heads, num_kv_heads=kv, intermediate_size=config.intermediate_size)
    attention_bias = True if family == "qwen2" else bool(getattr(config, "attention_bias", False))
    eos = config.eos_token_id
    return ArchSpec(
        family=family, hidden_size=config.hidden_size, head_dim=head_dim, vocab_size=config.vocab_size,
        layers=(layer,) * config.num_hidden_layers, rms_norm_eps=float(config.rms_norm_eps),
        rope_theta=theta, max_position_embeddings=config.max_position_embeddings,
        tie_word_embeddings=bool(getattr(config, "tie_word_embeddings", False)),
        hidden_act=config.hidden_act, attention_bias=attention_bias,
        bos_token_id=config.bos_token_id, pad_token_id=config.pad_token_id,
        eos_token_id=tuple(eos) if isinstance(eos, list) else eos,
        rope_parameters=None if is_default_rope else rope,
    )


def spec_from_model(model) -> ArchSpec:
    """Read the actual per-layer Linear shapes of a Qwen2/Llama causal LM (what pruning calls).

    Family-level settings (eps, rope, token ids) come from `model.config`; widths and tying come
    from the modules themselves. Inconsistent shapes inside a layer (e.g. o_proj not matching
    q_proj after a botched prune) raise instead of producing a spec that cannot be built.
    """
    base = spec_from_hf_config(model.config)
    embed = model.get_input_embeddings().weight
    vocab, hidden = embed.shape
    head_dim = base.head_dim
    layers = []
    for i, layer in enumerate(model.model.layers):
        attn, mlp = layer.self_attn, layer.mlp
        where = f"model.layers.{i}"
        if getattr(attn, "head_dim", head_dim) != head_dim:
            raise ArchSpecError(f"{where}.self_attn.head_dim is {attn.head_dim}, config says {head_dim}")
        q_out, kv_out = attn.q_proj.out_features, attn.k_proj.out_features
        if q_out % head_dim or kv_out % head_dim:
            raise ArchSpecError(f"{where}: q_proj/k_proj widths ({q_out}, {kv_out}) are not multiples of "
                                f"head_dim {head_dim}")
        q, kv, inter = q_out // head_dim, kv_out // head_dim, mlp.gate_proj.out_features
        checks = {
            "self_attn.v_proj.out_features": (attn.v_proj.out_features, kv_out),
            "self_attn.o_proj.in_features": (attn.o_proj.in_features, q_out),
            "mlp.up_proj.out_features": (mlp.up_proj.out_features, inter),
            "mlp.down_proj.in_features": (mlp.down_proj.in_features, inter),
        }
        for name, (actual, expected) in checks.items():
            if actual != expected:
                raise ArchSpecError(f"{where}.{name} is {actual}, expected {expected}")
        layer_spec = LayerSpec(q, kv, inter)
        groups = getattr(attn, "num_key_value_groups", layer_spec.gqa_ratio)
        if groups != layer_spec.gqa_ratio:
            raise ArchSpecError(f"{where}.self_attn.num_key_value_groups is {groups} but the projections hold "
                                f"{q} query / {kv} KV heads; resize with edge_runtime.model.build.resize_layer")
        layers.append(layer_spec)
    lm_head = model.get_output_embeddings()
    tied = lm_head is not None and lm_head.weight is embed
    return dataclasses.replace(base, hidden_size=hidden, vocab_size=vocab, layers=tuple(layers),
                               tie_word_embeddings=tied)
