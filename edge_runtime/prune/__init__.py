"""prune/: LLM-Pruner-style structural pruning of Qwen2/Llama models built by edge_runtime.model.

Importance scores of query heads, KV groups and MLP channels (first-order Taylor, magnitude,
random), physical removal that keeps GQA valid, and a planner that prunes to a cumulative target
ratio of the prunable parameters (local or global scope).

    from edge_runtime.prune import PruneConfig, prune_to_ratio
    report = prune_to_ratio(model, 0.5, dense_spec, PruneConfig(), batches=calibration, loss_fn=answer_loss)

The loss of the Taylor scores is the caller's (training passes its answer-token loss): prune/
imports nothing from train/.
"""

from __future__ import annotations

from .config import (
    HEAD_MODES,
    IMPORTANCE_KINDS,
    SCOPES,
    PruneConfig,
    PruneError,
    layer_prunable_parameters,
    prunable_layer_indices,
    prunable_parameters,
)
from .importance import Importance, LayerImportance, compute_importance
from .planner import PruneReport, plan_global, plan_local, prune_to_ratio
from .surgery import prune_layer

__all__ = [
    "HEAD_MODES",
    "IMPORTANCE_KINDS",
    "SCOPES",
    "Importance",
    "LayerImportance",
    "PruneConfig",
    "PruneError",
    "PruneReport",
    "compute_importance",
    "layer_prunable_parameters",
    "plan_global",
    "plan_local",
    "prunable_layer_indices",
    "prunable_parameters",
    "prune_layer",
    "prune_to_ratio",
]
