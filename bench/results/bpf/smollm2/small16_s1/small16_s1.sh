#!/usr/bin/env bash
# Issue 14, second seed of the smaller dense baseline: small16.sh with --seed 1 (same base, budget, data recipe),
# then the vehicle file exactly as the shipped ones and its validation, then test, evaluation.
set -euo pipefail
cd /work/main
export HF_HUB_OFFLINE=1
W=/work/runs/smollm2
while pgrep -f "base_prec/bench.sh" > /dev/null; do sleep 15; done
date; echo "== train"
.venv/bin/edge-train bpf --init-from $W/small16-base --out $W/small16-sft-s1 \
  --schedule none --ratio 0.5 --shares 4 --sft-steps 800 --rl-steps 0 --batch-size 4 --sft-lr 1e-4 --sft-warmup 20 \
  --mpc-examples 700 --decision-per-instruction 176 --synonym-rate 0.3 --distractor-fraction 0.1 \
  --insertion-rate 0.3 --history-augment 0.5 --round-to 32 --threads 2 --seed 1
date; echo "== export"
.venv/bin/edge-export $W/small16-sft-s1 -o $W/small16-sft-s1.onnx --quantize int4 --block-size 16 --head-bits 8 --accuracy-level 4 --threads 2
date; echo "== eval validation"
.venv/bin/edge-eval --model $W/small16-sft-s1.onnx --constrained --task both --split validation --json $W/small16-sft-s1/eval_validation_onnx.json
date; echo "== eval test"
.venv/bin/edge-eval --model $W/small16-sft-s1.onnx --constrained --task both --split test --json $W/small16-sft-s1/eval_test_onnx.json
date; echo "== done"
