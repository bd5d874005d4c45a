"""Importance scores of the removable units of every decoder layer.

Units (what surgery can remove while keeping the layer a valid Qwen2/Llama layer):
  query head  its q_proj rows (+ bias) and its o_proj columns;
  KV group    its k_proj / v_proj rows (+ biases) plus all of its query heads (group mode);
  MLP channel its gate_proj row, up_proj row and down_proj column.

Why first-order Taylor: LLM-Pruner's element-wise first-order term |W * dL/dW| estimates how
much the calibration loss changes when a weight is zeroed, and summing it over a unit's weights
estimates the cost of removing the unit. The gradient is that of the mean loss over the
calibration batches (accumulated, then multiplied by W), i.e. the Taylor expansion of the
calibration loss itself. Magnitude (sum |W|) and seeded random scores are the usual baselines.

Pruning happens *during* training, so scoring must not disturb the trainer: existing `.grad`
tensors, `requires_grad` flags and the train/eval mode are saved and restored. The trainer may
also have moved the model to a GPU while the calibration batches were built on the CPU: every
batch is moved to the model's device before it meets the model.

The loss is the caller's (`LossFn`): training passes its answer-token loss, so that prune/
stays below train/ and imports nothing from it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch

from ..model.batching import batch_to_device, model_device
from .config import PruneConfig, PruneError

__all__ = ["Importance", "LayerImportance", "LossFn", "compute_importance"]

LossFn = Callable[[torch.nn.Module, dict], torch.Tensor]
"""``loss_fn(model, batch) -> scalar`` whose gradient the Taylor scores use (the batch arrives on
the model's device)."""


@dataclass(frozen=True)
class LayerImportance:
    """Scores of one layer's units (higher = more important), float32 on CPU.

    heads      [num_q_heads]   query head h belongs to KV group h // gqa_ratio
    kv_groups  [num_kv_heads]  a KV head together with all its query heads
    channels   [intermediate_size]
    """

    heads: torch.Tensor
    kv_groups: torch.Tensor
    channels: torch.Tensor


@dataclass(frozen=True)
class Importance:
    """Per-layer unit scores for every decoder layer of a model (index = layer index)."""

    kind: str
    layers: tuple[LayerImportance, ...]
    num_batches: int = 0


def _projection_params(model) -> list[torch.nn.Parameter]:
    params = []
    for layer in model.model.layers:
        for lin in (layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj,
                    layer.self_attn.o_proj, layer.mlp.gate_proj, layer.mlp.up_proj, layer.mlp.down_proj):
            params.extend(p for p in lin.parameters())
    return params


def _layer_scores(layer, head_dim: int, elem: Callable[[torch.nn.Parameter], torch.Tensor]) -> LayerImportance:
    """Sum element scores `elem(param)` (same shape as param) over each unit of one layer."""
    attn, mlp = layer.self_attn, layer.mlp
    d = head_dim
    nq, nkv = attn.q_proj.out_features // d, attn.k_proj.out_features // d
    heads = elem(attn.q_proj.weight).reshape(nq, -1).sum(1)
    if attn.q_proj.bias is not None:
        heads = heads + elem(attn.q_proj.bias).reshape(nq, d).sum(1)
    o = elem(attn.o_proj.weight)  # [hidden, nq * d]: a head owns d consecutive columns
    heads = heads + o.reshape(o.shape[0], nq, d).sum((0, 2))
    kv = torch.zeros(nkv)
    for proj in (attn.k_proj, attn.v_proj):
        kv = kv + elem(proj.weight).reshape(nkv, -1).sum(1)
        if proj.bias is not None:
            kv = kv + elem(proj.bias).reshape(nkv, d).sum(1)
    kv_groups = kv + heads.reshape(nkv, nq // nkv).sum(1)
    channels = elem(mlp.gate_proj.weight).sum(1) + elem(mlp.up_proj.weight).sum(1) + elem(mlp.down_proj.weight).sum(0)
    return LayerImportance(heads=heads, kv_groups=kv_groups, channels=channels)


def _taylor_elem(p: torch.nn.Parameter) -> torch.Tensor:
    if p.grad is None:  # the parameter did not take part in the loss
        return torch.zeros(p.shape)
    return (p.detach().float() * p.grad.float()).abs().cpu()


def _magnitude_elem(p: torch.nn.Parameter) -> torch.Tensor:
    return p.detach().float().abs().cpu()


def _random_scores(model, head_dim: int, seed: int) -> tuple[LayerImportance, ...]:
    """Seeded uniform scores times the unit's parameter count, so that a global ranking *per
    parameter* is uniformly random instead of always removing the biggest units first."""
    gen = torch.Generator().manual_seed(seed)
    out = []
    for layer in model.model.layers:
        attn, mlp = layer.self_attn, layer.mlp
        hidden = attn.q_proj.in_features
        nq, nkv = attn.q_proj.out_features // head_dim, attn.k_proj.out_features // head_dim
        bias = head_dim if attn.q_proj.bias is not None else 0
        h_cost = 2 * hidden * head_dim + bias
        g_cost = 2 * (hidden * head_dim + bias) + (nq // nkv) * h_cost
        inter = mlp.gate_proj.out_features
        out.append(LayerImportance(heads=torch.rand(nq, generator=gen) * h_cost,
                                   kv_groups=torch.rand(nkv, generator=gen) * g_cost,
                                   channels=torch.rand(inter, generator=gen) * (3 * hidden)))
    return tuple(out)


def _taylor_scores(model, batches: Iterable[dict] | None, loss_fn: LossFn | None,
                   head_dim: int) -> tuple[tuple[LayerImportance, ...], int]:
    if batches is None:
        raise PruneError("taylor importance needs calibration batches (dicts of tensors the loss function "
                         "takes); pass batches=..., or use PruneConfig(importance='magnitude')")
    if loss_fn is None:
        raise PruneError("taylor importance needs a loss function: pass loss_fn=... (e.g. "
                         "edge_runtime.train.sft.answer_loss), or use PruneConfig(importance='magnitude')")
    device = model_device(model)
    all_params = list(model.parameters())
    saved_grads = [p.grad for p in all_params]
    saved_flags = [p.requires_grad for p in all_params]
    was_training = model.training
    wanted = {id(p) for p in _projection_params(model)}
    try:
        for p in all_params:
            p.grad = None
            p.requires_grad_(id(p) in wanted)  # only the projections need gradients
        model.eval()  # deterministic scores (no dropout) whatever the trainer's mode
        n = 0
        with torch.enable_grad():
            for batch in batches:
                loss = loss_fn(model, batch_to_device(batch, device))
                if not torch.isfinite(loss):
                    raise PruneError(f"calibration loss of batch {n} is not finite ({loss.item()}); "
                                     "taylor importance would be meaningless")
                loss.backward()
                n += 1
        if n == 0:
            raise PruneError("taylor importance got an empty list of calibration batches")
        for p in model.parameters():
            if p.grad is not None:
                p.grad.div_(n)  # gradient of the mean loss over the batches
        scores = tuple(_layer_scores(layer, head_dim, _taylor_elem) for layer in model.model.layers)
    finally:
        for p, grad, flag in zip(all_params, saved_grads, saved_flags):
            p.grad = grad
            p.requires_grad_(flag)
        model.train(was_training)
    return scores, n


def compute_importance(model, batches: Iterable[dict] | None = None, loss_fn: LossFn | None = None,
                       cfg: PruneConfig | None = None) -> Importance:
    """Score every unit of every decoder layer with `cfg.importance`.

    `batches` (calibration dicts of tensors, on any device) and `loss_fn(model, batch) -> scalar`
    are needed by "taylor" only; each batch is moved to the model's device before `loss_fn` sees
    it. The model's existing gradients, requires_grad flags and train/eval mode are left as they
    were.
    """
    cfg = cfg or PruneConfig()
    head_dim = model.model.layers[0].self_attn.head_dim
    if cfg.importance == "taylor":
        layers, n = _taylor_scores(model, batches, loss_fn, head_dim)
        return Importance("taylor", layers, n)
    if cfg.importance == "magnitude":
        with torch.no_grad():
            layers = tuple(_layer_scores(layer, head_dim, _magnitude_elem) for layer in model.model.layers)
        return Importance("magnitude", layers)
    return Importance("random", _random_scores(model, head_dim, cfg.seed))
