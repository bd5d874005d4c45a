"""Telemetry files that stay valid when a run is interrupted, killed, or runs out of disk.

Durability policy of :class:`JsonlWriter` (the one ``edge-run`` uses for ``steps.jsonl``):

* **Every record is handed to the OS at once, whole.** Its line is built first, then written with
  one ``pwrite`` call; there is no user-space buffer. A crash of the process (an exception,
  ``kill -9``) therefore loses no record that :meth:`JsonlWriter.write` returned from.
* **Power loss is bounded in time, not in records.** A background thread ``fsync``s the file every
  ``fsync_interval`` seconds (when something new was written) and :meth:`JsonlWriter.close`
  fsyncs once more, so a power loss or kernel crash loses about the last ``fsync_interval``
  seconds of records (plus the time one fsync takes). The fsync runs off the writing thread,
  because on an SD card or eMMC one fsync can take longer than a control period.
  ``fsync_interval=0`` fsyncs after every record on the writing thread (durable, slow);
  ``None`` only on close. What the policy costs per control step: ``bench/telemetry_durability.py``.
* **A full or failing disk never reaches the caller.** ``write`` catches ``OSError`` (ENOSPC,
  EIO, EROFS, ...) and keeps the line in a bounded in-memory tail (the last ``tail`` records);
  later writes first retry the tail, in order, so when space comes back the most recent records
  still reach the file. Records pushed out of the tail, and those still in it at ``close``, are
  counted as ``dropped``; :meth:`JsonlWriter.health` reports the counts and the first error. A
  write cut short by a full disk is truncated back to the last whole line, so no torn line is
  left behind (if even the truncation fails, the next write starts at the same offset and
  ``close`` truncates again).

A :class:`JsonlWriter` may be shared by threads (the control loop, which also writes the LLM
worker's records, and the GPU sampler's thread): each line is written under a lock, so lines never
interleave. Summaries go through :func:`write_json_atomic`: a temporary file, fsynced and renamed
into place, removed again when anything fails, so a reader never sees half a summary.
"""

from __future__ import annotations

import errno
import json
import math
import os
import threading
from collections import deque
from pathlib import Path
from typing import Any

DEFAULT_FSYNC_INTERVAL = 1.0  # s: the power-loss window of the log
DEFAULT_TAIL = 256  # records kept in memory while the disk refuses them

#: The low-level write; a module attribute so that tests can inject a failing disk.
_pwrite = os.pwrite


def _clean(value: Any) -> Any:
    """JSON has no NaN/inf: write them as null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    return value


def json_line(record: dict[str, Any]) -> str:
    """One compact JSON line (NaN/inf as null), newline included."""
    return json.dumps(_clean(record), separators=(",", ":")) + "\n"


def _describe(exc: OSError) -> str:
    return f"{errno.errorcode.get(exc.errno, 'OSError') if exc.errno else 'OSError'}: {exc.strerror or exc}"


class JsonlWriter:
    """JSON-lines log under the durability policy in the module docstring."""

    def __init__(self, path: str | Path, fsync_interval: float | None = DEFAULT_FSYNC_INTERVAL,
                 tail: int = DEFAULT_TAIL) -> None:
        if fsync_interval is not None and not (fsync_interval >= 0 and math.isfinite(fsync_interval)):
            raise ValueError(f"JsonlWriter: fsync_interval must be >= 0 seconds or None, got {fsync_interval}")
        if tail < 1:
            raise ValueError(f"JsonlWriter: tail must be >= 1 record, got {tail}")
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
        self.fsync_interval = fsync_interval
        self._lock = threading.Lock()  # the file offset, the tail and the counters
        self._note_lock = threading.Lock()  # errors, noted from the writers and the fsync thread
        self._closed = False
        self._offset = 0  # end of the last whole line in the file
        self._torn = False  # bytes past _offset that a failed truncation left behind
        self._tail: deque[bytes] = deque(maxlen=tail)
        self.records = 0  # lines in the file
        self.dropped = 0  # records lost for good
        self.write_errors = 0
        self.first_error: str | None = None
        self._synced = 0  # offset covered by the last successful fsync
        self._stop_sync = threading.Event()
        self._sync_thread: threading.Thread | None = None
        if fsync_interval:
            self._sync_thread = threading.Thread(target=self._sync_loop, name="telemetry-fsync", daemon=True)
            self._sync_thread.start()

    # ------------------------------------------------------------------ writing
    def write(self, record: dict[str, Any]) -> bool:
        """Append one record; True when its line reached the OS, False when it waits in the tail."""
        line = json_line(record).encode("utf-8")  # serialise outside the lock
        with self._lock:
            if self._closed:
                raise ValueError(f"{self.path}: write to a closed telemetry log")
            if self._tail:
                self._drain()  # older lines first, so the file stays in order
            if not self._tail and self._put(line):
                if self.fsync_interval == 0:
                    self._fsync()
                return True
            if len(self._tail) == self._tail.maxlen:
                self.dropped += 1  # the oldest waiting record falls out
            self._tail.append(line)
            return False

    def _put(self, data: bytes) -> bool:
        """One pwrite of a whole line at the end of the last good line; False (noted) on failure."""
        try:
            n = _pwrite(self._fd, data, self._offset)
        except OSError as exc:
            self._note(exc)
            return False
        if n == len(data):
            self._offset += n
            self.records += 1
            if self._torn:
                self._truncate()
            return True
        self._note(OSError(errno.ENOSPC, f"{os.strerror(errno.ENOSPC)} (write cut short after {n} of {len(data)} bytes)"))
        if n > 0:
            self._torn = True
            self._truncate()
        return False

    def _truncate(self) -> None:
        try:
            os.ftruncate(self._fd, self._offset)
            self._torn = False
        except OSError as exc:
            self._note(exc)

    def _drain(self) -> None:
        while self._tail and self._put(self._tail[0]):
            self._tail.popleft()

    def _note(self, exc: OSError) -> None:
        with self._note_lock:
            self.write_errors += 1
            if self.first_error is None:
                self.first_error = _describe(exc)

    # ------------------------------------------------------------------ syncing
    def _fsync(self) -> None:
        target = self._offset
        if target == self._synced:
            return
        try:
            os.fsync(self._fd)
        except OSError as exc:
            self._note(exc)
        else:
            self._synced = target

    def _sync_loop(self) -> None:
        while not self._stop_sync.wait(self.fsync_interval):
            self._fsync()

    def flush(self) -> None:
        """Retry the records waiting in the tail now (each written record already reached the OS)."""
        with self._lock:
            if not self._closed:
                self._drain()

    def close(self) -> None:
        """Last try for the tail (what stays there is dropped), truncate any torn bytes, fsync, close."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        if self._sync_thread is not None:
            self._stop_sync.set()
            self._sync_thread.join()
        with self._lock:
            self._drain()
            self.dropped += len(self._tail)
            self._tail.clear()
            if self._torn:
                self._truncate()
        self._fsync()
        os.close(self._fd)

    @property
    def pending(self) -> int:
        """Records waiting in the in-memory tail for the disk to take them."""
        return len(self._tail)

    def health(self) -> dict[str, Any]:
        """What the log holds and what it lost, for the run summary."""
        return {"path": str(self.path), "records": self.records, "dropped": self.dropped,
                "pending": len(self._tail), "write_errors": self.write_errors, "first_error": self.first_error,
                "tail_capacity": self._tail.maxlen, "fsync_interval_s": self.fsync_interval}

    def __enter__(self) -> "JsonlWriter":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def write_json_atomic(path: str | Path, payload: dict[str, Any]) -> None:
    """Write ``payload`` to ``path`` through ``path.tmp`` (fsynced, then renamed): readers see the
    old file or the whole new one. On any failure the temporary file is removed and the error
    raised, so no ``.tmp`` is left behind."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    data = (json.dumps(_clean(payload), indent=2) + "\n").encode("utf-8")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            tmp.unlink()
        except OSError:
            pass
        raise
