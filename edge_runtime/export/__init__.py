"""export/: ONNX export with KV cache (per-layer shapes) and the parity check (training side).

``export_onnx`` writes one self-describing decoder graph; ``check_parity`` compares it with the
PyTorch model; ``edge-export`` (``cli.main``) does both and keeps the file only when parity holds.
Names are resolved lazily so that ``import edge_runtime.export`` does not import torch.
"""

from __future__ import annotations

import importlib

_LAZY = {
    "export_onnx": "onnx_export", "ExportError": "onnx_export", "META_KEYS": "onnx_export",
    "FORMAT_VERSION": "onnx_export", "check_parity": "parity", "ParityReport": "parity", "TOLERANCES": "parity",
}

__all__ = ["FORMAT_VERSION", "META_KEYS", "TOLERANCES", "ExportError", "ParityReport", "check_parity", "export_onnx"]


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
