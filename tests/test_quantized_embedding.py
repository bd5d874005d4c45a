"""The embedding Gather of a MatMulNBits file reads a quantized table (GatherBlockQuantized): for a
tied model the LM head's own quantized weight (one table in the file), for an untied one a copy of
its own; the gathered rows equal the head's dequantized rows exactly."""

from __future__ import annotations

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from onnx import TensorProto, helper, numpy_helper
from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

from edge_runtime.export.quantized_embedding import quantize_embedding_gathers

VOCAB = 48


def _graph(hidden: int, tied: bool, seed: int = 0):
    """ids -> Gather(table) -> [batch, seq, hidden] (output "emb"), and x -> MatMul(head) -> logits."""
    rng = np.random.default_rng(seed)
    table = rng.standard_normal((VOCAB, hidden)).astype(np.float32)
    head = table.T.copy() if tied else rng.standard_normal((hidden, VOCAB)).astype(np.float32)
    nodes = [helper.make_node("Gather", ["table", "ids"], ["emb"], name="embed"),
             helper.make_node("MatMul", ["x", "head"], ["logits"], name="lm_head")]
    graph = helper.make_graph(
        nodes, "g",
        [helper.make_tensor_value_info("ids", TensorProto.INT64, ["batch", "seq"]),
         helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, hidden])],
        [helper.make_tensor_value_info("emb", TensorProto.FLOAT, None),
         helper.make_tensor_value_info("logits", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(table, "table"), numpy_helper.from_array(head, "head")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)]), table


def _quantize(model, bits: int, block: int, symmetric: bool, tied: bool):
    q = MatMulNBitsQuantizer(model, bits=bits, block_size=block, is_symmetric=symmetric,
                             nodes_to_include=["lm_head"], op_types_to_quantize=("MatMul",))
    q.process()
    proto = q.model.model
    done = quantize_embedding_gathers(proto, {"table": "logits"} if tied else {}, bits=bits, block_size=block,
                                      symmetric=symmetric)
    return proto, done


def _run(proto, hidden: int):
    sess = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    ids = np.arange(VOCAB, dtype=np.int64).reshape(2, VOCAB // 2)
    emb, logits = sess.run(["emb", "logits"], {"ids": ids, "x": np.eye(hidden, dtype=np.float32)})
    return emb.reshape(VOCAB, -1), logits.T  # logits.T: the head's dequantized rows [vocab, hidden]


@pytest.mark.parametrize("bits", [4, 8])
@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize("hidden, block", [(64, 32), (40, 32)])  # 40: the last block is zero-padded
def test_tied_gather_reads_the_heads_quantized_weight(bits, symmetric, hidden, block):
    model, table = _graph(hidden, tied=True)
    proto, done = _quantize(model, bits, block, symmetric, tied=True)
    assert [(d.table, d.shared, d.padded) for d in done] == [("table", True, hidden % block != 0)]
    ops = [n.op_type for n in proto.graph.node]
    assert "Gather" not in ops and ops.count("GatherBlockQuantized") == 1
    gbq = next(n for n in proto.graph.node if n.op_type == "GatherBlockQuantized")
    nbits = next(n for n in proto.graph.node if n.op_type == "MatMulNBits")
    assert gbq.input[0] == nbits.input[1]  # one quantized table read by both ends
    names = {i.name for i in proto.graph.initializer}
    assert "table" not in names and "head" not in names  # no float copy left
    emb, head_rows = _run(proto, hidden)
    assert emb.shape == (VOCAB, hidden)
    np.testing.assert_array_equal(emb, head_rows)  # the very same dequantized values
    step = np.abs(table).max() / (7 if bits == 4 else 127)
    assert 0 < np.abs(emb - table).max() <= step  # quantized, within one quantization step


@pytest.mark.parametrize("bits", [4, 8])
def test_untied_gather_gets_its_own_quantized_table(bits):
    model, table = _graph(64, tied=False)
    proto, done = _quantize(model, bits, 32, True, tied=False)
    assert [(d.table, d.shared) for d in done] == [("table", False)]
    gbq = next(n for n in proto.graph.node if n.op_type == "GatherBlockQuantized")
    nbits = next(n for n in proto.graph.node if n.op_type == "MatMulNBits")
    assert gbq.input[0] != nbits.input[1]
    assert "table" not in {i.name for i in proto.graph.initializer}
    emb, _ = _run(proto, 64)
    step = np.abs(table).max() / (7 if bits == 4 else 127)
    assert 0 < np.abs(emb - table).max() <= step


def test_a_head_quantized_differently_is_refused():
    model, _ = _graph(64, tied=True)
    q = MatMulNBitsQuantizer(model, bits=4, block_size=32, is_symmetric=True, nodes_to_include=["lm_head"],
                             op_types_to_quantize=("MatMul",))
    q.process()
    with pytest.raises(ValueError, match="does not match the embedding table"):
        quantize_embedding_gathers(q.model.model, {"table": "logits"}, bits=4, block_size=64, symmetric=True)


def test_graph_without_float_gather_is_unchanged():
    model, _ = _graph(64, tied=False)
    model.graph.node.remove(model.graph.node[0])
    model.graph.output.remove(model.graph.output[0])
    before = model.SerializeToString()
    assert quantize_embedding_gathers(model, {}, bits=4, block_size=32, symmetric=True) == []
    assert model.SerializeToString() == before
