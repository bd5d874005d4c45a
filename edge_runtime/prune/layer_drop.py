"""Depth pruning: a smaller dense model of the same family, made by dropping whole decoder layers.

Why this exists: the BPF comparison needs a smaller *dense* model of the pruned model's size, and
no smaller pretrained SmolLM2 is available offline. Dropping whole layers of the pretrained model
(keeping the first and the last, the rest evenly spaced) gives one that starts from pretrained
weights, as a smaller sibling checkpoint would; it is then trained with the same budget as every
pruning recipe. Widths are untouched, so the result is a uniform model the runtime and every
exporter already handle.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from ..contracts.arch_spec import ArchSpec
from .config import PruneError

__all__ = ["drop_layers", "evenly_spaced_layers", "layers_for_parameter_budget"]


def evenly_spaced_layers(num_layers: int, keep: int) -> list[int]:
    """``keep`` layer indices out of ``num_layers``: the first, the last and the rest evenly spaced
    between them (rounded), strictly increasing."""
    if not 1 <= keep <= num_layers:
        raise PruneError(f"cannot keep {keep} of {num_layers} layers (need 1 <= keep <= {num_layers})")
    if keep == 1:
        return [0]
    picked = [round(i * (num_layers - 1) / (keep - 1)) for i in range(keep)]
    if len(set(picked)) != keep:  # cannot happen for keep <= num_layers, kept as a guard on the arithmetic
        raise PruneError(f"evenly spaced layers collided: {picked}")
    return picked


def layers_for_parameter_budget(spec: ArchSpec, target_parameters: int) -> int:
    """How many layers of the uniform ``spec`` to keep so that the whole model's parameter count is
    the closest to ``target_parameters`` (ties: the smaller model)."""
    import dataclasses

    if not spec.is_uniform:
        raise PruneError("layer dropping to a parameter budget needs a uniform model (every layer the same width)")
    one = dataclasses.replace(spec, layers=spec.layers[:1]).num_parameters()
    per_layer = (spec.num_parameters() - one) // max(1, spec.num_layers - 1) if spec.num_layers > 1 else 0
    fixed = one - per_layer  # embedding, final norm, an untied head
    return min(range(1, spec.num_layers + 1), key=lambda k: (abs(fixed + k * per_layer - target_parameters), k))


def drop_layers(model: nn.Module, keep: Sequence[int]) -> nn.Module:
    """Keep only the decoder layers ``keep`` (in order) of a Qwen2/Llama causal LM, in place.

    The kept layers are renumbered (their attention's ``layer_idx`` indexes the KV cache) and the
    config says the new depth, so ``generate`` and ``spec_from_model`` see a consistent model."""
    layers = model.model.layers
    keep = list(keep)
    if not keep or sorted(set(keep)) != keep or keep[0] < 0 or keep[-1] >= len(layers):
        raise PruneError(f"keep must be strictly increasing layer indices in [0, {len(layers)}), got {keep}")
    model.model.layers = nn.ModuleList([layers[i] for i in keep])
    for new_index, layer in enumerate(model.model.layers):
        for module in layer.modules():
            if hasattr(module, "layer_idx"):
                module.layer_idx = new_index
    config = model.config
    config.num_hidden_layers = len(keep)
    if getattr(config, "layer_types", None) is not None:
        config.layer_types = [config.layer_types[i] for i in keep]
    return model
