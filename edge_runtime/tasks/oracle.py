"""The oracle: a closed-loop search for the best parameter set of one instruction.

It supplies the SFT targets and the upper bound of control adaptability. CMA-ES (the ``cma``
package) searches the parameter box mapped onto [0, 1]^11, starting from the default parameters;
a seeded random search is the simple alternative. Candidates of one generation are evaluated in
parallel worker processes; with the same seed the result does not depend on the number of
workers (each evaluation is deterministic and the search only sees the ordered results).

``cma`` is not part of the vehicle install (the oracle runs offline, to build training targets
and oracle tables): it comes with the ``oracle`` extra (also in ``train`` and ``dev``). It is
imported only when a CMA-ES search runs; without it, an ``OracleConfig(method="cma")`` fails at
once with :class:`OracleUnavailable`, one line that says how to install it.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import math
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from ..control.params import DEFAULT_PARAMS, PARAM_SPECS, MPCParams
from .closed_loop import EvalConfig, EvalResult, evaluate, objective
from .instructions import Instruction

METHODS = ("cma", "random")
CMA_INSTALL_HINT = 'pip install -e ".[oracle]"'


class OracleUnavailable(RuntimeError):
    """The search method needs a package that this install lacks (the ``oracle`` extra)."""


def _require_cma() -> None:
    if importlib.util.find_spec("cma") is None:
        raise OracleUnavailable(f"the CMA-ES oracle needs the cma package, which the vehicle install leaves out: "
                                f"{CMA_INSTALL_HINT} (or use method 'random')")


@dataclass(frozen=True)
class OracleConfig:
    method: str = "cma"
    budget: int = 96  # closed-loop evaluations in total
    popsize: int = 12
    sigma0: float = 0.25  # CMA-ES initial step in the unit box
    seed: int = 0
    workers: int = 2
    simplify_tolerance: float = 0.02  # relative error a reset-to-default may cost; < 0 disables
    # The search counts a run as stalled below stall_margin x the evaluation's progress threshold.
    # Why: a fixed-window metric can be gamed by crawling -- on `oval` the racing-line optimum with
    # margin 1 was a_max = 0.1 (the car covers only the first straight, where the racing line is the
    # centre line), a label that stalls on any other track. The result is still scored with the
    # evaluation's own threshold.
    stall_margin: float = 1.0

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"OracleConfig.method must be one of {METHODS}, got {self.method!r}")
        if self.method == "cma":
            _require_cma()
        if self.budget < 2 or self.popsize < 2:
            raise ValueError("OracleConfig: budget and popsize must be >= 2")
        if not 0 < self.sigma0 <= 1:
            raise ValueError("OracleConfig.sigma0 must be in (0, 1]")
        if self.workers < 1:
            raise ValueError("OracleConfig.workers must be >= 1")
        if self.simplify_tolerance > 0.5:
            raise ValueError("OracleConfig.simplify_tolerance must be <= 0.5 (a fraction of the error)")
        if not 1.0 <= self.stall_margin <= 5.0:
            raise ValueError("OracleConfig.stall_margin must be in [1, 5]")


@dataclass(frozen=True)
class OracleResult:
    instruction: Instruction
    best: EvalResult
    evaluations: int
    history: tuple[float, ...] = field(default=())  # best objective after each generation

    def to_dict(self) -> dict:
        return {"best": self.best.to_dict(), "evaluations": self.evaluations, "history": list(self.history)}


def _score(args: tuple[list[float], Instruction, EvalConfig]) -> float:
    u, instruction, config = args
    return objective(MPCParams.from_unit_vector(u), instruction, config)


class _Evaluator:
    """Maps a batch of unit vectors to objectives, serially or in a process pool."""

    def __init__(self, workers: int) -> None:
        self.pool = ProcessPoolExecutor(max_workers=workers) if workers > 1 else None

    def __call__(self, batch: list[list[float]], instruction: Instruction, config: EvalConfig) -> list[float]:
        jobs = [(list(map(float, u)), instruction, config) for u in batch]
        if self.pool is None:
            return [_score(j) for j in jobs]
        return list(self.pool.map(_score, jobs))

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown()


def search(instruction: Instruction, eval_config: EvalConfig | None = None,
           config: OracleConfig | None = None) -> OracleResult:
    """Best parameter set found for ``instruction`` within the evaluation budget."""
    final_config = eval_config or EvalConfig()
    cfg = config or OracleConfig()
    eval_config = dataclasses.replace(final_config, min_progress_speed=final_config.min_progress_speed * cfg.stall_margin)
    evaluator = _Evaluator(cfg.workers)
    x0 = DEFAULT_PARAMS.to_unit_vector()
    best_u, best_f = list(x0), math.inf
    history: list[float] = []
    used = 0
    try:
        if cfg.method == "cma":
            import cma

            es = cma.CMAEvolutionStrategy(x0, cfg.sigma0, {
                "bounds": [0.0, 1.0], "popsize": cfg.popsize, "seed": cfg.seed + 1, "verbose": -9,
                "maxfevals": cfg.budget})
            first = True
            while used < cfg.budget and not es.stop():
                batch = es.ask()
                if first:  # always score the default itself: the oracle never does worse than it
                    batch[0] = np.asarray(x0)
                    first = False
                scores = evaluator(batch, instruction, eval_config)
                used += len(batch)
                es.tell(batch, scores)
                i = int(np.argmin(scores))
                if scores[i] < best_f:
                    best_u, best_f = list(batch[i]), scores[i]
                history.append(best_f)
        else:
            rng = np.random.default_rng(cfg.seed)
            batches = [[list(x0)]]
            while sum(map(len, batches)) < cfg.budget:
                n = min(cfg.popsize, cfg.budget - sum(map(len, batches)))
                batches.append([list(u) for u in rng.uniform(0.0, 1.0, size=(n, len(PARAM_SPECS)))])
            for batch in batches:
                scores = evaluator(batch, instruction, eval_config)
                used += len(batch)
                i = int(np.argmin(scores))
                if scores[i] < best_f:
                    best_u, best_f = batch[i], scores[i]
                history.append(best_f)
    finally:
        evaluator.close()
    best_params = MPCParams.from_unit_vector(best_u)
    if cfg.simplify_tolerance >= 0:
        best_params, extra = simplify(best_params, best_f, instruction, eval_config, cfg.simplify_tolerance)
        used += extra
    return OracleResult(instruction=instruction, best=evaluate(best_params, instruction, final_config),
                        evaluations=used, history=tuple(history))


def simplify(params: MPCParams, score: float, instruction: Instruction, eval_config: EvalConfig,
             tolerance: float) -> tuple[MPCParams, int]:
    """Reset every parameter the instruction does not need back to its default.

    The search leaves parameters that hardly matter at random values; as SFT targets those are
    pure noise for the model to memorise. Each parameter in turn is reset to its default and the
    reset kept when the objective stays within ``tolerance`` (relative) of the searched optimum,
    so the answer is the smallest change from the defaults that does (nearly) as well.
    Returns the simplified set and the number of evaluations it took."""
    limit = score * (1.0 + tolerance) + 1e-9
    values = params.to_dict()
    evaluations = 0
    for spec in PARAM_SPECS:
        if values[spec.name] == spec.default:
            continue
        trial = dict(values, **{spec.name: spec.default})
        if trial["v_min"] > trial["v_max"]:
            continue
        evaluations += 1
        if objective(MPCParams(**trial), instruction, eval_config) <= limit:
            values = trial
    return MPCParams(**values), evaluations
