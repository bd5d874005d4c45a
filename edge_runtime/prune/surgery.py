"""Physically remove query heads, KV groups and MLP channels from one decoder layer.

Why physical removal instead of masks: the point of pruning here is a smaller, faster model on
the vehicle, and only right-sized matrices make it so (and export per-layer KV cache shapes).
`resize_layer` (the function the model builder also uses) swaps in right-sized Linear modules;
this module copies the kept slices into them, so the layer computes exactly what the original
computed with the removed units' contributions dropped.

GQA integrity is checked here, not trusted to callers: every kept KV head must keep the same
number (>= 1) of its own query heads, so the query:KV ratio stays an integer and HF's
`repeat_kv` layout (query head h reads KV head h // ratio) still pairs the right heads.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

import torch

from ..contracts.arch_spec import LayerSpec
from ..model.build import resize_layer
from .config import PruneError

__all__ = ["prune_layer", "sync_config"]


def _indices(name: str, keep, size: int, where: str) -> list[int]:
    """Sorted unique kept indices, validated against `size` units."""
    if isinstance(keep, torch.Tensor):
        keep = keep.flatten().tolist()
    values = list(keep)
    for v in values:
        if isinstance(v, bool) or not isinstance(v, int):
            raise PruneError(f"{where}: {name} must hold integers, got {v!r}")
        if not 0 <= v < size:
            raise PruneError(f"{where}: {name} index {v} is out of range (the layer has {size})")
    dupes = sorted(v for v, c in Counter(values).items() if c > 1)
    if dupes:
        raise PruneError(f"{where}: {name} repeats {dupes}")
    if not values:
        raise PruneError(f"{where}: {name} is empty; a layer must keep at least one")
    return sorted(values)


def _rows(units: list[int], width: int, device: torch.device) -> torch.Tensor:
    """Row (or column) indices of `units`, each owning `width` consecutive rows."""
    base = torch.tensor(units, dtype=torch.long, device=device)[:, None] * width
    return (base + torch.arange(width, device=device)).flatten()


def sync_config(model) -> None:
    """Make `model.config` describe layer 0, as `model.spec.to_hf_config` does for a non-uniform
    spec (the spec is the truth; the config only has to stay consistent for generate())."""
    attn, mlp = model.model.layers[0].self_attn, model.model.layers[0].mlp
    d = attn.head_dim
    model.config.head_dim = d
    model.config.num_attention_heads = attn.q_proj.out_features // d
    model.config.num_key_value_heads = attn.k_proj.out_features // d
    model.config.intermediate_size = mlp.gate_proj.out_features


@torch.no_grad()
def prune_layer(model, index: int, keep_q_heads: Sequence[int], keep_kv_heads: Sequence[int],
                keep_channels: Sequence[int]) -> LayerSpec:
    """Keep only the given query heads, KV heads and MLP channels of layer `index`.

    Indices refer to the layer's current units; order does not matter (the kept units keep
    their relative order). Returns the layer's new LayerSpec. Raises PruneError (a ValueError) on indices out
    of range / repeated / empty, and on any GQA violation. Keeping everything is a no-op (the
    modules, hence optimizer references, stay the same). New parameters keep the old
    `requires_grad`; any optimizer holding the old ones must be rebuilt.
    """
    layers = model.model.layers
    if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < len(layers):
        raise PruneError(f"layer index {index!r} is out of range (the model has {len(layers)} layers)")
    where = f"model.layers.{index}"
    attn, mlp = layers[index].self_attn, layers[index].mlp
    d = attn.head_dim
    nq, nkv, inter = attn.q_proj.out_features // d, attn.k_proj.out_features // d, mlp.gate_proj.out_features
    ratio = nq // nkv
    q = _indices("keep_q_heads", keep_q_heads, nq, where)
    kv = _indices("keep_kv_heads", keep_kv_heads, nkv, where)
    ch = _indices("keep_channels", keep_channels, inter, where)

    per_group = Counter(h // ratio for h in q)
    orphans = sorted(h for h in q if h // ratio not in set(kv))
    if orphans:
        raise PruneError(f"{where}: query heads {orphans} belong to KV heads that are removed "
                         f"(query head h reads KV head h // {ratio}); keep their KV heads or drop them")
    counts = {g: per_group.get(g, 0) for g in kv}
    if len(set(counts.values())) != 1 or 0 in counts.values():
        raise PruneError(f"{where}: every kept KV head must keep the same number (>= 1) of its query heads "
                         f"so that the query:KV ratio stays an integer; kept per KV head: {counts}")
    new_spec = LayerSpec(len(q), len(kv), len(ch))
    if len(q) == nq and len(kv) == nkv and len(ch) == inter:
        return new_spec

    old = {name: getattr(attn, name) for name in ("q_proj", "k_proj", "v_proj", "o_proj")}
    old.update({name: getattr(mlp, name) for name in ("gate_proj", "up_proj", "down_proj")})
    dev = old["q_proj"].weight.device
    q_rows, kv_rows, ch_idx = _rows(q, d, dev), _rows(kv, d, dev), torch.tensor(ch, dtype=torch.long, device=dev)
    resize_layer(model, index, new_spec)
    # (module, kept rows of weight and bias) or kept columns of weight (bias untouched)
    row_cut = {"q_proj": q_rows, "k_proj": kv_rows, "v_proj": kv_rows, "gate_proj": ch_idx, "up_proj": ch_idx}
    col_cut = {"o_proj": q_rows, "down_proj": ch_idx}
    for name, src in old.items():
        dst = getattr(attn if name in ("q_proj", "k_proj", "v_proj", "o_proj") else mlp, name)
        if name in row_cut:
            dst.weight.copy_(src.weight.index_select(0, row_cut[name]))
            if src.bias is not None:
                dst.bias.copy_(src.bias.index_select(0, row_cut[name]))
        else:
            dst.weight.copy_(src.weight.index_select(1, col_cut[name]))
            if src.bias is not None:
                dst.bias.copy_(src.bias)
        for p_dst, p_src in zip(dst.parameters(), src.parameters()):
            p_dst.requires_grad_(p_src.requires_grad)
    sync_config(model)
    return new_spec
