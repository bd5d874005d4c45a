#!/usr/bin/env bash
# Issue 14, the GRPO methods at 50 % on a 2-core CPU: BPF-RL (edge-train bpf --schedule rl: 4 equal pruning shares at
# GRPO steps 8/16/24/32) and post-training pruning + GRPO recovery (--schedule ptp-rl: the 50 % prune at once, then the
# same GRPO steps), both from the dense SmolLM2 controller's fp32 weights (models/dense/reproduce.sh's two SFT stages,
# rebuilt when missing, as for bench/results/bpf/smollm2/ptp), with the same budget (RL_STEPS GRPO steps of 4 prompts x
# 6 completions, closed-loop rewards, the GRPO defaults), the same seed and pruned50's pruning settings. GRPO costs
# about a minute per step here, so the budget is small; the GPU job (bench/gpu) runs the full comparison.
# Each model is then scored by score_pruned.sh (vehicle file, validation, test).
#   bash bench/results/bpf/smollm2/rl/rl.sh [WORK_DIR]      (default WORK_DIR: /work/runs/smollm2; RL_STEPS=40)
set -euo pipefail
cd "$(dirname "$0")/../../../../.."
export HF_HUB_OFFLINE=1
W="${1:-/work/runs/smollm2}"
STEPS="${RL_STEPS:-40}"
HERE=bench/results/bpf/smollm2/rl
[ -f "$W/sft2/model.safetensors" ] || bash models/dense/reproduce.sh "$W"
for S in rl ptp-rl; do
  M="$W/${S/-/}50"            # bpf: rl50 / ptprl50
  date; echo "== train $S at 50 %, $STEPS GRPO steps"
  [ -f "$M/model.safetensors" ] || .venv/bin/edge-train bpf --init-from "$W/sft2" --out "$M" --schedule "$S" \
    --ratio 0.5 --shares 4 --sft-steps 0 --rl-steps "$STEPS" --round-to 32 --threads 2 --seed 0
  [ -f "$M/eval_test_onnx.json" ] || bash bench/results/bpf/smollm2/score_pruned.sh "$M" "$HERE/$(basename "$M")"
done
date; echo "== done"
