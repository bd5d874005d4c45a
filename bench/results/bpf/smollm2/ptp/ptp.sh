#!/usr/bin/env bash
# Issue 14, post-training pruning without recovery (edge-train bpf --schedule ptp): the dense SmolLM2
# controller's fp32 weights (models/dense/reproduce.sh's two SFT stages; the weights are not shipped, so
# they are rebuilt when missing) pruned at once to 50 % and to 25 % of the prunable parameters, with the
# pruned50 recipe's pruning settings (first and last layer dense, GQA-aware query heads, MLP widths in
# multiples of 32, Taylor importance). Then each vehicle file and its scores by ../score_pruned.sh (the pruned50
# recipe's int4, or the 8-bit file when parity refuses it; validation, then test, once each).
# Then the rebuilt dense model's own vehicle file (the dense recipe) on validation and test.
#   bash bench/results/bpf/smollm2/ptp/ptp.sh [WORK_DIR]      (default WORK_DIR: /work/runs/smollm2)
set -euo pipefail
cd "$(dirname "$0")/../../../../.."
export HF_HUB_OFFLINE=1
W="${1:-/work/runs/smollm2}"
HERE=bench/results/bpf/smollm2/ptp
[ -f "$W/sft2/model.safetensors" ] || bash models/dense/reproduce.sh "$W"
# The rebuilt dense weights are not bit-identical to the shipped model's (the card records both sha256):
# its own vehicle file, with the dense recipe, is the parent the pruned files are compared with as well.
D=$HERE/dense_rebuilt
mkdir -p "$D"
if [ ! -f "$W/dense.onnx" ]; then
  date; echo "== export the rebuilt dense"
  .venv/bin/edge-export "$W/sft2" -o "$W/dense.onnx" --quantize int4 --head-bits 8 --accuracy-level 4 --threads 2 \
    2>&1 | tee "$D/export.log"
fi
for R in 50 25; do
  M="$W/ptp$R"
  date; echo "== prune ptp$R"
  [ -f "$M/model.safetensors" ] || .venv/bin/edge-train bpf --init-from "$W/sft2" --out "$M" --schedule ptp \
    --ratio "0.$R" --round-to 32 --threads 2 --seed 0
  [ -f "$M/eval_test_onnx.json" ] || bash bench/results/bpf/smollm2/score_pruned.sh "$M" "$HERE/ptp$R"
done
for S in validation test; do
  [ -f "$W/sft2/eval_${S}_onnx.json" ] || .venv/bin/edge-eval --model "$W/dense.onnx" --constrained --task both \
    --split $S --json "$W/sft2/eval_${S}_onnx.json"
done
cp "$W/sft2"/{arch_spec.json,train_summary.json,eval_validation_onnx.json,eval_test_onnx.json} "$D/"
date; echo "== done"
