"""What structural pruning may touch, and what a pruning "ratio" counts.

Why a module of its own: the planner, the importance scores, the recipes that prune during
training and the reports must all agree on which layers are prunable and on the parameter count a
ratio refers to. Here that count is `prunable_parameters`: the weights and biases of the attention
projections (q/k/v/o) and MLP projections (gate/up/down) of the prunable layers, restricted to the
kinds of structure the config allows to prune (attention and/or MLP). Embeddings, norms, the LM
head and the dense first/last layers are never counted, so "ratio 0.5" means half of what pruning
could possibly remove, not half of the whole model (the report gives both).

Pure integer arithmetic over an ArchSpec: no torch import.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..contracts.arch_spec import ArchSpec, LayerSpec

IMPORTANCE_KINDS = ("taylor", "magnitude", "random")
SCOPES = ("local", "global")
HEAD_MODES = ("query", "group")

__all__ = [
    "HEAD_MODES",
    "IMPORTANCE_KINDS",
    "SCOPES",
    "PruneConfig",
    "PruneError",
    "attention_parameters",
    "channel_cost",
    "head_cost",
    "kv_head_cost",
    "layer_prunable_parameters",
    "mlp_parameters",
    "prunable_layer_indices",
    "prunable_parameters",
]


class PruneError(ValueError):
    """A pruning config or request is invalid (the message names the field or the layer)."""


def _check_choice(name: str, value: Any, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise PruneError(f"PruneConfig.{name} must be one of {', '.join(repr(c) for c in choices)}, got {value!r}")


def _check_int(name: str, value: Any, minimum: int | None) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise PruneError(f"PruneConfig.{name} must be an integer, got {value!r} ({type(value).__name__})")
    if minimum is not None and value < minimum:
        raise PruneError(f"PruneConfig.{name} must be >= {minimum}, got {value}")


def _check_bool(name: str, value: Any) -> None:
    if not isinstance(value, bool):
        raise PruneError(f"PruneConfig.{name} must be a bool, got {value!r} ({type(value).__name__})")


@dataclass(frozen=True)
class PruneConfig:
    """How to prune. Validated on construction; every error names the offending field.

    importance  "taylor" (first-order |W*grad|, needs calibration batches), "magnitude" (sum |W|)
                or "random" (seeded baseline).
    scope       "local": every prunable layer pruned to the same ratio; "global": units ranked
                across layers (importance normalised per layer) and the least important removed.
    keep_first / keep_last
                number of first / last decoder layers kept dense (LLM-Pruner keeps both ends).
    round_to    a pruned MLP width is a multiple of it and never below it (hardware-friendly
                widths; odd widths are why pruned models often run no faster).
    prune_attention / prune_mlp
                which structures may be removed (and counted as prunable); at least one.
    head_mode   "query": remove query heads evenly inside every KV group (KV heads stay);
                "group": remove whole KV groups (a KV head with all its query heads).
    seed        seed of the "random" importance.
    """

    importance: str = "taylor"
    scope: str = "local"
    keep_first: int = 1
    keep_last: int = 1
    round_to: int = 8
    prune_attention: bool = True
    prune_mlp: bool = True
    head_mode: str = "query"
    seed: int = 0

    def __post_init__(self) -> None:
        _check_choice("importance", self.importance, IMPORTANCE_KINDS)
        _check_choice("scope", self.scope, SCOPES)
        _check_choice("head_mode", self.head_mode, HEAD_MODES)
        _check_int("keep_first", self.keep_first, 0)
        _check_int("keep_last", self.keep_last, 0)
        _check_int("round_to", self.round_to, 1)
        _check_int("seed", self.seed, None)
        _check_bool("prune_attention", self.prune_attention)
        _check_bool("prune_mlp", self.prune_mlp)
        if not (self.prune_attention or self.prune_mlp):
            raise PruneError("PruneConfig.prune_attention and PruneConfig.prune_mlp are both False: "
                             "nothing could be pruned; enable at least one")


def prunable_layer_indices(num_layers: int, cfg: PruneConfig) -> tuple[int, ...]:
    """Indices of the decoder layers pruning may touch (empty when keep_first + keep_last
    covers the whole model)."""
    return tuple(range(cfg.keep_first, max(cfg.keep_first, num_layers - cfg.keep_last)))


def head_cost(spec: ArchSpec) -> int:
    """Parameters of one query head: its q_proj rows (+ bias) and its o_proj columns."""
    d, h = spec.head_dim, spec.hidden_size
    return 2 * h * d + (d if spec.q_bias else 0)


def kv_head_cost(spec: ArchSpec) -> int:
    """Parameters of one KV head alone: its k_proj and v_proj rows (+ biases)."""
    d, h = spec.head_dim, spec.hidden_size
    return 2 * (h * d + (d if spec.q_bias else 0))


def channel_cost(spec: ArchSpec) -> int:
    """Parameters of one MLP channel: a gate row, an up row and a down column."""
    return 3 * spec.hidden_size


def attention_parameters(spec: ArchSpec, layer: LayerSpec) -> int:
    """q/k/v/o weights and biases of one layer (a Llama o_proj bias is hidden-sized: counted,
    never removable)."""
    return (layer.num_q_heads * head_cost(spec) + layer.num_kv_heads * kv_head_cost(spec)
            + (spec.hidden_size if spec.o_bias else 0))


def mlp_parameters(spec: ArchSpec, layer: LayerSpec) -> int:
    """gate/up/down weights of one layer (these families have no MLP bias)."""
    return layer.intermediate_size * channel_cost(spec)


def layer_prunable_parameters(spec: ArchSpec, layer: LayerSpec, cfg: PruneConfig) -> int:
    """The parameters of one layer that count towards a pruning ratio under `cfg`."""
    return ((attention_parameters(spec, layer) if cfg.prune_attention else 0)
            + (mlp_parameters(spec, layer) if cfg.prune_mlp else 0))


def prunable_parameters(spec: ArchSpec, cfg: PruneConfig) -> int:
    """Parameters of the attention and MLP projections (biases included) of the prunable layers,
    restricted to the structures `cfg` prunes. Every pruning "ratio" refers to this count."""
    return sum(layer_prunable_parameters(spec, spec.layers[i], cfg)
               for i in prunable_layer_indices(spec.num_layers, cfg))
