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


#: each console script and the module (under ``edge_runtime.``) whose ``main`` it runs
COMMANDS = {"edge-task": "tasks.cli", "edge-run": "runtime.cli", "edge-train": "train.cli",
            "edge-eval": "evaluation.cli", "edge-export": "export.cli", "edge-report": "report.cli",
            "edge-deploy": "deploy.cli"}


def _entry(command: str) -> Callable[[], int]:
    module = f"edge_runtime.{COMMANDS[command]}"

    def run() -> int:
        try:
            main = importlib.import_module(module).main
        except KeyboardInterrupt:
            print(f"{command}: interrupted while starting; nothing was run", file=sys.stderr)
            return EXIT_INTERRUPTED
        return main()

    run.__name__ = run.__qualname__ = command.replace("-", "_")
    run.__doc__ = f"``{command}``: ``{module}.main`` once its module has loaded."
    return run


edge_task = _entry("edge-task")
edge_run = _entry("edge-run")
edge_train = _entry("edge-train")
edge_eval = _entry("edge-eval")
edge_export = _entry("edge-export")
edge_report = _entry("edge-report")
edge_deploy = _entry("edge-deploy")
