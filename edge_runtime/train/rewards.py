"""Rewards of closed-loop RL (GRPO) for both driving tasks, and the worker pools that compute them.

This module is torch-free on purpose: reward workers import it (and the task code under it) and
nothing else, so a worker process starts fast and small. Ray is imported lazily, inside
:class:`RayRewardPool` only.

**MPC task** (one completion = one parameter set)::

    total = control + format + parseable + valid_names

* ``control`` = clip((E_base - E) / E_base, -clip, +clip) from one deterministic closed-loop
  rollout (``tasks.closed_loop.evaluate``) of the parsed parameters on the instruction, on the
  *training* track (``RewardConfig.eval``); E is the category error (RMSE, see
  ``tasks.metrics``), E_base that of the default parameters. A crash, a stall or an answer that
  does not parse scores ``-clip`` (the worst case, as in ``tasks.metrics.adaptability``), and
  so does a rollout that raises (counted as a crash, the exception in ``detail``). Since
  E >= 0 the upper clip is never reached (the best possible value is 1), it only bounds a
  malformed baseline.
* ``format`` = ``format_weight`` when the completion holds exactly one ``<answer>`` and one
  ``</answer>``, in that order, with nothing but whitespace after ``</answer>`` (a reason line
  before it is welcome);
* ``parseable`` = ``parseable_weight`` when ``parse_mpc_answer`` accepts the answer;
* ``valid_names`` = ``valid_names_weight`` when the answer is a JSON object whose names are all
  parameter names -- i.e. the parser got past its ``unknown_name`` check (parsed, or failed
  later with ``bad_value`` / ``out_of_range`` / ``inconsistent``). No tag, a cut-off block,
  empty or broken JSON or a non-object earn nothing here (the names cannot be judged).

**Decision task**::

    total = (decision_correct if the parsed answer equals the label else decision_wrong)
            + format + parseable

An unparseable decision answer counts as wrong (like ``tasks.decision.decision_accuracy``);
``valid_names`` does not apply (always 0). The defaults 1.0 / 0.0 make the correctness term
dominate the 0.1 bonuses; GRPO normalises rewards within each prompt's group, so the different
scales of the two tasks do not mix.

The baseline error E_base depends on the category (and target speed) only, not on the wording,
so the rollout is scored against a canonical instruction of that category and speed: the
per-process ``default_error`` cache then hits after the first prompt of each (category, speed),
instead of re-running the default parameters for every paraphrase. The score is identical.

**Pools** (common interface: ``score(list[(RewardTask, completion)]) -> list[RewardBreakdown]`` in
input order, ``close()``, context manager):

* :class:`LocalRewardPool` -- a ``ProcessPoolExecutor`` with the ``spawn`` (default) or
  ``forkserver`` context (the trainer has torch loaded; forking a process with torch's threads
  is unsafe). Workers are started eagerly, with the parent's ``__main__`` hidden from the
  start-up, so that a worker does not re-import the training script (and with it torch): it
  imports this module and the task code only. ``workers=0`` scores in-process.
* :class:`RayRewardPool` -- the same function as a Ray remote task, over chunks of the list;
  ``address="auto"`` joins a running cluster, an explicit address joins that one, ``"local"``
  starts a private local Ray with ``num_cpus`` CPUs (2 by default, for tests). The cluster's
  workers need ``edge_runtime`` importable (installed in their environment, or passed through
  ``runtime_env``).

Rollouts are deterministic, so every pool gives bit-identical rewards for the same inputs.
"""

from __future__ import annotations

import contextlib
import math
import multiprocessing
import os
import sys
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from ..contracts.answer_format import ANSWER_CLOSE, ANSWER_OPEN
from ..tasks.answers import (
    ParseFailure,
    parse_decision_answer,
    parse_mpc_answer,
)
from ..tasks.closed_loop import EvalConfig, default_error, evaluate
from ..tasks.instructions import Instruction

__all__ = [
    "LocalRewardPool",
    "RayRewardPool",
    "RewardBreakdown",
    "RewardConfig",
    "RewardPool",
    "RewardTask",
    "format_ok",
    "make_reward_pool",
    "names_ok",
    "score_batch",
    "score_completion",
]

TASK_KINDS = ("mpc", "decision")

# Failures the parser reports only after every name was checked to be a parameter name.
_NAMES_CHECKED = frozenset({ParseFailure.BAD_VALUE, ParseFailure.OUT_OF_RANGE, ParseFailure.INCONSISTENT})


def _finite(x: Any) -> bool:
    return not isinstance(x, bool) and isinstance(x, (int, float)) and math.isfinite(x)


@dataclass(frozen=True)
class RewardConfig:
    """Reward weights and the closed-loop evaluation (see the module docstring for the terms)."""

    clip: float = 4.0  # control reward in [-clip, clip]; -clip for crash / stall / unparseable
    format_weight: float = 0.1
    parseable_weight: float = 0.1
    valid_names_weight: float = 0.1
    decision_correct: float = 1.0
    decision_wrong: float = 0.0  # also an unparseable decision answer
    clamp_out_of_range: bool = False  # True: clamp out-of-range numbers instead of failing the parse
    eval: EvalConfig = field(default_factory=EvalConfig)  # the TRAINING track by default

    def __post_init__(self) -> None:
        if not (_finite(self.clip) and self.clip > 0):
            raise ValueError(f"RewardConfig.clip must be a finite number > 0, got {self.clip!r}")
        for name in ("format_weight", "parseable_weight", "valid_names_weight"):
            value = getattr(self, name)
            if not (_finite(value) and value >= 0):
                raise ValueError(f"RewardConfig.{name} must be a finite number >= 0, got {value!r}")
        for name in ("decision_correct", "decision_wrong"):
            if not _finite(getattr(self, name)):
                raise ValueError(f"RewardConfig.{name} must be a finite number, got {getattr(self, name)!r}")
        if self.decision_correct <= self.decision_wrong:
            raise ValueError(f"RewardConfig.decision_correct ({self.decision_correct}) must be > decision_wrong "
                             f"({self.decision_wrong})")
        if not isinstance(self.clamp_out_of_range, bool):
            raise ValueError(f"RewardConfig.clamp_out_of_range must be a bool, got {self.clamp_out_of_range!r}")  # noqa: TRY004 - config errors are ValueErrors
        if not isinstance(self.eval, EvalConfig):
            raise ValueError(f"RewardConfig.eval must be an EvalConfig, got {type(self.eval).__name__}")  # noqa: TRY004

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class RewardTask:
    """One prompt to be rewarded: ``kind`` "mpc" (with its ``instruction``) or "decision" (with
    the rule-based ``label``). Frozen and picklable (it travels to the reward workers)."""

    kind: str
    prompt: str
    instruction: Instruction | None = None
    label: bool | None = None

    def __post_init__(self) -> None:
        if self.kind not in TASK_KINDS:
            raise ValueError(f"RewardTask.kind must be one of {TASK_KINDS}, got {self.kind!r}")
        if not isinstance(self.prompt, str):
            raise ValueError(f"RewardTask.prompt must be a string, got {type(self.prompt).__name__}")  # noqa: TRY004
        if self.kind == "mpc":
            if not isinstance(self.instruction, Instruction) or self.label is not None:
                raise ValueError("RewardTask.instruction: an mpc task needs an Instruction and no label")
        else:
            if isinstance(self.label, np.bool_):  # a numpy bool from a dataset
                object.__setattr__(self, "label", bool(self.label))
            if not isinstance(self.label, bool) or self.instruction is not None:
                raise ValueError("RewardTask.label: a decision task needs a bool label and no instruction")

    @classmethod
    def mpc(cls, prompt: str, instruction: Instruction) -> RewardTask:
        return cls("mpc", prompt, instruction=instruction)

    @classmethod
    def decision(cls, prompt: str, label: bool) -> RewardTask:
        return cls("decision", prompt, label=label)

    @property
    def category(self) -> str:
        """The MPC category value, or "decision"."""
        return self.instruction.category.value if self.kind == "mpc" else "decision"


@dataclass(frozen=True)
class RewardBreakdown:
    """The reward of one completion, its terms and diagnostics.

    ``control``: the closed-loop term (MPC) or the correctness term (decision). ``format``,
    ``parseable``, ``valid_names``: the weighted bonuses (0 or the weight). ``failure``: the
    ParseFailure value when the answer did not parse. ``rollout``: a closed-loop rollout ran;
    then ``error`` / ``default_error`` (RMSE), ``crashed``, ``stalled`` and ``sim_time`` come
    from it. ``correct``: the decision answer matched the label (None for MPC)."""

    kind: str
    total: float
    control: float
    format: float
    parseable: float
    valid_names: float
    failure: str | None = None
    detail: str = ""
    rollout: bool = False
    crashed: bool = False
    stalled: bool = False
    error: float | None = None
    default_error: float | None = None
    sim_time: float = 0.0
    correct: bool | None = None
    wall_time: float = field(default=0.0, compare=False)  # s; not part of equality

    def to_dict(self) -> dict:
        return asdict(self)


# ---------------------------------------------------------------------------------------------
# Scoring
# ---------------------------------------------------------------------------------------------
def format_ok(text: str) -> bool:
    """Exactly one ``<answer>``, then exactly one ``</answer>``, and only whitespace after it."""
    if text.count(ANSWER_OPEN) != 1 or text.count(ANSWER_CLOSE) != 1:
        return False
    close = text.find(ANSWER_CLOSE)
    return text.find(ANSWER_OPEN) < close and not text[close + len(ANSWER_CLOSE):].strip()


def names_ok(failure: ParseFailure | None) -> bool:
    """Whether an MPC parse with this outcome had only valid parameter names (see module docstring)."""
    return failure is None or failure in _NAMES_CHECKED


def control_reward(error: float, default_error: float, failed: bool, clip: float) -> float:
    """clip((E_base - E) / E_base, -clip, clip); a failed run (or a non-finite error) is ``-clip``."""
    if failed or not math.isfinite(error):
        return -clip
    if default_error <= 0:  # mirrors tasks.metrics.adaptability
        return 0.0 if error <= 0 else -clip
    return float(min(max((default_error - error) / default_error, -clip), clip))


def _canonical(instruction: Instruction) -> Instruction:
    """Same category and speed, fixed text: the baseline does not depend on the wording."""
    return Instruction(instruction.category.value, instruction.category, instruction.target_speed)


def score_completion(task: RewardTask, completion: str, cfg: RewardConfig | None = None) -> RewardBreakdown:
    """The reward of ``completion`` (the generated text after the prompt) for ``task``."""
    cfg = cfg or RewardConfig()
    t0 = time.perf_counter()
    if not isinstance(completion, str):
        completion = ""
    fmt = cfg.format_weight if format_ok(completion) else 0.0
    if task.kind == "decision":
        parse = parse_decision_answer(completion)
        correct = parse.ok and parse.value == task.label
        control = cfg.decision_correct if correct else cfg.decision_wrong
        parseable = cfg.parseable_weight if parse.ok else 0.0
        return RewardBreakdown(
            kind="decision", total=control + fmt + parseable, control=control, format=fmt, parseable=parseable,
            valid_names=0.0, failure=None if parse.ok else parse.failure.value, detail=parse.detail,
            correct=correct, wall_time=time.perf_counter() - t0)
    parse = parse_mpc_answer(completion, clamp=cfg.clamp_out_of_range)
    parseable = cfg.parseable_weight if parse.ok else 0.0
    valid = cfg.valid_names_weight if names_ok(parse.failure) else 0.0
    if not parse.ok:
        control = -cfg.clip
        return RewardBreakdown(
            kind="mpc", total=control + fmt + parseable + valid, control=control, format=fmt, parseable=parseable,
            valid_names=valid, failure=parse.failure.value, detail=parse.detail, wall_time=time.perf_counter() - t0)
    canonical = _canonical(task.instruction)
    base = default_error(canonical, cfg.eval)  # outside the guard: a broken eval config must fail loudly
    try:
        res = evaluate(parse.params, canonical, cfg.eval)
    except Exception as exc:  # noqa: BLE001 - a set that breaks the simulator or solver scores the worst case
        control = -cfg.clip
        return RewardBreakdown(
            kind="mpc", total=control + fmt + parseable + valid, control=control, format=fmt, parseable=parseable,
            valid_names=valid, detail=f"rollout raised {type(exc).__name__}: {exc}", rollout=True, crashed=True,
            default_error=float(base), wall_time=time.perf_counter() - t0)
    control = control_reward(res.error, res.default_error, res.crashed or res.stalled, cfg.clip)
    return RewardBreakdown(
        kind="mpc", total=control + fmt + parseable + valid, control=control, format=fmt, parseable=parseable,
        valid_names=valid, detail=parse.detail, rollout=True, crashed=res.crashed, stalled=res.stalled,
        error=float(res.error), default_error=float(res.default_error), sim_time=float(res.sim_time),
        wall_time=time.perf_counter() - t0)


def score_batch(items: Sequence[tuple[RewardTask, str]], cfg: RewardConfig) -> list[RewardBreakdown]:
    """:func:`score_completion` over a list (the unit of work a pool worker receives)."""
    return [score_completion(task, text, cfg) for task, text in items]


def _torch_loaded() -> bool:
    """Whether this process has imported torch (workers should not have)."""
    return "torch" in sys.modules


def _warm_up(_: int) -> int:
    return os.getpid()


def _strided(n_items: int, n_chunks: int) -> list[list[int]]:
    """Indices ``0..n_items-1`` dealt into at most ``n_chunks`` non-empty chunks, round robin:
    a step's items come grouped by prompt (all rollouts of one prompt, then all cheap decision
    answers), so dealing them out spreads the expensive ones evenly over the workers."""
    n = max(1, min(n_chunks, n_items))
    return [list(range(i, n_items, n)) for i in range(n)]


def _gather(chunks: list[list[int]], results: list[list[RewardBreakdown]], n_items: int) -> list[RewardBreakdown]:
    out: list[RewardBreakdown | None] = [None] * n_items
    for idx, res in zip(chunks, results):
        for i, r in zip(idx, res):
            out[i] = r
    return out  # type: ignore[return-value]


def _check_items(items: Sequence[tuple[RewardTask, str]]) -> list[tuple[RewardTask, str]]:
    items = list(items)
    for i, pair in enumerate(items):
        if not (isinstance(pair, tuple) and len(pair) == 2 and isinstance(pair[0], RewardTask)):
            raise ValueError(f"score: item {i} must be a (RewardTask, completion str) pair, got {type(pair).__name__}")
    return items


# ---------------------------------------------------------------------------------------------
# Pools
# ---------------------------------------------------------------------------------------------
class RewardPool:
    """Common interface: ``score(items) -> list[RewardBreakdown]`` in input order; ``close()``."""

    cfg: RewardConfig

    def score(self, items: Sequence[tuple[RewardTask, str]]) -> list[RewardBreakdown]:  # pragma: no cover
        raise NotImplementedError

    def close(self) -> None:  # pragma: no cover - nothing to release by default
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


@contextlib.contextmanager
def _main_hidden() -> Iterator[None]:
    """Hide ``__main__``'s file and spec while workers start, so ``spawn``/``forkserver`` children
    do not re-import the parent's script (which imports torch); the workers only run functions of
    this module, so they never need ``__main__``."""
    main = sys.modules.get("__main__")
    saved = {k: main.__dict__[k] for k in ("__file__", "__spec__") if main is not None and k in main.__dict__}
    try:
        if main is not None:
            if "__file__" in saved:
                del main.__file__
            main.__spec__ = None
        yield
    finally:
        if main is not None:
            if "__spec__" in saved:
                main.__spec__ = saved["__spec__"]
            else:
                main.__dict__.pop("__spec__", None)
            if "__file__" in saved:
                main.__file__ = saved["__file__"]


class LocalRewardPool(RewardPool):
    """Rewards on this machine: ``workers`` processes (``spawn`` or ``forkserver``), or in-process
    with ``workers=0``. The list is dealt into ``chunks_per_worker * workers`` chunks (round robin)."""

    def __init__(self, workers: int = 2, cfg: RewardConfig | None = None, context: str = "spawn",
                 chunks_per_worker: int = 2) -> None:
        if isinstance(workers, bool) or not isinstance(workers, int) or workers < 0:
            raise ValueError(f"LocalRewardPool.workers must be an int >= 0, got {workers!r}")
        if context not in ("spawn", "forkserver"):
            raise ValueError(f"LocalRewardPool.context must be 'spawn' or 'forkserver' (never fork: torch is "
                             f"loaded in the trainer), got {context!r}")
        if chunks_per_worker < 1:
            raise ValueError(f"LocalRewardPool.chunks_per_worker must be >= 1, got {chunks_per_worker!r}")
        self.cfg = cfg or RewardConfig()
        self.workers = workers
        self.chunks_per_worker = chunks_per_worker
        self._executor: ProcessPoolExecutor | None = None
        if workers:
            self._executor = ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context(context))
            with _main_hidden():  # workers start on submit: start them all now, with __main__ hidden
                futures = [self._executor.submit(_warm_up, i) for i in range(workers)]
                for f in futures:
                    f.result()

    def score(self, items: Sequence[tuple[RewardTask, str]]) -> list[RewardBreakdown]:
        items = _check_items(items)
        if not items:
            return []
        if self._executor is None:
            return score_batch(items, self.cfg)
        chunks = _strided(len(items), self.workers * self.chunks_per_worker)
        futures = [self._executor.submit(score_batch, [items[i] for i in idx], self.cfg) for idx in chunks]
        return _gather(chunks, [f.result() for f in futures], len(items))

    def workers_have_torch(self) -> list[bool]:
        """Whether each worker process has imported torch (diagnostic; should be all False)."""
        if self._executor is None:
            return [_torch_loaded()]
        return [f.result() for f in [self._executor.submit(_torch_loaded) for _ in range(self.workers)]]

    def close(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=True, cancel_futures=True)
            self._executor = None


class RayRewardPool(RewardPool):
    """Rewards on a Ray cluster: ``address="auto"`` (running cluster), ``"ray://host:port"`` or
    ``"host:port"``, or ``"local"`` (a private local Ray with ``num_cpus`` CPUs, default 2).

    Each call deals the list into ``chunks`` chunks (round robin; default: twice the cluster's CPUs)
    and runs :func:`score_batch` on each as a remote task. Ray is shut down on ``close()`` only if
    this pool started it."""

    def __init__(self, address: str = "auto", cfg: RewardConfig | None = None, num_cpus: int | None = None,
                 chunks: int | None = None, runtime_env: dict | None = None) -> None:
        if not isinstance(address, str) or not address:
            raise ValueError(f"RayRewardPool.address must be 'auto', 'local' or a cluster address, got {address!r}")
        if chunks is not None and chunks < 1:
            raise ValueError(f"RayRewardPool.chunks must be >= 1, got {chunks!r}")
        try:
            import ray
        except ImportError as exc:  # pragma: no cover - depends on the environment
            raise ImportError("RayRewardPool needs Ray: pip install 'ray>=2.9' (or the 'train' extra)") from exc
        self._ray = ray
        self.cfg = cfg or RewardConfig()
        self.address = address
        self._owns = False
        if not ray.is_initialized():
            kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": True}
            if runtime_env is not None:
                kwargs["runtime_env"] = runtime_env
            if address == "local":
                ray.init(num_cpus=num_cpus or 2, **kwargs)
            else:
                ray.init(address=address, **kwargs)
            self._owns = True
        cpus = int(ray.cluster_resources().get("CPU", 1)) or 1
        self.chunks = chunks or 2 * cpus
        self._remote = ray.remote(num_cpus=1)(score_batch)
        self._cfg_ref = ray.put(self.cfg)

    def score(self, items: Sequence[tuple[RewardTask, str]]) -> list[RewardBreakdown]:
        items = _check_items(items)
        if not items:
            return []
        chunks = _strided(len(items), self.chunks)
        refs = [self._remote.remote([items[i] for i in idx], self._cfg_ref) for idx in chunks]
        return _gather(chunks, self._ray.get(refs), len(items))

    def close(self) -> None:
        if self._owns and self._ray.is_initialized():
            self._ray.shutdown()
        self._owns = False


def make_reward_pool(ray: str | None = None, workers: int = 2, cfg: RewardConfig | None = None) -> RewardPool:
    """A :class:`RayRewardPool` at address ``ray`` when given, else a :class:`LocalRewardPool`."""
    if ray:
        return RayRewardPool(address=ray, cfg=cfg)
    return LocalRewardPool(workers=workers, cfg=cfg)
