"""decoding/: the ONNX Runtime decoding engine (vehicle side: numpy, onnxruntime, tokenizers).

It opens an exported, self-describing decoder file (:mod:`.model_file`), chooses the execution
providers (:mod:`.providers`), holds the KV cache and runs the graph one step at a time
(:mod:`.generator`, public step API in :mod:`.step_api`), and decodes: greedy, sampling and
grammar-constrained (:mod:`.constrained`, automata in :mod:`.answer_grammar`).

Why a package of its own, below both ``runtime`` and ``export``: the vehicle's control loop
(``runtime``) decodes with it, and the export's parity check and the TensorRT builder
(``export``, training side) need the very same engine and shape profiles. Placing it under both
lets each import it without ``export`` importing the vehicle runtime or ``runtime`` importing
the training side, and without a second decode loop. See ``docs/architecture.md``.
"""
