"""Parity check of an exported ONNX decoder against its source PyTorch model.

For every prompt:

(a) **prefill logits** -- the PyTorch model (float32, the source of truth) and the ONNX file under
    ONNX Runtime (through the vehicle's decoding engine, ``edge_runtime.decoding.generator.OnnxGenerator``)
    each compute the logits of every prompt position; the max absolute difference must stay
    within the variant's tolerance ``atol + rtol * max|reference logit|``. A file that computes the
    last position only (``edge-export --logits last``, the default) is compared on that row.

(b) **greedy tokens** -- both greedy-decode up to ``max_new_tokens`` (stopping at EOS); the
    ``identical_answers`` count says for how many prompts the token sequences are identical.

(c) **token agreement** (teacher forced) -- the ONNX file is run once more over the prompt plus
    the reference's greedy answer (a last-position file: the prompt, then one answer token per
    run), and at every answer step its argmax is compared with the
    reference's token: ``token_agreement`` is the fraction of answer tokens it reproduces, over
    all prompts. Unlike (b) this does not let one early divergence decide the whole answer.

(d) **answer choice** -- both greedy answers are parsed for what they decide, without their
    numbers (``edge_runtime.tasks.answers.answer_choice``: the parameter names an MPC answer
    sets, a decision answer's verdict); ``answer_agreement`` is the share of the prompts whose
    reference answer parses on which the file makes the same choice.

**The tolerance table** (``TOLERANCES``; one row per variant -- the graph dtype, or the
quantization kind of a quantized file, ``edge_runtime.quantization``):

    variant  logits                              greedy answers                  token agreement  answer choice
    fp32     max |diff| <= 1e-3 + 1e-4 * scale   identical, no exception         --               --
    fp16     max |diff| <= 2e-2 + 1e-2 * scale   identical except at near ties   --               --
    int8     mean KL at answer steps <= 0.10     reported, not required          >= 0.90          >= 0.90
    int4     mean KL at answer steps <= 0.25     reported, not required          >= 0.80          >= 0.80

(``scale``: the prompt's largest |reference logit|.) The float bounds were set from max |logit
diff| measurements on random tiny test models and trained tiny models. For quantized files the
max |logit diff| over every prompt position and the whole vocabulary turned out to measure the
wrong thing on a real model: SmolLM2-135M's working int4 file moves some logit by 16-19 (bound
7.8) at prompt positions nobody samples from, while its answers agree token for token 96 % of the
time. Their criterion is therefore the *mean KL divergence* KL(PyTorch || file) of the next-token
distributions at the answer steps (teacher forced on the reference answer), per prompt; the max
|logit diff| is still computed and reported. The KL bounds sit between working and deliberately
broken files (``bench/parity_calibration.py``: the MLP down-projections of the first and last
layer swapped, or one layer's attention output zeroed): working int8 / int4 files measure
<= 5e-5 / 0.002-0.02 nats, broken ones 0.9-8 nats (per model and commit in
``bench/results/quantization.md``, "Calibration of the parity tolerance table"). They are meant to
catch broken graphs, not to rank quantizers: the task-level check is ``edge-eval``. Random tiny
test models are far more sensitive to weight rounding than a trained one (their int4 agreement
varies widely with their weight scale), so the tests check the mechanism (bounds, agreement
bookkeeping) on them and the floors above are calibrated on trained models.

fp16: the weights are rounded to float16, so the error grows with the logit scale -- hence the
relative part. A divergence is tolerated only at a *near tie*: a step where the PyTorch
reference's top-1 / top-2 logit gap is below twice the larger of the prompt's measured prefill
logit difference and the fp16 ``atol`` (within the numerical noise actually observed), so that
float16 rounding legitimately picks the other token. Such prompts are counted in ``near_ties``
and listed in ``details`` (with the step and the reference gap), not in ``identical_answers``.
Greedy decoding of random tiny models hits such ties often; trained models rarely do.

int8 / int4 (``edge_runtime.export.quantize``): rounding every weight to 8 or 4 bits moves the
logits by O(1) on a trained model whose logits are in the tens, so whole greedy answers
legitimately diverge (how many, per model and variant: ``bench/results/quantization.md``).
Parity for them means: the answer-step distributions stay within the KL bound (a broken graph --
a wrong layout, a lost layer -- moves them by nats), the teacher-forced token agreement stays
above the table's floor, and so does the answer-choice agreement. The last one exists because the
first two average over answer tokens: a 4-bit file of a pruned SmolLM2 (seed 1 of
``bench/results/bpf/smollm2/pruned50_s1``) wrote ``a_max`` where its weights write ``a_min`` in
every "reverse" answer -- one token, a whole instruction category lost -- and passed them (mean
KL 0.227 <= 0.25). The choice floors were set from working and category-breaking files
(``bench/results/quantization.md``, "Answer choice"). The task-level check is still the held-out
score (``edge-eval --model X.onnx --task both``), reported beside parity.

The ONNX side runs through the vehicle's decoding engine on purpose: parity then also covers the
engine's cache handling (prefill with an empty past, presents fed back as pasts). That engine
lives in ``edge_runtime.decoding``, below both ``export`` and ``runtime``, so export does not
import the vehicle runtime (``docs/architecture.md``).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = ["TOLERANCES", "LogitTolerance", "ParityReport", "check_parity", "mean_kl", "parity_variant"]


@dataclass(frozen=True)
class LogitTolerance:
    """One row of the tolerance table (see the module docstring).

    ``require_identical``: every greedy answer must be identical (near ties excepted when
    ``allow_near_ties``); ``min_token_agreement``: floor on the teacher-forced token agreement;
    ``max_mean_kl``: when set, the logit criterion is the mean KL divergence at the answer steps
    instead of the max |logit diff| bound (which is then only reported); ``min_answer_agreement``:
    when set, floor on the fraction of prompts whose greedy answer makes the reference's choice
    (``edge_runtime.tasks.answers.answer_choice``)."""

    atol: float
    rtol: float
    allow_near_ties: bool
    require_identical: bool = True
    min_token_agreement: float = 0.0
    max_mean_kl: float | None = None
    min_answer_agreement: float | None = None

    def bound(self, reference_max_abs: float) -> float:
        return self.atol + self.rtol * reference_max_abs


TOLERANCES: dict[str, LogitTolerance] = {
    "fp32": LogitTolerance(atol=1e-3, rtol=1e-4, allow_near_ties=False),
    "fp16": LogitTolerance(atol=2e-2, rtol=1e-2, allow_near_ties=True),
    "int8": LogitTolerance(atol=0.5, rtol=0.10, allow_near_ties=True, require_identical=False,
                           min_token_agreement=0.90, max_mean_kl=0.10, min_answer_agreement=0.90),
    "int4": LogitTolerance(atol=1.0, rtol=0.15, allow_near_ties=True, require_identical=False,
                           min_token_agreement=0.80, max_mean_kl=0.25, min_answer_agreement=0.80),
}


@dataclass
class ParityReport:
    ok: bool
    max_abs_logit_diff: float
    identical_answers: int
    n_prompts: int
    details: list[dict[str, Any]] = field(default_factory=list)
    dtype: str = "fp32"
    logit_tolerance: float = 0.0   # the largest per-prompt bound (atol + rtol * max|ref|)
    near_ties: int = 0
    message: str = ""
    variant: str = ""              # the TOLERANCES row used: the dtype, or the quantization kind
    token_agreement: float = 1.0   # teacher-forced, over all answer tokens of all prompts
    mean_kl: float = 0.0           # the largest per-prompt mean KL(reference || file) over answer steps, nats
    same_answer_choices: int = 0   # of answer_prompts: those on which the file makes the reference's choice
    answer_prompts: int = 0        # prompts whose reference answer parses

    @property
    def answer_agreement(self) -> float:
        """Share of the prompts whose reference answer parses on which the file makes the same choice
        (1.0 when none parses: nothing to hold the file to)."""
        return self.same_answer_choices / self.answer_prompts if self.answer_prompts else 1.0

    @property
    def identical_fraction(self) -> float:
        return self.identical_answers / self.n_prompts if self.n_prompts else 0.0

    def summary(self) -> str:
        tol = TOLERANCES.get(self.variant)
        if tol is not None and tol.max_mean_kl is not None:
            logits = (f"mean KL {self.mean_kl:.3g} nats (tolerance {tol.max_mean_kl}), max |logit diff| "
                      f"{self.max_abs_logit_diff:.3g}")
        else:
            logits = f"max |logit diff| {self.max_abs_logit_diff:.3g} (tolerance {self.logit_tolerance:.3g})"
        return (f"parity {'OK' if self.ok else 'FAILED'} ({self.variant or self.dtype}): {logits}, identical greedy answers "
                f"{self.identical_answers}/{self.n_prompts}" + (f", near ties {self.near_ties}" if self.near_ties else "")
                + f", token agreement {self.token_agreement:.3f}"
                + (f", same answer choice {self.same_answer_choices}/{self.answer_prompts}"
                   if self.answer_prompts else "")
                + (f" -- {self.message}" if self.message else ""))


@torch.no_grad()
def _torch_greedy(model, ids: list[int], max_new_tokens: int,
                  eos_id: int) -> tuple[np.ndarray, list[int], list[float], np.ndarray]:
    """(prefill logits [seq, vocab], greedy tokens, top1 - top2 logit gap at every step, the
    logits each step chose from [steps, vocab])."""
    out = model(input_ids=torch.tensor([ids]), use_cache=True)
    prefill = out.logits[0].float().numpy()
    cache = _cache_of(out)
    cache_kwarg = "cache" if "cache" in _forward_params(model) else "past_key_values"
    logits = out.logits[0, -1].float()
    tokens: list[int] = []
    gaps: list[float] = []
    steps: list[np.ndarray] = []
    while True:
        steps.append(logits.numpy().copy())
        top = torch.topk(logits, 2)
        token = int(top.indices[0])
        tokens.append(token)
        gaps.append(float(top.values[0] - top.values[1]))
        if token == eos_id or len(tokens) >= max_new_tokens:
            break
        n = len(ids) + len(tokens)
        out = model(input_ids=torch.tensor([[token]]), position_ids=torch.tensor([[n - 1]]),
                    attention_mask=torch.ones(1, n, dtype=torch.long), use_cache=True, **{cache_kwarg: cache})
        cache = _cache_of(out)
        logits = out.logits[0, -1].float()
    return prefill, tokens, gaps, np.stack(steps)


def _teacher_forced(generator, ids: list[int], answer: list[int]) -> np.ndarray:
    """The file's logits at every answer step with the reference answer fed as the prefix
    ([len(answer), vocab]): one run over prompt + answer, or -- for a file that computes the last
    position only -- the prompt, then one answer token per run."""
    if not generator.last_logits_only:
        return generator.prefill_logits(ids + answer[:-1])[len(ids) - 1:]
    state = generator.start()
    rows = [state.append_tokens(ids)[-1]]
    rows += [state.append_tokens([t])[-1] for t in answer[:-1]]
    return np.stack(rows)


def mean_kl(reference: np.ndarray, other: np.ndarray) -> float:
    """Mean over rows of KL(softmax(reference) || softmax(other)), in nats: how much probability
    mass the other model moves away from the reference's next-token distribution."""
    ref = reference.astype(np.float64)
    oth = other.astype(np.float64)
    ref_log = ref - ref.max(-1, keepdims=True)
    ref_log -= np.log(np.exp(ref_log).sum(-1, keepdims=True))
    oth_log = oth - oth.max(-1, keepdims=True)
    oth_log -= np.log(np.exp(oth_log).sum(-1, keepdims=True))
    return float(np.mean(np.sum(np.exp(ref_log) * (ref_log - oth_log), axis=-1)))


def _cache_of(out):
    """The returned cache (transformers 5.x names it `cache`, earlier releases `past_key_values`)."""
    cache = getattr(out, "cache", None)
    return cache if cache is not None else out.past_key_values


def _forward_params(model) -> set[str]:
    import inspect

    return set(inspect.signature(model.forward).parameters)


def _source_sha(model_dir: Path) -> str | None:
    from ..model.io import META

    meta = model_dir / META
    if meta.is_file():
        return json.loads(meta.read_text(encoding="utf-8")).get("model_sha256")
    return None


def parity_variant(metadata: dict[str, str]) -> str:
    """The TOLERANCES row of a file: its quantization kind if quantized, else its graph dtype."""
    from .quantize import quantization_of

    record = quantization_of(metadata)
    return record["kind"] if record else metadata.get("edge_runtime.dtype", "")


def check_parity(model_dir: str | os.PathLike, onnx_path: str | os.PathLike, prompts: Sequence[str],
                 max_new_tokens: int | Sequence[int], threads: int | None = 1) -> ParityReport:
    """Compare the model in ``model_dir`` with the exported ``onnx_path`` on ``prompts``.

    ``max_new_tokens`` is one budget for all prompts or one per prompt. ``threads`` caps both
    PyTorch's and ONNX Runtime's intra-op threads during the check (None: leave the defaults).
    """
    from ..model.io import load_model
    from ..decoding.generator import OnnxGenerator
    from ..tasks.answers import answer_choice

    prompts = list(prompts)
    if not prompts:
        raise ValueError("check_parity: give at least one prompt")
    budgets = [int(max_new_tokens)] * len(prompts) if isinstance(max_new_tokens, (int, np.integer)) \
        else [int(b) for b in max_new_tokens]
    if len(budgets) != len(prompts) or min(budgets) < 1:
        raise ValueError("check_parity: max_new_tokens must be a positive int or one positive int per prompt")
    model_dir = Path(model_dir)
    generator = OnnxGenerator(onnx_path, threads=threads)
    variant = parity_variant(generator.metadata)
    tol = TOLERANCES.get(variant)
    if tol is None:
        raise ValueError(f"{onnx_path}: unknown graph variant {variant!r}; known: {', '.join(TOLERANCES)}")
    old_threads = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        model, _ = load_model(model_dir, dtype=torch.float32)
        messages = []
        sha = _source_sha(model_dir)
        if sha is not None and sha != generator.source_sha256:
            messages.append(f"the ONNX file was exported from other weights (source_sha256 "
                            f"{generator.source_sha256[:12]}..., {model_dir} has {sha[:12]}...)")
        details: list[dict[str, Any]] = []
        max_diff, bound_max, kl_max, identical, near_ties, ok = 0.0, 0.0, 0.0, 0, 0, True
        agreed, answer_tokens = 0, 0
        same_choices, choice_prompts, choice_misses = 0, 0, []
        for k, (prompt, budget) in enumerate(zip(prompts, budgets)):
            ids = generator.encode(prompt)
            ref_logits, ref_tokens, gaps, ref_steps = _torch_greedy(model, ids, budget, generator.eos_id)
            if generator.last_logits_only:  # the file computes the prompt's last row only: compare that one
                ref_logits = ref_logits[-1:]
            onnx_logits = generator.start().append_tokens(ids).astype(np.float32)
            diff = float(np.max(np.abs(onnx_logits - ref_logits)))
            bound = tol.bound(float(np.max(np.abs(ref_logits))))
            result = generator.generate(prompt, budget)
            onnx_tokens = list(result.token_ids)
            same = onnx_tokens == ref_tokens
            divergence = None if same else next(
                (i for i, (a, b) in enumerate(zip(ref_tokens, onnx_tokens)) if a != b), min(len(ref_tokens), len(onnx_tokens)))
            gap = gaps[divergence] if divergence is not None and divergence < len(gaps) else None
            near_tie = bool(not same and gap is not None and gap < 2 * max(diff, tol.atol))
            tokens_ok = same or (near_tie and tol.allow_near_ties) or not tol.require_identical
            forced_logits = _teacher_forced(generator, ids, ref_tokens)
            kl = mean_kl(ref_steps, forced_logits)
            logits_ok = diff <= bound if tol.max_mean_kl is None else kl <= tol.max_mean_kl
            agree = int(np.sum(np.argmax(forced_logits, axis=-1) == np.asarray(ref_tokens)))
            agreed, answer_tokens = agreed + agree, answer_tokens + len(ref_tokens)
            reference_choice = answer_choice(generator.decode(ref_tokens))
            file_choice = answer_choice(result.text)
            same_choice = None if reference_choice is None else file_choice == reference_choice
            if same_choice is not None:
                choice_prompts += 1
                same_choices += same_choice
                if not same_choice:
                    choice_misses.append(f"prompt {k} answers {_describe(file_choice)} where the weights answer "
                                         f"{_describe(reference_choice)}")
            identical += same
            near_ties += near_tie
            ok &= logits_ok and tokens_ok
            max_diff, bound_max, kl_max = max(max_diff, diff), max(bound_max, bound), max(kl_max, kl)
            details.append({
                "prompt": k, "prompt_tokens": len(ids), "max_abs_logit_diff": diff, "logit_bound": bound,
                "mean_kl": kl,
                "logits_ok": logits_ok, "identical": same, "torch_tokens": len(ref_tokens),
                "onnx_tokens": len(onnx_tokens), "first_divergence": divergence,
                "reference_gap_at_divergence": gap, "near_tie": near_tie,
                "token_agreement": agree / len(ref_tokens),
                "reference_choice": _jsonable(reference_choice), "file_choice": _jsonable(file_choice),
                "same_choice": same_choice,
            })
            if not logits_ok:
                messages.append(f"prompt {k}: logit diff {diff:.3g} > {bound:.3g}" if tol.max_mean_kl is None else
                                f"prompt {k}: mean KL {kl:.3g} nats > {tol.max_mean_kl} ({variant})")
            if not tokens_ok:
                messages.append(f"prompt {k}: greedy tokens differ from step {divergence} "
                                f"(reference top-2 gap {gap if gap is None else round(gap, 4)})")
        token_agreement = agreed / answer_tokens if answer_tokens else 1.0
        if token_agreement < tol.min_token_agreement:
            ok = False
            messages.append(f"teacher-forced token agreement {token_agreement:.3f} < {tol.min_token_agreement} "
                            f"({variant})")
        answer_agreement = same_choices / choice_prompts if choice_prompts else 1.0  # as ParityReport.answer_agreement
        if tol.min_answer_agreement is not None and answer_agreement < tol.min_answer_agreement:
            ok = False
            messages.append(f"greedy answers make the weights' choice on {same_choices}/{choice_prompts} prompts "
                            f"({answer_agreement:.2f} < {tol.min_answer_agreement}, {variant}): "
                            + ", ".join(choice_misses[:2]) + (" ..." if len(choice_misses) > 2 else ""))
        ok &= not (sha is not None and sha != generator.source_sha256)
    finally:
        torch.set_num_threads(old_threads)
    msg = "; ".join(messages[:4]) + (f"; ... {len(messages) - 4} more" if len(messages) > 4 else "")
    return ParityReport(ok=bool(ok), max_abs_logit_diff=max_diff, identical_answers=identical, n_prompts=len(prompts),
                        details=details, dtype=generator.dtype, logit_tolerance=bound_max, near_ties=near_ties,
                        message=msg, variant=variant, token_agreement=token_agreement, mean_kl=kl_max,
                        same_answer_choices=same_choices, answer_prompts=choice_prompts)


def _describe(choice: tuple[str, ...] | bool | None) -> str:
    """An answer choice in a message: the parameter names it sets, the verdict, or 'nothing parseable'."""
    if choice is None:
        return "nothing parseable"
    if isinstance(choice, bool):
        return str(choice)
    return "{" + ", ".join(choice) + "}"


def _jsonable(choice: tuple[str, ...] | bool | None) -> list[str] | bool | None:
    return list(choice) if isinstance(choice, tuple) else choice
