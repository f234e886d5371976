#!/usr/bin/env bash
# Asynchronous execution and real-time chunking on MT10 (issue #19, item 4), with the headline
# recipe's checkpoint (RUN, default runs/mt10_fastwam_s0 from benchmarks/mt10_variants.sh): simulated
# inference delays of 0, 2, 4 and 8 env steps (8 of 16 actions executed per chunk), each run
# synchronously (delay 0), naively asynchronous (the new chunk replaces the old one when it arrives)
# and with RTC guidance (beta = GUIDANCE, default 10), on the validation split's episodes (50 per task),
# the same episodes for every row. Results: docs/results/mt10_rtc/*.json (success, boundary jumps,
# jerk); compare with
#   .venv/bin/python benchmarks/paired_comparison.py docs/results/mt10_rtc/sync.json docs/results/mt10_rtc/*_d4.json
# A resumable queue (outputs that exist are skipped); heavy: run it alone on this 2-core machine.
set -euo pipefail
cd "$(dirname "$0")/.."
FW=${FW:-.venv/bin/fastwam}
RUN=${RUN:-runs/mt10_fastwam_s0}
GUIDANCE=${GUIDANCE:-10}
OUT=${OUT:-docs/results/mt10_rtc}  # another directory for another checkpoint (RUN)
mkdir -p "$OUT"
${PY:-.venv/bin/python} benchmarks/same_weights.py "$OUT/sync.json" "$RUN"  # never two models in one table

evaluate() {  # name [eval options...]
  local name=$1
  shift
  [ -f "$OUT/$name.json" ] && return
  $FW eval metaworld --checkpoint "$RUN" --split validation --episodes 50 --workers 2 --quiet "$@" --json "$OUT/$name.json"
}

evaluate sync
for delay in ${DELAYS:-4 2 8}; do  # DELAYS: some of them
  evaluate "naive_d$delay" --delay "$delay"
  evaluate "rtc_d$delay" --delay "$delay" --rtc-guidance "$GUIDANCE"
done
