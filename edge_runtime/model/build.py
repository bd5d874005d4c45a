"""Build Qwen2/Llama causal LMs from an ArchSpec, including non-uniform (pruned) ones.

Why not just `Qwen2ForCausalLM(config)`: a config holds one width per kind, a pruned model has
one per layer. We build the HF model from `to_hf_config(spec)` (layer 0's widths) on the meta
device, swap in right-sized Linear modules where a layer differs (`resize_layer`, the same
function pruning uses), then materialise the parameters: random (build_model) or from a
checkpoint (io.load_model). transformers 5.x attention infers the head count from the
projection output (`view(..., -1, head_dim)`), so only `num_key_value_groups` must be fixed up.
"""

from __future__ import annotations

import dataclasses

import torch
from torch import nn

from ..contracts.arch_spec import ArchSpec, ArchSpecError, LayerSpec
from .spec import to_hf_config

__all__ = ["PRESETS", "build_model", "materialize", "model_class", "preset_spec", "resize_layer"]


def _uniform(family: str, hidden: int, head_dim: int, q: int, kv: int, inter: int, n_layers: int,
             tie: bool = True, vocab: int = 2048) -> ArchSpec:
    return ArchSpec(family=family, hidden_size=hidden, head_dim=head_dim, vocab_size=vocab,
                    layers=(LayerSpec(q, kv, inter),) * n_layers, tie_word_embeddings=tie)


#: Tiny presets (default vocab 2048), GQA ratio 2. Parameter counts at vocab 2048 are in the
#: names' ballpark; `python -m edge_runtime.model.build` prints the exact table.
PRESETS: dict[str, ArchSpec] = {
    "qwen2-1m": _uniform("qwen2", 128, 32, 4, 2, 384, 4),
    "qwen2-4m": _uniform("qwen2", 256, 64, 4, 2, 640, 5),
    "qwen2-12m": _uniform("qwen2", 384, 64, 6, 3, 1152, 6),
    "qwen2-30m": _uniform("qwen2", 384, 64, 6, 3, 2560, 8),
    "llama-4m": _uniform("llama", 256, 32, 8, 4, 640, 4, tie=False),
}

_LAYER_OVERRIDES = ("num_layers", "num_q_heads", "num_kv_heads", "intermediate_size")


def preset_spec(name: str, vocab_size: int | None = None, **overrides) -> ArchSpec:
    """A preset, optionally with another vocab (match your tokenizer) and field overrides.

    Overrides are ArchSpec fields, or `num_layers` / `num_q_heads` / `num_kv_heads` /
    `intermediate_size`, which rebuild a uniform layer stack.
    """
    if name not in PRESETS:
        raise KeyError(f"unknown preset {name!r}; available: {', '.join(sorted(PRESETS))}")
    spec = PRESETS[name]
    layer_kw = {k: overrides.pop(k) for k in _LAYER_OVERRIDES if k in overrides}
    if vocab_size is not None:
        overrides["vocab_size"] = vocab_size
    if layer_kw:
        n_layers = layer_kw.pop("num_layers", spec.num_layers)
        layer = dataclasses.replace(spec.layers[0], **layer_kw)
        overrides["layers"] = (layer,) * n_layers
    unknown = set(overrides) - {f.name for f in dataclasses.fields(ArchSpec)}
    if unknown:
        raise TypeError(f"unknown override(s) {sorted(unknown)} for preset {name!r}")
    return dataclasses.replace(spec, **overrides)


def model_class(family: str):
    """The HF causal-LM class of a family."""
    from transformers import LlamaForCausalLM, Qwen2ForCausalLM

    try:
        return {"qwen2": Qwen2ForCausalLM, "llama": LlamaForCausalLM}[family]
    except KeyError:
        raise ArchSpecError(f"unknown family {family!r}") from None


def _linear(in_f: int, out_f: int, bias: bool, like: nn.Linear) -> nn.Linear:
    return nn.Linear(in_f, out_f, bias=bias, device=like.weight.device, dtype=like.weight.dtype)


def resize_layer(model, index: int, layer_spec: LayerSpec) -> None:
    """Replace layer `index`'s q/k/v/o and gate/up/down Linear modules by new, uninitialised
    ones of `layer_spec`'s widths (same device/dtype, same bias layout) and fix the attention
    attributes. Callers fill the weights (random init, checkpoint, or pruned slices).
    """
    layer = model.model.layers[index]
    attn, mlp = layer.self_attn, layer.mlp
    head_dim = attn.head_dim
    hidden = attn.q_proj.in_features
    q, kv = layer_spec.num_q_heads * head_dim, layer_spec.num_kv_heads * head_dim
    attn.q_proj = _linear(hidden, q, attn.q_proj.bias is not None, attn.q_proj)
    attn.k_proj = _linear(hidden, kv, attn.k_proj.bias is not None, attn.k_proj)
    attn.v_proj = _linear(hidden, kv, attn.v_proj.bias is not None, attn.v_proj)
    attn.o_proj = _linear(q, hidden, attn.o_proj.bias is not None, attn.o_proj)
    attn.num_key_value_groups = layer_spec.gqa_ratio
    inter = layer_spec.intermediate_size
    mlp.gate_proj = _linear(hidden, inter, mlp.gate_proj.bias is not None, mlp.gate_proj)
    mlp.up_proj = _linear(hidden, inter, mlp.up_proj.bias is not None, mlp.up_proj)
    mlp.down_proj = _linear(inter, hidden, mlp.down_proj.bias is not None, mlp.down_proj)
    if hasattr(mlp, "intermediate_size"):
        mlp.intermediate_size = inter


def skeleton(spec: ArchSpec):
    """The model with every layer right-sized and all parameters on the meta device."""
    config = to_hf_config(spec)
    config._attn_implementation = "sdpa"
    with torch.device("meta"):
        model = model_class(spec.family)(config)
    first = spec.layers[0]
    for i, layer_spec in enumerate(spec.layers):
        if layer_spec != first:
            resize_layer(model, i, layer_spec)
    return model


def _fix_buffers_and_ties(model, spec: ArchSpec, dtype: torch.dtype):
    """After materialising: cast, rebuild the rotary embedding (non-persistent fp32 buffers the
    meta build left empty), tie the LM head, and set the config bits generate() reads."""
    model.to(dtype)
    rotary = model.model.rotary_emb
    model.model.rotary_emb = type(rotary)(config=model.config)
    if spec.tie_word_embeddings:
        model.lm_head.weight = model.model.embed_tokens.weight
    model.config.use_cache = True
    model.config.dtype = dtype
    for name, tensor in list(model.named_parameters()) + list(model.named_buffers()):
        if tensor.device.type == "meta":
            raise RuntimeError(f"internal error: {name} is still on the meta device")
    return model.eval()


def materialize(model, spec: ArchSpec, state_dict: dict[str, torch.Tensor] | None, dtype: torch.dtype):
    """Give a `skeleton` real CPU tensors: from `state_dict` (assigned, no copy), or
    uninitialised ones when `state_dict` is None (the caller fills them)."""
    if state_dict is None:
        model.to_empty(device="cpu")
    else:
        result = model.load_state_dict(state_dict, strict=False, assign=True)
        allowed_missing = {"lm_head.weight"} if spec.tie_word_embeddings else set()
        if set(result.missing_keys) - allowed_missing or result.unexpected_keys:
            raise RuntimeError(f"state dict does not fit the model: missing {result.missing_keys}, "
                               f"unexpected {result.unexpected_keys}")
    if spec.tie_word_embeddings:
        model.lm_head.weight = model.model.embed_tokens.weight
    return _fix_buffers_and_ties(model, spec, dtype)


@torch.no_grad()
def _init_weights(model, seed: int, std: float) -> None:
    """HF's init scheme (normal(0, std) Linear/Embedding, zero bias, unit norms), but from a
    private generator so a seed gives the same model whatever the global RNG state."""
    gen = torch.Generator().manual_seed(seed)
    for name, module in model.named_modules():
        if isinstance(module, (nn.Linear, nn.Embedding)):
            if isinstance(module, nn.Linear) and module.weight is model.model.embed_tokens.weight:
                continue  # tied LM head: already initialised as the embedding
            w = torch.empty(module.weight.shape, dtype=torch.float32).normal_(0.0, std, generator=gen)
            module.weight.copy_(w)
            if isinstance(module, nn.Embedding) and module.padding_idx is not None:
                module.weight[module.padding_idx].zero_()
            if getattr(module, "bias", None) is not None:
                module.bias.zero_()
        elif "RMSNorm" in type(module).__name__:
            module.weight.fill_(1.0)


def build_model(spec: ArchSpec, seed: int = 0, dtype: torch.dtype = torch.float32):
    """A randomly initialised (seeded) Qwen2ForCausalLM/LlamaForCausalLM of exactly `spec`, on
    CPU in eval mode like `from_pretrained` (call `.train()` / `.to(device)` as needed)."""
    model = materialize(skeleton(spec), spec, None, torch.float32)
    _init_weights(model, seed, getattr(model.config, "initializer_range", 0.02))
    if dtype != torch.float32:
        model = _fix_buffers_and_ties(model, spec, dtype)
    return model


if __name__ == "__main__":  # preset table
    for _name, _spec in PRESETS.items():
        _l = _spec.layers[0]
        print(f"{_name:10s} hidden={_spec.hidden_size:4d} head_dim={_spec.head_dim} q/kv={_l.num_q_heads}/"
              f"{_l.num_kv_heads} ffn={_l.intermediate_size:5d} layers={_spec.num_layers} "
              f"tied={_spec.tie_word_embeddings!s:5s} params={_spec.num_parameters():,}")
