"""The static facts of an ONNX graph -- weight shapes and operator attributes -- read without ``onnx``.

Why: an exported file's metadata describes the model (``edge_runtime.arch_spec``), but the graph is
what runs. ONNX Runtime's session shows only the graph's inputs and outputs, not its initialisers or
node attributes, and the vehicle side may not import the ``onnx`` package (import-linter,
``vehicle-no-torch``). So this module reads the few fields it needs straight from the protobuf wire
format of ``ModelProto``: initialiser names, element types and dims, and every node's op type,
inputs, outputs and integer attributes (``Constant`` nodes' tensors count as initialisers). Tensor
payloads are skipped by their length, never copied, so reading a large model costs a walk over its
field headers on a memory map.

Field numbers are those of onnx.proto (stable since IR version 3); unknown fields are skipped, as
protobuf readers do.
"""

from __future__ import annotations

import mmap
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["GraphFacts", "GraphReadError", "NodeFacts", "TensorFacts", "read_graph_facts"]

# onnx.proto field numbers
_MODEL_GRAPH = 7
_GRAPH_NODE, _GRAPH_INITIALIZER = 1, 5
_NODE_INPUT, _NODE_OUTPUT, _NODE_NAME, _NODE_OP_TYPE, _NODE_ATTRIBUTE, _NODE_DOMAIN = 1, 2, 3, 4, 5, 7
_ATTR_NAME, _ATTR_I, _ATTR_T = 1, 3, 5
_TENSOR_DIMS, _TENSOR_DATA_TYPE, _TENSOR_NAME = 1, 2, 8


class GraphReadError(ValueError):
    """The bytes are not an ONNX ModelProto this reader can walk (truncated or not protobuf)."""


@dataclass(frozen=True)
class TensorFacts:
    name: str
    data_type: int  # TensorProto.DataType: 1 float, 10 float16, 3 int8, 2 uint8, 7 int64, ...
    dims: tuple[int, ...]


@dataclass(frozen=True)
class NodeFacts:
    op_type: str
    domain: str
    name: str
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    ints: dict[str, int] = field(default_factory=dict)  # integer attributes (num_heads, K, N, ...)


@dataclass(frozen=True)
class GraphFacts:
    initializers: dict[str, TensorFacts]
    nodes: tuple[NodeFacts, ...]


def _varint(buf, pos: int, end: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= end:
            raise GraphReadError("truncated varint")
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, pos
        shift += 7
        if shift > 70:
            raise GraphReadError("varint too long")


def _fields(buf, pos: int, end: int):
    """(field number, wire type, value) of each field in ``buf[pos:end]``; for length-delimited
    fields the value is the (start, stop) span, for varints the integer, otherwise None."""
    while pos < end:
        key, pos = _varint(buf, pos, end)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _varint(buf, pos, end)
        elif wire == 2:
            length, pos = _varint(buf, pos, end)
            if pos + length > end:
                raise GraphReadError(f"field {number} runs past the end of its message")
            value, pos = (pos, pos + length), pos + length
        elif wire == 1:
            value, pos = None, pos + 8
        elif wire == 5:
            value, pos = None, pos + 4
        else:
            raise GraphReadError(f"unsupported wire type {wire} (field {number})")
        if pos > end:
            raise GraphReadError(f"field {number} runs past the end of its message")
        yield number, wire, value


def _text(buf, span: tuple[int, int]) -> str:
    return bytes(buf[span[0]:span[1]]).decode("utf-8", errors="replace")


def _int64(value: int) -> int:
    return value - (1 << 64) if value >= 1 << 63 else value


def _tensor(buf, span: tuple[int, int], name: str = "") -> TensorFacts:
    dims: list[int] = []
    data_type = 0
    for number, wire, value in _fields(buf, *span):
        if number == _TENSOR_DIMS:
            if wire == 0:
                dims.append(_int64(value))
            elif wire == 2:  # packed
                pos, stop = value
                while pos < stop:
                    d, pos = _varint(buf, pos, stop)
                    dims.append(_int64(d))
        elif number == _TENSOR_DATA_TYPE and wire == 0:
            data_type = value
        elif number == _TENSOR_NAME and wire == 2:
            name = name or _text(buf, value)
    return TensorFacts(name, data_type, tuple(dims))


def _node(buf, span: tuple[int, int], constants: dict[str, TensorFacts]) -> NodeFacts:
    inputs: list[str] = []
    outputs: list[str] = []
    op_type = domain = name = ""
    ints: dict[str, int] = {}
    tensors: list[TensorFacts] = []
    for number, wire, value in _fields(buf, *span):
        if wire != 2:
            continue
        if number == _NODE_INPUT:
            inputs.append(_text(buf, value))
        elif number == _NODE_OUTPUT:
            outputs.append(_text(buf, value))
        elif number == _NODE_NAME:
            name = _text(buf, value)
        elif number == _NODE_OP_TYPE:
            op_type = _text(buf, value)
        elif number == _NODE_DOMAIN:
            domain = _text(buf, value)
        elif number == _NODE_ATTRIBUTE:
            attr_name, attr_int, attr_tensor = "", None, None
            for a_number, a_wire, a_value in _fields(buf, *value):
                if a_number == _ATTR_NAME and a_wire == 2:
                    attr_name = _text(buf, a_value)
                elif a_number == _ATTR_I and a_wire == 0:
                    attr_int = _int64(a_value)
                elif a_number == _ATTR_T and a_wire == 2:
                    attr_tensor = a_value
            if attr_int is not None:
                ints[attr_name] = attr_int
            if attr_tensor is not None and attr_name == "value":
                tensors.append(_tensor(buf, attr_tensor))
    if op_type == "Constant" and tensors and outputs:
        t = tensors[0]
        constants[outputs[0]] = TensorFacts(outputs[0], t.data_type, t.dims)
    return NodeFacts(op_type, domain, name, tuple(inputs), tuple(outputs), ints)


def read_graph_facts(path: str | Path) -> GraphFacts:
    """Initialisers (and Constant-node tensors) by name, and the nodes, of the ONNX file ``path``.
    GraphReadError when the file is not a ModelProto with a graph; OSError when it cannot be read."""
    with open(path, "rb") as f:
        size = f.seek(0, 2)
        if size == 0:
            raise GraphReadError("empty file")
        with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm:
            buf = memoryview(mm)
            try:
                graph = None
                for number, wire, value in _fields(buf, 0, size):
                    if number == _MODEL_GRAPH and wire == 2:
                        graph = value
                if graph is None:
                    raise GraphReadError("no graph in the model")
                initializers: dict[str, TensorFacts] = {}
                nodes: list[NodeFacts] = []
                for number, wire, value in _fields(buf, *graph):
                    if wire != 2:
                        continue
                    if number == _GRAPH_INITIALIZER:
                        t = _tensor(buf, value)
                        initializers[t.name] = t
                    elif number == _GRAPH_NODE:
                        nodes.append(_node(buf, value, initializers))
                return GraphFacts(initializers, tuple(nodes))
            finally:
                buf.release()
