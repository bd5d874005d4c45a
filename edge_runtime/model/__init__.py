"""model/: build/load/save of HF causal LMs from an architecture spec (per-layer shapes).

The spec itself is a torch-free contract (`edge_runtime.contracts.arch_spec`); `spec` here holds
its Hugging Face side and is importable without torch; the torch-based names (`build_model`,
`save_model`, ...) are resolved lazily on first access.
"""

from __future__ import annotations

import importlib

from .spec import spec_from_model

_LAZY = {
    "PRESETS": "build", "preset_spec": "build", "build_model": "build", "resize_layer": "build",
    "save_model": "io", "load_model": "io", "load_pretrained_dir": "io", "ModelFormatError": "io",
}

__all__ = [
    "PRESETS",
    "ModelFormatError",
    "build_model",
    "load_model",
    "load_pretrained_dir",
    "preset_spec",
    "resize_layer",
    "save_model",
    "spec_from_model",
]


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
