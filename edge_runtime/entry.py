"""The console scripts' entry points: each imports its command's module, then runs its ``main``.

Why a module of its own: the command modules import numpy, ONNX Runtime and the simulator when
they load, which takes a moment. A Ctrl-C (or SIGTERM turned into ``KeyboardInterrupt``) in that
moment used to end in a traceback from the script wrapper, before any of the commands' own signal
handling existed. Importing here, inside a handler, turns it into the commands' usual one line and
exit status 130. This module itself imports nothing heavy.
"""

from __future__ import annotations

import importlib
import sys
from typing import Callable

EXIT_INTERRUPTED = 130


def _entry(module: str, command: str) -> Callable[[], int]:
    def run() -> int:
        try:
            main = importlib.import_module(f"edge_runtime.{module}").main
        except KeyboardInterrupt:
            print(f"{command}: interrupted while starting; nothing was run", file=sys.stderr)
            return EXIT_INTERRUPTED
        return main()

    run.__name__ = run.__qualname__ = command.replace("-", "_")
    run.__doc__ = f"``{command}``: ``edge_runtime.{module}.main`` once its module has loaded."
    return run


#: each console script and the module (under ``edge_runtime.``) whose ``main`` it runs
COMMANDS = {"edge-task": "tasks.cli", "edge-run": "runtime.cli", "edge-train": "train.cli",
            "edge-eval": "evaluation.cli", "edge-export": "export.cli", "edge-report": "report.cli",
            "edge-deploy": "deploy.cli"}

edge_task = _entry(COMMANDS["edge-task"], "edge-task")
edge_run = _entry(COMMANDS["edge-run"], "edge-run")
edge_train = _entry(COMMANDS["edge-train"], "edge-train")
edge_eval = _entry(COMMANDS["edge-eval"], "edge-eval")
edge_export = _entry(COMMANDS["edge-export"], "edge-export")
edge_report = _entry(COMMANDS["edge-report"], "edge-report")
edge_deploy = _entry(COMMANDS["edge-deploy"], "edge-deploy")
