"""Closed-loop GRPO for the driving LLM: sample answers, drive them in the simulator, reinforce.

Per step: draw ``prompts_per_step`` training prompts (:class:`TaskSampler`, exactly as SFT draws
them), sample ``group_size`` completions of each with ``model.generate`` (temperature, optional
top-k, left padding, prompts rendered with the model's chat format, stop at its EOS token), score every completion through a reward pool
(``train.rewards``: one closed-loop rollout per MPC answer, the rule label for a decision
answer, plus small format / parse / valid-name bonuses), normalise the rewards within each
prompt's group, and take one optimiser step on

    loss = -mean_i( A_i * mean_t log pi(y_i,t) )  [ + kl_coef * mean_i mean_t k3_i,t ]

with A_i = (r_i - mean_group) / (std_group + 1e-4) (population std; exactly 0 for a group whose
rewards are all equal, so such a group gives no gradient). Log-probabilities use the sampling
temperature (the policy that actually sampled). **One on-policy update per batch**: the
completions were sampled by the current weights, so GRPO's importance ratio pi/pi_old is 1 and
its clipped surrogate reduces to this plain policy-gradient form (no old-policy copy, no clip).
With ``kl_coef > 0`` a frozen reference model (a copy of the starting weights unless given) adds
the k3 estimator per token, k3 = exp(ref - logp) - (ref - logp) - 1 >= 0. Hooks that prune the
policy mid-run leave the reference untouched: it keeps the dense shape, which is fine, since the
KL only needs its log-probabilities on the same tokens.

Why our own loop rather than TRL's ``GRPOTrainer``: the pruning recipes replace Linear modules
*during* training, which invalidates the optimizer's parameter references; here (as in
``train.sft``, through ``train.optim.run_hooks``) the optimizer is an attribute that a ``StepHook``
returning True rebuilds. TRL's
trainer owns its optimizer and accelerator (and is not installed here), and it knows nothing of
a closed-loop simulator reward running in worker processes. AdamW with ``make_optimizer``'s
parameter groups and ``lr_at``'s warm-up + cosine schedule (``train.optim``, shared with SFT),
gradient clipping, seeded everything, tqdm progress and metrics as JSON lines
(``out_dir/metrics.jsonl``, example completions in ``out_dir/samples.jsonl``) -- the loop is
in this one file.
"""

from __future__ import annotations

import copy
import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from ..contracts.chat_format import ChatFormat
from ..model.batching import left_pad
from ..model.tokenizer import special_ids
from ..contracts.task_enums import Category
from ..tasks.decision import DecisionExample, generate_decision_dataset
from ..tasks.instructions import (
    SPEED_RANGE,
    make_instruction,
    training_phrasings,
)
from ..tasks.prompts import build_decision_prompt, build_mpc_prompt
from .rewards import RewardBreakdown, RewardPool, RewardTask
from .device import resolve_device
from .optim import (
    LoopConfig,
    StepHook,
    TrainState,
    is_int,
    is_number,
    lr_at,
    make_optimizer,
    run_hooks,
    seed_everything,
)
from .sft_data import wrap_phrasing

__all__ = ["GRPOConfig", "GRPOTrainer", "Rollouts", "TaskSampler", "completion_logprobs", "group_advantages"]


@dataclass(frozen=True)
class GRPOConfig(LoopConfig):
    """GRPO: the shared loop fields (``LoopConfig``; RL defaults below) plus sampling and rewards."""

    steps: int = 200
    lr: float = 1e-4
    min_lr_ratio: float = 0.1
    warmup_steps: int = 10
    weight_decay: float = 0.0
    eval_every: int = 0  # call eval_fn every N steps (and after the last); 0: never
    prompts_per_step: int = 4
    group_size: int = 6  # completions per prompt (RobotxR1: 4-8)
    temperature: float = 1.0
    top_k: int = 0  # 0: off
    max_new_tokens: int = 96  # oracle MPC answers: 37 tokens on average, 56 at most (models/tiny/dense tokenizer)
    kl_coef: float = 0.0  # 0: no reference model
    decision_fraction: float = 0.25  # expected share of decision-task prompts per step
    decision_pool_per_instruction: int = 64  # decision histories simulated once per instruction (even)
    micro_batch: int = 0  # completions per forward/backward pass; 0: the whole step at once
    sample_every: int = 10  # write one completion per prompt to samples.jsonl every N steps; 0: never

    def _check(self) -> None:
        need = self._need
        need(is_int(self.prompts_per_step) and self.prompts_per_step >= 1, "prompts_per_step", "an int >= 1")
        need(is_int(self.group_size) and self.group_size >= 2, "group_size", "an int >= 2 (advantages need a group)")
        for name in ("sample_every", "micro_batch", "top_k"):
            need(is_int(getattr(self, name)) and getattr(self, name) >= 0, name, "an int >= 0")
        need(is_number(self.temperature) and self.temperature > 0, "temperature", "a number > 0")
        need(is_int(self.max_new_tokens) and self.max_new_tokens >= 1, "max_new_tokens", "an int >= 1")
        need(is_number(self.kl_coef) and self.kl_coef >= 0, "kl_coef", "a number >= 0")
        need(is_number(self.decision_fraction) and 0 <= self.decision_fraction <= 1, "decision_fraction", "in [0, 1]")
        need(is_int(self.decision_pool_per_instruction) and self.decision_pool_per_instruction >= 2
             and self.decision_pool_per_instruction % 2 == 0, "decision_pool_per_instruction", "an even int >= 2")

    @property
    def completions_per_step(self) -> int:
        return self.prompts_per_step * self.group_size


# ---------------------------------------------------------------------------------------------
# Prompts
# ---------------------------------------------------------------------------------------------
class TaskSampler:
    """Seeded training prompts, drawn like ``train.sft_data`` draws SFT prompts.

    MPC: categories in turn (as SFT's ``i % 5``), a random training phrasing (curated +
    compositional), wrapped by ``wrap_phrasing`` half of the time, reference-velocity targets
    uniform in ``SPEED_RANGE`` rounded to 0.1 m/s, scored on the training track. Decision: a
    balanced pool of ``generate_decision_dataset(split="train")`` histories (built on first use),
    drawn at random, its training phrasing wrapped the same way. Per call to :meth:`sample` the
    number of decision prompts is ``n * decision_fraction`` with stochastic rounding."""

    def __init__(self, seed: int = 0, decision_fraction: float = 0.25, decision_pool_per_instruction: int = 64,
                 speed_range: tuple[float, float] = SPEED_RANGE) -> None:
        if not 0 <= decision_fraction <= 1:
            raise ValueError(f"TaskSampler.decision_fraction must be in [0, 1], got {decision_fraction!r}")
        self.seed = seed
        self.decision_fraction = decision_fraction
        self.decision_pool_per_instruction = decision_pool_per_instruction
        self.speed_range = speed_range
        self.rng = np.random.default_rng(seed)
        self._categories = list(Category)
        self._mpc_drawn = 0
        self._pool: list[DecisionExample] | None = None

    def mpc_task(self) -> RewardTask:
        category = self._categories[self._mpc_drawn % len(self._categories)]
        self._mpc_drawn += 1
        options = training_phrasings(category)
        phrase = options[int(self.rng.integers(len(options)))]
        speed = round(float(self.rng.uniform(*self.speed_range)), 1) if category is Category.REFERENCE_VELOCITY else None
        ins = make_instruction(category, wrap_phrasing(phrase, self.rng), speed)
        return RewardTask.mpc(build_mpc_prompt(ins.text), ins)

    @property
    def decision_pool(self) -> list[DecisionExample]:
        if self._pool is None:
            self._pool = generate_decision_dataset(n_per_instruction=self.decision_pool_per_instruction,
                                                   split="train", seed=self.seed)
        return self._pool

    def decision_task(self) -> RewardTask:
        ex = self.decision_pool[int(self.rng.integers(len(self.decision_pool)))]
        return RewardTask.decision(build_decision_prompt(ex.history, wrap_phrasing(ex.phrasing, self.rng)), ex.label)

    def sample(self, n: int) -> list[RewardTask]:
        expected = n * self.decision_fraction
        n_dec = math.floor(expected) + int(self.rng.random() < expected - math.floor(expected))
        return [self.mpc_task() for _ in range(n - n_dec)] + [self.decision_task() for _ in range(n_dec)]


# ---------------------------------------------------------------------------------------------
# Generation, log-probabilities, advantages
# ---------------------------------------------------------------------------------------------
@dataclass
class Rollouts:
    """One step's sampled completions: row i belongs to prompt ``i // group_size``.

    ``input_ids`` = left-padded prompt (``prompt_width`` columns) + completion columns (pad after
    EOS); ``attention_mask`` is 1 on prompt tokens and on every completion column (as during
    generation); ``completion_mask`` is 1 on the sampled tokens up to and including the first EOS."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    completion_mask: torch.Tensor
    prompt_width: int
    texts: list[str]
    lengths: list[int]  # sampled tokens per completion (EOS included)
    truncated: list[bool]  # hit max_new_tokens without EOS

    @property
    def position_ids(self) -> torch.Tensor:
        """Positions as ``generate`` computes them with left padding: cumsum of the mask - 1."""
        return (self.attention_mask.long().cumsum(-1) - 1).clamp(min=0)

    def rows(self, idx: slice) -> Rollouts:
        return Rollouts(self.input_ids[idx], self.attention_mask[idx], self.completion_mask[idx], self.prompt_width,
                        self.texts[idx], self.lengths[idx], self.truncated[idx])


def group_advantages(rewards: Sequence[float] | np.ndarray, group_size: int, eps: float = 1e-4) -> np.ndarray:
    """(r - mean) / (std + eps) within consecutive groups of ``group_size`` (population std);
    exactly 0 for a group whose rewards are all equal."""
    r = np.asarray(rewards, dtype=np.float64)
    if r.ndim != 1 or group_size < 1 or len(r) % group_size:
        raise ValueError(f"group_advantages: {r.shape} rewards do not split into groups of {group_size}")
    g = r.reshape(-1, group_size)
    centred = g - g.mean(axis=1, keepdims=True)
    adv = centred / (g.std(axis=1, keepdims=True) + eps)
    adv[np.ptp(g, axis=1) == 0] = 0.0
    return adv.reshape(-1)


def completion_logprobs(model: torch.nn.Module, batch: Rollouts, temperature: float = 1.0) -> torch.Tensor:
    """log pi(token) of every completion column, ``[rows, completion columns]`` (garbage where
    ``completion_mask`` is 0 -- select with it, never multiply NaN-prone values by it).

    ``logits_to_keep`` makes the model apply its LM head only to the last ``n_completion + 1``
    positions (those that predict completion tokens), never to the prompt."""
    n_completion = batch.input_ids.shape[1] - batch.prompt_width
    logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, position_ids=batch.position_ids,
                   logits_to_keep=n_completion + 1).logits[:, :-1]
    logp = torch.log_softmax(logits.float() / temperature, dim=-1)
    targets = batch.input_ids[:, batch.prompt_width:]
    return logp.gather(-1, targets.unsqueeze(-1)).squeeze(-1)


def _masked_row_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    m = mask.bool()
    return torch.where(m, x, torch.zeros_like(x)).sum(1) / m.sum(1).clamp(min=1)


def _mean(values: Sequence[float]) -> float | None:
    return float(np.mean(values)) if len(values) else None


# ---------------------------------------------------------------------------------------------
# Trainer
# ---------------------------------------------------------------------------------------------
class GRPOTrainer:
    """GRPO with closed-loop rewards; see the module docstring.

    ``reward_pool``: a ``train.rewards`` pool (the caller owns and closes it). ``hooks``: called
    after every optimiser step with ``TrainState(step, model, optimizer, metrics)``, exactly as
    in ``SFTTrainer`` (True without a new ``state.optimizer`` -> the optimizer is rebuilt).
    ``ref_model``: the KL reference, used only when ``kl_coef > 0`` (default: a frozen deep copy
    of ``model`` as given). ``sampler``: the prompt source (default ``TaskSampler`` from the
    config). ``eval_fn(model) -> dict`` runs every ``eval_every`` steps and after the last
    (logged under "eval"); ``checkpoint_fn(model, path)`` every ``checkpoint_every`` steps.
    ``train()`` returns a history dict (first/last/mean reward, the per-step reward curve, wall
    time, the configs); the per-step metrics are in ``out_dir/metrics.jsonl``."""

    def __init__(self, model: torch.nn.Module, tokenizer, cfg: GRPOConfig, out_dir: str | Path,
                 reward_pool: RewardPool, hooks: Sequence[StepHook] = (), ref_model: torch.nn.Module | None = None,
                 device: str | torch.device | None = None, sampler: TaskSampler | None = None,
                 eval_fn: Callable[[torch.nn.Module], dict] | None = None,
                 checkpoint_fn: Callable[[torch.nn.Module, Path], None] | None = None,
                 chat_format: ChatFormat | None = None) -> None:
        self.cfg = cfg
        self.device = resolve_device(device)
        self.model = model.to(self.device)
        self.tokenizer = tokenizer
        self.chat_format = chat_format or ChatFormat.plain()  # prompts rendered and answers ended as in SFT
        self.eos_id, self.pad_id = special_ids(tokenizer, self.chat_format)
        self.reward_pool = reward_pool
        self.hooks = list(hooks)
        self.ref_model = None
        if cfg.kl_coef > 0:
            self.ref_model = (ref_model if ref_model is not None else copy.deepcopy(self.model)).to(self.device).eval()
            for p in self.ref_model.parameters():
                p.requires_grad_(False)
        self.sampler = sampler or TaskSampler(cfg.seed, cfg.decision_fraction, cfg.decision_pool_per_instruction)
        self.eval_fn = eval_fn
        self.checkpoint_fn = checkpoint_fn
        self.out_dir = Path(out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.metrics_path = self.out_dir / "metrics.jsonl"
        self.samples_path = self.out_dir / "samples.jsonl"
        self.optimizer = make_optimizer(self.model, cfg)

    # -- generation ---------------------------------------------------------------------------
    @torch.no_grad()
    def generate(self, prompts: Sequence[str]) -> Rollouts:
        """``group_size`` sampled completions of every prompt (rows grouped by prompt)."""
        cfg = self.cfg
        encoded = [self.tokenizer.encode(self.chat_format.render(p)).ids for p in prompts]
        rows = [ids for ids in encoded for _ in range(cfg.group_size)]
        ids, mask = left_pad(rows, self.pad_id)
        width = ids.shape[1]
        was_training = self.model.training
        self.model.eval()
        out = self.model.generate(input_ids=ids.to(self.device), attention_mask=mask.to(self.device),
                                  do_sample=True, temperature=cfg.temperature, top_k=cfg.top_k, top_p=1.0,
                                  max_new_tokens=cfg.max_new_tokens, eos_token_id=self.eos_id,
                                  pad_token_id=self.pad_id)
        self.model.train(was_training)
        completion = out[:, width:].cpu()
        n = completion.shape[1]
        is_eos = completion == self.eos_id
        first = torch.where(is_eos.any(1), is_eos.int().argmax(1), torch.full((len(rows),), n - 1))
        cmask = (torch.arange(n).unsqueeze(0) <= first.unsqueeze(1)).long()
        texts, lengths, truncated = [], [], []
        for j in range(len(rows)):
            k = int(first[j]) + 1
            new = completion[j, :k].tolist()
            texts.append(self.tokenizer.decode([t for t in new if t not in (self.eos_id, self.pad_id)],
                                               skip_special_tokens=False))
            lengths.append(k)
            truncated.append(not bool(is_eos[j].any()))
        full = torch.cat([ids, completion], dim=1)
        attn = torch.cat([mask, torch.ones_like(completion)], dim=1)
        return Rollouts(full.to(self.device), attn.to(self.device), cmask.to(self.device), width, texts, lengths,
                        truncated)

    # -- update -------------------------------------------------------------------------------
    def update(self, batch: Rollouts, advantages: np.ndarray) -> dict:
        """One optimiser step on the policy-gradient (+ KL) loss; returns loss, kl, grad_norm."""
        cfg = self.cfg
        n = batch.input_ids.shape[0]
        adv = torch.as_tensor(advantages, dtype=torch.float32, device=self.device)
        step = cfg.micro_batch or n
        self.model.train()
        self.optimizer.zero_grad(set_to_none=True)
        total_loss, total_kl, logp_sum = 0.0, 0.0, 0.0
        for start in range(0, n, step):
            part = batch.rows(slice(start, start + step))
            logp = completion_logprobs(self.model, part, cfg.temperature)
            mean_logp = _masked_row_mean(logp, part.completion_mask)
            loss = -(adv[start:start + step] * mean_logp).sum() / n
            if self.ref_model is not None:
                with torch.no_grad():
                    ref = completion_logprobs(self.ref_model, part, cfg.temperature)
                delta = ref - logp
                kl = _masked_row_mean(torch.exp(delta) - delta - 1.0, part.completion_mask)
                loss = loss + cfg.kl_coef * kl.sum() / n
                total_kl += float(kl.detach().sum())
            loss.backward()
            total_loss += float(loss.detach())
            logp_sum += float(mean_logp.detach().sum())
        grad_norm = float(torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.grad_clip))
        self.optimizer.step()
        return {"loss": total_loss, "kl": total_kl / n if self.ref_model is not None else None,
                "grad_norm": grad_norm, "mean_logp": logp_sum / n}

    # -- metrics ------------------------------------------------------------------------------
    @staticmethod
    def reward_metrics(tasks: Sequence[RewardTask], breakdowns: Sequence[RewardBreakdown], group_size: int) -> dict:
        totals = [b.total for b in breakdowns]
        mpc = [b for b in breakdowns if b.kind == "mpc"]
        dec = [b for b in breakdowns if b.kind == "decision"]
        groups = np.asarray(totals).reshape(-1, group_size)
        return {
            "reward_mean": _mean(totals), "reward_std": float(np.std(totals)),
            "format_mean": _mean([b.format for b in breakdowns]),
            "parseable_mean": _mean([b.parseable for b in breakdowns]),
            "valid_names_mean": _mean([b.valid_names for b in mpc]),
            "control_mean": _mean([b.control for b in mpc]),
            "parse_failure_rate": _mean([float(b.failure is not None) for b in breakdowns]),
            "rollout_s_mean": _mean([b.wall_time for b in mpc if b.rollout]),
            "crash_rate": _mean([float(b.crashed) for b in mpc]),
            "stall_rate": _mean([float(b.stalled) for b in mpc]),
            "decision_accuracy": _mean([float(bool(b.correct)) for b in dec]),
            "mpc_completions": len(mpc), "decision_completions": len(dec),
            "zero_advantage_groups": int((np.ptp(groups, axis=1) == 0).sum()),
            "categories": sorted({t.category for t in tasks}),
        }

    # -- loop ---------------------------------------------------------------------------------
    def _evaluate(self) -> dict:
        was_training = self.model.training
        self.model.eval()
        try:
            return self.eval_fn(self.model)
        finally:
            self.model.train(was_training)

    def train(self) -> dict:
        cfg = self.cfg
        G = cfg.group_size
        seed_everything(cfg.seed)
        started = time.time()
        rewards: list[float] = []
        history: dict = {"first_reward": None, "last_reward": None}
        with open(self.metrics_path, "a", encoding="utf-8") as log, \
                tqdm(total=cfg.steps, desc="grpo", dynamic_ncols=True) as bar:
            for step in range(cfg.steps):
                t0 = time.time()
                lr = lr_at(step, cfg)
                for group in self.optimizer.param_groups:
                    group["lr"] = lr
                tasks = self.sampler.sample(cfg.prompts_per_step)
                batch = self.generate([t.prompt for t in tasks])
                t1 = time.time()
                breakdowns = self.reward_pool.score([(tasks[i // G], text) for i, text in enumerate(batch.texts)])
                t2 = time.time()
                adv = group_advantages([b.total for b in breakdowns], G)
                upd = self.update(batch, adv)
                t3 = time.time()
                record = {"step": step + 1, **self.reward_metrics(tasks, breakdowns, G), **upd, "lr": lr,
                          "completion_tokens_mean": float(np.mean(batch.lengths)),
                          "completion_tokens_max": int(max(batch.lengths)),
                          "truncated_rate": float(np.mean(batch.truncated)),
                          "generation_s": t1 - t0, "reward_s": t2 - t1, "update_s": t3 - t2}
                self.optimizer = run_hooks(self.hooks, TrainState(step + 1, self.model, self.optimizer, record), cfg)
                if self.eval_fn and cfg.eval_every and ((step + 1) % cfg.eval_every == 0 or step + 1 == cfg.steps):
                    record["eval"] = self._evaluate()
                record["step_s"] = time.time() - t0
                record["elapsed_s"] = time.time() - started
                log.write(json.dumps(record) + "\n")
                log.flush()
                if cfg.sample_every and (step % cfg.sample_every == 0 or step + 1 == cfg.steps):
                    self._write_samples(step + 1, tasks, batch, breakdowns)
                rewards.append(record["reward_mean"])
                history["first_reward"] = rewards[0]
                history["last_reward"] = rewards[-1]
                bar.set_postfix(reward=f"{record['reward_mean']:+.2f}", parse_fail=f"{record['parse_failure_rate']:.2f}",
                                lr=f"{lr:.1e}")
                bar.update(1)
                if self.checkpoint_fn and cfg.checkpoint_every and (step + 1) % cfg.checkpoint_every == 0:
                    self.checkpoint_fn(self.model, self.out_dir / "checkpoints" / f"step_{step + 1}")
        history.update({"steps": cfg.steps, "wall_time_s": time.time() - started, "mean_reward": _mean(rewards),
                        "reward_curve": rewards, "grpo": asdict(cfg),
                        "reward": self.reward_pool.cfg.to_dict() if hasattr(self.reward_pool, "cfg") else None})
        return history

    def _write_samples(self, step: int, tasks: Sequence[RewardTask], batch: Rollouts,
                       breakdowns: Sequence[RewardBreakdown]) -> None:
        G = self.cfg.group_size
        with open(self.samples_path, "a", encoding="utf-8") as f:
            for i, task in enumerate(tasks):
                b = breakdowns[i * G]
                instruction = task.instruction.text if task.instruction is not None else None
                f.write(json.dumps({"step": step, "kind": task.kind, "category": task.category,
                                    "instruction": instruction, "label": task.label, "completion": batch.texts[i * G],
                                    "reward": b.total, "failure": b.failure, "crashed": b.crashed,
                                    "stalled": b.stalled, "group_rewards": [x.total for x in
                                                                           breakdowns[i * G:(i + 1) * G]]}) + "\n")

