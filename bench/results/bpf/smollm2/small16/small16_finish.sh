#!/usr/bin/env bash
# After small16.sh: the vehicle file quantised exactly as models/pruned50.onnx (int4 blocks of 16, 8-bit head,
# accuracy level 4, parity-checked) and its validation, then test, evaluation with constrained decoding.
set -euo pipefail
cd /work/main
export HF_HUB_OFFLINE=1
W=/work/runs/smollm2
while [ ! -f $W/small16-sft/train_summary.json ]; do sleep 20; done
date; echo "== export"
.venv/bin/edge-export $W/small16-sft -o $W/small16-sft.onnx --quantize int4 --block-size 16 --head-bits 8 --accuracy-level 4 --threads 2
date; echo "== eval validation"
.venv/bin/edge-eval --model $W/small16-sft.onnx --constrained --task both --split validation --json $W/small16-sft/eval_validation_onnx.json
date; echo "== eval test"
.venv/bin/edge-eval --model $W/small16-sft.onnx --constrained --task both --split test --json $W/small16-sft/eval_test_onnx.json
date; echo "== done"
