"""GPU and Jetson telemetry: NVML (discrete NVIDIA GPUs) and ``tegrastats`` (Jetson), sampled on a
background thread into the run's telemetry log (torch-free, vehicle side).

Sources, tried in this order by :func:`start_gpu_sampler`:

1. ``tegrastats`` on ``PATH`` (Jetson: NVML does not exist there). Started as a child process with
   ``--interval MS``; every line it prints is parsed by :func:`parse_tegrastats` and written as one
   record. The parser reads the formats of the JetPack generations:

   * JetPack 5 (AGX Orin): rails as ``NAME cur/avgmW`` (``VDD_GPU_SOC 1234mW/1200mW``),
     ``GR3D_FREQ 12%@1300``;
   * JetPack 6: ``NAME cur/avg/maxmW`` (``mW`` after each number or only the last one) and
     ``GR3D_FREQ 12%@[1300,1300]`` (one frequency per GPC);
   * older boards (TX2, Xavier, Nano): ``VDD_IN 5000/4800`` / ``POM_5V_IN 2545/2547`` without
     units, ``GR3D_FREQ 12%@1300`` or just ``GR3D_FREQ 0%``.

   RAM is unified on a Jetson (``RAM used/totalMB``): the model's memory shows there, not as GPU
   memory. Board power = VDD_GPU_SOC + VDD_CPU_CV + VIN_SYS_5V0 (AGX Orin) when present, else
   VDD_IN, else POM_5V_IN (the total input rail of older boards).
2. NVML through ``pynvml`` (package ``nvidia-ml-py``), when importable and initialisable: device
   memory used/total, GPU utilisation, power draw, and this process's GPU memory when listed.

Records (one JSON line each, SI units): ``{"type": "gpu", "source": "tegrastats"|"nvml",
"wall_time": s, "ram_used"/"ram_total": bytes (tegrastats), "gpu_mem_used"/"gpu_mem_total": bytes
(NVML), "gpu_util": fraction 0..1, "gpu_freq_hz": [Hz per GPC], "power_w": board (tegrastats)
or GPU (NVML) power in W, "rails_w": {rail: W}, "temps_c": {sensor: deg C}}``. Fields a source
does not report are absent or null. :func:`platform_info` adds ``nvpmodel -q`` (power mode) and
whether ``jetson_clocks`` pins the clocks, when those tools exist -- numbers from a Jetson mean
little without them.

With neither source :func:`start_gpu_sampler` returns no sampler and the note
:data:`NO_SAMPLER_NOTE`; nothing fails. A tool that exists but dies or prints garbage ends the
sampler quietly; the summary says how many lines were read and how many did not parse.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import threading
import time
from collections.abc import Callable
from typing import Any

import numpy as np

__all__ = [
    "NO_SAMPLER_NOTE", "GpuSampler", "NvmlSampler", "TegrastatsSampler", "board_power_w", "parse_tegrastats",
    "platform_info", "run_tool", "start_gpu_sampler",
]

NO_SAMPLER_NOTE = "no GPU sampler (NVML/tegrastats not found)"
MIB = 1 << 20
ORIN_RAILS = ("VDD_GPU_SOC", "VDD_CPU_CV", "VIN_SYS_5V0")
_TOTAL_RAILS = ("VDD_IN", "POM_5V_IN")

_RAM = re.compile(r"\bRAM (\d+)/(\d+)MB")
_SWAP = re.compile(r"\bSWAP (\d+)/(\d+)MB")
_CPU = re.compile(r"\bCPU \[([^\]]*)\]", re.IGNORECASE)
_GR3D = re.compile(r"\bGR3D(?:_FREQ)? (\d+)%(?:@\[?([\d,]+)\]?)?")
_EMC = re.compile(r"\bEMC(?:_FREQ)? (?:(\d+)%)?(?:@(\d+))?")
_TEMP = re.compile(r"(?<![\w@])([A-Za-z][\w]*)@(-?\d+(?:\.\d+)?)C\b")
_RAIL = re.compile(r"(?<![\w@])([A-Z][A-Z0-9_]*) (\d+)(?:mW)?/(\d+)(?:mW)?(?:/(\d+)(?:mW)?)?(?=\s|$)")


def parse_tegrastats(line: str) -> dict[str, Any]:
    """One ``tegrastats`` line -> a dict in SI units (see the module docstring); keys for the
    fields the line does not have are left out. ValueError for a line with none of RAM, GR3D or
    power rails (not tegrastats output)."""
    out: dict[str, Any] = {}
    m = _RAM.search(line)
    if m:
        out["ram_used"], out["ram_total"] = int(m.group(1)) * MIB, int(m.group(2)) * MIB
    m = _SWAP.search(line)
    if m:
        out["swap_used"], out["swap_total"] = int(m.group(1)) * MIB, int(m.group(2)) * MIB
    m = _CPU.search(line)
    if m:
        utils = []
        for entry in m.group(1).split(","):
            u = re.match(r"\s*(\d+)%", entry)
            utils.append(int(u.group(1)) / 100.0 if u else None)  # "off": core offline
        out["cpu_util"] = utils
    m = _GR3D.search(line)
    if m:
        out["gpu_util"] = int(m.group(1)) / 100.0
        if m.group(2):
            out["gpu_freq_hz"] = [int(f) * 1_000_000 for f in m.group(2).split(",") if f]
    m = _EMC.search(line)
    if m and (m.group(1) or m.group(2)):
        if m.group(1):
            out["emc_util"] = int(m.group(1)) / 100.0
        if m.group(2):
            out["emc_freq_hz"] = int(m.group(2)) * 1_000_000
    temps = {name: float(t) for name, t in _TEMP.findall(line) if float(t) > -200}  # -256C: sensor off
    if temps:
        out["temps_c"] = temps
    rails, rails_avg = {}, {}
    for name, cur, avg, _peak in _RAIL.findall(line):
        if name in ("RAM", "SWAP"):
            continue
        rails[name], rails_avg[name] = int(cur) / 1000.0, int(avg) / 1000.0
    if rails:
        out["rails_w"], out["rails_avg_w"] = rails, rails_avg
        power, source = board_power_w(rails)
        if power is not None:
            out["power_w"], out["power_source"] = power, source
    if not ({"ram_used", "gpu_util"} & out.keys() or rails):
        raise ValueError(f"not a tegrastats line: {line[:80]!r}")
    return out


def board_power_w(rails: dict[str, float]) -> tuple[float | None, str | None]:
    """(board power in W, the rails it sums): the AGX Orin rails when present, else the input rail."""
    orin = [r for r in ORIN_RAILS if r in rails]
    if orin:
        return sum(rails[r] for r in orin), "+".join(orin)
    for rail in _TOTAL_RAILS:
        if rail in rails:
            return rails[rail], rail
    return None, None


def run_tool(argv: list[str], timeout: float = 5.0) -> str | None:
    """stdout+stderr of a system tool (nvpmodel, jetson_clocks, nvidia-smi), or None when it is
    missing, fails or hangs: a missing tool must never stop the caller."""
    exe = shutil.which(argv[0])
    if exe is None:
        return None
    try:
        proc = subprocess.run([exe, *argv[1:]], capture_output=True, text=True, timeout=timeout, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    text = (proc.stdout or "") + (proc.stderr or "")
    return text.strip() if proc.returncode == 0 else None


def platform_info() -> dict[str, Any]:
    """Jetson power settings: ``nvpmodel -q`` (power mode text and name) and whether
    ``jetson_clocks --show`` reports pinned clocks (every listed CPU/GPU has MinFreq == MaxFreq;
    None when unknown, e.g. the tool is missing or needs root)."""
    info: dict[str, Any] = {"nvpmodel": None, "power_mode": None, "jetson_clocks": None}
    text = run_tool(["nvpmodel", "-q"])
    if text is not None:
        info["nvpmodel"] = text
        m = re.search(r"NV Power Mode:\s*(\S+)", text)
        info["power_mode"] = m.group(1) if m else None
    text = run_tool(["jetson_clocks", "--show"])
    if text is not None:
        pinned = [mn == mx for mn, mx in re.findall(r"MinFreq=(\d+)\s+MaxFreq=(\d+)", text)]
        info["jetson_clocks"] = all(pinned) if pinned else None
    return info


class GpuSampler:
    """Background sampler: ``write(record)`` receives one dict per sample (e.g. ``JsonlWriter.write``)."""

    source = "none"

    def __init__(self, write: Callable[[dict[str, Any]], None] | None, interval_s: float = 0.5) -> None:
        if not interval_s > 0:
            raise ValueError(f"interval_s must be > 0, got {interval_s}")
        self._write = write or (lambda record: None)
        self.interval_s = float(interval_s)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.samples: list[dict[str, Any]] = []
        self.bad_lines = 0
        self.errors: list[str] = []
        self.platform: dict[str, Any] = {}

    def start(self) -> GpuSampler:
        self._thread = threading.Thread(target=self._serve, name=f"gpu-sampler-{self.source}", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> bool:
        """End the sampler; True when its thread ended within ``timeout``."""
        self._stop.set()
        self._close()
        if self._thread is None:
            return True
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def _close(self) -> None:
        pass

    def _serve(self) -> None:  # pragma: no cover - overridden
        raise NotImplementedError

    def _record(self, fields: dict[str, Any]) -> None:
        record = {"type": "gpu", "source": self.source, "wall_time": time.time(), **fields}
        self.samples.append(record)
        try:
            self._write(record)
        except Exception as exc:  # noqa: BLE001 -- a closed log must not kill the sampler thread with a traceback
            self.errors.append(f"write: {type(exc).__name__}: {exc}"[:200])
            self._stop.set()

    def summary(self) -> dict[str, Any]:
        """Sample count, mean/max power, mean GPU utilisation, peak memory, platform info."""
        def stat(key: str) -> dict[str, float] | None:
            vals = [s[key] for s in self.samples if isinstance(s.get(key), (int, float))]
            if not vals:
                return None
            return {"mean": float(np.mean(vals)), "max": float(np.max(vals))}

        out: dict[str, Any] = {"available": True, "source": self.source, "interval_s": self.interval_s,
                               "samples": len(self.samples), "bad_lines": self.bad_lines,
                               "errors": list(self.errors[:5]), "power_w": stat("power_w"),
                               "gpu_util": stat("gpu_util")}
        for key in ("ram_used", "gpu_mem_used", "process_gpu_mem"):
            peak = stat(key)
            if peak is not None:
                out[f"{key}_peak"] = int(peak["max"])
        sources = {s.get("power_source") for s in self.samples if s.get("power_source")}
        if sources:
            out["power_source"] = min(sources) if len(sources) == 1 else sorted(sources)
        if self.platform:
            out["platform"] = self.platform
        return out


class TegrastatsSampler(GpuSampler):
    """``tegrastats --interval MS`` as a child process; one record per line it prints."""

    source = "tegrastats"

    def __init__(self, write: Callable[[dict[str, Any]], None] | None, interval_s: float = 0.5,
                 executable: str = "tegrastats") -> None:
        super().__init__(write, interval_s)
        self.executable = executable
        self._proc: subprocess.Popen | None = None
        self._lock = threading.Lock()

    def start(self) -> TegrastatsSampler:
        ms = max(1, round(self.interval_s * 1000))
        self._proc = subprocess.Popen([self.executable, "--interval", str(ms)], stdout=subprocess.PIPE,
                                      stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL, text=True, bufsize=1)
        super().start()
        return self

    def _serve(self) -> None:
        proc = self._proc
        assert proc is not None and proc.stdout is not None
        try:
            for line in proc.stdout:
                if self._stop.is_set():
                    break
                line = line.strip()
                if not line:
                    continue
                try:
                    fields = parse_tegrastats(line)
                except ValueError:
                    self.bad_lines += 1
                    continue
                self._record(fields)
        except (OSError, ValueError) as exc:  # pipe closed under us by stop()
            if not self._stop.is_set():
                self.errors.append(f"read: {type(exc).__name__}: {exc}"[:200])
        if not self._stop.is_set():  # the tool ended by itself
            try:
                status = proc.wait(timeout=2)
            except subprocess.TimeoutExpired:
                status = None
            self.errors.append(f"tegrastats ended (exit status {status}) after {len(self.samples)} samples")

    def _close(self) -> None:
        with self._lock:
            proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=3)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=3)
        if proc.stdout is not None:
            try:
                proc.stdout.close()
            except OSError:
                pass


class NvmlSampler(GpuSampler):
    """NVML (``pynvml``) polled every ``interval_s``: device memory, utilisation, power (device ``index``)."""

    source = "nvml"

    def __init__(self, write: Callable[[dict[str, Any]], None] | None, interval_s: float = 0.5,
                 index: int = 0) -> None:
        super().__init__(write, interval_s)
        import pynvml  # optional dependency (nvidia-ml-py); ImportError when missing

        self._nvml = pynvml
        pynvml.nvmlInit()  # raises pynvml.NVMLError without a driver / GPU
        try:
            self._handle = pynvml.nvmlDeviceGetHandleByIndex(index)
            name = pynvml.nvmlDeviceGetName(self._handle)
            self.device = name.decode() if isinstance(name, bytes) else str(name)
        except Exception:
            pynvml.nvmlShutdown()
            raise
        self._pid = __import__("os").getpid()

    def sample(self) -> dict[str, Any]:
        nv, h = self._nvml, self._handle
        fields: dict[str, Any] = {"device": self.device}
        for key, read in (("mem", lambda: nv.nvmlDeviceGetMemoryInfo(h)),
                          ("util", lambda: nv.nvmlDeviceGetUtilizationRates(h)),
                          ("power", lambda: nv.nvmlDeviceGetPowerUsage(h)),
                          ("procs", lambda: nv.nvmlDeviceGetComputeRunningProcesses(h))):
            try:
                value = read()
            except Exception:  # noqa: BLE001, S112 -- a field the device does not support (NVMLError_NotSupported)
                continue
            if key == "mem":
                fields["gpu_mem_used"], fields["gpu_mem_total"] = int(value.used), int(value.total)
            elif key == "util":
                fields["gpu_util"] = int(value.gpu) / 100.0
            elif key == "power":
                fields["power_w"] = int(value) / 1000.0
            else:
                mine = [p for p in value if getattr(p, "pid", None) == self._pid]
                used = [getattr(p, "usedGpuMemory", None) for p in mine]
                if used and all(isinstance(u, int) for u in used):
                    fields["process_gpu_mem"] = int(sum(used))
        return fields

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                self._record(self.sample())
            except Exception as exc:  # noqa: BLE001
                self.errors.append(f"nvml: {type(exc).__name__}: {exc}"[:200])
                return
            self._stop.wait(self.interval_s)

    def stop(self, timeout: float = 5.0) -> bool:
        ended = super().stop(timeout)
        try:
            self._nvml.nvmlShutdown()
        except Exception:  # noqa: BLE001, S110 -- shutting down anyway
            pass
        return ended


def start_gpu_sampler(write: Callable[[dict[str, Any]], None] | None, interval_s: float = 0.5, *,
                      tegrastats: str = "tegrastats", nvml: bool = True,
                      record_platform: bool = True) -> tuple[GpuSampler | None, str]:
    """Start the first available sampler (tegrastats on PATH, then NVML). Returns ``(sampler,
    note)``; ``(None, NO_SAMPLER_NOTE + reasons)`` when there is none. With ``record_platform``
    the Jetson power settings (:func:`platform_info`) are written first as a ``gpu_platform``
    record when ``nvpmodel`` or ``jetson_clocks`` exists."""
    reasons = []
    sampler: GpuSampler | None = None
    exe = shutil.which(tegrastats)
    if exe is not None:
        try:
            sampler = TegrastatsSampler(write, interval_s, executable=exe)
        except ValueError as exc:
            reasons.append(f"tegrastats: {exc}")
    if sampler is None and nvml:
        try:
            sampler = NvmlSampler(write, interval_s)
        except ImportError:
            reasons.append("pynvml not installed")
        except Exception as exc:  # noqa: BLE001 -- pynvml.NVMLError_* (no driver, no device)
            reasons.append(f"NVML unavailable: {type(exc).__name__}")
    if sampler is None:
        detail = f" ({'; '.join(reasons)})" if reasons else ""
        return None, NO_SAMPLER_NOTE + detail
    if record_platform:
        info = platform_info()
        if info["nvpmodel"] is not None or info["jetson_clocks"] is not None:
            sampler.platform = info
            if write is not None:
                write({"type": "gpu_platform", "wall_time": time.time(), **info})
    try:
        sampler.start()
    except OSError as exc:
        return None, f"{NO_SAMPLER_NOTE} ({sampler.source} failed to start: {exc})"
    device = getattr(sampler, "device", None)
    note = f"GPU sampler: {sampler.source}" + (f" ({device})" if device else "") + f", every {interval_s:g} s"
    return sampler, note
