"""Make a decoder graph compute the logits of the last position only.

Why: the vehicle only ever reads the last row of ``logits`` -- greedy, sampling and constrained
decoding all choose the next token from it, and forced answer tokens are fed together with the
next model token, so a run of ``n`` tokens needs one row, not ``n``. The LM head is the widest
matrix of a small model (hidden x vocabulary), so computing it for every position of a prompt
costs prefill time and an ``[n, vocab]`` float buffer (a 282-token prompt: 55 MB) that is thrown
away. llama.cpp computes the last row only by default for the same reason.

The rewrite inserts one ``Slice`` (the last position along the sequence axis) in front of the
node that writes ``logits`` and declares ``logits`` as ``[batch, 1, vocab]``. Nothing else
changes: the weights are the same bytes (quantized files stay bit-identical in their weights),
and the last row is computed by the same head. A reader knows such a file by that static ``1``
(``OnnxGenerator.last_logits_only``); it returns one row per run. Checks that need every
position (teacher-forced parity) feed such a file one token at a time
(``edge_runtime.export.parity``).

    python -m edge_runtime.export.last_logits models/old.onnx -o models/new.onnx

rewrites a file exported before this option (``edge-export --logits last`` is the default now);
exit 2 with one line on bad input. A file with external data is written beside its data file
(the same folder), which it keeps referring to by name.
"""

from __future__ import annotations

import argparse
import os
import sys
import uuid
from collections.abc import Sequence
from pathlib import Path

from .errors import ExportError

__all__ = ["LOGITS", "is_last_only", "keep_last_logits", "rewrite_file"]

LOGITS = "logits"
_SLICE_OUT = "logits.last_position_hidden"  # the head's input, cut to the last position
_NAMES = ("logits.last.start", "logits.last.end", "logits.last.axis")


def _logits_dims(graph) -> list:
    out = next((o for o in graph.output if o.name == LOGITS), None)
    if out is None:
        raise ExportError(f"the graph has no '{LOGITS}' output; is it an edge-export decoder file?")
    return list(out.type.tensor_type.shape.dim)


def is_last_only(model) -> bool:
    """The graph's ``logits`` output is declared ``[batch, 1, vocab]`` (a static one)."""
    dims = _logits_dims(model.graph)
    return len(dims) == 3 and dims[1].HasField("dim_value") and dims[1].dim_value == 1


def keep_last_logits(model):
    """Rewrite ``model`` (an ``onnx.ModelProto``, changed in place and returned) so that ``logits``
    is computed for the last position only. ExportError (one line) when the graph is not a decoder
    whose ``logits`` is ``[batch, seq, vocab]`` written by one node, or is rewritten already."""
    import numpy as np
    from onnx import helper, numpy_helper

    graph = model.graph
    dims = _logits_dims(graph)
    if is_last_only(model):
        raise ExportError(f"the graph already computes the last position's '{LOGITS}' only")
    if len(dims) != 3:
        raise ExportError(f"'{LOGITS}' has {len(dims)} dimensions; a decoder's is [batch, seq, vocab]")
    writers = [i for i, n in enumerate(graph.node) if LOGITS in n.output]
    if len(writers) != 1:
        raise ExportError(f"'{LOGITS}' is written by {len(writers)} nodes; expected one (the LM head)")
    head = graph.node[writers[0]]
    if not head.input or not head.input[0]:
        raise ExportError(f"the node writing '{LOGITS}' ({head.op_type}) has no data input")
    taken = {n for node in graph.node for n in node.output} | {t.name for t in graph.initializer}
    if taken & {_SLICE_OUT, *_NAMES}:
        raise ExportError(f"the graph already has a tensor named {_SLICE_OUT!r} or {_NAMES[0]!r}")
    # Slice(x, starts=[-1], ends=[max], axes=[1]): x[:, -1:, :] -- the hidden state of the last position
    for name, value in zip(_NAMES, (-1, np.iinfo(np.int64).max, 1)):
        graph.initializer.append(numpy_helper.from_array(np.array([value], dtype=np.int64), name))
    cut = helper.make_node("Slice", [head.input[0], *_NAMES], [_SLICE_OUT], name="logits/last_position")
    head.input[0] = _SLICE_OUT
    graph.node.insert(writers[0], cut)  # right before the head: the list stays topologically sorted
    seq = dims[1]
    seq.Clear()
    seq.dim_value = 1
    return model


def rewrite_file(src: str | os.PathLike, dst: str | os.PathLike) -> Path:
    """Read ``src``, rewrite it (:func:`keep_last_logits`) and write ``dst`` atomically (a temp file in
    dst's folder, then a rename). External weights are not loaded: ``dst`` keeps referring to the data
    file by name, so it must be written in the folder that holds it. Returns ``dst``."""
    import onnx

    src, dst = Path(src), Path(dst)
    if not src.is_file():
        raise ExportError(f"{src}: ONNX file not found")
    if dst.suffix != ".onnx":
        raise ExportError(f"output {dst} must end in .onnx")
    try:
        model = onnx.load(str(src), load_external_data=False)
    except Exception as exc:  # noqa: BLE001 -- protobuf's DecodeError and friends
        raise ExportError(f"{src}: not a readable ONNX file ({' '.join(str(exc).split())[:120]})") from None
    external = {e.value for t in model.graph.initializer for e in t.external_data if e.key == "location"}
    for location in sorted(external):
        if not (dst.parent / location).is_file():
            raise ExportError(f"{src}'s weights live in {location}, which is not beside {dst}; write the rewritten "
                              f"file into {src.parent} (or copy {location} next to it first)")
    keep_last_logits(model)
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(f".{dst.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        onnx.save_model(model, str(tmp))
        os.chmod(tmp, 0o644)
        os.replace(tmp, dst)
    finally:
        tmp.unlink(missing_ok=True)
    return dst


class _UsageError(Exception):
    pass


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, exit 2
        raise _UsageError(message)


def main(argv: Sequence[str] | None = None) -> int:
    p = _Parser(prog="python -m edge_runtime.export.last_logits",
                description="Rewrite an exported decoder so that it computes the last position's logits only "
                            "(what edge-export --logits last writes). The weights are unchanged.")
    p.add_argument("src", help="the exported .onnx file")
    p.add_argument("-o", "--out", required=True, help="the rewritten .onnx file (may be SRC itself)")
    try:
        args = p.parse_args(argv)
        out = rewrite_file(args.src, args.out)
    except SystemExit as exc:  # --help
        return int(exc.code or 0)
    except (_UsageError, ExportError, OSError) as exc:
        print(f"last_logits: error: {' '.join(str(exc).split())}", file=sys.stderr)
        return 2
    print(f"{args.src} -> {out}: logits of the last position only (weights unchanged)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
