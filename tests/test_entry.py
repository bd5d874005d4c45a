"""The console scripts' entry points (edge_runtime/entry.py): a real SIGINT while a command's module
loads ends in one line and exit status 130, not a traceback; otherwise the command runs as itself."""

from __future__ import annotations

import importlib
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPTS = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]

# SIGINT to this very process at the moment the command's module is looked up: the default handler
# raises KeyboardInterrupt there, exactly as a Ctrl-C during a slow import does.
INTERRUPT_WHILE_LOADING = """
import importlib.abc, os, signal, sys
# as at a terminal: a background job (nohup, CI) starts with SIGINT ignored, and Python then keeps it so
signal.signal(signal.SIGINT, signal.default_int_handler)
class InterruptOnLoad(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name == {module!r}:
            os.kill(os.getpid(), signal.SIGINT)
        return None
sys.meta_path.insert(0, InterruptOnLoad())
sys.argv = [{command!r}, "--help"]
import edge_runtime.entry as entry
sys.exit(getattr(entry, {attr!r})())
"""


def _module_of(command: str) -> str:
    from edge_runtime.entry import COMMANDS
    return f"edge_runtime.{COMMANDS[command]}"


def test_every_console_script_goes_through_entry_to_its_command_main():
    from edge_runtime import entry
    assert set(SCRIPTS) == set(entry.COMMANDS)
    for command, target in SCRIPTS.items():
        attr = command.replace("-", "_")
        assert target == f"edge_runtime.entry:{attr}" and getattr(entry, attr).__name__ == attr
        assert callable(importlib.import_module(_module_of(command)).main)


@pytest.mark.parametrize("command", ["edge-run", "edge-eval", "edge-deploy"])
def test_sigint_while_the_command_loads_is_one_line_and_exit_130(command):
    code = INTERRUPT_WHILE_LOADING.format(module=_module_of(command), command=command,
                                          attr=SCRIPTS[command].split(":")[1])
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=REPO)
    assert proc.returncode == 130, proc.stderr
    assert proc.stderr == f"{command}: interrupted while starting; nothing was run\n"
    assert proc.stdout == ""


def test_without_a_signal_the_command_runs_as_itself():
    code = INTERRUPT_WHILE_LOADING.format(module="no.such.module", command="edge-run", attr="edge_run")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("usage: edge-run")
