"""deploy/jetson/setup.sh reports L4T, power mode and clocks from the Jetson tools' own output
(fake nvpmodel / jetson_clocks with an AGX Orin's real output, as jetson-stats tests do), and
--install refuses to run off a Jetson."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SETUP = REPO / "deploy" / "jetson" / "setup.sh"

ORIN_RELEASE = ("# R35 (release), REVISION: 4.1, GCID: 33958178, BOARD: t186ref, EABI: aarch64, "
                "DATE: Tue Aug  1 19:57:35 UTC 2023\n")
NVPMODEL = "NV Power Mode: MAXN\n0\n"
CLOCKS = ("SOC family:tegra234  Machine:Jetson AGX Orin\nOnline CPUs: 0-11\n"
          "cpu0:  Online=1 Governor=schedutil MinFreq=729600 MaxFreq=2201600 CurrentFreq=2201600 IdleStates: WFI=0 c7=0\n"
          "GPU MinFreq=306000000 MaxFreq=1300500000 CurrentFreq=1300500000\nEMC MinFreq=204000000 MaxFreq=3199000000 "
          "CurrentFreq=3199000000 FreqOverride=1\nNV Power Mode: MAXN\n")


def fake_tools(tmp_path: Path) -> dict[str, str]:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, text in (("nvpmodel", NVPMODEL), ("jetson_clocks", CLOCKS)):
        (bin_dir / name).write_text(f"#!/bin/sh\ncat <<'OUT'\n{text}OUT\n")
        (bin_dir / name).chmod(0o755)
    release = tmp_path / "nv_tegra_release"
    release.write_text(ORIN_RELEASE)
    return {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "TEGRA_RELEASE": str(release)}


def test_the_report_reads_l4t_power_mode_and_clocks(tmp_path):
    proc = subprocess.run(["bash", str(SETUP)], env=fake_tools(tmp_path), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    lines = {line.split(None, 1)[0]: line for line in proc.stdout.splitlines() if line.strip()}
    assert lines["L4T"].split()[-1] == "35.4.1"
    assert "NV Power Mode: MAXN" in lines["power"]
    assert "GPU MinFreq=306000000" in proc.stdout and "edge-deploy bundle MODEL.onnx --target" in proc.stdout


def test_install_refuses_off_a_jetson(tmp_path):
    env = {**os.environ, "TEGRA_RELEASE": str(tmp_path / "missing")}
    proc = subprocess.run(["bash", str(SETUP), "--install", "--trust", "k.pub"], env=env, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1] in ("setup.sh: --install needs root (sudo)",
                                                     "setup.sh: not a Jetson; --install stops here")
    assert "not a Jetson" in proc.stdout


def test_unknown_options_are_refused():
    proc = subprocess.run(["bash", str(SETUP), "--bogus"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "unknown option --bogus" in proc.stderr
