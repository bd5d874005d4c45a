"""The report page: one HTML file that holds its pictures and tables and fetches nothing.

Self-contained on purpose: the page is opened from a laptop in the paddock or attached to a
ticket, often offline, so every image is a ``data:image/png;base64`` URI, the style is inline
and there is no script, font or link to anything outside the file. Every text that comes from
the log (instructions, model answers, paths) is HTML-escaped: an instruction is user text.
"""

from __future__ import annotations

import base64
import html
import math
from pathlib import Path
from typing import Any

import numpy as np

from ..contracts.user_input import printable
from ..control.params import DEFAULT_PARAMS
from ..telemetry.stats import latency_summary
from .runlog import RunLog

__all__ = ["latency_rows", "render_html", "window_rows"]

WARMUP_STEPS = 20  # edge-run's LoopConfig default, used when the summary (which states it) is missing

_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:1.5em auto;max-width:1100px;
color:#222;padding:0 1em}
h1{font-size:1.4em}h2{font-size:1.15em;margin-top:1.6em;border-bottom:1px solid #ddd}
table{border-collapse:collapse;font-size:.85em;margin:.5em 0}
th,td{border:1px solid #ccc;padding:.25em .5em;text-align:left;vertical-align:top}
th{background:#f3f3f3}td.n{text-align:right;font-variant-numeric:tabular-nums}
img{max-width:100%;height:auto;border:1px solid #eee}
.note{background:#fff6d6;border-left:4px solid #e0b000;padding:.3em .6em;margin:.3em 0}
.good{color:#17762b}.bad{color:#b3261e}
"""


def _e(value: Any, limit: int = 300) -> str:
    text = printable(str(value))
    if len(text) > limit:
        text = text[: limit - 1] + "…"
    return html.escape(text, quote=True)


def _f(value: Any, fmt: str = "{:.3f}") -> str:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return "–"
    return fmt.format(value)


def _table(header: list[str], rows: list[list[str]], numeric: set[int] = frozenset()) -> str:
    """Cells are already escaped HTML."""
    head = "".join(f"<th>{h}</th>" for h in header) if any(header) else ""
    body = "".join("<tr>" + "".join(f'<td class="n">{c}</td>' if i in numeric else f"<td>{c}</td>"
                                    for i, c in enumerate(row)) + "</tr>" for row in rows)
    thead = f"<thead><tr>{head}</tr></thead>" if head else ""
    return f"<table>{thead}<tbody>{body}</tbody></table>"


def latency_rows(run: RunLog) -> list[tuple[str, dict[str, Any]]]:
    """(name, p50/p90/p99/max in s) of the control step, MPC solve and LLM latencies: the summary's
    when it exists, else computed from the log (warm-up steps excluded the same way)."""
    s = run.summary or {}
    llm = s.get("llm") or {}
    generated = [r for r in run.llm if r.get("type") == "llm"]
    warm = s.get("exec_time", {}).get("warmup_excluded", WARMUP_STEPS) if s else WARMUP_STEPS

    def from_log(values: list[float], warmup: int = 0) -> dict[str, Any]:
        values = [v for v in values if isinstance(v, (int, float)) and math.isfinite(v)]
        return latency_summary(values, min(warmup, max(len(values) - 1, 0)))

    rows = [("control step", s.get("exec_time") or from_log(list(run.column("exec_time")), warm)),
            ("MPC solve", s.get("mpc_solve_time") or from_log(list(run.column("mpc_solve_time")), warm))]
    if generated or llm:
        rows += [("LLM time to first token", llm.get("time_to_first_token")
                  or from_log([r.get("time_to_first_token") for r in generated])),
                 ("LLM per token", llm.get("decode_per_token")
                  or from_log([x for r in generated for x in (r.get("decode_times") or [])])),
                 ("LLM total", llm.get("total") or from_log([r.get("total_time") for r in generated]))]
    return rows


def _answer(w: dict[str, Any]) -> str:
    status = w["status"] or "no record"
    if w["failure"]:
        status += f" ({w['failure']})"
    if isinstance(w["params"], dict):
        defaults = DEFAULT_PARAMS.to_dict()
        changed = {k: v for k, v in w["params"].items() if defaults.get(k) != v}
        status += ": " + (", ".join(f"{k}={v:g}" for k, v in changed.items()) or "the defaults")
    elif w["detail"] and w["status"] not in ("applied",):
        status += f": {w['detail']}"
    return _e(status, 240)


def window_rows(run: RunLog) -> list[list[str]]:
    """Per instruction window: instruction, category, answer, applied at, error, default error, improvement."""
    rows = []
    for w in run.windows():
        imp = w["improvement"]
        imp_s = "–"
        if isinstance(imp, (int, float)):
            cls = "good" if imp > 0 else "bad"
            imp_s = f'<span class="{cls}">{100 * imp:+.1f} %</span>'
        flag = " (crashed)" if w["crashed"] else (" (stalled)" if w["stalled"] else "")
        rows.append([f"W{w['window']}", _f(w["t_start"], "{:.2f}"), _e(w["instruction"] or "?") + flag,
                     _e(w["category"] or "?"), _answer(w), _f(w["applied_at"], "{:.2f} s"), _f(w["error"]),
                     _f(w["default_error"]), imp_s])
    return rows


def _facts(run: RunLog) -> list[list[str]]:
    s = run.summary or {}
    control = run.control
    last = control[-1]
    facts = [
        ("run directory", _e(run.path)),
        ("status", "complete" if run.complete else ("interrupted by a signal" if s else "incomplete: no summary.json")),
        ("track", _e(s.get("track", "unknown"))), ("model", _e(s.get("model") or "none (fixed parameters)")),
        ("steps", f"{len(control)} logged" + (f", {s['steps']} run" if "steps" in s else "")),
        ("rate", f"{run.rate_hz:g} Hz ({'real time' if s.get('realtime') else 'fast' if s else 'mode unknown'})"),
        ("sim time", f"{last['sim_time']:.2f} s"),
        ("laps", _f(s.get("laps"), "{:.2f}")),
        ("crashed", "yes, at t = {:.2f} s".format(run.crash["sim_time"]) if run.crash else "no"),
        ("overruns / dropped periods", f"{sum(bool(r.get('overrun')) for r in control)} / "
                                       f"{int(np.nansum(run.column('dropped')))}"),
        ("MPC failures", str(s["mpc_failures"]) if "mpc_failures" in s
         else f"{sum(r.get('mpc_ok') is False for r in control)} (steps with mpc_ok false)"),
    ]
    llm = [r for r in run.llm if r.get("type") == "llm"]
    if llm:
        statuses: dict[str, int] = {}
        for r in run.llm:
            key = r.get("status") or "?"
            statuses[key] = statuses.get(key, 0) + 1
        facts.append(("LLM calls", _e(", ".join(f"{k} {v}" for k, v in sorted(statuses.items())))))
    overall = (s.get("adaptability") or {}).get("overall")
    if isinstance(overall, (int, float)):
        facts.append(("control adaptability", f"{overall:+.3f}"))
    return [[k, v] for k, v in facts]


def _img(path: Path, alt: str) -> str:
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return f'<figure><img src="data:image/png;base64,{data}" alt="{_e(alt)}"><figcaption>{_e(alt)}</figcaption></figure>'


def render_html(run: RunLog, images: list[tuple[Path, str]]) -> str:
    """The whole page as a string; ``images``: (PNG path, caption) in page order."""
    parts = [f"<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\">"
             f"<meta name=\"viewport\" content=\"width=device-width,initial-scale=1\">"
             f"<title>edge-run report: {_e(run.path.name)}</title><style>{_CSS}</style></head><body>",
             f"<h1>edge-run report: {_e(run.path.name)}</h1>"]
    parts += [f'<p class="note">{_e(n, 500)}</p>' for n in run.notes]
    parts.append("<h2>Run</h2>" + _table(["", ""], _facts(run)))
    lat = [[name, *(_f(1e3 * st[k], "{:.3f}") if isinstance(st.get(k), (int, float)) else "–"
                    for k in ("p50", "p90", "p99", "max")), str(st.get("count", "–"))] for name, st in latency_rows(run)]
    parts.append("<h2>Latency</h2>" + _table(["ms", "p50", "p90", "p99", "max", "samples"], lat, {1, 2, 3, 4, 5})
                 + f"<p>Control period (deadline): {1e3 * run.period:g} ms.</p>")
    windows = window_rows(run)
    if windows:
        parts.append("<h2>Instruction windows</h2>" + _table(
            ["win", "issued [s]", "instruction", "category", "LLM answer", "applied at", "error", "default error",
             "improvement"], windows, {1, 5, 6, 7, 8})
            + "<p>error: RMS of the category's quantity over the window; default error: the same window "
              "re-simulated from the same state with the default parameters (only in a finished run's "
              "summary.json).</p>")
    spans = run.param_spans()
    parts.append("<h2>MPC parameter sets in force</h2>" + _table(
        ["set", "from [s]", "to [s]", "source", "values that differ from the defaults"],
        [[f"P{sp.index}", _f(sp.t0, "{:.2f}"), _f(sp.t1, "{:.2f}"),
          "initial" if sp.call is None else f"LLM call {sp.call} (window W{sp.window})",
          _e(", ".join(f"{k}={v:g}" for k, v in sp.changed().items()) or "defaults")] for sp in spans], {1, 2}))
    for path, caption in images:
        parts.append(f"<h2>{_e(caption.split(':')[0])}</h2>" + _img(path, caption))
    parts.append("</body></html>\n")
    return "\n".join(parts)
