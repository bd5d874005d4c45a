"""``edge-report RUN_DIR [-o OUT] [--track NAME]``: the pictures and the page of an ``edge-run`` run.

Writes ``track_map.png``, ``time_series.png``, ``timing.png`` and ``report.html`` (the three
pictures embedded, with the run, latency, window and parameter-set tables; nothing fetched at
view time) to ``OUT`` (default ``RUN_DIR/report``). Works on finished, interrupted and cut-off
runs (no summary.json, torn last line; see ``runlog``). The track comes from summary.json;
``--track`` names it when the summary is missing (else the path is drawn in track coordinates).

Exit status: 0 written; 2 bad input (no such directory, no steps.jsonl, no control step, unknown
track, matplotlib missing, OUT not writable): one line on stderr naming the path and what to do.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, NoReturn

from ..contracts.user_input import clip
from ..sim.track import TrackFormatError
from ..sim.tracks import BUILTIN_TRACKS, load_track
from . import style
from .runlog import RunLog, RunLogError, load_run

__all__ = ["FILES", "build_parser", "main", "write_report"]

#: (file name, caption) of the pictures, in page order.
FILES = (("track_map.png", "Track map: walls, centre and racing line, driven path coloured by speed, "
                           "instructions (W), applied answers (A), crash"),
         ("time_series.png", "Time series: speed and targets, lateral offset, the category's error; "
                             "MPC parameter sets shaded (P)"),
         ("timing.png", "Timing: control step, MPC solve and LLM latency CDFs with the deadline, overruns and "
                        "dropped periods, memory"))
PAGE = "report.html"


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="edge-report",
                description="Draw an edge-run run: track map, time series, timing CDFs and a per-window table, "
                            "as PNG files and one self-contained HTML page.",
                epilog="Exit status: 0 written; 2 bad input (one line on stderr). Manual: docs/report.md.")
    p.add_argument("run_dir", metavar="RUN_DIR", help="the --out directory of an edge-run run (holds steps.jsonl)")
    p.add_argument("-o", "--out", default=None, metavar="OUT",
                   help="directory for the PNG files and report.html, created if missing (default: RUN_DIR/report)")
    p.add_argument("--track", default=None, metavar="NAME",
                   help=f"track of the run when summary.json is missing or names another: {', '.join(BUILTIN_TRACKS)} "
                        "or a track CSV (default: the track in summary.json)")
    return p


def _track(run: RunLog, override: str | None) -> tuple[Any, Any]:
    """(track, racing line) of the run, or (None, None) with a note when it is unknown."""
    name = override or run.track_name
    if name is None:
        run.notes.append("track unknown (no summary.json): the path is drawn in track coordinates; "
                         "pass --track NAME to draw the map")
        return None, None
    try:
        track = load_track(name)
    except (TrackFormatError, OSError) as exc:
        if override:
            raise
        run.notes.append(f"track {name!r} of summary.json cannot be loaded here ({clip(exc, 200)}); "
                         "the path is drawn in track coordinates (pass --track)")
        return None, None
    try:
        from ..sim.racing_line import compute_racing_line

        racing = compute_racing_line(track)
    except (RuntimeError, ValueError) as exc:
        run.notes.append(f"no racing line for track {track.name} ({clip(exc, 200)})")
        racing = None
    return track, racing


def write_report(run_dir: str | Path, out: str | Path | None = None, track: str | None = None) -> list[Path]:
    """Write the pictures and the page; returns their paths (page last). Raises RunLogError,
    TrackFormatError (bad --track), style.PlottingUnavailable and OSError (OUT not writable)."""
    from . import figures
    from .page import render_html

    run = load_run(run_dir)
    out = Path(out) if out is not None else Path(run_dir) / "report"
    trk, racing = _track(run, track)
    style.pyplot()  # PlottingUnavailable before anything is written
    out.mkdir(parents=True, exist_ok=True)
    drawn = (figures.track_map(run, trk, racing), figures.time_series(run, racing), figures.timing(run))
    images = [(style.save(fig, out / name), caption) for fig, (name, caption) in zip(drawn, FILES)]
    page = out / PAGE
    tmp = page.with_name(PAGE + ".tmp")
    tmp.write_text(render_html(run, images), encoding="utf-8")
    tmp.replace(page)  # a reader never sees half a page
    return [p for p, _ in images] + [page]


def _fail(message: object) -> int:
    print(f"edge-report: error: {clip(' '.join(str(message).split()), 1000)}", file=sys.stderr)
    return 2


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:
        return int(exc.code or 0)
    try:
        paths = write_report(args.run_dir, args.out, args.track)
    except (RunLogError, style.PlottingUnavailable) as exc:
        return _fail(exc)
    except TrackFormatError as exc:
        return _fail(f"--track: {exc}")
    except KeyboardInterrupt:
        print("edge-report: interrupted; the report may be incomplete", file=sys.stderr)
        return 130
    except OSError as exc:
        where = exc.filename or args.out or args.run_dir
        return _fail(f"{where}: cannot write the report ({exc.strerror or exc}); choose a writable directory with -o")
    print(f"edge-report: {paths[-1]} ({', '.join(p.name for p in paths[:-1])})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
