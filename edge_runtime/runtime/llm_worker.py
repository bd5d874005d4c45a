"""The LLM worker: answers instructions with MPC parameter sets on its own thread.

The control thread must never wait for a language model, so the generator lives on a worker
thread. The control loop :meth:`~LLMWorker.submit`\\ s a request (window index, instruction,
sim time); the worker builds the MPC prompt (:func:`~edge_runtime.tasks.prompts.build_mpc_prompt`,
without a context line, exactly as in SFT training), generates greedily with the file's MPC token
budget (``generation.max_new_tokens.mpc`` of the ONNX metadata), parses the answer
(:func:`~edge_runtime.tasks.answers.parse_mpc_answer`) and hands an :class:`LLMOutcome` to
``deliver`` (the loop's thread-safe inbox). The loop applies a parsed set at its next control
step and writes the outcome's telemetry record (``type: "llm"``) with the sim time at which it
applied; a failed parse keeps the last good parameters and is counted by reason.

Queueing: one slot. A request submitted while another is still queued (not yet started)
supersedes it; the superseded request is delivered as an outcome with status ``superseded``
(no generation ran). A generation in progress is not interrupted (ONNX Runtime runs cannot be
cancelled); its answer arrives later and the loop discards it as ``stale`` when a newer
instruction has been issued meanwhile.

Robustness: any exception while building the prompt, generating or parsing is caught and
delivered as a failure with reason ``worker_error`` (type and message in ``detail``); the
worker thread keeps serving. :meth:`stop` ends the thread after the generation in progress (if
any) and says whether it ended within the timeout.

Fit: with a shared-KV-cache file (fixed capacity), :meth:`LLMWorker.check_prompts_fit` refuses up
front -- before the run, as one :class:`PromptDoesNotFit` line -- a token budget that no MPC prompt
leaves room for and every instruction whose prompt plus the budget exceeds the capacity, so that
such a run never starts rather than logging each call as a ``worker_error``.

Prompt-prefix cache: :meth:`LLMWorker.warm_up` first registers the MPC prompt's
instruction-independent beginning (role, parameter table, ``Instruction:``) with the generator's
prefix cache (:meth:`~edge_runtime.decoding.generator.OnnxGenerator.cache_common_prefix`), once per
model load; every request then prefills only its instruction and the answer format. The prefix is
found in token ids -- the common leading ids of the prompts of a few probe instructions -- so a
BPE merge across the instruction's first characters cannot make it wrong. Generators without a
prefix cache (test doubles) are left alone.

Torch-free (vehicle side). ``generator`` is anything with ``generate(prompt, max_new_tokens)``
returning a :class:`~edge_runtime.decoding.step_api.GenerationResult` (tests pass doubles). With a
constrained generator (``OnnxGenerator(constrained=True)``, ``edge-run --constrained``) every
answer parses; the records then also count the ``forced_tokens`` the grammar appended without a
forward pass (``emitted_tokens`` includes them; ``decode_times`` are per model-chosen token).
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..control.params import MPCParams
from ..tasks.answers import parse_mpc_answer
from ..tasks.instructions import Instruction
from ..tasks.prompts import build_mpc_prompt
from ..telemetry.stats import latency_summary

__all__ = ["WORKER_ERROR", "LLMOutcome", "LLMRequest", "LLMWorker", "PromptDoesNotFit", "mpc_token_budget", "register_mpc_prefix"]

#: Failure reason of an exception inside the worker (parse failures use ParseFailure values).
WORKER_ERROR = "worker_error"
#: Instructions whose MPC prompts share exactly the instruction-independent beginning (different first words).
PREFIX_PROBES = ("Drive on the centre line.", "Stop at the next corner.", "Keep a safe distance.")
TEXT_LIMIT = 600  # characters of the answer text kept in the telemetry record


def register_mpc_prefix(generator: Any) -> int:
    """Register the MPC prompt's instruction-independent token prefix with ``generator``'s prefix
    cache (``cache_common_prefix`` over the prompts of :data:`PREFIX_PROBES`); its length in tokens
    (0: the generator has no prefix cache, or the probes share no tokens). What the worker does at
    warm-up, and what a benchmark of the vehicle's instruction latency must do too."""
    cache = getattr(generator, "cache_common_prefix", None)
    if cache is None:
        return 0
    entry = cache([build_mpc_prompt(text) for text in PREFIX_PROBES])
    return len(getattr(entry, "ids", ()))


def mpc_token_budget(generation: dict[str, Any], where: str = "model") -> int:
    """``max_new_tokens.mpc`` of a file's generation metadata; ValueError naming what is missing."""
    budget = generation.get("max_new_tokens") if isinstance(generation, dict) else None
    value = budget.get("mpc") if isinstance(budget, dict) else None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{where}: metadata field 'edge_runtime.generation' lacks a positive "
                         f"max_new_tokens.mpc (got {budget!r}); re-export the model with edge-export")
    return value


class PromptDoesNotFit(ValueError):
    """The token budget, or an instruction's prompt with it, cannot fit the model's KV cache (one line)."""


@dataclass(frozen=True)
class LLMRequest:
    call: int  # sequence number of the request (0, 1, ...)
    window: int  # instruction window it belongs to
    instruction: Instruction
    requested_sim_time: float
    requested_wall_time: float


@dataclass
class LLMOutcome:
    """What one request produced; ``params`` is set only for a parsed answer."""

    request: LLMRequest
    status: str  # "answered" | "parse_failure" | "worker_error" | "superseded" (the loop adds applied/stale/...)
    params: MPCParams | None = None
    failure: str | None = None  # ParseFailure value or WORKER_ERROR
    detail: str = ""
    text: str = ""
    prompt_tokens: int = 0
    emitted_tokens: int = 0
    forced_tokens: int = 0  # of emitted_tokens, appended by constrained decoding without a forward pass
    stopped_at_eos: bool = False
    time_to_first_token: float | None = None
    decode_times: tuple[float, ...] = field(default=(), repr=False)
    total_time: float | None = None
    answered_sim_time: float | None = None
    answered_wall_time: float | None = None

    @property
    def generated(self) -> bool:
        return self.status != "superseded"

    def record(self, status: str, applied_sim_time: float | None, applied_step: int | None,
               params_in_use: MPCParams | None) -> dict[str, Any]:
        """The telemetry line of this call (written by the control loop once it acted on it)."""
        r, ins = self.request, self.request.instruction
        rec: dict[str, Any] = {
            "type": "llm" if self.generated else "llm_superseded", "call": r.call, "window": r.window,
            "status": status, "instruction": ins.text, "category": ins.category.value,
            "target_speed": ins.target_speed, "requested_sim_time": r.requested_sim_time,
            "answered_sim_time": self.answered_sim_time, "applied_sim_time": applied_sim_time,
            "applied_step": applied_step, "wall_time": self.answered_wall_time or r.requested_wall_time,
        }
        if self.generated:
            dec = self.decode_times
            rec.update({
                "prompt_tokens": self.prompt_tokens, "emitted_tokens": self.emitted_tokens,
                "forced_tokens": self.forced_tokens,
                "stopped_at_eos": self.stopped_at_eos, "time_to_first_token": self.time_to_first_token,
                "decode_time_mean": float(np.mean(dec)) if dec else None,
                "decode_time_p50": float(np.median(dec)) if dec else None,
                "decode_times": list(dec), "total_time": self.total_time,
                "parse_failure": self.failure, "detail": self.detail, "text": self.text[:TEXT_LIMIT],
                "params": self.params.to_dict() if self.params is not None else None,
                "params_in_use": params_in_use.to_dict() if params_in_use is not None else None,
            })
        return rec


class LLMWorker:
    """One generator, one thread, one request slot (see the module docstring)."""

    def __init__(self, generator: Any, deliver: Callable[[LLMOutcome], None] | None = None, *,
                 max_new_tokens: int | None = None, clock: Callable[[], float] | None = None,
                 name: str = "llm-worker") -> None:
        self.generator = generator
        self._deliver = deliver or (lambda outcome: None)
        if max_new_tokens is None:
            max_new_tokens = mpc_token_budget(getattr(generator, "generation", {}),
                                              str(getattr(generator, "path", "model")))
        self.max_new_tokens = int(max_new_tokens)
        self._clock = clock or (lambda: float("nan"))
        self._cond = threading.Condition()
        self._slot: LLMRequest | None = None
        self._busy = False
        self._stopping = False
        self._calls = 0
        self._thread = threading.Thread(target=self._serve, name=name, daemon=True)
        # Statistics, one writing thread each (so no lock): ``superseded`` by the thread that calls
        # submit() / stop() (the control loop), all the others by the worker thread. Read after stop().
        self.generations = 0
        self.superseded = 0
        self.delivery_errors: list[str] = []  # outcomes the inbox refused (should stay empty)
        self.failures: Counter[str] = Counter()
        self.ttft: list[float] = []
        self.decode_times: list[float] = []
        self.totals: list[float] = []
        self.prompt_tokens: list[int] = []
        self.emitted_tokens: list[int] = []
        self.forced_tokens: list[int] = []
        self.prefix_tokens = 0  # length of the registered prompt prefix (warm_up)

    # -------------------------------------------------------------------- control-thread API
    def bind(self, deliver: Callable[[LLMOutcome], None], clock: Callable[[], float] | None = None) -> None:
        """Where outcomes go (and the sim clock they are stamped with); call before :meth:`start`."""
        self._deliver = deliver
        if clock is not None:
            self._clock = clock

    def start(self) -> LLMWorker:
        self._thread.start()
        return self

    def check_prompts_fit(self, instructions: Iterable[tuple[str, Instruction]]) -> None:
        """PromptDoesNotFit (naming the file, or the instruction's ``where``) when the generator's KV
        cache capacity cannot hold the MPC token budget after even the shortest prompt, or an
        instruction's prompt plus the budget; no-op for generators without a capacity (concat
        layout, test doubles). Call before the run: ``instructions`` are (where, instruction) pairs."""
        capacity = getattr(self.generator, "kv_capacity", None)
        if capacity is None:
            return
        model, budget = getattr(self.generator, "path", "model"), self.max_new_tokens
        shortest = len(self.generator.encode(build_mpc_prompt("x")))
        if shortest + budget - 1 > capacity:
            raise PromptDoesNotFit(
                f"{model}: metadata field 'edge_runtime.generation' asks for max_new_tokens.mpc {budget}, which can "
                f"never fit the KV cache capacity {capacity}: the MPC prompt alone takes {shortest} tokens, so a "
                f"prompt plus {budget} new tokens needs at least {shortest + budget - 1} positions; re-export with "
                f"a larger --kv-capacity (edge-export)")
        for where, instruction in instructions:
            n = len(self.generator.encode(self._prompt(instruction)))
            if n + budget - 1 > capacity:
                raise PromptDoesNotFit(
                    f"{where}: the prompt of this instruction takes {n} tokens; with max_new_tokens.mpc {budget} "
                    f"it needs {n + budget - 1} positions, more than the KV cache capacity {capacity} of {model}; "
                    f"shorten the instruction by {n + budget - 1 - capacity} tokens or more")

    @staticmethod
    def _prompt(instruction: Instruction) -> str:
        return build_mpc_prompt(instruction.text)

    def cache_prompt_prefix(self) -> int:
        """Register the MPC prompt's instruction-independent token prefix with the generator's prefix
        cache (module docstring); returns its length in tokens (0: the generator has no prefix cache or
        the probes share no tokens). Called by :meth:`warm_up`; call before :meth:`start`."""
        return register_mpc_prefix(self.generator)

    def warm_up(self, tokens: int = 2) -> float:
        """Register the prompt prefix (:meth:`cache_prompt_prefix`), then one short generation before
        the run (first-run allocations); returns the seconds of both. Call before :meth:`start`; not
        counted in the statistics."""
        t0 = time.perf_counter()
        self.prefix_tokens = self.cache_prompt_prefix()
        self.generator.generate(build_mpc_prompt("Drive on the centre line."), tokens)
        return time.perf_counter() - t0

    def submit(self, window: int, instruction: Instruction, sim_time: float) -> LLMRequest:
        """Queue a request (never blocks); a queued, not yet started request is superseded."""
        with self._cond:
            request = LLMRequest(self._calls, window, instruction, float(sim_time), time.time())
            self._calls += 1
            dropped, self._slot = self._slot, request
            self._cond.notify_all()
        if dropped is not None:
            self.superseded += 1
            self._deliver(LLMOutcome(dropped, "superseded", detail=f"superseded by call {request.call}"))
        return request

    @property
    def idle(self) -> bool:
        with self._cond:
            return self._slot is None and not self._busy

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def stop(self, timeout: float = 10.0) -> bool:
        """Drop a queued request, let a running generation finish, end the thread. True when the
        thread ended within ``timeout`` seconds (or never started)."""
        with self._cond:
            self._stopping = True
            dropped, self._slot = self._slot, None
            self._cond.notify_all()
        if dropped is not None:
            self.superseded += 1
            self._deliver(LLMOutcome(dropped, "superseded", detail="the run ended before it started"))
        if self._thread.ident is None:
            return True
        self._thread.join(timeout)
        return not self._thread.is_alive()

    # --------------------------------------------------------------------------- the thread
    def _serve(self) -> None:
        while True:
            with self._cond:
                while self._slot is None and not self._stopping:
                    self._cond.wait()
                if self._stopping:
                    return
                request, self._slot = self._slot, None
                self._busy = True
            try:
                outcome = self._answer(request)
            except BaseException as exc:  # noqa: BLE001 -- nothing may escape into the thread's death
                outcome = self._error(request, exc)
            try:
                self._deliver(outcome)
            except Exception as exc:  # noqa: BLE001 -- a failing inbox must not kill the worker either
                self.delivery_errors.append(f"call {request.call}: {type(exc).__name__}: {exc}"[:300])
            finally:
                with self._cond:
                    self._busy = False
                    self._cond.notify_all()

    def _error(self, request: LLMRequest, exc: BaseException) -> LLMOutcome:
        self.failures[WORKER_ERROR] += 1
        message = " ".join(f"{type(exc).__name__}: {exc}".split())[:300]
        return LLMOutcome(request, WORKER_ERROR, failure=WORKER_ERROR, detail=message,
                          answered_sim_time=self._clock(), answered_wall_time=time.time())

    def _answer(self, request: LLMRequest) -> LLMOutcome:
        prompt = self._prompt(request.instruction)
        result = self.generator.generate(prompt, self.max_new_tokens)
        parsed = parse_mpc_answer(result.text)
        self.generations += 1
        self.ttft.append(float(result.time_to_first_token_s))
        self.decode_times.extend(float(t) for t in result.decode_times_s)
        self.totals.append(float(result.total_s))
        self.prompt_tokens.append(int(result.prompt_tokens))
        self.emitted_tokens.append(int(result.emitted_tokens))
        forced = int(getattr(result, "forced_tokens", 0))
        self.forced_tokens.append(forced)
        if parsed.ok:
            status, failure = "answered", None
        else:
            status, failure = "parse_failure", parsed.failure.value
            self.failures[failure] += 1
        return LLMOutcome(request, status, params=parsed.params, failure=failure, detail=parsed.detail,
                          text=result.text, prompt_tokens=int(result.prompt_tokens),
                          emitted_tokens=int(result.emitted_tokens), forced_tokens=forced,
                          stopped_at_eos=bool(result.stopped_at_eos),
                          time_to_first_token=float(result.time_to_first_token_s),
                          decode_times=tuple(float(t) for t in result.decode_times_s),
                          total_time=float(result.total_s), answered_sim_time=self._clock(),
                          answered_wall_time=time.time())

    # ------------------------------------------------------------------------------ summary
    def _prefix_stats(self) -> dict[str, int]:
        """The generator's prefix-cache counters (full / partial / miss reuses, reused tokens), if it has them."""
        stats = getattr(self.generator, "prefix_stats", None)
        return {str(k): int(v) for k, v in stats.items()} if isinstance(stats, dict) else {}

    def summary(self) -> dict[str, Any]:
        """Calls, failures by reason and latency statistics (p50/p90/p99/max, no warm-up
        excluded here: :meth:`warm_up` ran before the run)."""
        return {
            "requests": self._calls, "generations": self.generations, "superseded": self.superseded,
            "delivery_errors": list(self.delivery_errors),
            "failures": dict(sorted(self.failures.items())), "failure_count": sum(self.failures.values()),
            "max_new_tokens": self.max_new_tokens,
            "prefix_cache": {"prefix_tokens": self.prefix_tokens, **self._prefix_stats()},
            "prompt_tokens_mean": float(np.mean(self.prompt_tokens)) if self.prompt_tokens else None,
            "emitted_tokens": int(sum(self.emitted_tokens)),
            "forced_tokens": int(sum(self.forced_tokens)),
            "time_to_first_token": latency_summary(self.ttft),
            "decode_per_token": latency_summary(self.decode_times),
            "total": latency_summary(self.totals),
        }
