"""Move an exported graph's weights out of the protobuf into one ``<name>.data`` file beside it.

Why: ONNX Runtime parses a self-contained file into a protobuf message that holds every weight,
then copies the weights into its own buffers, so the parsed copy adds the file's size to peak
memory at load. With external data the protobuf is small and ONNX Runtime reads the weights from
the side file directly (bench/results/compare_throughput measures what it saves). The price is
two files that must travel together; the default stays one self-contained file.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["data_file_name", "externalize_weights"]

SIZE_THRESHOLD = 1024  # bytes: smaller tensors (shapes, scalars) stay inline, as ONNX's own tools do


def data_file_name(graph_name: str) -> str:
    """The side file of ``graph_name`` (``dense.onnx`` -> ``dense.onnx.data``): the graph stores this
    relative name, so both files move together under any directory."""
    return graph_name + ".data"


def externalize_weights(src: Path, dst: Path) -> Path:
    """Write ``src`` (a self-contained graph) as ``dst`` plus ``dst``'s data file in dst's folder.
    Returns the data file. ``dst`` and its data file are replaced if present."""
    import onnx

    src, dst = Path(src), Path(dst)
    model = onnx.load(str(src))
    data = dst.with_name(data_file_name(dst.name))
    data.unlink(missing_ok=True)  # onnx appends to an existing data file
    onnx.save_model(model, str(dst), save_as_external_data=True, all_tensors_to_one_file=True,
                    location=data.name, size_threshold=SIZE_THRESHOLD, convert_attribute=False)
    os.chmod(data, 0o644)
    return data
