"""``edge-run --selftest``: the health check a vehicle runs before it switches to a new install.

The deploy agent (``edge_runtime.deploy.vehicle``) installs a bundle into the inactive slot and runs
this check with that slot's own interpreter before the ``current`` link moves. It asks the three
things a working controller must do, in the order a drive needs them:

1. **load** the model (ONNX Runtime session, metadata, tokenizer) and warm it up;
2. **answer** a fixed instruction with a parameter set that parses, within the latency budget
   written in the bundle (wall time from the request to the parsed answer, on the worker thread);
3. **drive** ``loop_seconds`` (2 s) of the real-time control loop on the embedded track simulator
   with the same instruction issued to the LLM worker at t = 0, with **zero overruns**: a control
   step that misses its period on the target is a failed install, not a degraded one.

The result is one JSON line on stdout (``"selftest": "pass"`` or ``"fail"`` plus ``reasons``,
timings and versions) and the exit status 0 (pass) or 1 (fail); bad input (a missing model file, a
non-positive budget) is the usual one line on stderr with exit 2. Nothing is written to disk.
"""

from __future__ import annotations

import json
import platform
import queue
import sys
import time
from dataclasses import dataclass
from typing import Any

from ..control.mpc import FrenetMPC, MPCConfig
from ..control.params import DEFAULT_PARAMS
from ..sim import make_simulator
from ..sim.tracks import TRAIN_TRACK
from .control_loop import ControlLoop, LoopConfig
from .scenario import DEFAULT_INSTRUCTION, single_instruction

SELFTEST_LOOP_SECONDS = 2.0
DEFAULT_LATENCY_BUDGET_S = 5.0  # an answer of the shipped SmolLM2 file takes ~0.5 s on a 2-core x86 CPU


@dataclass(frozen=True)
class SelftestConfig:
    model: str
    instruction: str = DEFAULT_INSTRUCTION
    latency_budget_s: float = DEFAULT_LATENCY_BUDGET_S
    loop_seconds: float = SELFTEST_LOOP_SECONDS
    rate_hz: float = 20.0
    horizon: int = 20
    threads: int | None = None
    provider: str = "cpu"
    constrained: bool = True  # what edge-run drives with by default, as the model cards score it

    def __post_init__(self) -> None:
        if not (self.latency_budget_s > 0 and self.latency_budget_s < float("inf")):
            raise ValueError(f"--selftest-budget must be a positive number of seconds, got {self.latency_budget_s}")
        if not (self.loop_seconds > 0 and self.loop_seconds < float("inf")):
            raise ValueError(f"selftest loop_seconds must be positive, got {self.loop_seconds}")
        if not self.instruction.strip():
            raise ValueError("--instruction for --selftest must not be empty")


def _versions() -> dict[str, str]:
    from importlib import metadata

    out = {"python": platform.python_version(), "machine": platform.machine()}
    for dist in ("edge_runtime", "onnxruntime", "numpy", "osqp"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = "not installed"
    return out


def run_selftest(config: SelftestConfig) -> dict[str, Any]:
    """The three checks of the module docstring; returns the result record (never raises for a
    model that fails to load or answer: that is a failed check, named in ``reasons``)."""
    from ..decoding.generator import OnnxGenerator  # onnxruntime only when checking
    from .llm_worker import LLMWorker, mpc_token_budget

    result: dict[str, Any] = {"selftest": "fail", "reasons": [], "model": config.model,
                              "instruction": config.instruction, "versions": _versions()}
    reasons: list[str] = result["reasons"]
    t0 = time.perf_counter()
    try:
        generator = OnnxGenerator(config.model, providers=config.provider, threads=config.threads,
                                  constrained=config.constrained)
        worker = LLMWorker(generator, max_new_tokens=mpc_token_budget(generator.generation, config.model))
        worker.warm_up()
    except Exception as exc:  # noqa: BLE001 -- any load failure is a failed health check, said in one line
        reasons.append(f"model did not load: {' '.join(f'{type(exc).__name__}: {exc}'.split())[:300]}")
        return result
    result["load_s"] = time.perf_counter() - t0

    inbox: queue.Queue = queue.Queue()
    worker.bind(inbox.put, lambda: 0.0)
    worker.start()
    try:
        scenario = single_instruction(config.instruction)
        instruction = scenario.entries[0].instruction
        asked = time.perf_counter()
        worker.submit(0, instruction, 0.0)
        try:
            outcome = inbox.get(timeout=max(30.0, 10 * config.latency_budget_s))
            latency = time.perf_counter() - asked
        except queue.Empty:
            outcome, latency = None, None
        answer: dict[str, Any] = {"budget_s": config.latency_budget_s, "latency_s": latency}
        result["answer"] = answer
        if outcome is None:
            reasons.append("no answer to the instruction (the worker hung)")
        else:
            answer.update(status=outcome.status, text=outcome.text[:200], failure=outcome.failure,
                          params=outcome.params.to_dict() if outcome.params is not None else None)
            if outcome.params is None:
                reasons.append(f"the answer did not parse ({outcome.failure}: {outcome.detail[:120]})")
            if latency > config.latency_budget_s:
                reasons.append(f"answer took {latency:.3f} s, over the budget of {config.latency_budget_s:g} s")

        sim = make_simulator("track", track=TRAIN_TRACK)
        try:
            loop = ControlLoop(sim, FrenetMPC(sim.track, DEFAULT_PARAMS,
                                              MPCConfig(horizon=config.horizon, rate_hz=config.rate_hz)),
                               LoopConfig(rate_hz=config.rate_hz, duration=config.loop_seconds, realtime=True,
                                          warmup_steps=0))
            loop.attach_llm(worker, scenario, blocking=False)  # rebinds the running worker to the loop's inbox
            loop.run()
            loop.finish_llm()
            summary = loop.summary()
        finally:
            sim.close()
        result["loop"] = {"seconds": config.loop_seconds, "rate_hz": config.rate_hz, "steps": summary["steps"],
                          "overruns": summary["overruns"], "dropped_steps": summary["dropped_steps"],
                          "exec_time_max_s": summary["exec_time"].get("max"),
                          "mpc_failures": summary["mpc_failures"], "crashed": summary["crashed"],
                          "llm": dict(loop.llm_status)}
        if summary["overruns"]:
            reasons.append(f"{summary['overruns']} control-loop overruns in {config.loop_seconds:g} s at "
                           f"{config.rate_hz:g} Hz (0 allowed)")
        if summary["crashed"]:
            reasons.append("the car crashed during the control-loop check")
    finally:
        worker.stop(10.0)
    if not reasons:
        result["selftest"] = "pass"
    return result


def main_selftest(config: SelftestConfig) -> int:
    """Print the one JSON line; 0 pass, 1 fail."""
    result = run_selftest(config)
    sys.stdout.write(json.dumps(result, sort_keys=True, default=str) + "\n")
    sys.stdout.flush()
    return 0 if result["selftest"] == "pass" else 1
