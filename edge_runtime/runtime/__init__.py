"""On-vehicle runtime: the fixed-rate control loop, the LLM worker and the ``edge-run`` command (torch-free).

The ONNX decoding engine it drives lives one layer down, in :mod:`edge_runtime.decoding`, shared
with the export's parity check; ``runtime`` imports nothing from the training side (``model``,
``prune``, ``export``, ``train``) nor from ``evaluation`` (import-linter checks it).
"""
