#!/usr/bin/env bash
# Issue 13 benchmarks, on an idle machine, one after the other (each one interleaved run).
set -uo pipefail
cd /work/main
export HF_HUB_OFFLINE=1
W=/work/runs/base_prec
S=/work/runs/smollm2
while pgrep -f "base_prec/prep" > /dev/null; do sleep 10; done
date; echo "== B: shipped models, prefix cache on"
.venv/bin/python bench/compare_throughput.py --model dense-int4=models/dense.onnx --model pruned50-int4=models/pruned50.onnx \
  --model small16-int4=$S/small16-last.onnx --model pruned50-int4-all-logits=/tmp/pruned50-all.onnx \
  --model pruned50-int4-b32-parity-failed=$W/pruned50-b32.parity-failed.onnx \
  --peers llamacpp --gguf llamacpp-pruned50-q4_0=$S/pruned50-q4_0.gguf --gguf llamacpp-pruned50-q8_0=$S/pruned50-q8_0.gguf \
  --eval-report dense-int4=models/dense/eval_test_onnx.json --eval-report pruned50-int4=models/pruned50/eval_test_onnx.json \
  --eval-report small16-int4=$S/small16-sft/eval_test_onnx.json \
  --prompt-lengths 64,256 --new-tokens 64 --repeats 7 --threads 2 --instructions 5 --out bench/results/compare_throughput_prefix
date; echo "== C: the same without the prefix cache (ours and llama.cpp)"
.venv/bin/python bench/compare_throughput.py --model pruned50-int4=models/pruned50.onnx --model pruned50-int4-all-logits=/tmp/pruned50-all.onnx \
  --model dense-int4=models/dense.onnx \
  --peers llamacpp --gguf llamacpp-pruned50-q8_0=$S/pruned50-q8_0.gguf \
  --prompt-lengths 64 --new-tokens 16 --repeats 5 --threads 2 --instructions 5 --prefix-cache off --out bench/results/compare_throughput_prefix_off
date; echo "== A: base SmolLM2 at every precision vs genai and llama.cpp"
.venv/bin/python bench/compare_throughput.py --model fp32=$W/base-fp32.onnx --model int8=$W/base-int8.onnx --model int4=$W/base-int4.onnx \
  --peers ortgenai,llamacpp --ortgenai genai-fp32=$W/genai-fp32 --ortgenai genai-int8=$W/genai-int8 --ortgenai genai-int4=$W/genai-int4 \
  --gguf llamacpp-f32=$W/base-f32.gguf --gguf llamacpp-q8_0=$W/base-q8_0.gguf --gguf llamacpp-q4_0=$W/base-q4_0.gguf \
  --prompt-lengths 64,256 --new-tokens 64 --repeats 5 --threads 2 --instructions 1 --out bench/results/compare_throughput_precisions
date; echo "== done"
