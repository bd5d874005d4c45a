"""Prune a model to a cumulative target ratio: decide the widths, pick the units, cut them.

The target is *cumulative* and relative to the dense reference: after `prune_to_ratio(model, r,
reference_spec, cfg)` the model's prunable parameters (see `config.prunable_parameters`) are
about (1 - r) x those of `reference_spec`. A training recipe can therefore call it every K steps
with a growing schedule r_1 <= r_2 <= ... and each call removes only the difference; a call with
a ratio already reached changes nothing (no module is replaced, the optimizer stays valid).

Local scope (LLM-Pruner's default): every prunable layer gets the same ratio. Attention can only
shrink in GQA-legal steps, so the layer first takes the allowed head configuration whose kept
fraction of query heads is nearest 1 - r (query mode: 1..g query heads per KV group; group mode:
1..kv whole KV groups), then the MLP width that makes the layer's total hit (1 - r) x its
reference size, rounded to `round_to`. Among head configurations that hit the target within half
an MLP rounding step, the one nearest the ratio wins; otherwise the one nearest the target.

Global scope: units from all prunable layers compete. Scores are divided by the layer's mean
score per parameter (LLM-Pruner normalises per layer before ranking globally: raw Taylor scores
differ by orders of magnitude between layers) and ranked per parameter removed. GQA and round_to
make the removable units of a layer: one query head from *every* KV group (query mode) or one
KV group (group mode), and blocks of `round_to` MLP channels. The lowest-ranked units are removed
until the target is reached; a unit that would overshoot the target by more than it closes the
gap is skipped (with the rest of its layer's stream, whose units cost the same).
"""

from __future__ import annotations

import dataclasses
import heapq
import math
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import torch

from ..contracts.arch_spec import ArchSpec, LayerSpec
from ..model.spec import spec_from_model
from .config import (
    PruneConfig,
    PruneError,
    attention_parameters,
    channel_cost,
    head_cost,
    kv_head_cost,
    layer_prunable_parameters,
    prunable_layer_indices,
    prunable_parameters,
)
from .importance import Importance, LayerImportance, LossFn, compute_importance
from .surgery import prune_layer

__all__ = ["PruneReport", "plan_global", "plan_local", "prune_to_ratio"]


@dataclass
class PruneReport:
    """What one `prune_to_ratio` call did. Ratios are fractions of parameters removed."""

    spec_before: dict[str, Any]
    spec_after: dict[str, Any]
    params_before: int  # whole model
    params_after: int
    prunable_before: int
    prunable_after: int
    prunable_reference: int
    target_ratio: float
    achieved_ratio: float  # 1 - prunable_after / prunable_reference
    whole_model_reduction: float  # 1 - params_after / reference_spec.num_parameters()
    removed: dict[int, dict[str, int]] = field(default_factory=dict)  # by this call, per layer
    importance: str = ""
    scope: str = ""
    head_mode: str = ""
    seconds: float = 0.0

    @property
    def changed(self) -> bool:
        """True when this call replaced modules (rebuild the optimizer)."""
        return bool(self.removed)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["removed"] = {str(k): v for k, v in self.removed.items()}
        d["changed"] = self.changed
        return d


# ------------------------------------------------------------------------ width planning
def _round_width(width: float, round_to: int, current: int) -> int:
    """Nearest multiple of round_to, >= round_to, never above `current` (a layer's MLP only
    shrinks); a layer already at or below round_to stays as it is."""
    if current <= round_to:
        return current
    rounded = math.floor(width / round_to + 0.5) * round_to
    return min(max(rounded, round_to), current)


def _head_candidates(cur: LayerSpec, cfg: PruneConfig) -> list[tuple[int, int]]:
    """GQA-legal (num_q_heads, num_kv_heads) a layer currently at `cur` may shrink to."""
    if not cfg.prune_attention:
        return [(cur.num_q_heads, cur.num_kv_heads)]
    if cfg.head_mode == "query":
        return [(g * cur.num_kv_heads, cur.num_kv_heads) for g in range(1, cur.gqa_ratio + 1)]
    return [(kv * cur.gqa_ratio, kv) for kv in range(1, cur.num_kv_heads + 1)]


def plan_local(current: ArchSpec, reference: ArchSpec, ratio: float, cfg: PruneConfig) -> dict[int, LayerSpec]:
    """Target LayerSpec of every prunable layer that must shrink to reach `ratio` (local scope)."""
    plan: dict[int, LayerSpec] = {}
    step = channel_cost(current) * cfg.round_to
    for i in prunable_layer_indices(current.num_layers, cfg):
        ref, cur = reference.layers[i], current.layers[i]
        target = (1.0 - ratio) * layer_prunable_parameters(reference, ref, cfg)
        best_key, best = None, cur
        for nq, nkv in _head_candidates(cur, cfg):
            attn = attention_parameters(current, LayerSpec(nq, nkv, 1)) if cfg.prune_attention else 0
            inter = cur.intermediate_size
            if cfg.prune_mlp:
                inter = _round_width((target - attn) / channel_cost(current), cfg.round_to, inter)
            layer = LayerSpec(nq, nkv, inter)
            err = abs(layer_prunable_parameters(current, layer, cfg) - target)
            frac_dist = round(abs(nq / ref.num_q_heads - (1.0 - ratio)), 9)
            if cfg.prune_mlp:
                key = (err > step / 2 + 0.5, frac_dist, -nq, err)
            else:
                key = (False, err, -nq, frac_dist)
            if best_key is None or key < best_key:
                best_key, best = key, layer
        if best != cur:
            plan[i] = best
    return plan


@dataclass
class _Stream:
    """The removable units of one kind in one layer, cheapest first (scores already normalised)."""

    layer: int
    kind: str  # "heads" (one query head per KV group), "groups" or "channels"
    scores: list[float]  # per unit, ascending
    costs: list[int]  # parameters per unit
    sizes: list[int]  # structures per unit (heads per group, groups, channels)
    taken: int = 0


def _streams(current: ArchSpec, imp: Importance, cfg: PruneConfig) -> list[_Stream]:
    streams = []
    hc, kc, cc = head_cost(current), kv_head_cost(current), channel_cost(current)
    for i in prunable_layer_indices(current.num_layers, cfg):
        layer, li = current.layers[i], imp.layers[i]
        g, nkv, inter = layer.gqa_ratio, layer.num_kv_heads, layer.intermediate_size
        total_score, total_cost = 0.0, 0
        if cfg.prune_attention:
            if cfg.head_mode == "query":
                total_score += float(li.heads.sum())
                total_cost += layer.num_q_heads * hc
            else:
                total_score += float(li.kv_groups.sum())
                total_cost += nkv * (kc + g * hc)
        if cfg.prune_mlp:
            total_score += float(li.channels.sum())
            total_cost += inter * cc
        norm = total_score / total_cost if total_score > 0 else 1.0  # layer's mean score per parameter
        if cfg.prune_attention and cfg.head_mode == "query" and g > 1:
            per_group = li.heads.reshape(nkv, g).sort(dim=1).values  # each group's weakest head first
            streams.append(_Stream(i, "heads", [float(per_group[:, k].sum()) / norm for k in range(g - 1)],
                                   [nkv * hc] * (g - 1), [1] * (g - 1)))
        if cfg.prune_attention and cfg.head_mode == "group" and nkv > 1:
            ordered = li.kv_groups.sort().values[: nkv - 1]
            streams.append(_Stream(i, "groups", [float(s) / norm for s in ordered],
                                   [kc + g * hc] * (nkv - 1), [1] * (nkv - 1)))
        if cfg.prune_mlp and inter > cfg.round_to:
            ordered = li.channels.sort().values
            first = inter % cfg.round_to or cfg.round_to  # leaves a multiple of round_to
            sizes = [first] + [cfg.round_to] * ((inter - first) // cfg.round_to - 1)
            scores, start = [], 0
            for size in sizes:
                scores.append(float(ordered[start:start + size].sum()) / norm)
                start += size
            streams.append(_Stream(i, "channels", scores, [s * cc for s in sizes], sizes))
    return streams


def plan_global(current: ArchSpec, imp: Importance, remove: float, cfg: PruneConfig) -> dict[int, LayerSpec]:
    """Target LayerSpecs after removing about `remove` prunable parameters, least important
    units (per parameter, normalised per layer) first (global scope)."""
    streams = _streams(current, imp, cfg)
    heap = [(s.scores[0] / s.costs[0], n) for n, s in enumerate(streams)]
    heapq.heapify(heap)
    removed = 0
    while heap and removed < remove:
        _, n = heapq.heappop(heap)
        s = streams[n]
        cost = s.costs[s.taken]
        if removed + cost - remove >= remove - removed:
            continue  # overshoots more than it closes the gap: leave this stream
        removed += cost
        s.taken += 1
        if s.taken < len(s.scores):
            heapq.heappush(heap, (s.scores[s.taken] / s.costs[s.taken], n))
    plan: dict[int, LayerSpec] = {}
    for s in streams:
        if not s.taken:
            continue
        layer = plan.get(s.layer, current.layers[s.layer])
        cut = sum(s.sizes[: s.taken])
        if s.kind == "heads":
            layer = LayerSpec((layer.gqa_ratio - cut) * layer.num_kv_heads, layer.num_kv_heads, layer.intermediate_size)
        elif s.kind == "groups":
            kv = layer.num_kv_heads - cut
            layer = LayerSpec(kv * layer.gqa_ratio, kv, layer.intermediate_size)
        else:
            layer = dataclasses.replace(layer, intermediate_size=layer.intermediate_size - cut)
        plan[s.layer] = layer
    return plan


# ------------------------------------------------------------------------- unit choice
def _top(scores: torch.Tensor, k: int) -> list[int]:
    """Indices of the k highest scores (ties: lower index first), deterministic."""
    order = torch.argsort(-scores, stable=True)
    return sorted(order[:k].tolist())


def keep_sets(cur: LayerSpec, target: LayerSpec, li: LayerImportance) -> tuple[list[int], list[int], list[int]]:
    """The most important units that fit `target`: its KV groups, then its query heads inside
    each kept group, then its channels."""
    g_cur, g_new = cur.gqa_ratio, target.gqa_ratio
    kv = _top(li.kv_groups, target.num_kv_heads)
    q: list[int] = []
    for group in kv:
        heads = li.heads[group * g_cur:(group + 1) * g_cur]
        q.extend(group * g_cur + h for h in _top(heads, g_new))
    return q, kv, _top(li.channels, target.intermediate_size)


# ---------------------------------------------------------------------------- entry point
def _check_reference(current: ArchSpec, reference: ArchSpec) -> None:
    for name in ("family", "hidden_size", "head_dim", "num_layers"):
        if getattr(current, name) != getattr(reference, name):
            raise PruneError(f"reference_spec.{name} is {getattr(reference, name)!r} but the model has "
                             f"{getattr(current, name)!r}; pass the spec of the dense model this one came from")
    for i, (cur, ref) in enumerate(zip(current.layers, reference.layers)):
        if (cur.num_q_heads > ref.num_q_heads or cur.num_kv_heads > ref.num_kv_heads
                or cur.intermediate_size > ref.intermediate_size):
            raise PruneError(f"layer {i} of the model ({cur}) is wider than reference_spec's ({ref}); pass the "
                             f"spec of the dense model this one came from")


def prune_to_ratio(model, target_ratio: float, reference_spec: ArchSpec, cfg: PruneConfig | None = None,
                   batches: Iterable[dict] | None = None, loss_fn: LossFn | None = None) -> PruneReport:
    """Prune `model` in place until its prunable parameters are about (1 - target_ratio) x
    `prunable_parameters(reference_spec, cfg)`; see the module docstring for the two scopes.

    `batches` (calibration dicts of tensors, on any device: each is moved to the model's) and
    `loss_fn(model, batch) -> scalar` (the caller's training loss, e.g. `train.sft.answer_loss`)
    are needed by the "taylor" importance only. Returns a PruneReport; `report.changed` says
    whether modules were replaced (then rebuild the optimizer).
    """
    cfg = cfg or PruneConfig()
    if isinstance(target_ratio, bool) or not isinstance(target_ratio, (int, float)) \
            or not 0.0 <= target_ratio < 1.0:
        raise PruneError(f"target_ratio must be a number in [0, 1), got {target_ratio!r}")
    if cfg.importance == "taylor" and (batches is None or loss_fn is None):
        raise PruneError("PruneConfig.importance='taylor' needs calibration batches and their loss: pass "
                         "batches=[...] and loss_fn=... (e.g. edge_runtime.train.sft.collate batches and "
                         "answer_loss) or use importance='magnitude'")
    started = time.perf_counter()
    before = spec_from_model(model)
    _check_reference(before, reference_spec)
    if target_ratio > 0 and not prunable_layer_indices(before.num_layers, cfg):
        raise PruneError(f"no layer is prunable: keep_first ({cfg.keep_first}) + keep_last ({cfg.keep_last}) "
                         f">= the model's {before.num_layers} layers")
    reference_prunable = prunable_parameters(reference_spec, cfg)
    remove = prunable_parameters(before, cfg) - (1.0 - target_ratio) * reference_prunable

    importance: Importance | None = None
    if cfg.scope == "local":
        plan = plan_local(before, reference_spec, target_ratio, cfg)
    elif remove > 0:
        importance = compute_importance(model, batches, loss_fn, cfg)
        plan = plan_global(before, importance, remove, cfg)
    else:
        plan = {}
    if plan and importance is None:
        importance = compute_importance(model, batches, loss_fn, cfg)
    removed: dict[int, dict[str, int]] = {}
    for i, target in sorted(plan.items()):
        cur = before.layers[i]
        q, kv, ch = keep_sets(cur, target, importance.layers[i])
        prune_layer(model, i, q, kv, ch)
        removed[i] = {"q_heads": cur.num_q_heads - target.num_q_heads,
                      "kv_heads": cur.num_kv_heads - target.num_kv_heads,
                      "channels": cur.intermediate_size - target.intermediate_size}
    after = spec_from_model(model)
    prunable_after = prunable_parameters(after, cfg)
    return PruneReport(
        spec_before=before.to_dict(), spec_after=after.to_dict(),
        params_before=before.num_parameters(), params_after=after.num_parameters(),
        prunable_before=prunable_parameters(before, cfg), prunable_after=prunable_after,
        prunable_reference=reference_prunable, target_ratio=float(target_ratio),
        achieved_ratio=1.0 - prunable_after / reference_prunable if reference_prunable else 0.0,
        whole_model_reduction=1.0 - after.num_parameters() / reference_spec.num_parameters(),
        removed=removed, importance=cfg.importance, scope=cfg.scope, head_mode=cfg.head_mode,
        seconds=time.perf_counter() - started,
    )
