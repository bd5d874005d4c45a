#!/usr/bin/env bash
# pruned50 at int4 blocks of 32 (parity fails on it, so the file is kept with --keep-failed): speed only, to
# separate the block size from the pruning in the dense (b32) vs pruned50 (b16) decode comparison.
set -uo pipefail
cd /work/main
export HF_HUB_OFFLINE=1
W=/work/runs/base_prec
while pgrep -f "base_prec/prep.sh" > /dev/null; do sleep 10; done
date; echo "== pruned50 int4 b32"
.venv/bin/edge-export /work/runs/smollm2/pruned50-sft -o $W/pruned50-b32.onnx --quantize int4 --block-size 32 --head-bits 8 --threads 2 --keep-failed
date; echo "== done"
