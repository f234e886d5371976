#!/usr/bin/env bash
# The GPU rows of docs/RESULTS.md, on one GPU (an H200 or H100): latency per action chunk of wan22-5b
# (the paper's scale) and of small at 1, 2 and 10 steps in bf16, and wan22-5b's training memory and
# step time on that one GPU against `fastwam plan`'s estimate (batch 8, with and without activation
# checkpointing). Random weights throughout; about 3 min on an H200 (187 s measured).
#
#   bash benchmarks/gpu_rows.sh [OUT_DIR]      # default docs/results; FW overrides the fastwam command
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-docs/results}
FW=${FW:-fastwam}
mkdir -p "$OUT"
status=0
step() {  # seconds, then the command: one failed or timed-out step does not stop the others
  local limit=$1; shift
  echo "== $*"
  timeout "$limit" "$@" || { echo "== failed ($?): $*"; status=1; }
}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
step 300 $FW bench latency --preset wan22-5b --device cuda --dtype bfloat16 --steps 1,2,10 --calls 15 \
  --json "$OUT/bench_wan22-5b_gpu.json"
for ckpt in "" --activation-checkpointing; do
  name=plan_wan22-5b_1gpu_b8${ckpt:+_checkpointed}
  step 120 bash -c "$FW plan --preset wan22-5b --gpus 1 --gpu-memory 141 --batch-size 8 --strategy ddp $ckpt --measure --json > $OUT/$name.json; cat $OUT/$name.json"
done
step 90 $FW bench latency --preset small --device cuda --dtype bfloat16 --steps 1,2,10 --calls 30 \
  --json "$OUT/bench_small_gpu.json"
exit $status
