"""``edge-run --selftest``: the deploy health check passes a working model and fails, with a reason,
one that is too slow or does not load (one JSON line, exit 0 / 1; bad input exit 2)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "models" / "tiny" / "dense.onnx"

pytestmark = pytest.mark.slow  # 2 s of the real-time loop per check


def selftest(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "edge_runtime.runtime.cli", "--selftest", *args],
                          capture_output=True, text=True, timeout=300, cwd=REPO)


def one_json_line(proc: subprocess.CompletedProcess) -> dict:
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 1, proc.stdout + proc.stderr
    return json.loads(lines[0])


def test_the_shipped_tiny_model_passes():
    proc = selftest("--model", str(TINY), "--threads", "1")
    result = one_json_line(proc)
    assert proc.returncode == 0, result
    assert result["selftest"] == "pass" and result["reasons"] == []
    assert result["answer"]["params"] is not None
    assert result["loop"]["steps"] == 40 and result["loop"]["overruns"] == 0


def test_an_answer_over_the_budget_fails_and_says_so():
    proc = selftest("--model", str(TINY), "--threads", "1", "--selftest-budget", "1e-9")
    result = one_json_line(proc)
    assert proc.returncode == 1
    assert result["selftest"] == "fail"
    assert any("over the budget" in r for r in result["reasons"])


def test_a_corrupt_model_fails_the_check(tmp_path):
    bad = tmp_path / "cut.onnx"
    bad.write_bytes(TINY.read_bytes()[:4096])
    proc = selftest("--model", str(bad))
    result = one_json_line(proc)
    assert proc.returncode == 1
    assert result["reasons"] and result["reasons"][0].startswith("model did not load")


@pytest.mark.parametrize("args, words", [
    (("--model", "no/such.onnx"), "file not found"),
    ((), "needs --model"),
    (("--model", str(TINY), "--selftest-budget", "0"), "positive"),
])
def test_bad_input_is_one_line_exit_2(args, words):
    proc = selftest(*args)
    assert proc.returncode == 2
    assert proc.stdout == "" and len(proc.stderr.strip().splitlines()) == 1 and words in proc.stderr
