"""GPU / Jetson telemetry: the tegrastats parser on recorded per-board lines, a fake ``tegrastats``
(and ``nvpmodel`` / ``jetson_clocks``) on PATH driving the sampler and edge-run end to end, a fake
``pynvml``, and missing tools reported as unavailable without a crash."""

from __future__ import annotations

import json
import os
import sys
import textwrap
import time
import types
from pathlib import Path

import pytest

from edge_runtime.telemetry import gpu
from edge_runtime.telemetry.gpu import (
    NO_SAMPLER_NOTE,
    parse_tegrastats,
    platform_info,
    start_gpu_sampler,
)
from edge_runtime.telemetry.writer import JsonlWriter

MIB = 1 << 20

# Recorded-format lines (numbers made up, layout as each JetPack prints it).
JP5_ORIN = ("11-25-2026 18:40:01 RAM 9120/30593MB (lfb 3571x4MB) SWAP 0/15296MB (cached 0MB) "
            "CPU [12%@2201,8%@2201,3%@2201,5%@2201,0%@2201,1%@2201,0%@2201,2%@2201,off,off,off,off] "
            "EMC_FREQ 7%@3199 GR3D_FREQ 61%@1300 VIC_FREQ 115 APE 174 CV0@-256C CPU@48.968C Tboard@37C "
            "SOC2@45.25C Tdiode@38.5C SOC0@45.593C CV1@-256C GPU@46.25C tj@48.968C SOC1@44.031C CV2@-256C "
            "VDD_GPU_SOC 7123mW/6841mW VDD_CPU_CV 1992mW/1903mW VIN_SYS_5V0 4731mW/4702mW NC 0mW/0mW "
            "VDDQ_VDD2_1V8AO 1403mW/1384mW NC 0mW/0mW")
JP6_ORIN = ("11-25-2026 18:41:12 RAM 11874/62841MB (lfb 8x4MB) SWAP 0/31421MB (cached 0MB) "
            "CPU [21%@2201,14%@2201,9%@2201,11%@2201,4%@2201,3%@2201,0%@2201,1%@2201,2%@2201,0%@2201,0%@2201,0%@2201] "
            "EMC_FREQ 12%@3199 GR3D_FREQ 12%@[1300,1300] NVENC off NVDEC off NVJPG off NVJPG1 off VIC off OFA off "
            "NVDLA0 off NVDLA1 off PVA0_FREQ off APE 174 cpu@52.125C soc2@47.5C soc0@48.75C gpu@47.062C "
            "tj@52.125C soc1@47.843C VDD_GPU_SOC 3185mW/3102mW/7322mW VDD_CPU_CV 1194mW/1150mW/2389mW "
            "VIN_SYS_5V0 4928mW/4880mW/5130mW")
JP6_UNIT_LAST = "RAM 2048/7620MB (lfb 12x4MB) GR3D_FREQ 0%@[306] VDD_IN 4402/4380/5120mW VDD_CPU_GPU_CV 601/590/900mW"
TX2 = ("RAM 2721/7860MB (lfb 1012x4MB) SWAP 0/3930MB (cached 0MB) CPU [8%@2035,off,off,3%@2035,5%@2035,2%@2035] "
       "EMC_FREQ 4%@1866 GR3D_FREQ 12%@1300 APE 150 PLL@44.5C MCPU@44.5C PMIC@100C Tboard@40C GPU@42.5C "
       "BCPU@44.5C thermal@43.3C Tdiode@41.25C VDD_SYS_GPU 152/152 VDD_SYS_SOC 685/685 VDD_4V0_WIFI 0/0 "
       "VDD_IN 5000/4800 VDD_SYS_CPU 228/228 VDD_SYS_DDR 534/534")
NANO = ("RAM 1536/3956MB (lfb 211x4MB) SWAP 0/1978MB (cached 0MB) CPU [31%@1479,12%@1479,9%@1479,17%@1479] "
        "EMC_FREQ 0% GR3D_FREQ 0% PLL@24.5C CPU@27C PMIC@100C GPU@25.5C AO@35C thermal@26.25C "
        "POM_5V_IN 2311/2298 POM_5V_GPU 40/38 POM_5V_CPU 620/611")


# ------------------------------------------------------------------------------------ parser
def test_parse_jetpack5_orin():
    r = parse_tegrastats(JP5_ORIN)
    assert r["ram_used"] == 9120 * MIB and r["ram_total"] == 30593 * MIB
    assert r["swap_used"] == 0 and r["swap_total"] == 15296 * MIB
    assert r["gpu_util"] == pytest.approx(0.61) and r["gpu_freq_hz"] == [1_300_000_000]
    assert r["emc_util"] == pytest.approx(0.07) and r["emc_freq_hz"] == 3_199_000_000
    assert r["cpu_util"][:2] == [0.12, 0.08] and r["cpu_util"][-1] is None and len(r["cpu_util"]) == 12
    assert r["rails_w"]["VDD_GPU_SOC"] == pytest.approx(7.123) and r["rails_avg_w"]["VDD_GPU_SOC"] == pytest.approx(6.841)
    assert r["power_w"] == pytest.approx(7.123 + 1.992 + 4.731)
    assert r["power_source"] == "VDD_GPU_SOC+VDD_CPU_CV+VIN_SYS_5V0"
    assert r["temps_c"]["GPU"] == pytest.approx(46.25) and "CV0" not in r["temps_c"]  # -256C: sensor off
    assert "RAM" not in r["rails_w"] and "SWAP" not in r["rails_w"]


def test_parse_jetpack6_orin():
    r = parse_tegrastats(JP6_ORIN)
    assert r["ram_used"] == 11874 * MIB and r["ram_total"] == 62841 * MIB
    assert r["gpu_util"] == pytest.approx(0.12) and r["gpu_freq_hz"] == [1_300_000_000, 1_300_000_000]
    assert r["rails_w"] == pytest.approx({"VDD_GPU_SOC": 3.185, "VDD_CPU_CV": 1.194, "VIN_SYS_5V0": 4.928})
    assert r["rails_avg_w"]["VDD_CPU_CV"] == pytest.approx(1.150)
    assert r["power_w"] == pytest.approx(3.185 + 1.194 + 4.928)
    assert r["temps_c"]["gpu"] == pytest.approx(47.062)
    # JetPack 6 boards that print the unit only after the last number, and VDD_IN as the total
    r = parse_tegrastats(JP6_UNIT_LAST)
    assert r["gpu_freq_hz"] == [306_000_000] and r["power_w"] == pytest.approx(4.402)
    assert r["power_source"] == "VDD_IN" and r["rails_w"]["VDD_CPU_GPU_CV"] == pytest.approx(0.601)


def test_parse_older_boards():
    r = parse_tegrastats(TX2)
    assert r["ram_used"] == 2721 * MIB and r["gpu_util"] == pytest.approx(0.12)
    assert r["gpu_freq_hz"] == [1_300_000_000]
    assert r["power_w"] == pytest.approx(5.0) and r["power_source"] == "VDD_IN"
    assert r["rails_avg_w"]["VDD_IN"] == pytest.approx(4.8)
    assert r["cpu_util"][1] is None
    r = parse_tegrastats(NANO)
    assert r["gpu_util"] == 0.0 and "gpu_freq_hz" not in r and r["emc_util"] == 0.0
    assert r["power_w"] == pytest.approx(2.311) and r["power_source"] == "POM_5V_IN"


@pytest.mark.parametrize("line", ["", "hello world", "Traceback (most recent call last):", "RAM lots"])
def test_parse_rejects_non_tegrastats(line):
    with pytest.raises(ValueError):
        parse_tegrastats(line)


# ----------------------------------------------------------------------------- fake tools
def fake_tool(bindir: Path, name: str, body: str) -> Path:
    path = bindir / name
    path.write_text(f"#!{sys.executable}\n" + textwrap.dedent(body))
    path.chmod(0o755)
    return path


def fake_tegrastats(bindir: Path, lines: list[str], exit_after: bool = False, status: int = 0) -> Path:
    """A ``tegrastats`` that records its argv and prints ``lines`` in a loop at ``--interval`` ms."""
    return fake_tool(bindir, "tegrastats", f"""
        import sys, time, pathlib
        pathlib.Path({str(bindir / 'argv.txt')!r}).write_text(" ".join(sys.argv[1:]))
        ms = int(sys.argv[sys.argv.index("--interval") + 1]) if "--interval" in sys.argv else 1000
        lines = {lines!r}
        i = 0
        while True:
            print(lines[i % len(lines)], flush=True)
            i += 1
            if {exit_after!r} and i == len(lines):
                sys.exit({status})
            time.sleep(ms / 1000.0)
    """)


@pytest.fixture
def bindir(tmp_path, monkeypatch) -> Path:
    """An otherwise empty PATH directory (python stays reachable through sys.executable)."""
    d = tmp_path / "bin"
    d.mkdir()
    monkeypatch.setenv("PATH", str(d))
    monkeypatch.setitem(sys.modules, "pynvml", None)  # import pynvml -> ImportError
    return d


def test_fake_tegrastats_drives_the_sampler(bindir, tmp_path):
    fake_tegrastats(bindir, [JP5_ORIN, JP6_ORIN, "garbage line", TX2])
    fake_tool(bindir, "nvpmodel", 'print("NV Power Mode: MAXN\\n0")\n')
    fake_tool(bindir, "jetson_clocks", 'print("GPU MinFreq=1300500000 MaxFreq=1300500000 CurrentFreq=1300500000\\n'
                                       'cpu0: Online=1 Governor=schedutil MinFreq=2201600 MaxFreq=2201600 '
                                       'CurrentFreq=2201600")\n')
    log = JsonlWriter(tmp_path / "steps.jsonl")
    sampler, note = start_gpu_sampler(log.write, 0.02)
    assert sampler is not None and sampler.source == "tegrastats" and "tegrastats" in note
    deadline = time.time() + 10
    while len(sampler.samples) < 6 and time.time() < deadline:
        time.sleep(0.02)
    assert sampler.stop()
    log.close()
    assert (bindir / "argv.txt").read_text() == "--interval 20"
    records = [json.loads(x) for x in (tmp_path / "steps.jsonl").read_text().splitlines()]
    assert records[0]["type"] == "gpu_platform" and records[0]["power_mode"] == "MAXN"
    assert records[0]["jetson_clocks"] is True and "NV Power Mode" in records[0]["nvpmodel"]
    gpu_records = [r for r in records if r["type"] == "gpu"]
    assert len(gpu_records) >= 6 and all(r["source"] == "tegrastats" and r["wall_time"] > 0 for r in gpu_records)
    assert {round(r["power_w"], 3) for r in gpu_records} >= {round(7.123 + 1.992 + 4.731, 3), 5.0}
    summary = sampler.summary()
    assert summary["available"] and summary["samples"] == len(gpu_records) and summary["bad_lines"] >= 1
    assert summary["ram_used_peak"] == 11874 * MIB and summary["power_w"]["max"] == pytest.approx(7.123 + 1.992 + 4.731)
    assert summary["platform"]["power_mode"] == "MAXN"


def test_tegrastats_that_dies_is_reported_not_raised(bindir):
    fake_tegrastats(bindir, ["nonsense", JP5_ORIN], exit_after=True, status=3)
    sampler, _ = start_gpu_sampler(None, 0.01)
    deadline = time.time() + 10
    while sampler._thread.is_alive() and time.time() < deadline:
        time.sleep(0.02)
    assert sampler.stop()
    summary = sampler.summary()
    assert summary["samples"] == 1 and summary["bad_lines"] == 1
    assert any("exit status 3" in e for e in summary["errors"])
    assert "platform" not in summary  # no nvpmodel / jetson_clocks on PATH


def test_missing_tools_are_reported_unavailable(bindir):
    sampler, note = start_gpu_sampler(lambda r: None, 0.1)
    assert sampler is None and note.startswith(NO_SAMPLER_NOTE) and "pynvml not installed" in note
    assert platform_info() == {"nvpmodel": None, "power_mode": None, "jetson_clocks": None}


def test_jetson_clocks_off_and_failing_tools(bindir):
    fake_tool(bindir, "jetson_clocks", 'print("GPU MinFreq=306000000 MaxFreq=1300500000 CurrentFreq=306000000")\n')
    fake_tool(bindir, "nvpmodel", 'import sys; print("need root", file=sys.stderr); sys.exit(1)\n')
    info = platform_info()
    assert info["jetson_clocks"] is False and info["nvpmodel"] is None


class _FakeNvml(types.ModuleType):
    """Just enough of pynvml for the sampler."""

    def __init__(self, fail_init: bool = False) -> None:
        super().__init__("pynvml")
        self.fail_init, self.shutdowns = fail_init, 0

    def nvmlInit(self):
        if self.fail_init:
            raise RuntimeError("NVML Shared Library Not Found")

    def nvmlShutdown(self):
        self.shutdowns += 1

    def nvmlDeviceGetHandleByIndex(self, i):
        return i

    def nvmlDeviceGetName(self, h):
        return b"NVIDIA H100 80GB HBM3"

    def nvmlDeviceGetMemoryInfo(self, h):
        return types.SimpleNamespace(used=3 * 2**30, total=80 * 2**30)

    def nvmlDeviceGetUtilizationRates(self, h):
        return types.SimpleNamespace(gpu=42, memory=10)

    def nvmlDeviceGetPowerUsage(self, h):
        return 123456  # mW

    def nvmlDeviceGetComputeRunningProcesses(self, h):
        return [types.SimpleNamespace(pid=os.getpid(), usedGpuMemory=512 * MIB),
                types.SimpleNamespace(pid=1, usedGpuMemory=7 * MIB)]


def test_nvml_sampler_with_a_fake_pynvml(bindir, monkeypatch, tmp_path):
    fake = _FakeNvml()
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    log = JsonlWriter(tmp_path / "steps.jsonl")
    sampler, note = start_gpu_sampler(log.write, 0.01)
    assert sampler is not None and sampler.source == "nvml" and "H100" in note
    deadline = time.time() + 10
    while len(sampler.samples) < 3 and time.time() < deadline:
        time.sleep(0.01)
    assert sampler.stop()
    log.close()
    rec = json.loads((tmp_path / "steps.jsonl").read_text().splitlines()[0])
    assert rec["type"] == "gpu" and rec["source"] == "nvml" and rec["gpu_util"] == pytest.approx(0.42)
    assert rec["gpu_mem_used"] == 3 * 2**30 and rec["power_w"] == pytest.approx(123.456)
    assert rec["process_gpu_mem"] == 512 * MIB and fake.shutdowns == 1
    # NVML present but not initialisable (no driver): unavailable, with the reason
    monkeypatch.setitem(sys.modules, "pynvml", _FakeNvml(fail_init=True))
    sampler, note = start_gpu_sampler(None, 0.1)
    assert sampler is None and "NVML unavailable" in note


# ------------------------------------------------------------------------------- edge-run
def test_edge_run_records_gpu_telemetry(bindir, tmp_path, capsys):
    from edge_runtime.runtime.cli import main

    fake_tegrastats(bindir, [JP6_ORIN])
    out = tmp_path / "run"
    assert main(["--track", "oval", "--duration", "1", "--gpu-interval", "0.05", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "GPU telemetry (tegrastats)" in printed
    records = [json.loads(x) for x in (out / "steps.jsonl").read_text().splitlines()]
    gpu_records = [r for r in records if r["type"] == "gpu"]
    assert gpu_records and gpu_records[0]["ram_used"] == 11874 * MIB
    assert sum(r["type"] == "control" for r in records) == 20
    summary = json.loads((out / "summary.json").read_text())
    assert summary["gpu"]["available"] and summary["gpu"]["samples"] == len(gpu_records)


def test_edge_run_without_gpu_tools_says_so(bindir, tmp_path, capsys):
    from edge_runtime.runtime.cli import main

    out = tmp_path / "run"
    assert main(["--track", "oval", "--duration", "0.5", "--fast", "--out", str(out)]) == 0
    assert NO_SAMPLER_NOTE in capsys.readouterr().out
    summary = json.loads((out / "summary.json").read_text())
    assert summary["gpu"]["available"] is False and summary["gpu"]["note"].startswith(NO_SAMPLER_NOTE)
    assert all(json.loads(x)["type"] == "control" for x in (out / "steps.jsonl").read_text().splitlines())


def test_gpu_module_is_torch_free():
    assert "torch" not in gpu.__dict__
