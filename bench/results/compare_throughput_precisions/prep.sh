#!/usr/bin/env bash
# Base SmolLM2-135M-Instruct (fp32, /work/runs/smollm2/smollm2-135m) at every precision, for the
# precision rows of bench/results/compare_throughput_precisions: ours (edge-export), genai's builder, llama.cpp GGUF.
set -uo pipefail
cd /work/main
export HF_HUB_OFFLINE=1
B=/work/runs/smollm2/smollm2-135m
W=/work/runs/base_prec
while pgrep -f "edge-eval --model" > /dev/null; do sleep 10; done
date; echo "== onnx fp32";  .venv/bin/edge-export $B -o $W/base-fp32.onnx --threads 2
date; echo "== onnx int8";  .venv/bin/edge-export $B -o $W/base-int8.onnx --quantize int8 --threads 2
date; echo "== onnx int4";  .venv/bin/edge-export $B -o $W/base-int4.onnx --quantize int4 --block-size 32 --head-bits 8 --threads 2
for p in fp32 int8 int4; do
  date; echo "== genai $p"
  .venv/bin/python -m onnxruntime_genai.models.builder -m $B -o $W/genai-$p -p $p -e cpu -c $W/genai-cache-$p > $W/genai-$p.log 2>&1; echo "rc $?"
done
date; echo "== gguf"
cp /work/runs/smollm2/base-f32.gguf $W/base-f32.gguf 2>/dev/null || .venv/bin/edge-export $B -o $W/base-f32.gguf --gguf-type f32
.venv/bin/edge-export $B -o $W/base-q8_0.gguf --gguf-type q8_0
.venv/bin/edge-export $B -o $W/base-q4_0.gguf --gguf-type q4_0
cp $B/chat_format.json $W/ 2>/dev/null || true
date; echo "== done"
