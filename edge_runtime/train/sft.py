"""Supervised fine-tuning of the driving LLM on oracle answers (loss on answer tokens only).

Why our own loop instead of TRL's SFTTrainer: the pruning recipes remove attention heads and MLP
channels *during* training, which replaces Linear modules and therefore invalidates the
optimizer's parameter references and moment buffers. Here the optimizer is an attribute that a
structural change (``StepHook`` returning True) rebuilds -- fresh moments for the new tensors -- and
the data, schedule and logging stay in one readable file. AdamW, linear warm-up then cosine
decay, gradient clipping, seeded everything, tqdm progress (step, loss, ETA), metrics as JSON
lines, checkpoints as safetensors model directories.

Prompts are rendered with the model's chat format (``contracts.chat_format``: plain for the tiny
presets, ChatML for a pretrained instruct model) and answers end with its EOS token, exactly as
the runtime renders and stops. The loss applies the LM head only at the positions that predict
answer tokens (:func:`answer_loss`): with a 49152-token vocabulary the head over every prompt
token would be most of the step's work.

Resume: with ``resume_every`` the trainer writes ``out_dir/resume.pt`` atomically (weights,
optimizer moments, step, RNG states; the learning rate is a function of the step and the data
order is replayed from the seed), and a new trainer on the same ``out_dir`` continues from it
(``resume=True``), appending to ``metrics.jsonl``.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from ..contracts.chat_format import ChatFormat
from ..model.tokenizer import special_ids
from .device import resolve_device
from .optim import LoopConfig, StepHook, TrainState, is_int, lr_at, make_optimizer, run_hooks, seed_everything
from .sft_data import SFTExample

__all__ = ["RESUME_FILE", "EncodedExample", "OptimConfig", "SFTTrainer", "StepHook", "TrainState", "answer_loss", "collate",
           "encode_examples", "lr_at", "make_optimizer", "seed_everything"]


@dataclass(frozen=True)
class OptimConfig(LoopConfig):
    """SFT: the shared loop fields (``LoopConfig``, with its defaults) plus the batch and the
    evaluation set's size."""

    batch_size: int = 16
    eval_examples: int = 64
    max_length: int = 768
    resume_every: int = 0  # write the resume state every N steps (and after the last); 0: never

    def _check(self) -> None:
        for name in ("batch_size", "max_length"):
            self._need(is_int(getattr(self, name)) and getattr(self, name) >= 1, name, "an int >= 1")
        for name in ("eval_examples", "resume_every"):
            self._need(is_int(getattr(self, name)) and getattr(self, name) >= 0, name, "an int >= 0")


RESUME_FILE = "resume.pt"


@dataclass
class EncodedExample:
    input_ids: list[int]
    labels: list[int]  # -100 on prompt tokens


def encode_examples(examples: Sequence[SFTExample], tokenizer, eos_id: int, max_length: int,
                    chat_format: ChatFormat | None = None) -> list[EncodedExample]:
    """Prompt and answer are tokenised separately (generation sees the prompt alone); the prompt
    is rendered with ``chat_format`` (None: plain) as the runtime renders it, the answer is
    followed by EOS (the format's answer suffix), and only answer tokens + EOS carry labels."""
    fmt = chat_format or ChatFormat.plain()
    out = []
    for ex in examples:
        p = tokenizer.encode(fmt.render(ex.prompt)).ids
        a = tokenizer.encode(ex.answer, add_special_tokens=False).ids + [eos_id]
        ids = (p + a)[:max_length]
        labels = ([-100] * len(p) + a)[:max_length]
        if len(p) >= max_length:
            raise ValueError(f"prompt of {len(p)} tokens does not fit max_length={max_length}")
        out.append(EncodedExample(ids, labels))
    return out


def collate(batch: Sequence[EncodedExample], pad_id: int, device: torch.device) -> dict[str, torch.Tensor]:
    width = max(len(e.input_ids) for e in batch)
    ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    labels = torch.full((len(batch), width), -100, dtype=torch.long)
    mask = torch.zeros((len(batch), width), dtype=torch.long)
    for i, e in enumerate(batch):
        n = len(e.input_ids)
        ids[i, :n] = torch.tensor(e.input_ids)
        labels[i, :n] = torch.tensor(e.labels)
        mask[i, :n] = 1
    return {"input_ids": ids.to(device), "labels": labels.to(device), "attention_mask": mask.to(device)}


def answer_loss(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Mean over examples of each example's mean token loss on its answer.

    Averaging per example first (rather than over all answer tokens of the batch) gives a decision
    answer -- a handful of tokens -- the same weight as an MPC answer of fifty; with a plain token
    mean the decision label drowns and the model learns to always say the majority answer.

    The decoder body (``model.model``, Qwen2 and Llama alike) gives the hidden states; the LM head
    runs only on those at positions whose next token is labelled, so the loss (and its gradient)
    equals the one of full logits at a fraction of the head's cost."""
    hidden = model.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
    targets = batch["labels"][:, 1:]
    selected = targets != -100
    logits = model.lm_head(hidden[:, :-1][selected])  # [answer positions, vocab]
    ce = torch.nn.functional.cross_entropy(logits.float(), targets[selected], reduction="none")
    rows = selected.nonzero()[:, 0]
    per_row = torch.zeros(targets.shape[0], dtype=ce.dtype, device=ce.device).index_add(0, rows, ce)
    return (per_row / selected.sum(1).clamp(min=1).to(ce.dtype)).mean()


class SFTTrainer:
    def __init__(self, model: torch.nn.Module, tokenizer, train: Sequence[SFTExample], cfg: OptimConfig,
                 out_dir: str | Path, eval_examples: Sequence[SFTExample] = (), hooks: Sequence[StepHook] = (),
                 device: str | torch.device | None = None,
                 checkpoint_fn: Callable[[torch.nn.Module, Path], None] | None = None,
                 chat_format: ChatFormat | None = None, resume: bool = False) -> None:
        self.cfg = cfg
        self.device = resolve_device(device)
        self.model = model.to(self.device)
        self.tokenizer = tokenizer
        self.chat_format = chat_format or ChatFormat.plain()
        self.eos_id, self.pad_id = special_ids(tokenizer, self.chat_format)
        self.train_data = encode_examples(train, tokenizer, self.eos_id, cfg.max_length, self.chat_format)
        self.eval_data = encode_examples(eval_examples, tokenizer, self.eos_id, cfg.max_length, self.chat_format)
        if not self.train_data:
            raise ValueError("no training examples")
        self.hooks = list(hooks)
        self.out_dir = Path(out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.metrics_path = self.out_dir / "metrics.jsonl"
        self.checkpoint_fn = checkpoint_fn
        self.optimizer = make_optimizer(self.model, cfg)
        self.rng = np.random.default_rng(cfg.seed)
        self.resume_path = self.out_dir / RESUME_FILE
        self.start_step = 0
        self._torch_rng: torch.Tensor | None = None
        if resume and self.resume_path.is_file():
            self._load_resume()

    # -- resume ---------------------------------------------------------------------------------
    def _save_resume(self, step: int) -> None:
        """The state a later run continues from, written to a temp file and renamed into place."""
        state = {"step": step, "config": json.dumps(self._resume_key(), sort_keys=True),
                 "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                 "torch_rng": torch.get_rng_state(),
                 "metrics_bytes": self.metrics_path.stat().st_size if self.metrics_path.exists() else 0}
        tmp = self.resume_path.with_name(f".{RESUME_FILE}.tmp")
        torch.save(state, tmp)
        os.replace(tmp, self.resume_path)

    def _load_resume(self) -> None:
        state = torch.load(self.resume_path, map_location=self.device, weights_only=True)
        saved = json.loads(state["config"])
        now = json.loads(json.dumps(self._resume_key(), sort_keys=True))
        if saved != now:
            diff = sorted(k for k in set(saved) | set(now) if saved.get(k) != now.get(k))
            raise ValueError(f"{self.resume_path}: written with other training settings ({', '.join(diff)} differ); "
                             f"rerun with the same settings, or remove it to start over")
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.start_step = int(state["step"])
        self._torch_rng = state["torch_rng"].cpu()
        if self.metrics_path.exists() and self.metrics_path.stat().st_size > state["metrics_bytes"]:
            with open(self.metrics_path, "r+b") as f:  # drop the lines of steps that are run again
                f.truncate(state["metrics_bytes"])

    def _resume_key(self) -> dict:
        """The settings a resumed run must share with the run it continues (logging cadence may differ)."""
        skip = ("resume_every", "checkpoint_every", "eval_every", "eval_examples")
        return {k: v for k, v in asdict(self.cfg).items() if k not in skip}

    def _batches(self):
        n = len(self.train_data)
        while True:
            order = self.rng.permutation(n)
            for i in range(0, n - self.cfg.batch_size + 1, self.cfg.batch_size):
                yield [self.train_data[j] for j in order[i:i + self.cfg.batch_size]]

    @torch.no_grad()
    def evaluate_loss(self) -> float:
        if not self.eval_data:
            return float("nan")
        self.model.eval()
        total, count = 0.0, 0
        data = self.eval_data[: self.cfg.eval_examples]
        for i in range(0, len(data), self.cfg.batch_size):
            batch = collate(data[i:i + self.cfg.batch_size], self.pad_id, self.device)
            n = batch["input_ids"].shape[0]
            total += answer_loss(self.model, batch).item() * n
            count += n
        self.model.train()
        return total / max(count, 1)

    def train(self) -> dict:
        cfg = self.cfg
        seed_everything(cfg.seed)
        self.model.train()
        batches = self._batches()
        for _ in range(self.start_step):  # replay the data order up to the resumed step
            next(batches)
        if self._torch_rng is not None:
            torch.set_rng_state(self._torch_rng)
        started = time.time()
        history = {"first_loss": None, "last_loss": None, "resumed_from_step": self.start_step}
        tokens = 0
        with open(self.metrics_path, "a", encoding="utf-8") as log, tqdm(total=cfg.steps, initial=self.start_step,
                                                                           desc="sft", unit="step",
                                                                           dynamic_ncols=True) as bar:
            for step in range(self.start_step, cfg.steps):
                lr = lr_at(step, cfg)
                for group in self.optimizer.param_groups:
                    group["lr"] = lr
                batch = collate(next(batches), self.pad_id, self.device)
                loss = answer_loss(self.model, batch)
                self.optimizer.zero_grad(set_to_none=True)
                loss.backward()
                grad_norm = float(torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.grad_clip))
                self.optimizer.step()
                tokens += int(batch["attention_mask"].sum())
                record = {"step": step + 1, "loss": loss.item(), "lr": lr, "grad_norm": grad_norm,
                          "tokens_per_s": tokens / max(time.time() - started, 1e-9), "elapsed_s": time.time() - started}
                if cfg.eval_every and ((step + 1) % cfg.eval_every == 0 or step + 1 == cfg.steps):
                    record["eval_loss"] = self.evaluate_loss()
                self.optimizer = run_hooks(self.hooks, TrainState(step + 1, self.model, self.optimizer, record), cfg)
                log.write(json.dumps(record) + "\n")
                log.flush()
                history["first_loss"] = history["first_loss"] or record["loss"]
                history["last_loss"] = record["loss"]
                bar.set_postfix(loss=f"{record['loss']:.3f}", lr=f"{lr:.1e}")
                bar.update(1)
                if self.checkpoint_fn and cfg.checkpoint_every and (step + 1) % cfg.checkpoint_every == 0:
                    self.checkpoint_fn(self.model, self.out_dir / "checkpoints" / f"step_{step + 1}")
                if cfg.resume_every and ((step + 1) % cfg.resume_every == 0 or step + 1 == cfg.steps):
                    self._save_resume(step + 1)
        history.update({"steps": cfg.steps, "wall_time_s": time.time() - started, "tokens": tokens,
                        "eval_loss": self.evaluate_loss(), "optim": asdict(cfg)})
        return history
