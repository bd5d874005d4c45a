"""Latency statistics the way edge engineers read them: percentiles, max, warm-up excluded."""

from __future__ import annotations

from typing import Sequence

import numpy as np


def latency_summary(values: Sequence[float], warmup: int = 0) -> dict[str, float | int]:
    """p50/p90/p99/max/mean of ``values`` after dropping the first ``warmup`` samples.

    The number of samples used and the warm-up length are part of the result, so a summary is
    never read without knowing what it excludes."""
    if warmup < 0:
        raise ValueError("warmup must be >= 0")
    arr = np.asarray(values, dtype=float)[warmup:]
    out: dict[str, float | int] = {"count": int(arr.size), "warmup_excluded": int(min(warmup, len(values)))}
    if arr.size == 0:
        out.update({k: float("nan") for k in ("p50", "p90", "p99", "max", "mean")})
        return out
    p50, p90, p99 = np.percentile(arr, [50, 90, 99])
    out.update({"p50": float(p50), "p90": float(p90), "p99": float(p99), "max": float(arr.max()),
                "mean": float(arr.mean())})
    return out
