"""Telemetry files that stay valid when a run is interrupted.

JSON lines are written one complete line at a time; the file is flushed every ``flush_every``
lines (a flush per 50 ms control step would put a system call on the control thread each step)
and flushed and fsynced on :meth:`JsonlWriter.close`, which ``edge-run`` reaches on Ctrl-C and
SIGTERM too. A process killed without closing (SIGKILL, power loss) loses at most the lines
written since the last flush, and its last line on disk may be cut short: every line but the
last parses. Summaries are written to a temporary file and renamed into place, so a reader never
sees half a summary. A :class:`JsonlWriter` may be shared by threads (the control loop, which
also writes the LLM worker's records, and the GPU sampler's thread): each line is written under
a lock, so lines never interleave.
"""

from __future__ import annotations

import json
import math
import os
import threading
from pathlib import Path
from typing import Any


def _clean(value: Any) -> Any:
    """JSON has no NaN/inf: write them as null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    return value


class JsonlWriter:
    def __init__(self, path: str | Path, flush_every: int = 20) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._f = open(self.path, "w", encoding="utf-8")
        self._flush_every = max(1, flush_every)
        self._pending = 0
        self._lock = threading.Lock()
        self.records = 0

    def write(self, record: dict[str, Any]) -> None:
        line = json.dumps(_clean(record), separators=(",", ":")) + "\n"  # serialise outside the lock
        with self._lock:
            if self._f.closed:
                raise ValueError(f"{self.path}: write to a closed telemetry log")
            self._f.write(line)
            self.records += 1
            self._pending += 1
            if self._pending >= self._flush_every:
                self._f.flush()
                self._pending = 0

    def flush(self) -> None:
        with self._lock:
            if not self._f.closed:
                self._f.flush()
            self._pending = 0

    def close(self) -> None:
        with self._lock:
            if not self._f.closed:
                self._f.flush()
                os.fsync(self._f.fileno())
                self._f.close()

    def __enter__(self) -> "JsonlWriter":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def write_json_atomic(path: str | Path, payload: dict[str, Any]) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(_clean(payload), indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, path)
