"""Store a tied embedding table once in a traced ONNX graph: the LM head reads the embedding.

Why: ``torch.onnx.export`` constant-folds the tied LM head ``x @ embed.T`` into its own
transposed initializer, so the file holds the vocab x hidden table twice (the ``Gather``'s and
the LM head's). :func:`share_tied_table` rewrites such a graph so that the LM head ``MatMul``
reads ``Transpose(embed)`` of the one stored table instead. ONNX Runtime folds that constant
``Transpose`` when it builds the session, so the computation is the same MatMul as before; only
the file (and its load) loses the copy. The shared-KV-cache graph is written this way directly
(``shared_cache_graph``).

Consequence for quantization: ``export.quantize`` quantizes MatMuls whose weight is an
initializer, so a tied LM head stays float32 in quantized files (the table it shares with the
``Gather`` is float32 there anyway).
"""

from __future__ import annotations

__all__ = ["share_tied_table", "unshare_tied_table"]

_FLOAT_TYPES = (1, 10)  # float, float16


def share_tied_table(proto) -> int:
    """Point every ``MatMul`` whose weight initialiser equals a ``Gather`` table transposed at a
    ``Transpose`` of that table and drop the copies. Returns how many MatMuls now share a table."""
    import numpy as np
    from onnx import helper, numpy_helper

    graph = proto.graph
    inits = {i.name: i for i in graph.initializer}
    tables = {n.input[0] for n in graph.node if n.op_type == "Gather" and n.input and n.input[0] in inits}
    tables = {t for t in tables if len(inits[t].dims) == 2 and inits[t].data_type in _FLOAT_TYPES}
    arrays: dict[str, np.ndarray] = {}

    def array(name: str) -> np.ndarray:
        if name not in arrays:
            arrays[name] = numpy_helper.to_array(inits[name])
        return arrays[name]

    shared = 0
    transposes = []
    replaced: set[str] = set()
    for node in graph.node:
        if node.op_type != "MatMul" or len(node.input) < 2 or node.input[1] not in inits:
            continue
        weight = inits[node.input[1]]
        for table in sorted(tables):
            t = inits[table]
            if weight.data_type != t.data_type or tuple(weight.dims) != (t.dims[1], t.dims[0]):
                continue
            if np.array_equal(array(node.input[1]), array(table).T):
                out = f"{table}.T"
                if out not in {tr.output[0] for tr in transposes}:
                    transposes.append(helper.make_node("Transpose", [table], [out], name=f"{out}/Transpose",
                                                       perm=[1, 0]))
                replaced.add(node.input[1])
                node.input[1] = out
                shared += 1
                break
    if not shared:
        return 0
    for tr in reversed(transposes):  # initializer inputs only: first in topological order
        graph.node.insert(0, tr)
    used = {name for n in graph.node for name in n.input} | {o.name for o in graph.output}
    keep = [i for i in graph.initializer if i.name not in replaced or i.name in used]
    del graph.initializer[:]
    graph.initializer.extend(keep)
    return shared


def unshare_tied_table(proto) -> dict[str, str]:
    """The inverse of :func:`share_tied_table`: give every ``MatMul`` fed by a ``Transpose`` of a
    ``Gather`` table its own transposed initialiser again. The quantizers only quantize a MatMul
    whose weight is an initialiser, so a quantized file gets a quantized LM head (fast decoding);
    the MatMulNBits quantizer then lets the Gather read that quantized head weight
    (``export.quantized_embedding``), so the table is stored once again. Returns
    ``{table initialiser: output of the MatMul that now has its own copy}`` (empty: nothing tied)."""
    from onnx import numpy_helper

    graph = proto.graph
    inits = {i.name: i for i in graph.initializer}
    tables = {n.input[0] for n in graph.node if n.op_type == "Gather" and n.input and n.input[0] in inits}
    transposed = {n.output[0]: n for n in graph.node
                  if n.op_type == "Transpose" and n.input and n.input[0] in tables
                  and len(inits[n.input[0]].dims) == 2 and list(n.attribute[0].ints if n.attribute else []) in ([1, 0], [])}
    changed: dict[str, str] = {}
    added: dict[str, str] = {}
    for node in graph.node:
        if node.op_type != "MatMul" or len(node.input) < 2 or node.input[1] not in transposed:
            continue
        table = transposed[node.input[1]].input[0]
        if table not in added:
            name = f"{table}.T.weight"
            graph.initializer.append(numpy_helper.from_array(numpy_helper.to_array(inits[table]).T.copy(), name))
            added[table] = name
        node.input[1] = added[table]
        changed.setdefault(table, node.output[0])
    if changed:
        used = {name for n in graph.node for name in n.input} | {o.name for o in graph.output}
        keep = [n for n in graph.node if not (n.output and n.output[0] in transposed and n.output[0] not in used)]
        del graph.node[:]
        graph.node.extend(keep)
    return changed
