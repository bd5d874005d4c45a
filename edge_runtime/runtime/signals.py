"""Stop signals for the whole of an ``edge-run``: one clean stop, never a lost summary.

SIGINT, SIGTERM and SIGHUP are handled from the first line of ``main`` until it returns, start-up
included. Why each phase behaves as it does:

* **Start-up** (argument checks, model load, warm-up): nothing has run, so the first signal raises
  :class:`Interrupted` (a ``BaseException``, like ``KeyboardInterrupt``, so that no
  ``except Exception`` swallows it); ``edge-run`` prints one line and exits
  :data:`EXIT_INTERRUPTED`, without a traceback.
* **Run and shutdown**: after :meth:`StopSignals.running` the first signal only sets
  :attr:`StopSignals.stop`, which the control loop polls once per step. Every later signal is
  recorded and otherwise ignored -- the handlers stay installed until the summary is written, so a
  second SIGTERM from a supervisor, or a nervous second Ctrl-C, cannot kill the process halfway
  through writing it. SIGKILL remains the way to abort.

At the end, an embedding caller gets its handlers back (:meth:`StopSignals.restore`); the command
line instead ignores stop signals until the process is gone (:meth:`StopSignals.ignore_until_exit`),
because the interpreter drops Python handlers while it shuts down and a late repeat would then
kill it with SIGTERM's status after all. Only the main thread can install signal handlers;
called from another thread (an embedding application), :class:`StopSignals` leaves the
process's handlers alone.
"""

from __future__ import annotations

import signal
import threading
from types import FrameType
from typing import Any

#: The signals that stop a run cleanly.
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)

#: Exit status of a run stopped by one of STOP_SIGNALS (the shell's code for SIGINT, used for all
#: three: the run was cut short on request, and its summary was still written).
EXIT_INTERRUPTED = 130


class Interrupted(BaseException):
    """A stop signal arrived during start-up; ``args[0]`` is the signal's name."""


class StopSignals:
    """Install with :meth:`install`, switch to run mode with :meth:`running`, :meth:`restore` at exit."""

    def __init__(self) -> None:
        self.stop = threading.Event()
        self.received: list[str] = []  # every stop signal, in order of arrival
        self._starting = True
        self._previous: dict[int, Any] = {}

    def install(self) -> "StopSignals":
        if threading.current_thread() is threading.main_thread():
            for s in STOP_SIGNALS:
                self._previous[s] = signal.signal(s, self._handle)
        return self

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        name = signal.Signals(signum).name
        self.received.append(name)
        if self.stop.is_set():
            return  # a repeat while stopping: recorded, never fatal
        self.stop.set()
        if self._starting:
            raise Interrupted(name)

    def running(self) -> None:
        """From now on a stop signal asks the loop to stop instead of raising."""
        self._starting = False

    @property
    def first(self) -> str | None:
        return self.received[0] if self.received else None

    def ignore_until_exit(self) -> None:
        """The command line's end: the exit status is decided, so further stop signals are ignored
        (SIG_IGN, which -- unlike a Python handler -- the interpreter keeps while it shuts down) and
        cannot turn that status into a kill."""
        for s in self._previous:
            signal.signal(s, signal.SIG_IGN)
        self._previous.clear()

    def restore(self) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)
        self._previous.clear()
