"""``edge-task``: evaluate parameter sets and run the oracle from the command line.

  edge-task tracks
  edge-task params                                   # the parameter table
  edge-task eval --instruction "drive on the centre line" --params params.json --track hairpin [--json -]
  edge-task eval --instruction "drive at 2.9 m/s" --params oracle --budget 48
  edge-task oracle --instruction "drive smoothly" --out best.json
  edge-task oracle-table --split test --workers 1 --out edge_runtime/tasks/data/oracle_test_esses.json

Errors (bad parameter file, unknown track, unclassifiable instruction) print one line and exit 2.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ..contracts.user_input import clip
from ..control.params import DEFAULT_PARAMS, MPCParams, ParameterError, parameter_table_markdown
from ..sim.track import TrackFormatError
from ..sim.tracks import BUILTIN_TRACKS, SPLIT_TRACKS, TRAIN_TRACK, load_track, split_track
from .closed_loop import EvalConfig, EvalResult, evaluate
from ..contracts.task_enums import Category
from .instructions import Instruction, classify_instruction
from .oracle import METHODS, OracleConfig, OracleUnavailable, search


def _instruction(args: argparse.Namespace) -> Instruction:
    if args.category:
        category = Category(args.category)
        speed = args.target_speed
        if category is Category.REFERENCE_VELOCITY and speed is None:
            speed = classify_instruction(args.instruction).target_speed
        return Instruction(args.instruction, category, speed if category is Category.REFERENCE_VELOCITY else None)
    return classify_instruction(args.instruction)


def _eval_config(args: argparse.Namespace) -> EvalConfig:
    load_track(args.track)  # fail early with the track error
    return EvalConfig(track=args.track, duration=args.duration, max_laps=args.laps)


def _oracle_config(args: argparse.Namespace) -> OracleConfig:
    return OracleConfig(method=args.method, budget=args.budget, popsize=args.popsize, seed=args.seed,
                        workers=args.workers, stall_margin=args.stall_margin)


def _print_result(result: EvalResult, label: str) -> None:
    ins = result.instruction
    target = f" (target {ins.reference_speed:g} m/s)" if ins.reference_speed is not None else ""
    print(f"{label}: {ins.text!r} -> {ins.category.value}{target}")
    print(f"  error            {result.error:.4f}   (default parameters: {result.default_error:.4f})")
    print(f"  adaptability     {result.adaptability:+.3f}")
    print(f"  crashed/stalled  {result.crashed}/{result.stalled}   laps {result.laps:.2f}   "
          f"sim {result.sim_time:.1f} s   wall {result.wall_time:.2f} s   MPC failures {result.mpc_failures}")


def _write_json(payload: dict, target: str | None) -> None:
    if target is None:
        return
    text = json.dumps(payload, indent=2)
    if target == "-":
        print(text)
    else:
        Path(target).write_text(text + "\n")


def cmd_eval(args: argparse.Namespace) -> int:
    instruction = _instruction(args)
    config = _eval_config(args)
    if args.params == "oracle":
        res = search(instruction, config, _oracle_config(args))
        result, payload = res.best, {"oracle": res.to_dict()}
    else:
        params = DEFAULT_PARAMS if args.params == "default" else MPCParams.from_json_file(args.params)
        result = evaluate(params, instruction, config)
        payload = {}
    payload.update({"track": args.track, "eval_config": config.to_dict(), "result": result.to_dict()})
    if args.json != "-":
        _print_result(result, "oracle" if args.params == "oracle" else "eval")
    _write_json(payload, args.json)
    return 0


def cmd_oracle(args: argparse.Namespace) -> int:
    instruction = _instruction(args)
    config = _eval_config(args)
    res = search(instruction, config, _oracle_config(args))
    _print_result(res.best, f"oracle ({res.evaluations} evaluations)")
    if args.out:
        Path(args.out).write_text(json.dumps(res.best.params.to_dict(), indent=2) + "\n")
        print(f"  best parameters written to {args.out}")
    _write_json({"track": args.track, "eval_config": config.to_dict(), "oracle": res.to_dict()}, args.json)
    return 0


def cmd_oracle_table(args: argparse.Namespace) -> int:
    from .oracle_table import build_table, split_instructions

    track = args.track or split_track(args.split)
    load_track(track)
    table = build_table(EvalConfig(track=track), _oracle_config(args), split_instructions(args.split))
    table["split"] = args.split
    Path(args.out).write_text(json.dumps(table, indent=1) + "\n")
    print(f"oracle table ({args.split}) for track {track!r} written to {args.out} ({table['wall_time_s']:.0f} s)")
    return 0


def cmd_tracks(args: argparse.Namespace) -> int:
    roles = {track: split for split, track in SPLIT_TRACKS.items()}
    for name in BUILTIN_TRACKS:
        t = load_track(name)
        role = roles.get(name, "-")
        print(f"{name:10s} {role:10s} length {t.length:6.1f} m  width {t.w_left.mean() + t.w_right.mean():.2f} m  "
              f"min radius {1 / abs(t.curvature).max():.2f} m")
    return 0


def cmd_params(args: argparse.Namespace) -> int:
    print(parameter_table_markdown())
    return 0


def _add_oracle_flags(p: argparse.ArgumentParser, stall_note: str = "") -> None:
    p.add_argument("--method", choices=METHODS, default=OracleConfig.method,
                   help="oracle search method (default: %(default)s)")
    p.add_argument("--budget", type=int, default=OracleConfig.budget,
                   help="closed-loop evaluations per oracle search (default: %(default)s)")
    p.add_argument("--popsize", type=int, default=OracleConfig.popsize,
                   help="CMA-ES population size (default: %(default)s)")
    p.add_argument("--seed", type=int, default=OracleConfig.seed, help="oracle search seed (default: %(default)s)")
    p.add_argument("--workers", type=int, default=OracleConfig.workers,
                   help="parallel worker processes for the oracle (default: %(default)s)")
    p.add_argument("--stall-margin", type=float, default=OracleConfig.stall_margin,
                   help="the oracle's search counts runs below this times the progress threshold as stalled"
                        f"{stall_note} (default: %(default)s)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="edge-task", description=__doc__.split("\n")[0].replace("``", ""))
    sub = parser.add_subparsers(dest="command", required=True)

    def add_common(p: argparse.ArgumentParser) -> None:
        p.add_argument("--instruction", required=True, help="the human instruction, e.g. 'drive at 2.9 m/s'")
        p.add_argument("--category", choices=[c.value for c in Category],
                       help="override the category (default: detected from the instruction's words)")
        p.add_argument("--target-speed", type=float,
                       help="reference speed in m/s, reference_velocity only (default: the number in the instruction)")
        p.add_argument("--track", default=TRAIN_TRACK,
                       help=f"built-in track ({', '.join(BUILTIN_TRACKS)}) or track CSV path (default: %(default)s)")
        p.add_argument("--duration", type=float, default=EvalConfig.duration,
                       help="evaluation window in seconds of simulated time (default: %(default)s)")
        p.add_argument("--laps", type=float, default=EvalConfig.max_laps,
                       help="stop after this many laps (default: %(default)s)")
        p.add_argument("--json", help="write the full result as JSON to this file, '-' for stdout (default: none)")
        _add_oracle_flags(p)

    p_eval = sub.add_parser("eval", help="closed-loop score of a parameter set on one instruction")
    add_common(p_eval)
    p_eval.add_argument("--params", default="default",
                        help="JSON file of parameters (missing names take defaults), 'default' or 'oracle' "
                             "(default: %(default)s)")
    p_eval.set_defaults(func=cmd_eval)
    p_or = sub.add_parser("oracle", help="search the best parameter set for one instruction")
    add_common(p_or)
    p_or.add_argument("--out", help="write the best parameter set as JSON to this file (default: none)")
    p_or.set_defaults(func=cmd_oracle)
    p_tab = sub.add_parser("oracle-table", help="oracle parameter set per category and speed of a split")
    p_tab.add_argument("--split", choices=list(SPLIT_TRACKS), default="train",
                       help="train: every category and grid speed (the SFT labels); validation, test: exactly "
                            "that split's evaluation instructions (default: %(default)s)")
    p_tab.add_argument("--track", help="built-in track or track CSV path (default: the split's track, "
                                       + ", ".join(f"{k} {v}" for k, v in SPLIT_TRACKS.items()) + ")")
    p_tab.add_argument("--out", required=True, help="JSON file to write")
    _add_oracle_flags(p_tab, stall_note=" (1.5 for oracle_oval_v2.json)")
    p_tab.set_defaults(func=cmd_oracle_table)
    sub.add_parser("tracks", help="list the built-in tracks").set_defaults(func=cmd_tracks)
    sub.add_parser("params", help="print the parameter table").set_defaults(func=cmd_params)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except (ParameterError, TrackFormatError, ValueError, OracleUnavailable) as exc:
        print(f"edge-task: error: {clip(' '.join(str(exc).split()), 1000)}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
