"""export/: ONNX export with KV cache (per-layer shapes), quantization, the parity check and the
TensorRT engine build (training side).

``export_onnx`` writes one self-describing decoder graph; ``quantize_onnx`` makes its int8 / int4
variant; ``check_parity`` compares a file with the PyTorch model; ``edge-export`` (``cli.main``)
does all three and keeps the file only when parity holds. ``tensorrt.build_engine`` (CLI:
``deploy/build_trt_engine.py``) builds a TensorRT engine from an fp32/fp16 file.
Names are resolved lazily so that ``import edge_runtime.export`` does not import torch.
"""

from __future__ import annotations

import importlib

_LAZY = {
    "export_onnx": "onnx_export", "ExportError": "errors", "META_KEYS": "onnx_export",
    "FORMAT_VERSION": "onnx_export", "check_parity": "parity", "ParityReport": "parity", "TOLERANCES": "parity",
    "quantize_onnx": "quantize", "QuantizeConfig": "quantize", "QuantizeError": "quantize",
}

__all__ = ["FORMAT_VERSION", "META_KEYS", "TOLERANCES", "ExportError", "ParityReport", "QuantizeConfig", "QuantizeError",
           "check_parity", "export_onnx", "quantize_onnx"]


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
