"""``edge-run``'s output directory: checked and locked before the model loads, never shared by two runs.

Why before the model loads: a path that cannot hold the results should cost one line, not a model
load and a drive whose telemetry then has nowhere to go. Why a lock: two runs writing the same
``steps.jsonl`` interleave into lines that belong to neither, and one run's summary would describe
the other's log. Why refuse an earlier run's files unless ``--overwrite``: a new log beside an
old summary (the new run died before writing its own) reads as one run; with ``--overwrite`` the
old files are removed (:meth:`OutputDir.clear_previous`) before the new run writes anything.

The lock is ``fcntl.flock`` on ``DIR/.lock``, held for the whole run and released by the kernel
when the process ends however it ends, so a killed run never leaves a stale lock; the file stays
and holds the pid of the last run that took it (named in the message a second run gets).
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

#: The files a run writes into its directory.
RUN_FILES = ("steps.jsonl", "summary.json", "summary.json.tmp")
LOCK_NAME = ".lock"


class OutputDirError(ValueError):
    """The output directory cannot be used; the message names it and what to do."""


def _file_ancestor(path: Path) -> Path | None:
    """The first existing ancestor of ``path`` that is not a directory."""
    for parent in reversed(path.parents):
        if parent.exists() and not parent.is_dir():
            return parent
    return None


def _holder(fd: int) -> str:
    try:
        pid = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
    except OSError:
        return ""
    return f" (pid {pid})" if pid.isdigit() else ""


class OutputDir:
    """A claimed output directory: the lock is held until :meth:`release`."""

    def __init__(self, path: Path, fd: int, previous: list[str]) -> None:
        self.path, self._fd, self.previous = path, fd, previous

    def clear_previous(self) -> None:
        """Remove an earlier run's files (only claimed with ``overwrite``), before anything new is written."""
        for name in self.previous:
            try:
                (self.path / name).unlink(missing_ok=True)
            except OSError as exc:
                raise OutputDirError(f"--out {self.path}: cannot remove the earlier run's {name} "
                                     f"({exc.strerror or exc}); remove it yourself or choose another --out") from None
        self.previous = []

    def release(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)  # releases the flock
            self._fd = -1


def claim_output_dir(path: str | Path, overwrite: bool = False) -> OutputDir:
    """Create ``path`` if needed, lock it for this run and check it can take a run's files."""
    out = Path(path)
    if out.exists() and not out.is_dir():
        raise OutputDirError(f"--out {out}: is a file, not a directory; give a directory path "
                             "(it is created if missing)")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        blocker = _file_ancestor(out)
        raise OutputDirError(f"--out {out}: {blocker or 'a parent'} is a file, so no directory can be made "
                             "under it; choose another --out") from None
    except OSError as exc:
        raise OutputDirError(f"--out {out}: cannot create the directory ({exc.strerror or exc}); "
                             "choose a writable location with --out") from None
    if not os.access(out, os.W_OK | os.X_OK):
        raise OutputDirError(f"--out {out}: the directory is not writable; choose a writable directory with --out")
    try:
        fd = os.open(out / LOCK_NAME, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    except OSError as exc:
        raise OutputDirError(f"--out {out}: not writable ({exc.strerror or exc}); choose a writable "
                             "directory with --out") from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise OutputDirError(f"--out {out}: another edge-run is writing there{_holder(fd)}; wait for it to "
                                 "finish or choose another --out") from None
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode("ascii"), 0)
        except OSError as exc:
            raise OutputDirError(f"--out {out}: not writable ({exc.strerror or exc}); choose a writable "
                                 "directory with --out") from None
        for name in RUN_FILES:
            target = out / name
            if target.is_dir() and not target.is_symlink():
                raise OutputDirError(f"--out {out}: {target} is a directory; remove it or choose another --out")
        previous = [name for name in RUN_FILES if (out / name).exists() or (out / name).is_symlink()]
        if previous and not overwrite:
            raise OutputDirError(f"--out {out}: holds an earlier run ({', '.join(previous)}); pass --overwrite to "
                                 "replace it, or choose another --out")
    except BaseException:
        os.close(fd)
        raise
    return OutputDir(out, fd, previous)
