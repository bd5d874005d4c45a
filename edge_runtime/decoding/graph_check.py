"""An exported file's metadata checked against its graph at load, before anything runs.

Why: the runtime sizes its KV cache, bounds token ids and reports the parameter count from the
metadata's architecture spec (``edge_runtime.arch_spec``). A file whose metadata does not describe
its graph -- metadata copied from another export, a hand-edited file -- would otherwise load and
run with wrong shapes, fail only at warm-up after an ONNX Runtime log line, or make ``edge-eval``
report another model's parameter count. Every mismatch is one :class:`ModelLoadError` line naming
the file and the field.

What is checked, from the session's inputs/outputs (ONNX Runtime) and from the file's initialisers
and node attributes (:mod:`.onnx_graph`, no ``onnx`` package on the vehicle):

* layer count: one ``past_key_values.{i}.key|value`` input and ``present.{i}.key|value`` output per
  spec layer, and no other inputs;
* per layer, KV heads and head_dim: the past and present shapes ``[batch, kv_heads_i, seq, head_dim]``,
  with ``seq`` dynamic for the concat layout and equal to the capacity for the shared layout;
* vocab_size and hidden_size: the logits' last dimension and the embedding table ``[vocab, hidden]``;
* query heads and MLP width per layer: the multiset of projection weight shapes (every MatMul whose
  weight is an initialiser, MatMulInteger, and MatMulNBits by its K and N attributes) equals the one
  the spec implies -- q/k/v/o, gate/up/down and the LM head for the traced graph, packed qkv and
  gate_up for the shared-cache graph -- and, in the shared-cache graph, each layer's
  ``GroupQueryAttention`` has the spec's ``num_heads`` and ``kv_num_heads``.

Together these fix every matrix of the model, so the spec's parameter count is the graph's. Not
checked: which layer a traced projection belongs to (its initialiser names are the exporter's, so a
spec that swaps two layers' query-head counts with equal totals passes in the traced graph), the
bias and norm vectors (the traced exporter folds identical ones into one initialiser); these only
change the parameter count by vectors.

Tying: a tied spec accepts the LM head either as its own ``[hidden, vocab]`` matrix (files exported
before the table was stored once) or as a MatMul by ``Transpose`` of the embedding table (the table
stored once, ``export.tied_head``); an untied spec (``tie_word_embeddings`` false) requires its own
matrix and refuses a head that reads the embedding table. A quantized embedding
(``GatherBlockQuantized``, ``[vocab, n_blocks, block bytes]``) must have the spec's vocab rows and
enough blocks for ``hidden_size``; only a tied spec may let it read the LM head's ``MatMulNBits``
weight.
"""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path
from typing import Any

from ..contracts.arch_spec import ArchSpec
from .model_file import ModelLoadError, one_line
from .onnx_graph import GraphFacts, GraphReadError, read_graph_facts

__all__ = ["check_graph_against_spec", "expected_weight_shapes", "tied_heads", "weight_shapes"]

_FIX = "re-export the model with edge-export"
_PAST = re.compile(r"past_key_values\.(\d+)\.(key|value)$")
_FLOAT_TYPES = (1, 10, 11, 16)  # float, float16, double, bfloat16
_WEIGHT_MATMULS = ("MatMul", "MatMulInteger")


def expected_weight_shapes(spec: ArchSpec, layout: str) -> Counter[tuple[int, int]]:
    """(K, N) of every projection the spec implies in a graph of ``layout`` ("concat"/"shared")."""
    h, d = spec.hidden_size, spec.head_dim
    shapes: Counter[tuple[int, int]] = Counter({(h, spec.vocab_size): 1})
    for layer in spec.layers:
        q, kv, inter = layer.num_q_heads * d, layer.num_kv_heads * d, layer.intermediate_size
        if layout == "shared":
            shapes.update([(h, q + 2 * kv), (q, h), (h, 2 * inter), (inter, h)])
        else:
            shapes.update([(h, q), (h, kv), (h, kv), (q, h), (h, inter), (h, inter), (inter, h)])
    return shapes


def weight_shapes(facts: GraphFacts) -> Counter[tuple[int, int]]:
    """(K, N) of every matrix multiplication by a stored weight in the graph."""
    shapes: Counter[tuple[int, int]] = Counter()
    for node in facts.nodes:
        if node.op_type in _WEIGHT_MATMULS and len(node.inputs) > 1:
            w = facts.initializers.get(node.inputs[1])
            if w is not None and len(w.dims) == 2:
                shapes[(w.dims[0], w.dims[1])] += 1
        elif node.op_type == "MatMulNBits" and "K" in node.ints and "N" in node.ints:
            shapes[(node.ints["K"], node.ints["N"])] += 1
    return shapes


def tied_heads(facts: GraphFacts) -> int:
    """How many MatMuls multiply by a ``Transpose`` of a ``Gather``'s table: an LM head that reads
    the tied embedding (stored once) instead of its own matrix."""
    tables = {n.inputs[0] for n in facts.nodes if n.op_type == "Gather" and n.inputs
              and n.inputs[0] in facts.initializers and len(facts.initializers[n.inputs[0]].dims) == 2}
    transposed = {n.outputs[0] for n in facts.nodes if n.op_type == "Transpose" and n.inputs and n.outputs
                  and n.inputs[0] in tables}
    return sum(1 for n in facts.nodes if n.op_type in _WEIGHT_MATMULS and len(n.inputs) > 1
               and n.inputs[1] in transposed)


def _fmt(shapes: Counter[tuple[int, int]], limit: int = 4) -> str:
    items = sorted(shapes.items())
    text = ", ".join(f"{k}x{n}" + (f" (x{c})" if c > 1 else "") for (k, n), c in items[:limit])
    return text + (f" and {len(items) - limit} more" if len(items) > limit else "")


def check_graph_against_spec(path: Path, session: Any, spec: ArchSpec, kv_capacity: int | None,
                             facts: GraphFacts | None = None) -> None:
    """ModelLoadError (one line: file, field, what the graph has) when the metadata's arch spec
    and kv_cache layout do not describe the graph of ``session`` (see the module docstring)."""
    where = f"{path}: metadata arch spec"
    inputs = {i.name: i for i in session.get_inputs()}
    outputs = {o.name: o for o in session.get_outputs()}
    layers = {int(m.group(1)) for m in map(_PAST.match, inputs) if m}
    if len(layers) != spec.num_layers:
        raise ModelLoadError(f"{where} says {spec.num_layers} layers but the graph has {len(layers)} "
                             f"past_key_values inputs; {_FIX}")
    expected_in = ["input_ids", "attention_mask", "position_ids"]
    expected_out = ["logits"]
    for i in range(spec.num_layers):
        expected_in += [f"past_key_values.{i}.key", f"past_key_values.{i}.value"]
        expected_out += [f"present.{i}.key", f"present.{i}.value"]
    missing = [n for n in expected_in if n not in inputs] + [n for n in expected_out if n not in outputs]
    if missing:
        raise ModelLoadError(f"{path}: graph lacks {missing[:4]} required by its arch_spec "
                             f"({spec.num_layers} layers); {_FIX}")
    extra = sorted(set(inputs) - set(expected_in))
    if extra:
        raise ModelLoadError(f"{path}: graph has inputs {extra[:4]} that its arch_spec ({spec.num_layers} layers) "
                             f"does not describe; {_FIX}")
    seq = "past_seq" if kv_capacity is None else str(kv_capacity)
    for i, layer in enumerate(spec.layers):
        for name in (f"past_key_values.{i}.key", f"past_key_values.{i}.value", f"present.{i}.key",
                     f"present.{i}.value"):
            shape = (inputs.get(name) or outputs[name]).shape
            ok = len(shape) == 4 and shape[1] == layer.num_kv_heads and shape[3] == spec.head_dim
            if ok:
                ok = shape[2] == kv_capacity if kv_capacity is not None else not isinstance(shape[2], int)
            if not ok:
                raise ModelLoadError(f"{path}: {name} has shape {shape}, the arch_spec and kv_cache metadata say "
                                     f"[batch, {layer.num_kv_heads}, {seq}, {spec.head_dim}]; {_FIX}")
    vocab = outputs["logits"].shape[-1] if outputs["logits"].shape else None
    if isinstance(vocab, int) and vocab != spec.vocab_size:
        raise ModelLoadError(f"{where} says vocab_size {spec.vocab_size} but the graph's logits have {vocab}; {_FIX}")
    if facts is None:
        try:
            facts = read_graph_facts(path)
        except (GraphReadError, OSError) as exc:
            raise ModelLoadError(f"{path}: cannot read the graph's weights ({one_line(exc, 120)}); {_FIX}") from None
    _check_weights(where, facts, spec, "concat" if kv_capacity is None else "shared")


def _check_weights(where: str, facts: GraphFacts, spec: ArchSpec, layout: str) -> None:
    for node in facts.nodes:
        if node.op_type == "Gather" and node.inputs and node.inputs[0] in facts.initializers:
            table = facts.initializers[node.inputs[0]]
            if table.data_type in _FLOAT_TYPES and len(table.dims) == 2 \
                    and table.dims != (spec.vocab_size, spec.hidden_size):
                raise ModelLoadError(f"{where} says vocab_size {spec.vocab_size} and hidden_size {spec.hidden_size} "
                                     f"but the graph's embedding table is {table.dims[0]}x{table.dims[1]}; {_FIX}")
        if node.op_type == "GatherBlockQuantized" and node.inputs and node.inputs[0] in facts.initializers:
            table = facts.initializers[node.inputs[0]]  # [vocab, n_blocks, block bytes]
            blocks = node.ints.get("block_size", 0)
            rows_hold = len(table.dims) == 3 and table.dims[1] * blocks >= spec.hidden_size > (table.dims[1] - 1) * blocks
            if not table.dims or table.dims[0] != spec.vocab_size or not rows_hold:
                raise ModelLoadError(f"{where} says vocab_size {spec.vocab_size} and hidden_size {spec.hidden_size} "
                                     f"but the graph's quantized embedding table is {list(table.dims)} in blocks of "
                                     f"{blocks}; {_FIX}")
            if not spec.tie_word_embeddings and node.inputs[0] in {n.inputs[1] for n in facts.nodes
                                                                   if n.op_type == "MatMulNBits" and len(n.inputs) > 1}:
                raise ModelLoadError(f"{where} says tie_word_embeddings false (an LM head of its own) but the graph's "
                                     f"embedding reads the LM head's weight; {_FIX}")
        if node.op_type == "GroupQueryAttention":
            m = re.match(r"present\.(\d+)\.key$", node.outputs[1]) if len(node.outputs) > 1 else None
            if m is None or int(m.group(1)) >= spec.num_layers:
                continue
            i = int(m.group(1))
            layer = spec.layers[i]
            for attr, want, what in (("num_heads", layer.num_q_heads, "query heads"),
                                     ("kv_num_heads", layer.num_kv_heads, "KV heads")):
                if node.ints.get(attr, want) != want:
                    raise ModelLoadError(f"{where} says layer {i} has {want} {what} but the graph's attention has "
                                         f"{node.ints[attr]}; {_FIX}")
    want, have = expected_weight_shapes(spec, layout), weight_shapes(facts)
    shared = tied_heads(facts)
    if shared and not spec.tie_word_embeddings:
        raise ModelLoadError(f"{where} says tie_word_embeddings false (an LM head of its own) but the graph's LM "
                             f"head reads the embedding table; {_FIX}")
    if shared:  # tied: the head is the table, stored once
        have[(spec.hidden_size, spec.vocab_size)] += shared
    if want != have:
        raise ModelLoadError(f"{where} does not match the graph's weight matrices (query heads, MLP widths or vocab "
                             f"differ): the spec implies {_fmt(want - have)} that the graph lacks, the graph has "
                             f"{_fmt(have - want) or 'nothing else'}; {_FIX}")
