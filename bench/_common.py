"""Helpers shared by the bench scripts: the system manifest written with every result, peak RSS,
and a PyTorch eager step loop (greedy, DynamicCache) used wherever eager PyTorch is the baseline.

Why shared: a number means nothing without the machine it came from, and two scripts that time
"PyTorch eager" must time the same loop (``decode_speed.py`` and ``compare_throughput.py`` both
drive :class:`TorchSteps`). torch is imported lazily, so importing this module stays cheap and
works where torch is not installed (the ONNX-only runs on a vehicle computer or a Jetson).
"""

from __future__ import annotations

import importlib.metadata
import os
import platform
import sys
from pathlib import Path
from typing import Any

#: Distribution names of the runtimes whose versions a manifest records (None when not installed).
PACKAGES = ("onnxruntime", "onnxruntime-gpu", "onnxruntime-genai", "onnxruntime-genai-cuda", "llama-cpp-python",
            "torch", "transformers", "numpy", "tokenizers", "nvidia-ml-py")
JETSON_RELEASE = Path("/etc/nv_tegra_release")


def package_version(dist: str) -> str | None:
    """Installed version of a distribution, read from its metadata (no import: importing torch
    costs seconds and memory a benchmark child should not pay for a version string)."""
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def tool_output(argv: list[str], timeout: float = 10.0) -> str | None:
    """stdout+stderr of a system tool, or None when it is missing, fails or hangs."""
    from edge_runtime.telemetry.gpu import run_tool

    return run_tool(argv, timeout=timeout)


def _cpu_model() -> str | None:
    try:
        for line in Path("/proc/cpuinfo").read_text(errors="replace").splitlines():
            key, _, value = line.partition(":")
            if key.strip() in ("model name", "Model", "Hardware", "cpu model"):
                return value.strip()
    except OSError:
        pass
    return platform.processor() or None


def _memory_bytes() -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def peak_rss_bytes() -> int:
    """Peak resident set size of this process (VmHWM; ru_maxrss where /proc is missing)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)


def machine_manifest(threads: int | None = None, providers: Any = None) -> dict[str, Any]:
    """What a benchmark result must carry to be read: CPU, cores, memory, OS, Python, runtime
    versions and ONNX Runtime's providers, the thread setting, GPU (nvidia-smi) and, on a Jetson,
    the L4T release, ``nvpmodel -q`` and ``jetson_clocks --show`` (None where missing)."""
    try:
        import onnxruntime as ort

        ort_info: dict[str, Any] = {"version": ort.__version__, "available_providers": ort.get_available_providers()}
    except ImportError:
        ort_info = {"version": None, "available_providers": []}
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    out: dict[str, Any] = {
        "cpu_model": _cpu_model(), "cpu_count": os.cpu_count(),
        "cpu_affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "memory_bytes": _memory_bytes(), "os": platform.platform(), "machine": platform.machine(),
        "python": sys.version.split()[0], "onnxruntime": ort_info,
        "packages": {name: package_version(name) for name in PACKAGES},
        "threads": threads, "providers_requested": providers, "load_avg_at_start": list(load) if load else None,
        "gpu": tool_output(["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"]),
        "jetson": None,
    }
    if JETSON_RELEASE.is_file():
        try:
            release = JETSON_RELEASE.read_text(errors="replace").strip()
        except OSError:
            release = None
        out["jetson"] = {"nv_tegra_release": release, "nvpmodel": tool_output(["nvpmodel", "-q"]),
                         "jetson_clocks": tool_output(["jetson_clocks", "--show"]),
                         "jetpack": package_version("nvidia-jetpack")}
    return out


class TorchSteps:
    """Greedy step loop over a Hugging Face causal LM in eager PyTorch: ``append(ids)`` runs the
    model on ``ids`` after the cached tokens (a ``DynamicCache``) and returns the last position's
    logits as a numpy vector -- the same step interface the ONNX generator offers, so eager and
    ONNX are timed by the same loop."""

    def __init__(self, model: Any) -> None:
        import warnings

        import torch

        # transformers 5.x announces that `past_key_values` will be renamed; the argument still works
        warnings.filterwarnings("ignore", message=".*past_key_values.*", category=FutureWarning)
        self._torch = torch
        self.model = model.eval()
        self.cache: Any = None

    def reset(self) -> None:
        self.cache = None

    def append(self, ids: list[int]):
        from transformers import DynamicCache

        torch = self._torch
        with torch.inference_mode():
            if self.cache is None:
                self.cache = DynamicCache()
            out = self.model(input_ids=torch.tensor([list(ids)], dtype=torch.long), past_key_values=self.cache,
                             use_cache=True)
            self.cache = out.past_key_values
            return out.logits[0, -1].float().numpy()


#: Bytes per element of the ONNX TensorProto data types an exported graph stores weights in.
_ELEMENT_BYTES = {1: 4, 10: 2, 16: 2, 2: 1, 3: 1, 6: 4, 7: 8, 11: 8, 21: 0.5, 22: 0.5}


def _row_read(op_type: str, index: int) -> bool:
    """Whether input ``index`` of an ``op_type`` node is a table read one row per token: the
    embedding of Gather / GatherBlockQuantized (data and scales), and the RoPE cos/sin caches of
    GroupQueryAttention (inputs 7 and 8)."""
    if op_type in ("Gather", "GatherBlockQuantized"):
        return index != 1  # 1: the token ids
    return op_type == "GroupQueryAttention" and index in (7, 8)


def streamed_weight_bytes(path: str | Path) -> int:
    """Weight bytes one decode step reads from memory: every initialiser a node consumes, except
    tables read one row per token (the embedding, the RoPE caches). A table shared by the embedding
    gather and the LM head counts once, as the head's weight.

    Why: at batch 1 decode is memory-bound, so the speed-up a smaller model can reach is the ratio
    of these bytes, not of its parameters (the embedding is most of a small model's parameters and
    costs one row per token). The pruning benchmark compares each speed-up with this ratio."""
    from edge_runtime.decoding.onnx_graph import read_graph_facts

    facts = read_graph_facts(path)
    streamed: set[str] = set()
    for node in facts.nodes:
        for i, name in enumerate(node.inputs):
            if name in facts.initializers and not _row_read(node.op_type, i):
                streamed.add(name)
    total = 0.0
    for name in streamed:
        t = facts.initializers[name]
        n = 1
        for d in t.dims:
            n *= d
        total += n * _ELEMENT_BYTES.get(t.data_type, 4)
    return int(total)
