"""Energy meters for benchmarks: joules spent between ``start()`` and ``stop()``, from whatever the
platform exposes, or None.

Why several: no source covers every target. Each meter measures something different, and the
result names the source, so a J/token number is never read without knowing what it includes:

* ``rapl`` -- Intel/AMD RAPL package energy (``/sys/class/powercap/intel-rapl:0/energy_uj``): the
  whole CPU package, every process on it (run on an otherwise idle machine). Counter wrap-around is
  handled with ``max_energy_range_uj``. Often root-only since 2020 (CVE-2020-8694): unreadable ->
  unavailable.
* ``nvml`` -- NVIDIA GPU energy counter (``nvmlDeviceGetTotalEnergyConsumption``, Volta and later,
  via ``pynvml`` / nvidia-ml-py): the GPU board only, not the CPU.
* ``tegrastats`` -- Jetson board power: ``tegrastats`` sampled every 100 ms by
  :class:`edge_runtime.telemetry.gpu.TegrastatsSampler` (the same parser as edge-run's telemetry),
  energy = mean sampled board power x elapsed time. Untested here (no Jetson); a window shorter
  than two samples gives None.

:func:`open_meters` returns every meter that works on this machine; a missing source is simply
absent (no error), and the notes say why.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

RAPL_ROOT = Path("/sys/class/powercap/intel-rapl:0")


class RaplMeter:
    """CPU package energy from the RAPL powercap counter (see the module docstring)."""

    source = "rapl"

    def __init__(self, root: Path = RAPL_ROOT) -> None:
        self._file = root / "energy_uj"
        self._range = int((root / "max_energy_range_uj").read_text()) if (root / "max_energy_range_uj").is_file() else None
        self._start = self._read()  # raises OSError / ValueError when unreadable: unavailable

    def _read(self) -> int:
        return int(self._file.read_text())

    def start(self) -> None:
        self._start = self._read()

    def stop(self) -> float | None:
        try:
            end = self._read()
        except (OSError, ValueError):
            return None
        delta = end - self._start
        if delta < 0 and self._range:  # the counter wrapped
            delta += self._range
        return delta / 1e6 if delta >= 0 else None


class NvmlMeter:
    """GPU energy from NVML's total-energy counter (millijoules since driver load)."""

    source = "nvml"

    def __init__(self, index: int = 0) -> None:
        import pynvml  # optional (nvidia-ml-py): ImportError when missing

        self._nv = pynvml
        pynvml.nvmlInit()  # NVMLError without a driver
        self._handle = pynvml.nvmlDeviceGetHandleByIndex(index)
        self._start = int(pynvml.nvmlDeviceGetTotalEnergyConsumption(self._handle))  # NotSupported before Volta

    def start(self) -> None:
        self._start = int(self._nv.nvmlDeviceGetTotalEnergyConsumption(self._handle))

    def stop(self) -> float | None:
        try:
            return (int(self._nv.nvmlDeviceGetTotalEnergyConsumption(self._handle)) - self._start) / 1e3
        except Exception:  # noqa: BLE001 -- NVMLError of a vanished device: no number, no crash
            return None


class TegrastatsMeter:
    """Jetson board energy: mean ``tegrastats`` board power over the window x its duration."""

    source = "tegrastats"

    def __init__(self, interval_s: float = 0.1) -> None:
        if shutil.which("tegrastats") is None:
            raise FileNotFoundError("tegrastats not on PATH")
        self.interval_s = interval_s
        self._sampler = None
        self._t0 = 0.0

    def start(self) -> None:
        from edge_runtime.telemetry.gpu import TegrastatsSampler

        self._sampler = TegrastatsSampler(None, interval_s=self.interval_s).start()
        self._t0 = time.perf_counter()

    def stop(self) -> float | None:
        elapsed = time.perf_counter() - self._t0
        sampler, self._sampler = self._sampler, None
        if sampler is None:
            return None
        sampler.stop()
        power = [s["power_w"] for s in sampler.samples if isinstance(s.get("power_w"), (int, float))]
        return sum(power) / len(power) * elapsed if len(power) >= 2 else None


METERS = (RaplMeter, NvmlMeter, TegrastatsMeter)


def open_meters() -> tuple[list, list[str]]:
    """(the meters that work here, one note per source that does not)."""
    meters, notes = [], []
    for cls in METERS:
        try:
            meters.append(cls())
        except Exception as exc:  # noqa: BLE001 -- any failure means "not available here"
            notes.append(f"{cls.source}: unavailable ({type(exc).__name__}: {str(exc)[:80]})")
    return meters, notes
