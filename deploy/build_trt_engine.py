#!/usr/bin/env python3
"""Build a TensorRT engine from an exported decoder (run on the vehicle computer / Jetson).

    python deploy/build_trt_engine.py models/pruned.onnx -o models/pruned.engine
    python deploy/build_trt_engine.py models/pruned.onnx --dry-run          # print the trtexec command
    python deploy/build_trt_engine.py models/pruned.onnx --past 0,256,1024 --seq 1,1,512 --no-fp16

Uses trtexec (PATH, or JetPack's /usr/src/tensorrt/bin/trtexec) with one explicit optimisation
profile for every graph input -- each layer's past_key_values with that layer's own KV head count,
read from the file's metadata -- or the TensorRT Python API. Without TensorRT it prints
"TensorRT not available: ..." and exits 3. The logic and its documentation live in
edge_runtime/export/tensorrt.py. Exit codes: 0 built, 1 build failed, 2 bad input, 3 no TensorRT.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout without installing

from edge_runtime.export.tensorrt import main

if __name__ == "__main__":
    sys.exit(main())
