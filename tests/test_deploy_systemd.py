"""deploy/systemd/edge-runtime.service: systemd itself parses it without a complaint, and it keeps
the hardening the vehicle relies on (non-root, read-only system, private /tmp, restart policy)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
UNIT = REPO / "deploy" / "systemd" / "edge-runtime.service"
AGENT_PATH = "/opt/edge_runtime/agent/bin/edge-deploy"


def directives() -> dict[str, str]:
    out = {}
    for line in UNIT.read_text().splitlines():
        if "=" in line and not line.lstrip().startswith("#"):
            key, value = line.split("=", 1)
            out.setdefault(key.strip(), value.strip())
    return out


def test_the_unit_is_hardened_and_restarts():
    d = directives()
    assert d["User"] not in ("", "root") and d["NoNewPrivileges"] == "yes"
    assert d["ProtectSystem"] == "strict" and d["PrivateTmp"] == "yes" and d["ProtectHome"] == "yes"
    assert d["CapabilityBoundingSet"] == "" and "/var/lib/edge-runtime" in d["ReadWritePaths"]
    assert d["Restart"] == "on-failure" and d["ExecStart"].startswith(AGENT_PATH + " run")


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed")
def test_systemd_analyze_verify_accepts_it_without_warnings(tmp_path):
    # the unit's ExecStart must exist for verify; point it at this checkout's edge-deploy
    agent = Path(sys.executable).with_name("edge-deploy")
    if not agent.exists():
        pytest.skip("edge-deploy console script not installed")
    unit = tmp_path / "edge-runtime.service"
    unit.write_text(UNIT.read_text().replace(AGENT_PATH, str(agent)))
    proc = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and proc.stdout.strip() == "" and proc.stderr.strip() == "", proc.stderr
    # and verify does catch a bad value (the check can fail)
    unit.write_text(unit.read_text().replace("ProtectSystem=strict", "ProtectSystem=bogus"))
    proc = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, timeout=60)
    assert "protect system" in (proc.stdout + proc.stderr).lower()
