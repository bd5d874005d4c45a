"""What the SFT and GRPO trainers share: the optimiser settings, the schedule, the step hooks.

Why one module: both loops take AdamW with the same parameter groups, the same warm-up + cosine
schedule and the same clipping, and both let a ``StepHook`` prune the model mid-run -- which
replaces Linear modules and so invalidates the optimizer's parameter references and moments.
The rebuild after such a hook (fresh moments for the new tensors) lives in :func:`run_hooks`
alone, and the fields both configs have are declared and validated once in :class:`LoopConfig`
(each trainer's config subclasses it and may change a default, never the meaning).
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

__all__ = ["LoopConfig", "StepHook", "TrainState", "is_int", "is_number", "lr_at", "make_optimizer", "run_hooks",
           "seed_everything"]


def is_int(x) -> bool:
    """An integer that is not a bool (``True`` is an int to Python, never a step count here)."""
    return isinstance(x, (int, np.integer)) and not isinstance(x, bool)


def is_number(x) -> bool:
    """A finite real number that is not a bool."""
    return isinstance(x, (int, float, np.integer, np.floating)) and not isinstance(x, bool) and math.isfinite(x)


@dataclass(frozen=True)
class LoopConfig:
    """The fields of every training loop, validated on construction (types included), so that a
    typo or a float step count fails before minutes of work. Subclasses validate their own
    fields in ``_check`` and may redeclare a field here only to change its default."""

    steps: int = 1500
    lr: float = 2e-3
    min_lr_ratio: float = 0.05
    warmup_steps: int = 100
    weight_decay: float = 0.01
    betas: tuple[float, float] = (0.9, 0.98)
    grad_clip: float = 1.0
    seed: int = 0
    eval_every: int = 250  # evaluate every N steps and after the last; 0: never
    checkpoint_every: int = 0  # 0: only the final model

    def __post_init__(self) -> None:
        need = self._need
        need(is_int(self.steps) and self.steps >= 1, "steps", "an int >= 1")
        need(is_number(self.lr) and self.lr > 0, "lr", "a number > 0")
        need(is_number(self.min_lr_ratio) and 0 <= self.min_lr_ratio <= 1, "min_lr_ratio", "a number in [0, 1]")
        for name in ("warmup_steps", "eval_every", "checkpoint_every"):
            need(is_int(getattr(self, name)) and getattr(self, name) >= 0, name, "an int >= 0")
        need(is_number(self.weight_decay) and self.weight_decay >= 0, "weight_decay", "a number >= 0")
        need(isinstance(self.betas, (tuple, list)) and len(self.betas) == 2
             and all(is_number(b) and 0 <= b < 1 for b in self.betas), "betas", "two numbers in [0, 1)")
        need(is_number(self.grad_clip) and self.grad_clip > 0, "grad_clip", "a number > 0")
        need(is_int(self.seed), "seed", "an int")
        self._check()

    def _check(self) -> None:
        """The subclass's own fields (called after the shared ones are checked)."""

    def _need(self, ok: bool, name: str, what: str) -> None:
        if not ok:
            raise ValueError(f"{type(self).__name__}.{name} must be {what}, got {getattr(self, name)!r}")


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def lr_at(step: int, cfg: LoopConfig) -> float:
    """Linear warm-up to ``lr``, then cosine decay to ``lr * min_lr_ratio`` at ``steps``."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    progress = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
    cosine = 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))
    return cfg.lr * (cfg.min_lr_ratio + (1.0 - cfg.min_lr_ratio) * cosine)


def make_optimizer(model: torch.nn.Module, cfg: LoopConfig) -> torch.optim.Optimizer:
    """AdamW; no weight decay on norms and biases."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (no_decay if p.ndim < 2 or "norm" in name else decay).append(p)
    return torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                              {"params": no_decay, "weight_decay": 0.0}], lr=cfg.lr, betas=cfg.betas)


@dataclass
class TrainState:
    step: int
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    metrics: dict = field(default_factory=dict)


StepHook = Callable[[TrainState], bool]
"""Called after every optimiser step; returns True when it changed the model's structure (the
trainer then rebuilds the optimizer unless the hook already replaced ``state.optimizer``)."""


def run_hooks(hooks: Sequence[StepHook], state: TrainState, cfg: LoopConfig) -> torch.optim.Optimizer:
    """Call every hook in order and return the optimizer to go on with: a fresh one (new moments)
    after a hook that changed the structure without replacing ``state.optimizer`` itself, so
    that the next hook and the next step see the new parameters."""
    for hook in hooks:
        before = state.optimizer
        if hook(state) and state.optimizer is before:
            state.optimizer = make_optimizer(state.model, cfg)
    return state.optimizer
