"""Before Parc Fermé: the pruning schedules and their baselines as one recipe runner.

Every recipe starts from a trained dense model directory (SFT already done) and runs at most two
phases on the same budget: an SFT continuation of ``sft_steps`` and closed-loop GRPO of
``rl_steps``. They differ only in *when* the structure is removed:

====================  =====================================================================
schedule              pruning
====================  =====================================================================
``rl`` (BPF-RL)       ``shares`` equal shares at evenly spaced GRPO steps, until ``ratio``
``sft-rl`` (BPF-SFT/RL) the first ``sft_shares`` shares during the SFT phase, the rest during RL
``sft``               all shares during the SFT phase, then RL without pruning (SFT-stage pruning)
``ptp``               once, after training (no recovery): post-training pruning
``ptp-rl``            once, after training, then ``rl_steps`` of GRPO recovery
                      (both take the *fully trained* dense model as input and skip SFT)
``none``              never: the dense / smaller-dense reference with the same budget
====================  =====================================================================

Pruning inside a phase is a ``StepHook``: the trainers call it after each optimiser step and
rebuild their optimizer when it returns True (the pruned Linear modules are new objects).
Shares are cumulative targets (share k of n prunes to ``ratio * k / n`` of the *reference*
prunable parameters), placed at steps ``round(phase_steps * k / (n + 1))`` so that the last
interval of each phase is recovery. "Ratio" refers to prunable parameters (attention and MLP of
the prunable layers); every report also states the whole model's real reduction.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

SCHEDULES = ("rl", "sft-rl", "sft", "ptp", "ptp-rl", "none")


@dataclass(frozen=True)
class RecipeConfig:
    """One BPF / baseline run. Validated on construction so a typo fails before minutes of work."""

    schedule: str
    ratio: float = 0.5
    shares: int = 4
    sft_shares: int = 2  # sft-rl only: how many of ``shares`` happen during SFT
    sft_steps: int = 300
    rl_steps: int = 100
    seed: int = 0

    def __post_init__(self) -> None:
        if self.schedule not in SCHEDULES:
            raise ValueError(f"RecipeConfig.schedule: unknown {self.schedule!r}; use one of {', '.join(SCHEDULES)}")
        if self.schedule == "none":
            if self.ratio != 0:
                raise ValueError("RecipeConfig.ratio must be 0 for schedule 'none' (no pruning)")
        elif not 0 < self.ratio < 1:
            raise ValueError(f"RecipeConfig.ratio must be in (0, 1), got {self.ratio}")
        if self.shares < 1:
            raise ValueError("RecipeConfig.shares must be >= 1")
        if self.schedule == "sft-rl" and not 1 <= self.sft_shares < self.shares:
            raise ValueError("RecipeConfig.sft_shares must be in [1, shares) for schedule 'sft-rl' "
                             "(at least one share in each phase)")
        if self.sft_steps < 0 or self.rl_steps < 0:
            raise ValueError("RecipeConfig.sft_steps and rl_steps must be >= 0")
        if self.schedule in ("sft", "sft-rl") and self.sft_steps < self.shares + 1:
            raise ValueError(f"RecipeConfig.sft_steps must be > shares for schedule {self.schedule!r} "
                             "(pruning happens during SFT)")
        if self.schedule in ("ptp", "ptp-rl"):  # post-training: the input model is already trained
            object.__setattr__(self, "sft_steps", 0)
            if self.schedule == "ptp":
                object.__setattr__(self, "rl_steps", 0)
        if self.schedule in ("rl", "sft-rl", "ptp-rl") and self.rl_steps < 1:
            raise ValueError(f"RecipeConfig.rl_steps must be >= 1 for schedule {self.schedule!r}")

    def phase_targets(self) -> tuple[list[float], list[float]]:
        """Cumulative pruning targets of the SFT phase and of the RL phase (in order)."""
        targets = [self.ratio * k / self.shares for k in range(1, self.shares + 1)]
        if self.schedule == "rl":
            return [], targets
        if self.schedule == "sft-rl":
            return targets[: self.sft_shares], targets[self.sft_shares:]
        if self.schedule == "sft":
            return targets, []
        return [], []


def share_steps(phase_steps: int, n: int) -> list[int]:
    """Evenly spaced optimiser steps (1-based) for ``n`` prunes in a phase, the last interval
    left for recovery: round(phase_steps * k / (n + 1)), k = 1..n, made strictly increasing."""
    if n == 0:
        return []
    if phase_steps < n:
        raise ValueError(f"cannot place {n} prunes in {phase_steps} steps")
    steps, last = [], 0
    for k in range(1, n + 1):
        step = max(last + 1, round(phase_steps * k / (n + 1)))
        steps.append(min(step, phase_steps - (n - k)))
        last = steps[-1]
    return steps


@dataclass
class PruneHook:
    """StepHook: at the given steps, prune the model to the given cumulative ratios.

    The Taylor importance is computed on ``calibration`` (task batches, ``loss_fn``: the SFT
    answer-token loss unless given) at the moment of pruning, i.e. with the weights as the
    training has made them so far, on whatever device the trainer put the model."""

    at_steps: Sequence[int]
    targets: Sequence[float]
    reference_spec: object
    prune_config: object
    calibration: Sequence[dict]
    phase: str
    reports: list = field(default_factory=list)
    log: Callable[[str], None] = print
    loss_fn: Callable | None = None  # None: train.sft.answer_loss

    def __post_init__(self) -> None:
        if len(self.at_steps) != len(self.targets):
            raise ValueError("PruneHook: one target per step")
        self._plan = dict(zip(self.at_steps, self.targets))
        if self.loss_fn is None:
            from .sft import answer_loss

            self.loss_fn = answer_loss

    def __call__(self, state) -> bool:
        target = self._plan.get(state.step)
        if target is None:
            return False
        from ..prune import prune_to_ratio

        report = prune_to_ratio(state.model, target, self.reference_spec, self.prune_config,
                                batches=self.calibration, loss_fn=self.loss_fn)
        record = {"phase": self.phase, "step": state.step, "target": target, **_report_dict(report)}
        self.reports.append(record)
        state.metrics["prune"] = {k: record[k] for k in ("target", "achieved_ratio", "params_after")}
        self.log(f"[{self.phase} step {state.step}] pruned to {record['achieved_ratio']:.3f} of the prunable "
                 f"parameters (target {target:.3f}); model {record['params_before']:,} -> {record['params_after']:,}")
        return True


def _report_dict(report) -> dict:
    return report.to_dict() if hasattr(report, "to_dict") else dict(report)


def calibration_batches(tokenizer, table, n_batches: int = 4, batch_size: int = 16, seed: int = 1234,
                        chat_format=None) -> list[dict]:
    """Task batches for the importance scores: SFT-format examples (MPC and decision, training
    phrasings, oracle answers) with a seed of their own. They stay on the CPU: the importance
    scoring moves each batch to the model's device when it uses it, wherever a trainer has put
    the model by then."""
    import torch

    from .sft import collate, encode_examples
    from .sft_data import SFTDataConfig, build_sft_examples

    examples = build_sft_examples(table, SFTDataConfig(mpc_examples=n_batches * batch_size,
                                                       decision_per_instruction=max(2, n_batches * batch_size // 16),
                                                       seed=seed))[: n_batches * batch_size]
    from ..model.tokenizer import special_ids

    eos, pad = special_ids(tokenizer, chat_format)
    encoded = encode_examples(examples, tokenizer, eos, max_length=768, chat_format=chat_format)
    return [collate(encoded[i:i + batch_size], pad, torch.device("cpu"))
            for i in range(0, len(encoded), batch_size)]


@dataclass
class RecipeResult:
    model: object
    reports: list
    sft_history: dict | None
    rl_history: dict | None
    wall_time_s: float
    device: str = "cpu"  # where the recipe ran (the model ends there too)

    def summary(self) -> dict:
        return {"prune_reports": self.reports, "sft_history": self.sft_history, "rl_history": self.rl_history,
                "wall_time_s": self.wall_time_s}


def run_recipe(model, tokenizer, reference_spec, recipe: RecipeConfig, work_dir: Path, *, table,
               sft_optim, sft_data, grpo_config, reward_pool, prune_config, log: Callable[[str], None] = print,
               calibration_batch_count: int = 4, device=None, chat_format=None) -> RecipeResult:
    """Run ``recipe`` on ``model`` (modified in place and returned).

    ``sft_optim`` (OptimConfig, its ``steps`` replaced by ``recipe.sft_steps``) and ``sft_data``
    (SFTDataConfig) describe the SFT phase; ``grpo_config`` (GRPOConfig, ``steps`` replaced by
    ``recipe.rl_steps``) the RL phase; ``reward_pool`` scores RL completions. ``device``: where
    every phase runs, post-training prunes included ("auto", "cpu", "cuda" or a torch.device;
    None: auto). ``chat_format``: how prompts are rendered in every phase and in the importance
    batches (None: plain), so that a pretrained chat model is trained and pruned on the prompts the
    runtime will send it."""
    import dataclasses

    from ..prune import prune_to_ratio
    from .device import resolve_device
    from .grpo import GRPOTrainer
    from .sft import SFTTrainer, answer_loss, seed_everything
    from .sft_data import SFTDataConfig, build_sft_examples

    device = resolve_device(device)
    model = model.to(device)
    started = time.time()
    work_dir = Path(work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    seed_everything(recipe.seed)
    calibration = (calibration_batches(tokenizer, table, n_batches=calibration_batch_count, seed=recipe.seed + 1234,
                                       chat_format=chat_format)
                   if recipe.schedule != "none" else [])
    sft_targets, rl_targets = recipe.phase_targets()
    reports: list[dict] = []
    sft_history = rl_history = None

    if recipe.sft_steps:
        hook = PruneHook(share_steps(recipe.sft_steps, len(sft_targets)), sft_targets, reference_spec,
                         prune_config, calibration, "sft", reports, log)
        examples = build_sft_examples(table, dataclasses.replace(sft_data, seed=recipe.seed))
        held = build_sft_examples(table, SFTDataConfig(mpc_examples=40, decision_per_instruction=6,
                                                       seed=recipe.seed + 1))  # un-augmented, as in edge-train sft
        trainer = SFTTrainer(model, tokenizer, examples, dataclasses.replace(sft_optim, steps=recipe.sft_steps,
                                                                             seed=recipe.seed),
                             work_dir / "sft", eval_examples=held, hooks=[hook], device=device,
                             chat_format=chat_format)
        sft_history = trainer.train()
        model = trainer.model
    if recipe.schedule in ("ptp", "ptp-rl"):
        report = prune_to_ratio(model, recipe.ratio, reference_spec, prune_config, batches=calibration,
                                loss_fn=answer_loss)
        reports.append({"phase": "post-training", "step": 0, "target": recipe.ratio, **_report_dict(report)})
        log(f"[post-training] pruned to {reports[-1]['achieved_ratio']:.3f} of the prunable parameters")
    if recipe.rl_steps:
        hook = PruneHook(share_steps(recipe.rl_steps, len(rl_targets)), rl_targets, reference_spec,
                         prune_config, calibration, "rl", reports, log)
        trainer = GRPOTrainer(model, tokenizer, dataclasses.replace(grpo_config, steps=recipe.rl_steps,
                                                                    seed=recipe.seed),
                              work_dir / "rl", reward_pool, hooks=[hook], device=device,
                              chat_format=chat_format)
        rl_history = trainer.train()
        model = trainer.model
    (work_dir / "prune_reports.json").write_text(json.dumps(reports, indent=1) + "\n")
    return RecipeResult(model, reports, sft_history, rl_history, time.time() - started, str(device))
