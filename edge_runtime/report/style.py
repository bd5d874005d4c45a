"""One plotting style for every picture the project draws (reports, benchmark scripts).

Why one place: the run report, ``bench/reproduce_bpf.py`` and any later benchmark plot should
look alike (sizes, fonts, colours, file metadata) and all select the headless Agg backend the same
way, so that a plot never tries to open a window on a server or a vehicle computer.

matplotlib is imported only inside these functions: ``import edge_runtime.report.style`` stays
cheap and a missing matplotlib is reported by :func:`pyplot` as :class:`PlottingUnavailable`
with the install command, instead of an ImportError traceback.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

#: Colours by meaning, so that a quantity has the same colour in every figure.
COLORS = {
    "measured": "#1f77b4", "target": "#d62728", "default": "#7f7f7f", "track": "#333333",
    "centre": "#999999", "racing": "#2ca02c", "llm": "#9467bd", "deadline": "#d62728", "overrun": "#ff7f0e",
    "dropped": "#8c564b", "memory": "#17becf",
}
#: Fill colours of consecutive parameter-set windows (cycled).
WINDOW_FILLS = ("#f2f2f2", "#e3ecf7", "#f7ece3", "#e8f5e4", "#f3e6f5", "#f7f3dc")
DPI = 110
INSTALL_HINT = 'pip install -e ".[report]"'


class PlottingUnavailable(RuntimeError):
    """matplotlib cannot be imported; the message says what to install (one line)."""


def pyplot() -> Any:
    """matplotlib.pyplot on the Agg backend (files only, no display), with the project's rcParams."""
    try:
        import matplotlib
    except ImportError as exc:
        raise PlottingUnavailable(f"matplotlib is not installed ({exc}); install the report extra: "
                                  f"{INSTALL_HINT}") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.rcParams.update({
        "figure.dpi": DPI, "savefig.dpi": DPI, "font.size": 9, "axes.titlesize": 10, "axes.labelsize": 9,
        "legend.fontsize": 8, "axes.grid": True, "grid.alpha": 0.3, "axes.spines.top": False,
        "axes.spines.right": False,
    })
    return plt


def figure(rows: int = 1, cols: int = 1, size: tuple[float, float] = (7.0, 4.5), **kwargs: Any) -> tuple[Any, Any]:
    """``plt.subplots`` in the project style."""
    return pyplot().subplots(rows, cols, figsize=size, **kwargs)


def save(fig: Any, path: str | Path) -> Path:
    """Write ``fig`` as a PNG (tight layout, no software/date metadata: the same run gives the same
    bytes) and close it, so that long report runs do not pile up open figures."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, format="png", metadata={"Software": None})
    pyplot().close(fig)
    return path


def cdf(ax: Any, values: Sequence[float], label: str, scale: float = 1e3, color: str | None = None) -> bool:
    """Empirical CDF of ``values`` (seconds, drawn in ms by default) on ``ax``; False when empty."""
    v = np.sort(np.asarray([x for x in values if x is not None and np.isfinite(x)], dtype=float)) * scale
    if v.size == 0:
        return False
    ax.step(v, np.arange(1, v.size + 1) / v.size, where="post", label=f"{label} (n={v.size})", color=color)
    ax.set_ylim(0.0, 1.02)
    ax.set_ylabel("fraction ≤ x")
    return True


def empty(ax: Any, message: str) -> None:
    """An axis that says why it has no data, instead of a blank square."""
    ax.text(0.5, 0.5, message, ha="center", va="center", transform=ax.transAxes, color=COLORS["default"],
            wrap=True)
    ax.set_xticks([])
    ax.set_yticks([])
