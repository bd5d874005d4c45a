#!/usr/bin/env bash
# Issue 14, second seed of SFT-stage pruning at 50 %: models/pruned50/reproduce.sh's exact recipe with --seed 1
# (same base, budget, data recipe, pruning schedule), then the vehicle file exactly as the shipped one and its
# validation, then test, evaluation. Resumes when re-run (edge-train bpf keeps a resume checkpoint).
set -euo pipefail
cd "$(dirname "$0")/../../../../.."
export HF_HUB_OFFLINE=1
W="${1:-/work/runs/smollm2}"
[ -d "$W/smollm2-135m" ] || bash models/fetch_base.sh "$W"
date; echo "== train"
.venv/bin/edge-train bpf --init-from "$W/smollm2-135m" --out "$W/pruned50-sft-s1" \
  --schedule sft --ratio 0.5 --shares 4 --sft-steps 800 --rl-steps 0 --batch-size 4 --sft-lr 1e-4 --sft-warmup 20 \
  --mpc-examples 700 --decision-per-instruction 176 --synonym-rate 0.3 --distractor-fraction 0.1 \
  --insertion-rate 0.3 --history-augment 0.5 --round-to 32 --threads 2 --seed 1
date; echo "== export"
.venv/bin/edge-export "$W/pruned50-sft-s1" -o "$W/pruned50-sft-s1.onnx" --quantize int4 --block-size 16 --head-bits 8 --accuracy-level 4 --threads 2
date; echo "== eval validation"
.venv/bin/edge-eval --model "$W/pruned50-sft-s1.onnx" --constrained --task both --split validation --json "$W/pruned50-sft-s1/eval_validation_onnx.json"
date; echo "== eval test"
.venv/bin/edge-eval --model "$W/pruned50-sft-s1.onnx" --constrained --task both --split test --json "$W/pruned50-sft-s1/eval_test_onnx.json"
date; echo "== done"
