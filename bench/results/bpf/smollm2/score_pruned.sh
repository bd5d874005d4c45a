#!/usr/bin/env bash
# The vehicle file of one pruned SmolLM2 model directory and its scores, as the BPF report reads them.
# The pruned50 recipe's quantisation (int4 in blocks of 16, 8-bit head); when the export's parity check
# refuses it, the 8-bit weight-only file instead, kept and scored even if parity refuses that one too
# (vehicle_file.txt says which, export.log why). Validation, then test, once each (constrained, both tasks);
# the fp32 weights on validation (MPC task). The records are copied to RECORD_DIR.
#   bash bench/results/bpf/smollm2/score_pruned.sh MODEL_DIR RECORD_DIR     (from the repository root)
set -euo pipefail
M="${1:?model directory}"
OUT="${2:?record directory}"
NAME=$(basename "$M")
date; echo "== export $NAME"
if .venv/bin/edge-export "$M" -o "$M.onnx" --quantize int4 --block-size 16 --head-bits 8 --accuracy-level 4 \
     --threads 2 > "$M.export.log" 2>&1; then
  FILE="int4 in blocks of 16, 8-bit head (the pruned50 recipe's)"
else
  cat "$M.export.log"
  if .venv/bin/edge-export "$M" -o "$M.onnx" --quantize int8 --int8-method weight-only --head-bits 8 \
       --accuracy-level 4 --threads 2 --keep-failed >> "$M.export.log" 2>&1; then
    FILE="int8 weight-only, 8-bit head (the int4 file was refused by the export's parity check: $NAME/export.log)"
  else  # both refused: score the 8-bit file anyway, and say so
    mv "$M.parity-failed.onnx" "$M.onnx"
    FILE="int8 weight-only, 8-bit head, REFUSED by the export's parity check like the int4 file (kept with --keep-failed; $NAME/export.log)"
  fi
fi
date; echo "== eval $NAME validation"
.venv/bin/edge-eval --model "$M.onnx" --constrained --task both --split validation --json "$M/eval_validation_onnx.json"
# the pruned fp32 weights themselves (PyTorch, unconstrained, MPC task), validation only: what quantization changed
.venv/bin/edge-eval --model "$M" --task mpc --split validation --json "$M/eval_validation_fp32_mpc.json"
date; echo "== eval $NAME test"
.venv/bin/edge-eval --model "$M.onnx" --constrained --task both --split test --json "$M/eval_test_onnx.json"
mkdir -p "$OUT"
cp "$M"/{arch_spec.json,train_summary.json,eval_validation_onnx.json,eval_test_onnx.json,eval_validation_fp32_mpc.json} "$OUT/"
[ -f "$M.training/prune_reports.json" ] && cp "$M.training/prune_reports.json" "$OUT/"
[ -f "$M/metrics.jsonl" ] && gzip -9nc "$M/metrics.jsonl" > "$OUT/metrics.jsonl.gz"
cp "$M.export.log" "$OUT/export.log"
echo "$FILE" > "$OUT/vehicle_file.txt"
