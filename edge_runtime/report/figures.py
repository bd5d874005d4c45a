"""The three pictures of a run: where the car went, what it did over time, whether the loop kept time.

Each function takes a :class:`~edge_runtime.report.runlog.RunLog` and returns a matplotlib
figure (drawn through :mod:`edge_runtime.report.style`); saving is the caller's. A figure never
fails for lack of data: a panel without data says so in words (a run without LLM, a log cut off
before the first memory sample), because a report of a broken run is exactly when it is read.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from ..contracts.task_enums import Category
from ..tasks.instructions import REVERSE_TARGET_SPEED
from . import style
from .runlog import RunLog

__all__ = ["category_error", "timing", "time_series", "track_map"]

MIB = 2.0 ** 20


def _xy(track: Any, s: np.ndarray, d: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    x, y = track.from_frenet(s, d)
    return np.asarray(x, float), np.asarray(y, float)


def _point(run: RunLog, step: int | None) -> dict[str, Any] | None:
    if step is None:
        return None
    return next((r for r in run.control if r["step"] == step), None)


def _window_start_record(run: RunLog, window: dict[str, Any]) -> dict[str, Any] | None:
    """The state where an instruction was issued: the record of the step before its first one
    (records hold the state after their step), or its first step at the start of the run."""
    first = window["first_step"]
    if first is None:
        return None
    return _point(run, first - 1) or _point(run, first)


def track_map(run: RunLog, track: Any | None, racing: Any | None) -> Any:
    """Walls, centre and racing line, the driven path coloured by speed, instruction and answer
    markers and the crash point. Without a track (summary missing and none given) the same in
    track coordinates: s along the centre line, d across it."""
    from matplotlib.collections import LineCollection

    fig, ax = style.figure(size=(7.5, 6.0))
    s, d, v = run.column("s"), run.column("d"), run.column("v")
    if track is not None:
        def pos(ss, dd):
            return _xy(track, np.atleast_1d(np.asarray(ss, float)), np.atleast_1d(np.asarray(dd, float)))

        closed = np.append(track.s, track.s[0])
        for w, label in ((np.append(track.w_left, track.w_left[0]), "walls"),
                         (-np.append(track.w_right, track.w_right[0]), None)):
            wx, wy = pos(closed, w)
            ax.plot(wx, wy, color=style.COLORS["track"], linewidth=1.6, label=label)
        ax.plot(np.append(track.x, track.x[0]), np.append(track.y, track.y[0]), color=style.COLORS["centre"],
                linestyle="--", linewidth=0.9, label="centre line")
        if racing is not None:
            rx, ry = pos(np.append(racing.s, racing.s[0]), np.append(racing.d, racing.d[0]))
            ax.plot(rx, ry, color=style.COLORS["racing"], linewidth=0.9, alpha=0.8, label="racing line")
        px, py = pos(s, d)
        ax.set_aspect("equal", adjustable="datalim")
        ax.set_xlabel("x [m]")
        ax.set_ylabel("y [m]")
        ax.set_title(f"track {track.name}: driven path coloured by speed")
    else:
        px, py = s, d
        pos = lambda ss, dd: (np.atleast_1d(ss), np.atleast_1d(dd))  # noqa: E731
        ax.axhline(0.0, color=style.COLORS["centre"], linestyle="--", linewidth=0.9, label="centre line")
        ax.set_xlabel("s along the centre line [m]")
        ax.set_ylabel("d, lateral offset [m] (+ left)")
        ax.set_title("driven path in track coordinates (track unknown: pass --track to draw the map)")
    ok = np.isfinite(px) & np.isfinite(py)
    if ok.sum() >= 2:
        pts = np.column_stack([px[ok], py[ok]])
        jump = np.hypot(*np.diff(pts, axis=0).T) > 2.0  # s wraps at the lap line in track coordinates
        segs = np.stack([pts[:-1], pts[1:]], axis=1)[~jump]
        lc = LineCollection(segs, cmap="viridis", linewidth=2.4)
        lc.set_array(v[ok][1:][~jump])
        ax.add_collection(lc)
        fig.colorbar(lc, ax=ax, label="speed v [m/s]", shrink=0.8)
    elif ok.any():
        ax.scatter(px[ok], py[ok], c=v[ok], cmap="viridis", s=12)
    ax.autoscale_view()
    started = applied = False
    for w in run.windows():
        rec = _window_start_record(run, w)
        if rec is not None:
            x, y = pos(rec["s"], rec["d"])
            ax.scatter(x, y, marker="^", s=70, color="black", zorder=5, label=None if started else "instruction issued")
            ax.annotate(f"W{w['window']}", (x[0], y[0]), xytext=(5, 5), textcoords="offset points", fontsize=8)
            started = True
        rec = _point(run, w["applied_step"])
        if rec is not None:
            x, y = pos(rec["s"], rec["d"])
            ax.scatter(x, y, marker="*", s=110, color=style.COLORS["llm"], zorder=6, edgecolors="white",
                       label=None if applied else "LLM answer applied")
            ax.annotate(f"A{w['window']}", (x[0], y[0]), xytext=(5, -11), textcoords="offset points", fontsize=8,
                        color=style.COLORS["llm"])
            applied = True
    crash = run.crash
    if crash is not None:
        x, y = pos(crash["s"], crash["d"])
        ax.scatter(x, y, marker="X", s=160, color=style.COLORS["target"], zorder=7,
                   label=f"crash at t = {crash['sim_time']:.2f} s")
    ax.legend(loc="best", framealpha=0.85)
    return fig


def _window_of_steps(run: RunLog) -> list[dict[str, Any] | None]:
    by_index = {w["window"]: w for w in run.windows()}
    return [by_index.get(r.get("window")) for r in run.control]


def category_error(run: RunLog, racing: Any | None) -> np.ndarray:
    """Each step's error in its window's category (the quantity whose RMS scores the window,
    edge_runtime.tasks.metrics): d (centre line), v minus the reference (speed, reverse),
    sqrt(ax^2 + ay^2) (smooth), d minus the racing-line offset (racing line); NaN where the
    window's category is unknown or, for the racing line, the track is unknown."""
    s, d, v, ax_, ay = (run.column(k) for k in ("s", "d", "v", "ax", "ay"))
    race = np.asarray(racing.offset_at(np.nan_to_num(s)), float) if racing is not None else np.full_like(s, np.nan)
    err = np.full_like(s, np.nan)
    for i, w in enumerate(_window_of_steps(run)):
        cat = (w or {}).get("category")
        if cat == Category.CENTRELINE.value:
            err[i] = d[i]
        elif cat == Category.REFERENCE_VELOCITY.value and isinstance(w.get("target_speed"), (int, float)):
            err[i] = v[i] - w["target_speed"]
        elif cat == Category.REVERSE.value:
            err[i] = v[i] - REVERSE_TARGET_SPEED
        elif cat == Category.SMOOTH.value:
            err[i] = math.hypot(ax_[i], ay[i])
        elif cat == Category.RACING_LINE.value:
            err[i] = d[i] - race[i]
    return err


def _shade_spans(axes: list[Any], run: RunLog) -> None:
    for span in run.param_spans():
        if span.t1 <= span.t0:
            continue  # replaced at once (an answer applied at the first step): nothing to shade
        fill = style.WINDOW_FILLS[span.index % len(style.WINDOW_FILLS)]
        for ax in axes:
            ax.axvspan(span.t0, span.t1, color=fill, zorder=0, linewidth=0)
        axes[0].annotate(f"P{span.index}", ((span.t0 + span.t1) / 2, 1.0), xycoords=("data", "axes fraction"),
                         ha="center", va="bottom", fontsize=8, color=style.COLORS["llm"])


def time_series(run: RunLog, racing: Any | None) -> Any:
    """Speed and its targets, lateral offset, and the category's error over sim time; the MPC
    parameter set in force shaded per span (P0 the initial set) and its changed values listed."""
    spans = run.param_spans()
    lines = [f"P{sp.index} ({'initial' if sp.call is None else f'LLM call {sp.call}'}, from {sp.t0:.2f} s): "
             + (", ".join(f"{k}={v:g}" for k, v in sp.changed().items()) or "defaults") for sp in spans[:8]]
    if len(spans) > 8:
        lines.append(f"... {len(spans) - 8} more sets (see the table)")
    fig, all_axes = style.figure(4, 1, size=(9.0, 8.0 + 0.16 * len(lines)), sharex=True,
                                 gridspec_kw={"height_ratios": [3, 3, 3, 0.25 * len(lines) + 0.2]})
    axes, listing = list(all_axes[:3]), all_axes[3]
    t = run.column("sim_time")
    _shade_spans(axes, run)
    ax = axes[0]
    ax.plot(t, run.column("v"), color=style.COLORS["measured"], label="speed v")
    vmax_t, vmax = [], []
    for span in spans:
        vmax_t += [span.t0, span.t1]
        vmax += [span.params.get("v_max", math.nan)] * 2
    ax.plot(vmax_t, vmax, color=style.COLORS["target"], linestyle="--", linewidth=1, label="MPC v_max in force")
    first = True
    for w in run.windows():
        ref = w["target_speed"] if w["category"] == Category.REFERENCE_VELOCITY.value else (
            REVERSE_TARGET_SPEED if w["category"] == Category.REVERSE.value else None)
        if isinstance(ref, (int, float)) and w["t_start"] is not None:
            ax.hlines(ref, w["t_start"], w["t_end"], color="black", linestyle=":", linewidth=1.4,
                      label="instruction's target speed" if first else None)
            first = False
    ax.set_ylabel("speed [m/s]")
    ax.legend(loc="upper right")
    ax = axes[1]
    ax.plot(t, run.column("d"), color=style.COLORS["measured"], label="lateral offset d")
    if racing is not None:
        ax.plot(t, racing.offset_at(np.nan_to_num(run.column("s"))), color=style.COLORS["racing"], linewidth=1,
                label="racing-line offset at s")
    ax.axhline(0.0, color=style.COLORS["centre"], linestyle="--", linewidth=0.8)
    ax.set_ylabel("d [m] (+ left)")
    ax.legend(loc="upper right")
    ax = axes[2]
    err = category_error(run, racing)
    if np.isfinite(err).any():
        ax.plot(t, err, color=style.COLORS["target"], label="error of the window's category")
        ax.axhline(0.0, color=style.COLORS["centre"], linewidth=0.8)
        ax.legend(loc="upper right")
    else:
        style.empty(ax, "no instruction windows: no category to measure (a run without LLM)")
    ax.set_ylabel("category error")
    ax.set_xlabel("sim time [s]")
    for w in run.windows():
        if w["t_start"] is not None:
            for a in axes:
                a.axvline(w["t_start"], color="black", linestyle=":", linewidth=0.8)
            axes[2].annotate(f"W{w['window']}", (w["t_start"], 0.0), xycoords=("data", "axes fraction"),
                             xytext=(2, 2), textcoords="offset points", fontsize=8)
    axes[2].xaxis.set_tick_params(labelbottom=True)
    listing.axis("off")
    listing.text(0.0, 1.0, "MPC parameter sets in force (values that differ from the defaults):\n" + "\n".join(lines),
                 transform=listing.transAxes, fontsize=7.5, va="top", family="monospace")
    return fig


def timing(run: RunLog) -> Any:
    """CDFs of the control step, the MPC solve and the LLM latencies with the period (the
    deadline) drawn; the step times over the run with overruns and dropped steps marked; memory."""
    fig, axes = style.figure(3, 2, size=(10.0, 9.5))
    period_ms = 1e3 * run.period
    for ax, key, name in ((axes[0][0], "exec_time", "control step"), (axes[0][1], "mpc_solve_time", "MPC solve")):
        if style.cdf(ax, run.column(key), name, color=style.COLORS["measured"]):
            ax.axvline(period_ms, color=style.COLORS["deadline"], linestyle="--",
                       label=f"period / deadline {period_ms:g} ms")
            ax.legend(loc="lower right")
        else:
            style.empty(ax, f"no {name} times in the log")
        ax.set_xlabel(f"{name} [ms]")
        ax.set_title(f"{name} time, CDF")
    generated = [r for r in run.llm if r.get("type") == "llm"]
    ax = axes[1][0]
    drawn = style.cdf(ax, [r.get("time_to_first_token") for r in generated], "time to first token",
                      color=style.COLORS["llm"])
    drawn |= style.cdf(ax, [r.get("total_time") for r in generated], "total", color=style.COLORS["target"])
    if drawn:
        ax.axvline(period_ms, color=style.COLORS["deadline"], linestyle="--", linewidth=0.8,
                   label=f"control period {period_ms:g} ms")
        ax.legend(loc="lower right")
    else:
        style.empty(ax, "no LLM call in this run")
    ax.set_xlabel("LLM latency [ms]")
    ax.set_title("LLM time to first token and total, CDF")
    ax = axes[1][1]
    if style.cdf(ax, [x for r in generated for x in (r.get("decode_times") or [])], "per-token decode",
                 color=style.COLORS["llm"]):
        ax.legend(loc="lower right")
    else:
        style.empty(ax, "no decoded tokens in this run")
    ax.set_xlabel("per-token decode [ms]")
    ax.set_title("LLM per-token decode time, CDF")
    ax = axes[2][0]
    t, ex = run.column("sim_time"), 1e3 * run.column("exec_time")
    ax.plot(t, ex, color=style.COLORS["measured"], linewidth=0.8, label="control step")
    ax.axhline(period_ms, color=style.COLORS["deadline"], linestyle="--", label=f"deadline {period_ms:g} ms")
    over = np.array([bool(r.get("overrun")) for r in run.control])
    if over.any():
        ax.scatter(t[over], ex[over], color=style.COLORS["overrun"], s=18, zorder=5,
                   label=f"overrun ({int(over.sum())})")
    dropped = run.column("dropped")
    lost = np.nan_to_num(dropped) > 0
    if lost.any():
        top = np.nanmax(ex) if np.isfinite(ex).any() else period_ms
        ax.scatter(t[lost], np.full(lost.sum(), max(top, period_ms) * 1.05), marker="v",
                   color=style.COLORS["dropped"], s=22, zorder=5, label=f"dropped periods ({int(np.nansum(dropped))})")
    ax.set_xlabel("sim time [s]")
    ax.set_ylabel("control step [ms]")
    ax.set_title("control step over the run")
    ax.legend(loc="upper right")
    ax = axes[2][1]
    rss = run.column("rss") / MIB
    ok = np.isfinite(rss)
    if ok.any():
        ax.plot(t[ok], rss[ok], color=style.COLORS["memory"], marker=".", label="process RSS")
        peak = run.column("peak_rss") / MIB
        if np.isfinite(peak).any():
            ax.plot(t[ok], peak[ok], color=style.COLORS["default"], linestyle="--", label="peak RSS")
        _gpu_memory(ax, run)
        ax.set_ylabel("memory [MiB]")
        ax.legend(loc="lower right")
    else:
        style.empty(ax, "no memory sample in the log (sampled every 20 steps)")
    ax.set_xlabel("sim time [s]")
    ax.set_title("memory over the run")
    return fig


def _gpu_memory(ax: Any, run: RunLog) -> None:
    """GPU / unified memory samples (wall-clock stamped) on the sim-time axis of the control records."""
    wall, sim = run.column("wall_time"), run.column("sim_time")
    ok = np.isfinite(wall)
    if not run.gpu or ok.sum() < 2:
        return
    for key, label in (("ram_used", "unified RAM (tegrastats)"), ("gpu_mem_used", "GPU memory (NVML)")):
        pts = [(r["wall_time"], r[key]) for r in run.gpu if isinstance(r.get(key), (int, float))
               and isinstance(r.get("wall_time"), (int, float))]
        if pts:
            w, m = np.array(pts, float).T
            ax.plot(np.interp(w, wall[ok], sim[ok]), m / MIB, linestyle=":", label=label)
