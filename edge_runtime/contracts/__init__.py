"""Torch-free contracts shared by the vehicle side and the training side.

The bottom layer of the package (with ``telemetry``): every other package may import it and it
imports nothing from ``edge_runtime``, nor numpy-heavy or torch code. It holds what both sides
must agree on so that neither has to import the other:

* :mod:`.arch_spec` — the per-layer architecture spec and its JSON file (build, load, export
  and the runtime's KV-cache shapes all read it);
* :mod:`.answer_format` — the answer tags and the prompt version (prompt builder, parser,
  constrained decoding and the exported metadata);
* :mod:`.task_enums` — the task categories;
* :mod:`.generation` — the result of one generation and the text-policy protocol that the ONNX
  generator and the PyTorch policy both satisfy.
* :mod:`.user_input` — the bounded loader for user JSON (parameter files, scripts, model
  metadata) and the escaped, bounded quoting of user text in one-line errors.

The layering is described in ``docs/architecture.md`` and enforced by import-linter.
"""
