#!/usr/bin/env bash
# pruned50 int4 with blocks of 32 except a few sensitive layers in blocks of 16 (edge-export --fine-block-layers):
# which sets pass parity. Files that fail are kept (--keep-failed) with their numbers in the log.
set -uo pipefail
cd /work/main
export HF_HUB_OFFLINE=1
W=/work/runs/mixblock
for layers in 0,29 0,1,28,29 0,1,2,27,28,29; do
  date; echo "== fine layers $layers"
  .venv/bin/edge-export /work/runs/smollm2/pruned50-sft -o $W/pruned50-fine-${layers//,/-}.onnx --quantize int4 --block-size 32 \
     --fine-block-layers $layers --fine-block-size 16 --head-bits 8 --threads 2 --keep-failed
done
date; echo "== done"
