"""Process memory: current resident set size and its peak, in bytes."""

from __future__ import annotations

import resource
import sys

import psutil

_PROCESS = psutil.Process()


def process_memory() -> tuple[int, int]:
    """(rss, peak_rss) of this process in bytes."""
    rss = _PROCESS.memory_info().rss
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    peak = peak if sys.platform == "darwin" else peak * 1024  # Linux reports KiB
    return int(rss), int(max(peak, rss))
