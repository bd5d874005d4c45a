"""The embedding table of a weight-only quantized file, quantized too: ``GatherBlockQuantized``.

Why: in a 4-bit file the float32 embedding table would be the largest tensor left (49152 x 576
floats are 108 MiB for SmolLM2, more than all its 4-bit projections). ONNX Runtime's contrib op
``GatherBlockQuantized`` gathers rows of a block-quantized table and dequantizes only those rows,
so the table can stay 4- or 8-bit in the file and in memory.

Tied models (the LM head is the transposed embedding): the quantizer has already quantized the
head as ``MatMulNBits`` with weight ``B`` of shape ``[vocab, n_blocks, block_bytes]`` -- row ``v`` of
``B`` is embedding row ``v`` quantized in blocks along the hidden axis, exactly the layout
``GatherBlockQuantized`` reads with ``gather_axis=0, quantize_axis=2``. The Gather therefore reads
the head's own ``B`` initializer: one quantized table serves both ends, as in onnxruntime-genai's
shared-embedding files. Only the small per-block scales (and zero points) are stored again, in the
``[vocab, n_blocks, 1]`` shape the op requires (``MatMulNBits`` keeps ``[vocab, n_blocks]``).

Untied models: the table gets its own quantized copy, made by the same ONNX Runtime quantizer on a
one-node ``MatMul`` graph, so both ends use identical rounding rules.

The gathered rows come out as ``[batch, seq, n_blocks, block_size]``; a ``Reshape`` to
``[batch, seq, n_blocks * block_size]`` follows, and a ``Slice`` back to ``hidden`` when the hidden
size is not a multiple of the block size (the quantizer zero-pads the last block).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["EmbeddingQuantization", "quantize_embedding_gathers"]

_MS = "com.microsoft"


@dataclass(frozen=True)
class EmbeddingQuantization:
    """What happened to one embedding ``Gather``: ``shared`` when it reads the LM head's
    ``MatMulNBits`` weight, else it got a table of its own; ``padded`` when hidden % block != 0."""

    table: str
    vocab: int
    hidden: int
    shared: bool
    padded: bool


def _initializers(model) -> dict:
    return {i.name: i for i in model.graph.initializer}


def _nbits_attrs(node) -> dict[str, int]:
    return {a.name: int(a.i) for a in node.attribute}


def _head_nodes_for(model, table_name: str, head_outputs: dict[str, str]):
    """The ``MatMulNBits`` node that was the LM head reading ``table_name`` (found by its output,
    which the quantizer keeps), or None."""
    out = head_outputs.get(table_name)
    if out is None:
        return None
    return next((n for n in model.graph.node if n.op_type == "MatMulNBits" and n.output and n.output[0] == out), None)


def _own_quantized_table(table: np.ndarray, bits: int, block_size: int, symmetric: bool, accuracy_level: int | None):
    """Quantize ``table`` [vocab, hidden] the way MatMulNBits would quantize a head ``x @ table.T``:
    returns (B, scales [vocab, n_blocks], zero_points or None) -- ONNX Runtime's quantizer on a
    one-node graph, so the rounding is the same as the projections'."""
    from onnx import TensorProto, helper, numpy_helper
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    vocab, hidden = table.shape
    node = helper.make_node("MatMul", ["x", "W"], ["y"], name="table")
    graph = helper.make_graph([node], "table", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, hidden])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, vocab])],
                              [numpy_helper.from_array(np.ascontiguousarray(table.T), "W")])
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])
    quantizer = MatMulNBitsQuantizer(proto, bits=bits, block_size=block_size, is_symmetric=symmetric,
                                     accuracy_level=accuracy_level, op_types_to_quantize=("MatMul",))
    quantizer.process()
    q = quantizer.model.model
    nbits = next(n for n in q.graph.node if n.op_type == "MatMulNBits")
    inits = {i.name: numpy_helper.to_array(i) for i in q.graph.initializer}
    zp = inits.get(nbits.input[3]) if len(nbits.input) > 3 and nbits.input[3] else None
    return inits[nbits.input[1]], inits[nbits.input[2]], zp


def _zero_points_3d(zp: np.ndarray, vocab: int, n_blocks: int, bits: int) -> np.ndarray:
    """MatMulNBits zero points -> GatherBlockQuantized's ``[vocab, n_blocks, 1]``. 4-bit ones are
    packed two blocks per byte along the blocks in MatMulNBits; here each block has its own byte
    (low nibble), since the op packs along the quantized axis, which has one block per row slot."""
    zp = zp.reshape(vocab, -1)
    if bits == 4:
        zp = np.stack([zp & 0x0F, zp >> 4], axis=-1).reshape(vocab, -1)[:, :n_blocks]
    return np.ascontiguousarray(zp.reshape(vocab, n_blocks, 1).astype(np.uint8))


def quantize_embedding_gathers(model, head_outputs: dict[str, str], *, bits: int, block_size: int, symmetric: bool,
                               accuracy_level: int | None = None) -> list[EmbeddingQuantization]:
    """Replace every ``Gather`` on a 2-D float initializer in the MatMulNBits-quantized ``model``
    (in place) by ``GatherBlockQuantized``; see the module docstring. ``head_outputs`` maps an
    embedding table's name to the output name of the LM head MatMul that read it before
    quantization (tied models; empty for untied ones). The float tables are dropped when nothing
    else reads them."""
    from onnx import TensorProto, helper, numpy_helper

    graph = model.graph
    inits = _initializers(model)
    done: list[EmbeddingQuantization] = []
    new_nodes = []
    for node in graph.node:
        init = inits.get(node.input[0]) if node.op_type == "Gather" and node.input else None
        if init is None or len(init.dims) != 2 or init.data_type != TensorProto.FLOAT:
            new_nodes.append(node)
            continue
        vocab, hidden = int(init.dims[0]), int(init.dims[1])
        base = node.input[0]
        head = _head_nodes_for(model, base, head_outputs)
        if head is not None:
            attrs = _nbits_attrs(head)
            if attrs.get("bits") != bits or attrs.get("block_size") != block_size or attrs.get("K") != hidden \
                    or attrs.get("N") != vocab:
                raise ValueError(f"LM head {head.name} ({attrs}) does not match the embedding table {base} "
                                 f"[{vocab}, {hidden}] at {bits} bits, block {block_size}")
            data_name = head.input[1]
            scales = numpy_helper.to_array(inits[head.input[2]])
            zp = numpy_helper.to_array(inits[head.input[3]]) if len(head.input) > 3 and head.input[3] else None
        else:
            data, scales, zp = _own_quantized_table(numpy_helper.to_array(init), bits, block_size, symmetric,
                                                    accuracy_level)
            data_name = f"{base}_gather_q{bits}"
            graph.initializer.append(numpy_helper.from_array(data, data_name))
            inits[data_name] = graph.initializer[-1]
        n_blocks = -(-hidden // block_size)
        scales_name = f"{base}_gather_scales"
        graph.initializer.append(numpy_helper.from_array(
            np.ascontiguousarray(scales.reshape(vocab, n_blocks, 1)), scales_name))
        inputs = [data_name, node.input[1], scales_name]
        if zp is not None:
            zp_name = f"{base}_gather_zero_points"
            graph.initializer.append(numpy_helper.from_array(_zero_points_3d(zp, vocab, n_blocks, bits), zp_name))
            inputs.append(zp_name)
        blocks_out = f"{node.output[0]}_blocks"
        new_nodes.append(helper.make_node("GatherBlockQuantized", inputs, [blocks_out], name=f"{node.name or base}_q",
                                          domain=_MS, gather_axis=0, quantize_axis=2, block_size=block_size, bits=bits))
        shape_name = f"{base}_gather_shape"
        graph.initializer.append(numpy_helper.from_array(np.array([0, 0, n_blocks * block_size], np.int64), shape_name))
        padded = n_blocks * block_size != hidden
        flat = f"{node.output[0]}_padded" if padded else node.output[0]
        new_nodes.append(helper.make_node("Reshape", [blocks_out, shape_name], [flat], name=f"{node.name or base}_flat"))
        if padded:
            names = [f"{base}_slice_{k}" for k in ("starts", "ends", "axes")]
            for name, value in zip(names, ([0], [hidden], [-1])):
                graph.initializer.append(numpy_helper.from_array(np.array(value, np.int64), name))
            new_nodes.append(helper.make_node("Slice", [flat, *names], [node.output[0]], name=f"{node.name or base}_unpad"))
        done.append(EmbeddingQuantization(table=base, vocab=vocab, hidden=hidden, shared=head is not None,
                                          padded=padded))
    if not done:
        return done
    del graph.node[:]
    graph.node.extend(new_nodes)
    used = {name for n in graph.node for name in n.input} | {o.name for o in graph.output}
    keep = [i for i in graph.initializer if i.name in used]
    del graph.initializer[:]
    graph.initializer.extend(keep)
    if not any(op.domain == _MS for op in model.opset_import):
        model.opset_import.append(helper.make_opsetid(_MS, 1))
    return done
