#!/usr/bin/env bash
# Open-loop action error (`fastwam offline`) of the controlled comparison's checkpoints (issue #18,
# runs/mt10_<name>_s<seed> of benchmarks/mt10_variants.sh, finished ones only): each in its own
# inference mode(s) and, where actions read a future (IDM, dual), given the future that really
# followed. On held-out demonstrations, 5 per task on the validation split's layouts (benchmark seed
# 1000: layouts no checkpoint trained on), and on the training data. 400 windows, seed 0, so that any
# two records pair (`fastwam offline --pair A.json:COND B.json:COND`).
# Results: docs/results/mt10_variants/open_loop/<name>_s<seed>_{validation_layouts,training_data}.json.
# About 1 min to collect the held-out data once, then 15-40 s per record on 2 cores; a record that
# exists is kept unless its checkpoint changed (then refused: see benchmarks/same_weights.py).
#
#   bash benchmarks/mt10_open_loop.sh                     # every finished run
#   bash benchmarks/mt10_open_loop.sh runs/mt10_dual_s0   # some
set -euo pipefail
cd "$(dirname "$0")/.."
FW=${FW:-.venv/bin/fastwam}
PY=${PY:-.venv/bin/python}
DATA=${DATA:-data/mt10_c3_96}
HELDOUT=${HELDOUT:-data/mt10_c3_96_seed1000}
OUT=docs/results/mt10_variants/open_loop
STEPS=6000
mkdir -p "$OUT"

if [ ! -d "$HELDOUT" ]; then
  $FW collect metaworld --tasks mt10 --episodes 5 --cameras corner3 --image-size 96 --video-encoding lossless \
    --seed 1000 --workers 2 --out "$HELDOUT"
fi

shopt -s nullglob
runs=("$@")
if [ ${#runs[@]} -eq 0 ]; then runs=(runs/mt10_*_s[01]); fi
for run in "${runs[@]}"; do
  if [ ! -f "$run/checkpoints/step-$(printf %07d $STEPS)/model.safetensors" ]; then
    echo "$run: not trained to step $STEPS; skipped"
    continue
  fi
  name=$(basename "$run"); name=${name#mt10_}  # runs/mt10_idm_s0/ -> idm_s0
  for target in validation_layouts:$HELDOUT training_data:$DATA; do
    out="$OUT/${name}_${target%%:*}.json"
    $PY benchmarks/same_weights.py "$out" "$run"  # a record of other weights stops the queue
    [ -f "$out" ] && continue
    $FW offline --checkpoint "$run" --data "${target#*:}" --samples 400 --seed 0 --quiet --json "$out"
  done
done
