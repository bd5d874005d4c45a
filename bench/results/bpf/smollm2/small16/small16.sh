#!/usr/bin/env bash
# The smaller dense model of the same family (issue 14): SmolLM2-135M-Instruct with whole layers dropped to
# pruned50's parameter count (16 of 30 layers), trained with pruned50's exact budget and data
# (edge-train bpf --schedule none: the same SFT phase, no pruning).
set -euo pipefail
cd /work/main
export HF_HUB_OFFLINE=1
.venv/bin/edge-train bpf --init-from /work/runs/smollm2/small16-base --out /work/runs/smollm2/small16-sft \
  --schedule none --ratio 0.5 --shares 4 --sft-steps 800 --rl-steps 0 --batch-size 4 --sft-lr 1e-4 --sft-warmup 20 \
  --mpc-examples 700 --decision-per-instruction 176 --synonym-rate 0.3 --distractor-fraction 0.1 \
  --insertion-rate 0.3 --history-augment 0.5 --round-to 32 --threads 2 --seed 0
