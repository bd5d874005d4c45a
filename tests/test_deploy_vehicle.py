"""The vehicle agent's own refusals, without ssh: one line each, the right exit status, nothing changed."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("cryptography")

from edge_runtime.deploy.signing import generate_keypair

REPO = Path(__file__).resolve().parents[1]


def agent(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "edge_runtime.deploy", *args], capture_output=True, text=True,
                          timeout=120, cwd=REPO)


@pytest.fixture
def root(tmp_path) -> Path:
    _, pub = generate_keypair(tmp_path / "fleet")
    r = tmp_path / "vehicle"
    proc = agent("init", "--root", str(r), "--trust", str(pub), "--restart-command", "true",
                 "--is-active-command", "true", "--watch", "0")
    assert proc.returncode == 0, proc.stderr
    return r


def one_line(proc: subprocess.CompletedProcess, code: int, words: str) -> None:
    assert proc.returncode == code, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and words in lines[0] and "Traceback" not in proc.stderr, proc.stderr


def test_a_fresh_vehicle_has_nothing_to_run_or_roll_back(root):
    st = json.loads(agent("status", "--root", str(root)).stdout)
    assert st["current"] is None and st["slots"] == {"a": {"status": "empty"}, "b": {"status": "empty"}}
    one_line(agent("run", "--root", str(root)), 1, "nothing installed")
    one_line(agent("rollback", "--root", str(root)), 1, "nothing to roll back")


def test_prepare_refuses_a_disk_without_room_and_bad_input(root):
    config = json.loads((root / "vehicle.json").read_text())
    (root / "vehicle.json").write_text(json.dumps({**config, "min_free_mb": 1 << 40}))
    one_line(agent("prepare", "--root", str(root), "--sha256", "0" * 64, "--size", "1000"), 1, "not enough free space")
    assert not list((root / "staging").iterdir())
    (root / "vehicle.json").write_text(json.dumps(config))
    ok = json.loads(agent("prepare", "--root", str(root), "--sha256", "0" * 64, "--size", "1000").stdout)
    assert ok["offset"] == 0 and ok["staged"].endswith("0" * 64 + ".part")
    (root / "staging" / ("0" * 64 + ".part")).write_bytes(b"x" * 300)
    again = json.loads(agent("prepare", "--root", str(root), "--sha256", "0" * 64, "--size", "1000").stdout)
    assert again["offset"] == 300  # an earlier cut upload resumes there
    one_line(agent("prepare", "--root", str(root), "--sha256", "xyz", "--size", "10"), 2, "64 hex digits")


def test_bad_vehicle_config_and_missing_upload_are_bad_input(root):
    one_line(agent("install", str(root / "staging" / "none.part"), "--root", str(root)), 2, "no such staged bundle")
    config = json.loads((root / "vehicle.json").read_text())
    (root / "vehicle.json").write_text(json.dumps({**config, "watch": 3}))
    one_line(agent("status", "--root", str(root)), 2, "unknown field 'watch'")
    (root / "vehicle.json").write_text(json.dumps({**config, "restart_command": []}))
    one_line(agent("status", "--root", str(root)), 2, "restart_command")
