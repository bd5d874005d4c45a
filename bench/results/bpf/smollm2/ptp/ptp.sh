#!/usr/bin/env bash
# Issue 14, post-training pruning without recovery (edge-train bpf --schedule ptp): the dense SmolLM2
# controller's fp32 weights (models/dense/reproduce.sh's two SFT stages; the weights are not shipped, so
# they are rebuilt when missing) pruned at once to 50 % and to 25 % of the prunable parameters, with the
# pruned50 recipe's pruning settings (first and last layer dense, GQA-aware query heads, MLP widths in
# multiples of 32, Taylor importance). Then each vehicle file with the pruned50 recipe's quantisation
# (int4 in blocks of 16, 8-bit head); when the export's parity check refuses it, the 8-bit weight-only
# file instead, kept and scored even if parity refuses that one too (ptpNN/vehicle_file.txt says which,
# ptpNN/export.log why). Validation, then test, once each; the fp32 weights on validation (MPC task).
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
  date; echo "== export ptp$R"
  if .venv/bin/edge-export "$M" -o "$M.onnx" --quantize int4 --block-size 16 --head-bits 8 --accuracy-level 4 \
       --threads 2 > "$M.export.log" 2>&1; then
    FILE="int4 in blocks of 16, 8-bit head (the pruned50 recipe's)"
  else
    cat "$M.export.log"
    if .venv/bin/edge-export "$M" -o "$M.onnx" --quantize int8 --int8-method weight-only --head-bits 8 \
         --accuracy-level 4 --threads 2 --keep-failed >> "$M.export.log" 2>&1; then
      FILE="int8 weight-only, 8-bit head (the int4 file was refused by the export's parity check: ptp$R/export.log)"
    else  # both refused: the pruned weights without recovery sit where 8-bit rounding moves them; score the 8-bit file anyway
      mv "$M.parity-failed.onnx" "$M.onnx"
      FILE="int8 weight-only, 8-bit head, REFUSED by the export's parity check like the int4 file (kept with --keep-failed; ptp$R/export.log)"
    fi
  fi
  date; echo "== eval ptp$R validation"
  .venv/bin/edge-eval --model "$M.onnx" --constrained --task both --split validation --json "$M/eval_validation_onnx.json"
  # the pruned fp32 weights themselves (PyTorch, unconstrained, MPC task), validation only: what quantization changed
  .venv/bin/edge-eval --model "$M" --task mpc --split validation --json "$M/eval_validation_fp32_mpc.json"
  date; echo "== eval ptp$R test"
  .venv/bin/edge-eval --model "$M.onnx" --constrained --task both --split test --json "$M/eval_test_onnx.json"
  mkdir -p "$HERE/ptp$R"
  cp "$M"/{arch_spec.json,train_summary.json,eval_validation_onnx.json,eval_test_onnx.json,eval_validation_fp32_mpc.json} "$HERE/ptp$R/"
  cp "$M.training/prune_reports.json" "$HERE/ptp$R/"
  cp "$M.export.log" "$HERE/ptp$R/export.log"
  echo "$FILE" > "$HERE/ptp$R/vehicle_file.txt"
done
for S in validation test; do
  [ -f "$W/sft2/eval_${S}_onnx.json" ] || .venv/bin/edge-eval --model "$W/dense.onnx" --constrained --task both \
    --split $S --json "$W/sft2/eval_${S}_onnx.json"
done
cp "$W/sft2"/{arch_spec.json,train_summary.json,eval_validation_onnx.json,eval_test_onnx.json} "$D/"
date; echo "== done"
