"""``edge-run``: drive the car in a simulator with the MPC at a fixed rate and record telemetry.

    edge-run --sim track --track hairpin --params default --duration 30 --out runs/demo
    edge-run --model models/tiny/dense.onnx --sim track --script demo.txt --duration 40 --out runs/llm

Without ``--model`` the MPC drives with one fixed parameter set (``--params FILE`` or the
defaults). With ``--model X.onnx`` an exported LLM chooses the parameter sets: it answers each
instruction of ``--instruction TEXT`` (one instruction at t = 0), ``--script FILE`` (see
``edge_runtime.runtime.scenario`` for the format) or, with neither, "Drive on the centre line."
at t = 0. The LLM runs on a worker thread (``llm_worker``); its parameters apply at the next
control step after the answer arrives, and the control thread never waits for it -- except with
``--fast``, where the loop pauses at each instruction until its answer is in, so that a run is
deterministic (tests, CI; recorded as ``llm_blocking: true``).

GPU / Jetson telemetry (``edge_runtime.telemetry.gpu``): with ``tegrastats`` on PATH or NVML
(``pynvml``) available, a background thread writes ``type: "gpu"`` records (power, utilisation,
unified RAM / GPU memory) every ``--gpu-interval`` seconds into the same log, plus the Jetson
power mode (``nvpmodel -q``, ``jetson_clocks``); otherwise the summary says "no GPU sampler".
Grammar-constrained decoding is the default (every answer parses; see
``edge_runtime.decoding.constrained``) because the shipped models are scored with it: a model's
unconstrained output is not what its card measured (the pruned model's free answers fail to parse
for whole instruction categories). ``--no-constrained`` runs the model's own output.

Writes ``steps.jsonl`` (one JSON line per control step and per LLM call) and ``summary.json`` to
``--out`` and prints the summary table: control-step and MPC latency, LLM time to first token,
per-token decode and total latency, LLM failures by reason, and the closed-loop score of every
instruction window against the default parameters re-simulated from the same start state
(``edge_runtime.runtime.scenario``), plus the model's control adaptability over the windows
(an applied answer scores its window's improvement, a failed answer the worst case, -4).
``--out`` is checked and locked before the model loads (``output_dir``): a second run into the
same directory is refused at once, and so is an earlier run's files unless ``--overwrite``.
``--report`` then draws the run (``edge-report``, in a child process: the analysis side stays out
of the vehicle's imports). SIGINT, SIGTERM and SIGHUP stop the loop and the LLM worker cleanly,
the summary is written, and repeated signals cannot interrupt that (``signals``). A full or
failing disk never stops the loop (``edge_runtime.telemetry.writer``): records it refuses are
counted and the summary says so.

Exit status: 0 the run finished; 2 bad input or output path, one line on stderr, nothing ran;
3 telemetry lost (records dropped, or summary.json could not be written and the summary went to
stderr as one JSON line); 130 stopped by SIGINT / SIGTERM / SIGHUP, summary written (3 wins over
130).
"""

from __future__ import annotations

import argparse
import contextlib
import math
import sys
import time
from pathlib import Path
from typing import Any, NoReturn

from ..control.mpc import FrenetMPC, MPCConfig
from ..control.params import DEFAULT_PARAMS, MPCParams, ParameterError
from ..sim import (
    BUILTIN_TRACKS,
    SimulatorUnavailableError,
    available_simulators,
    make_simulator,
    registered_simulators,
    vehicle_params_of,
)
from ..sim.track import TrackFormatError
from ..sim.tracks import TRAIN_TRACK
from ..contracts.task_enums import Category
from ..contracts.user_input import clip, printable
from ..tasks.metrics import WORST_ADAPTABILITY, summarise_adaptability
from ..telemetry.writer import JsonlWriter, json_line, write_json_atomic
from .control_loop import ControlLoop, LoopConfig
from .llm_worker import PromptDoesNotFit
from .output_dir import OutputDirError, claim_output_dir
from .scenario import (
    DEFAULT_INSTRUCTION,
    Scenario,
    ScriptError,
    load_script,
    score_windows,
    single_instruction,
)
from .signals import EXIT_INTERRUPTED, Interrupted, StopSignals

EXIT_TELEMETRY_LOST = 3  # the run finished but records were dropped or summary.json could not be written
WORKER_STOP_TIMEOUT = 10.0  # s to let a running generation finish at the end of a run


class _Parser(argparse.ArgumentParser):
    """Usage errors as one line (``edge-run: error: ...``), exit 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


#: --provider values: ONNX Runtime execution providers by alias; auto = TensorRT > CUDA > CPU.
PROVIDER_CHOICES = ("cpu", "cuda", "tensorrt", "auto")

DESCRIPTION = ("Drive the car in a simulator with the MPC at a fixed rate and record telemetry; with "
               "--model, an exported LLM sets the MPC parameters from each instruction on a worker thread.")
EPILOG = ("Writes steps.jsonl (one JSON line per control step and per LLM call) and summary.json to --out. "
          "Exit status: 0 done; 2 bad input or output path (one line on stderr, nothing ran); 3 telemetry "
          "records lost or summary.json not writable (the loop kept driving); 130 stopped by SIGINT, SIGTERM or "
          "SIGHUP (both files written). Manual: docs/runtime.md.")


def build_parser() -> argparse.ArgumentParser:
    """Every flag says its default (argparse fills in %(default)s); fixed value sets are choices."""
    p = _Parser(prog="edge-run", description=DESCRIPTION, epilog=EPILOG)
    runnable = available_simulators()
    p.add_argument("--sim", default="track", metavar="{" + ",".join(runnable) + "}",
                   help=f"simulator backend that can run here: {', '.join(runnable)} (default: %(default)s)")
    p.add_argument("--track", default=TRAIN_TRACK,
                   help=f"built-in track ({', '.join(BUILTIN_TRACKS)}) or the path of a CSV track "
                        "(x_m, y_m, w_tr_right_m, w_tr_left_m per row) (default: %(default)s)")
    carla = p.add_argument_group("CARLA (--sim carla; docs/carla.md)")
    carla.add_argument("--carla-host", default="localhost", metavar="HOST",
                       help="CARLA server host (default: %(default)s)")
    carla.add_argument("--carla-port", type=int, default=2000, metavar="PORT",
                       help="CARLA server RPC port (default: %(default)s)")
    carla.add_argument("--carla-timeout", type=float, default=10.0, metavar="S",
                       help="client timeout for every CARLA call, connecting included; no server within it is "
                            "one error line, exit 2 (default: %(default)s)")
    carla.add_argument("--town", default=None, metavar="MAP",
                       help="CARLA map to load first, e.g. Town04 (default: keep the server's loaded map)")
    carla.add_argument("--carla-route", default=None, metavar="FILE",
                       help="closed route as CSV rows 'x, y[, lane_width]' in CARLA map coordinates (default: "
                            "follow the lane of the map's first spawn point until it closes)")
    carla.add_argument("--carla-vehicle", default="vehicle.lincoln.mkz_2020", metavar="BLUEPRINT",
                       help="ego vehicle blueprint; the MPC plans with its wheelbase and steering limit "
                            "(default: %(default)s)")
    source = p.add_mutually_exclusive_group()
    source.add_argument("--params", default=None, metavar="FILE",
                        help="drive without an LLM on one fixed MPC parameter set: a JSON file (missing names "
                             "take their defaults) or 'default' (default: the default parameters)")
    source.add_argument("--model", default=None, metavar="M.onnx",
                        help="exported ONNX decoder (edge-export): the LLM sets the parameters from each "
                             "instruction (default: none, no LLM)")
    script = p.add_mutually_exclusive_group()
    script.add_argument("--instruction", default=None, metavar="TEXT",
                        help=f"with --model: one instruction, issued at t = 0 (default: {DEFAULT_INSTRUCTION!r} "
                             "when neither --instruction nor --script is given)")
    script.add_argument("--script", default=None, metavar="FILE",
                        help="with --model: instruction script, one 'TIME_S, text' per line or a JSON list of "
                             "{\"t\": ..., \"instruction\": ...} (default: none)")
    p.add_argument("--duration", type=float, default=30.0, metavar="S",
                   help="simulated seconds to drive (default: %(default)s)")
    p.add_argument("--rate", type=float, default=20.0, metavar="HZ", help="control rate in Hz (default: %(default)s)")
    p.add_argument("--horizon", type=int, default=20, metavar="N", help="MPC horizon in steps (default: %(default)s)")
    p.add_argument("--out", default="runs/latest", metavar="DIR",
                   help="directory for steps.jsonl and summary.json, created if missing and locked for the run "
                        "(default: %(default)s)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace an earlier run's steps.jsonl and summary.json in --out (removed before the new run "
                        "writes anything) (default: off, such a directory is refused)")
    p.add_argument("--fast", action="store_true",
                   help="do not pace to the wall clock; with --model, wait for each answer so that the run is "
                        "deterministic (tests, CI) (default: off, real time)")
    p.add_argument("--threads", type=int, default=None, metavar="N",
                   help="ONNX Runtime intra-op threads for the LLM; on a vehicle leave a core to the control "
                        "loop (default: ONNX Runtime's choice, all cores)")
    p.add_argument("--provider", default="cpu", choices=PROVIDER_CHOICES,
                   help="ONNX Runtime execution provider for the LLM; auto picks TensorRT > CUDA > CPU, "
                        "whichever is installed (default: %(default)s)")
    p.add_argument("--gpu-interval", type=float, default=0.5, metavar="S",
                   help="GPU / Jetson telemetry every S seconds, from tegrastats or NVML when found; 0 turns it "
                        "off (default: %(default)s)")
    p.add_argument("--report", action="store_true",
                   help="after the run, draw it with edge-report into OUT/report (track map, time series, timing, "
                        "report.html); needs the report extra (matplotlib), and a failed report never changes "
                        "the run's exit status (default: off)")
    p.add_argument("--selftest", action="store_true",
                   help="health check instead of a run (edge_runtime.runtime.selftest): load --model, answer "
                        "--instruction within --selftest-budget, drive 2 s of the real-time control loop with 0 "
                        "overruns; prints one JSON line, exit 0 pass / 1 fail (default: off)")
    p.add_argument("--selftest-budget", type=float, default=None, metavar="S",
                   help="with --selftest: latency budget in seconds for the answer (default: 5.0)")
    p.add_argument("--constrained", action=argparse.BooleanOptionalAction, default=True,
                   help="with --model: grammar-constrained decoding, so every answer parses and tokens the "
                        "grammar fixes skip the forward pass, as the model cards score them; --no-constrained: "
                        "the model's own output (default: True)")
    return p


def _sim_options(args: argparse.Namespace) -> dict[str, Any]:
    """The backend's keyword configuration from the command line."""
    if args.sim != "carla":
        return {"track": args.track}
    return {"host": args.carla_host, "port": args.carla_port, "timeout": args.carla_timeout, "town": args.town,
            "route": args.carla_route, "blueprint": args.carla_vehicle,
            "physics_dt": _carla_physics_dt(args.rate)}


def _carla_physics_dt(rate: float) -> float:
    """One ``world.tick()`` per control period, split into equal ticks when the period is longer
    than the 0.1 s CARLA's physics allows for ``fixed_delta_seconds``."""
    period = 1.0 / rate
    return period / max(1, math.ceil(period / 0.1 - 1e-9))


def _safe_name(name: str) -> str:
    """A file name from a track name such as ``carla:Town04``."""
    return "".join(c if c.isalnum() or c in "-_." else "-" for c in name).strip(".") or "track"


def _check_sim(name: str) -> None:
    """A registered backend that cannot run (carla) refuses in make_simulator with its own reason;
    anything else unknown is named here together with what can run."""
    if name not in registered_simulators():
        raise ValueError(f"--sim: unknown simulator {name!r}; use one of: {', '.join(available_simulators())}")


def _fail(message: object) -> int:
    print(f"edge-run: error: {clip(' '.join(str(message).split()), 1000)}", file=sys.stderr)
    return 2


def _ms(st: dict, key: str) -> str:
    value = st.get(key)
    return f"{1e3 * value:8.3f}" if isinstance(value, (int, float)) else f"{'-':>8s}"


def _print_summary(summary: dict) -> None:
    ex, so = summary["exec_time"], summary["mpc_solve_time"]
    mode = "real time" if summary["realtime"] else "fast"
    if summary.get("llm_blocking"):
        mode += ", waits for the LLM"
    print(f"steps {summary['steps']} at {summary['rate_hz']:g} Hz ({mode}), "
          f"sim {summary['sim_time']:.1f} s, laps {summary['laps']:.2f}, crashed {summary['crashed']}")
    print(f"{'ms':16s} {'p50':>8s} {'p90':>8s} {'p99':>8s} {'max':>8s}   (first {ex['warmup_excluded']} steps excluded)")
    rows = [("control step", ex), ("MPC solve", so)]
    llm = summary.get("llm")
    if llm:
        rows += [("LLM first token", llm["time_to_first_token"]), ("LLM per token", llm["decode_per_token"]),
                 ("LLM total", llm["total"])]
    for name, st in rows:
        print(f"{name:16s} " + " ".join(_ms(st, k) for k in ("p50", "p90", "p99", "max")))
    print(f"overruns {summary['overruns']}  dropped {summary['dropped_steps']}  MPC failures {summary['mpc_failures']}  "
          f"RSS {summary['rss'] / 2**20:.1f} MiB (peak {summary['peak_rss'] / 2**20:.1f} MiB)")
    if llm:
        failures = ", ".join(f"{k} {v}" for k, v in llm["failures"].items()) or "none"
        status = ", ".join(f"{k} {v}" for k, v in llm["status"].items()) or "none"
        forced = f" ({llm['forced_tokens']} forced by the grammar)" if llm.get("constrained") else ""
        print(f"LLM calls {llm['generations']} ({status}); parse/worker failures: {failures}; "
              f"tokens emitted {llm['emitted_tokens']}{forced}, prompt {llm['prompt_tokens_mean'] or 0:.0f} tokens")
    windows = summary.get("windows") or []
    if windows:
        print(f"{'win':>3s} {'t [s]':>6s} {'category':18s} {'LLM':14s} {'error':>8s} {'default':>8s} {'improv.':>8s}  instruction")
        for w in windows:
            def num(x):
                return f"{x:8.3f}" if isinstance(x, (int, float)) else f"{'-':>8s}"
            imp = w["improvement"]
            imp_s = f"{100 * imp:+7.1f}%" if isinstance(imp, (int, float)) else f"{'-':>8s}"
            flag = " (crashed)" if w["crashed"] else (" (stalled)" if w["stalled"] else "")
            print(f"{w['window']:3d} {w['t_start']:6.1f} {w['category']:18s} {w['llm'][:14]:14s} {num(w['error'])} "
                  f"{num(w['default_error'])} {imp_s}  {printable(w['instruction'][:48])}{flag}")
        print("error: RMS of the category's quantity over the window; default: the same window re-simulated "
              "from the same state with the default parameters")
        overall = (summary.get("adaptability") or {}).get("overall")
        if isinstance(overall, (int, float)):
            print(f"control adaptability of the model: {overall:+.3f} (mean over categories; windows whose answer "
                  f"failed score {WORST_ADAPTABILITY:g})")


def _gpu_line(gpu: dict) -> str:
    if not gpu.get("available"):
        return gpu.get("note", "no GPU sampler")
    parts = [f"GPU telemetry ({gpu['source']}): {gpu['samples']} samples"]
    if gpu.get("power_w"):
        parts.append(f"power mean {gpu['power_w']['mean']:.2f} W, max {gpu['power_w']['max']:.2f} W")
    if gpu.get("gpu_util"):
        parts.append(f"GPU util mean {100 * gpu['gpu_util']['mean']:.0f}%")
    for key, name in (("ram_used_peak", "RAM (unified) peak"), ("gpu_mem_used_peak", "GPU memory peak")):
        if key in gpu:
            parts.append(f"{name} {gpu[key] / 2**20:.0f} MiB")
    platform = gpu.get("platform") or {}
    if platform.get("power_mode") or platform.get("jetson_clocks") is not None:
        parts.append(f"nvpmodel {platform.get('power_mode')}, jetson_clocks {platform.get('jetson_clocks')}")
    return "; ".join(parts)


#: Window LLM states that say nothing about the model's answer (it never got to act on the window).
_UNSCORED = ("stale", "superseded", "unapplied", "pending")


def _model_adaptability(windows: list[dict[str, Any]]) -> dict[str, Any] | None:
    """Control adaptability of the model over the run's windows, by the project's convention
    (edge_runtime.tasks.metrics): a window whose answer applied scores its improvement; one whose
    answer failed (parse failure, worker error) scores WORST_ADAPTABILITY -- whatever the carried-
    over parameters achieved, which the window's own ``improvement`` still shows; windows the
    answer never reached (stale, superseded, pending) are left out."""
    scored = []
    for w in windows:
        if w["llm"] == "applied" and w["improvement"] is not None:
            scored.append((w["category"], w["improvement"]))
        elif w["llm"] not in _UNSCORED and w["llm"] != "applied" and w["steps"]:
            scored.append((w["category"], WORST_ADAPTABILITY))
    if not scored:
        return None
    return {**summarise_adaptability(scored), "windows": len(scored)}


def _scenario(args: argparse.Namespace) -> tuple[Scenario | None, str | None]:
    if args.model is None:
        if args.instruction is not None or args.script is not None:
            raise ScriptError("--instruction and --script need --model (an exported ONNX model to answer them)")
        return None, None
    if args.script is not None:
        return load_script(args.script), None
    if args.instruction is not None:
        return single_instruction(args.instruction), None
    return (single_instruction(DEFAULT_INSTRUCTION),
            f"edge-run: no --instruction or --script given: driving {DEFAULT_INSTRUCTION!r} from t = 0")


def _load_model(args: argparse.Namespace):
    from ..decoding.generator import OnnxGenerator  # onnxruntime only when a model is used
    from ..decoding.model_file import ModelLoadError
    from .llm_worker import mpc_token_budget

    try:
        generator = OnnxGenerator(args.model, providers=args.provider, threads=args.threads,
                                  constrained=args.constrained)
        budget = mpc_token_budget(generator.generation, str(args.model))
    except (ModelLoadError, ValueError, TypeError) as exc:
        raise _ModelError(exc) from None
    return generator, budget


class _ModelError(Exception):
    pass


def main(argv: list[str] | None = None) -> int:
    """Exit status: 0 done; 2 bad input or output path (nothing ran); 3 telemetry lost (records
    dropped, or summary.json not writable: the summary then goes to stderr); 130 stopped by
    SIGINT / SIGTERM / SIGHUP (summary written). 3 wins over 130: the lost data needs attention.

    ``argv=None`` is the command line: stop signals are then ignored from the return until the
    process has exited, so that a late repeated signal cannot turn the exit status into a kill. A
    caller that passes ``argv`` (an embedding program, tests) gets its own handlers back instead."""
    signals = StopSignals().install()  # start-up included: Ctrl-C during the model load is one line
    try:
        with contextlib.ExitStack() as cleanup:
            return _run(argv, signals, cleanup)
    except Interrupted as exc:
        print(f"edge-run: interrupted by {exc.args[0]} while starting; nothing was run", file=sys.stderr)
        return EXIT_INTERRUPTED
    finally:
        if argv is None:
            signals.ignore_until_exit()
        else:
            signals.restore()


def _run(argv: list[str] | None, signals: StopSignals, cleanup: contextlib.ExitStack) -> int:
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:  # usage errors (one line, printed) and --help
        return int(exc.code or 0)
    if args.selftest or args.selftest_budget is not None:
        return _selftest(args)
    try:
        params = DEFAULT_PARAMS if args.params in (None, "default") else MPCParams.from_json_file(args.params)
        loop_config = LoopConfig(rate_hz=args.rate, duration=args.duration, realtime=not args.fast)
        if args.threads is not None and args.threads < 1:
            raise ValueError(f"--threads must be a positive integer, got {args.threads}")
        if not (args.gpu_interval >= 0 and args.gpu_interval < float("inf")):
            raise ValueError(f"--gpu-interval must be >= 0 seconds (0: off), got {args.gpu_interval}")
        scenario, note = _scenario(args)
        _check_sim(args.sim)
        sim = make_simulator(args.sim, **_sim_options(args))
        cleanup.callback(sim.close)
        # The MPC plans with the simulated car's own geometry (a CARLA car is not an F1TENTH car).
        mpc_config = MPCConfig(horizon=args.horizon, rate_hz=args.rate, vehicle=vehicle_params_of(sim))
    except (ParameterError, TrackFormatError, SimulatorUnavailableError, ScriptError, ValueError) as exc:
        return _fail(exc)
    try:
        out_dir = claim_output_dir(args.out, overwrite=args.overwrite)  # before the model loads
    except OutputDirError as exc:
        return _fail(exc)
    cleanup.callback(out_dir.release)
    generator = worker = racing = None
    if scenario is not None:
        try:
            generator, budget = _load_model(args)
            from .llm_worker import LLMWorker

            worker = LLMWorker(generator, max_new_tokens=budget)
            worker.check_prompts_fit((e.where, e.instruction) for e in scenario.entries)  # before anything runs
            warmup_s = worker.warm_up()
        except _ModelError as exc:
            return _fail(exc.args[0])
        except PromptDoesNotFit as exc:
            return _fail(exc)
        except Exception as exc:  # noqa: BLE001 -- a model that loads but cannot generate
            return _fail(f"{args.model}: the model loads but its warm-up generation failed "
                         f"({type(exc).__name__}: {exc}); re-export it with edge-export")
        if any(e.instruction.category is Category.RACING_LINE for e in scenario.entries):
            from ..sim.racing_line import compute_racing_line

            try:
                racing = compute_racing_line(sim.track)  # before the run: an OSQP solve
            except RuntimeError as exc:
                return _fail(f"the script has racing-line instructions but {exc}; use another track")
        for entry in scenario.entries:
            if entry.t >= args.duration:
                print(f"edge-run: note: {entry.where}: t = {entry.t:g} s is not before --duration "
                      f"{args.duration:g} s; this instruction is never issued", file=sys.stderr)
        if note:
            print(note)

    out = out_dir.path
    try:
        out_dir.clear_previous()  # --overwrite: the old run's files go before anything new is written
        log = JsonlWriter(out / "steps.jsonl")
    except OutputDirError as exc:
        return _fail(exc)
    except OSError as exc:
        return _fail(f"--out {out}: cannot create steps.jsonl ({exc.strerror or exc}); choose a writable "
                     "directory with --out")
    track_ref = args.track
    if args.sim != "track":  # the backend's own track (CARLA: the route), saved so that edge-report can draw it
        track_ref = str(out / (_safe_name(sim.track.name) + ".csv"))  # its stem names the track in the report
        try:
            sim.track.to_csv(track_ref)
        except OSError as exc:
            _warn(f"could not write {track_ref} ({exc.strerror or exc}); edge-report will not draw the map")
            track_ref = sim.track.name
    stop = signals.stop
    signals.running()  # from here a signal stops the loop; the summary is still written
    started = time.time()
    loop = ControlLoop(sim, FrenetMPC(sim.track, params, mpc_config), loop_config, log)
    worker_stopped = None
    interrupted = False
    gpu_sampler, gpu_note = None, "GPU telemetry off (--gpu-interval 0)"
    if args.gpu_interval > 0:
        from ..telemetry.gpu import start_gpu_sampler

        gpu_sampler, gpu_note = start_gpu_sampler(log.write, args.gpu_interval)  # "gpu" records in the log
    try:
        if worker is not None:
            loop.attach_llm(worker, scenario, blocking=args.fast)  # binds the worker to the loop's inbox
            worker.start()
        loop.run(stop)
        interrupted = stop.is_set()  # a signal after the last step does not make the run incomplete
    finally:
        if worker is not None:
            worker_stopped = worker.stop(WORKER_STOP_TIMEOUT)
            loop.finish_llm()
        if gpu_sampler is not None:
            gpu_sampler.stop()
        log.close()
    summary = loop.summary()
    summary.update({"interrupted": interrupted, "signals": list(signals.received), "sim": args.sim,
                    "track": track_ref, "track_name": sim.track.name, "started": started, "log": str(out / "steps.jsonl"),
                    "log_records": log.records, "telemetry": log.health(),
                    "gpu": gpu_sampler.summary() if gpu_sampler is not None else {"available": False,
                                                                                   "note": gpu_note}})
    if hasattr(sim, "info"):
        summary["sim_info"] = sim.info()  # e.g. CARLA: server version, map, collisions, lane invasions
    if worker is None:
        summary["params"] = params.to_dict()
    else:
        make_sim = (lambda: make_simulator(args.sim, track=sim.track)) if hasattr(sim, "restore") else None
        windows = score_windows(loop.windows, make_sim, mpc_config, loop_config.period, racing)
        for row in windows:
            row["llm"] = loop.window_llm.get(row["window"], "pending")
        adaptability = _model_adaptability(windows)
        llm = worker.summary()
        llm.update({"model": str(args.model), "providers": generator.providers, "threads": args.threads,
                    "constrained": bool(args.constrained), "dtype": generator.dtype,
                    "kv_cache": {"layout": generator.kv_layout, "capacity": generator.kv_capacity},
                    "status": dict(sorted(loop.llm_status.items())), "warmup": {"generations": 1, "tokens": 2,
                                                                                  "seconds": warmup_s},
                    "worker_stopped": worker_stopped, "blocked_s": loop.llm_wait})
        summary.update({"model": str(args.model), "llm": llm, "scenario": scenario.to_list(), "windows": windows,
                        "adaptability": adaptability,
                        "final_params": loop.mpc.params.to_dict()})
    if log.dropped:
        _warn(f"{log.dropped} telemetry records could not be written to {log.path} (first error: "
              f"{log.first_error}); the loop kept driving; summary 'telemetry' has the counts")
    summary_ok = _write_summary(out / "summary.json", summary)
    try:  # the terminal may be gone (SIGHUP): the files are what counts
        _print_summary(summary)
        print(_gpu_line(summary["gpu"]))
        print(f"telemetry: {out / 'steps.jsonl'} ({log.records} records), summary: "
              f"{out / 'summary.json' if summary_ok else 'on stderr'}")
        if interrupted:
            print(f"edge-run: stopped by {signals.first}", file=sys.stderr)
    except OSError:
        pass
    if args.report:
        _report(out)
    if log.dropped or not summary_ok:
        return EXIT_TELEMETRY_LOST
    return EXIT_INTERRUPTED if interrupted else 0


def _selftest(args: argparse.Namespace) -> int:
    """``--selftest``: the deploy health check (edge_runtime.runtime.selftest); exit 0 pass, 1 fail, 2 bad input."""
    from .selftest import DEFAULT_LATENCY_BUDGET_S, SelftestConfig, main_selftest

    if not args.selftest:
        return _fail("--selftest-budget needs --selftest")
    if args.model is None:
        return _fail("--selftest needs --model (the ONNX file to check)")
    if args.script is not None:
        return _fail("--selftest answers one --instruction; --script is not used by it")
    if not Path(args.model).is_file():
        return _fail(f"--model {args.model}: file not found")
    try:
        config = SelftestConfig(model=str(args.model), instruction=args.instruction or DEFAULT_INSTRUCTION,
                                latency_budget_s=(DEFAULT_LATENCY_BUDGET_S if args.selftest_budget is None
                                                  else args.selftest_budget),
                                rate_hz=args.rate, horizon=args.horizon, threads=args.threads,
                                provider=args.provider, constrained=args.constrained)
    except ValueError as exc:
        return _fail(exc)
    return main_selftest(config)


REPORT_TIMEOUT = 300.0  # s; drawing a long run takes seconds, a hung one must not hold the lock forever


def _report(out: Path) -> None:
    """``--report``: ``python -m edge_runtime.report OUT`` in a child process. A child, not an import:
    the runtime may not import the analysis side (layer contract; the vehicle install has no
    matplotlib), and a failed report -- matplotlib missing included, which edge-report says in one
    line -- leaves the run and its exit status alone."""
    import subprocess

    try:
        proc = subprocess.run([sys.executable, "-m", "edge_runtime.report", str(out)], timeout=REPORT_TIMEOUT,
                              check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        _warn(f"--report: edge-report did not run ({exc}); run it later: edge-report {out}")
        return
    if proc.returncode != 0:
        _warn(f"--report: no report written (edge-report exit {proc.returncode}, its message above); the run's "
              f"files are complete: edge-report {out}")


def _warn(message: str) -> None:
    try:
        print(f"edge-run: warning: {message}", file=sys.stderr)
    except OSError:
        pass


def _write_summary(path: Path, summary: dict[str, Any]) -> bool:
    """summary.json, atomically; when that fails, the summary as one JSON line on stderr."""
    try:
        write_json_atomic(path, summary)
        return True
    except OSError as exc:
        _warn(f"could not write {path} ({exc.strerror or exc}); the summary follows on stderr as one JSON line")
        try:
            sys.stderr.write(json_line(summary))
            sys.stderr.flush()
        except OSError:
            pass
        return False


if __name__ == "__main__":
    sys.exit(main())
