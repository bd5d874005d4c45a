"""The export's error type, in a module of its own so that every export step can raise it.

``onnx_export`` calls ``shared_cache_graph`` to build the shared-KV-cache graph, and both report
an unexportable model the same way; keeping the exception here, below both, means neither has to
import the other for it (that was an import cycle).
"""

from __future__ import annotations

__all__ = ["ExportError"]


class ExportError(ValueError):
    """The model directory cannot be exported (missing files, bad arguments)."""
