#!/usr/bin/env bash
# A LIBERO suite on this CPU (issue #17; LIBERO-Object by default), one attempt end to end, as docs/RESULTS.md
# records them:
# scripted demonstrations (50 per task, fresh layouts, the arm's start jittered as the official init
# states), one language-conditioned Fast-WAM (benchmarks/libero_object_128px.yaml), what it does on
# fresh layouts (validation, 10 per task: success and what the failures did; choose settings here),
# then the official init states once (test, 20 per task, rollout videos). For LIBERO-Object about 50-100 min
# of collection (DART), 85 min of training (3000 steps), 6 + 13 min of evaluation on 2 cores. SUITE=libero_spatial:
# as many demonstrations per task as the expert gets there in 10 failed layouts (benchmarks/libero_expert.py);
# evaluated on all the suite's tasks (`--tasks all`), also those with no demonstration, so the mean is the suite's.
# A resumable queue: outputs that exist are skipped, a collection stopped mid-way resumes from the
# layouts it recorded (DATA.recorded/), a training from its newest checkpoint (every checkpoint is kept, ~155 MB
# each, for a step curve on validation). Heavy: run it alone on this 2-core machine.
#
#   NAME=attempt3 bash benchmarks/libero.sh                      # LIBERO-Object's 96.0 % recipe (its data reused when present)
#   NAME=steps6000 STEPS=6000 bash benchmarks/libero.sh          # another recipe, other files
#   NAME=dart DATA=data/libero_object_128_50_dart bash benchmarks/libero.sh
#   SUITE=libero_spatial NAME=noturn bash benchmarks/libero.sh   # runs/libero_spatial_noturn, docs/results/libero_spatial_noturn*
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -z "${NAME:-}" ]; then
  echo "NAME: expected a name for this attempt (its run and result files), e.g. NAME=attempt3" >&2
  exit 2
fi
SUITE=${SUITE:-libero_object}
case $SUITE in libero_object|libero_spatial) ;; *) echo "SUITE: expected libero_object or libero_spatial (all their tasks are pick-and-place, which the expert handles), got $SUITE" >&2; exit 2 ;; esac
FW=${FW:-.venv/bin/fastwam}
PY=${PY:-.venv/bin/python}
DATA=${DATA:-data/${SUITE}_128_50_noturn}
COLLECT_ARGS=${COLLECT_ARGS---action-noise 0.1}  # `collect libero` options for a new DATA; the default: DART, as the 96 % run
PRESET=${PRESET:-benchmarks/libero_object_128px.yaml}
STEPS=${STEPS:-3000}
SEED=${SEED:-0}
RUN=${RUN:-runs/${SUITE}_$NAME}
OUT=docs/results/${SUITE}_$NAME
make libero  # the optional extra, when missing

if [ ! -d "$DATA" ]; then
  $FW collect libero --suite "$SUITE" --episodes 50 --out "$DATA" --image-size 128 --workers 2 \
    --video-encoding lossless $COLLECT_ARGS
fi

if [ ! -f "$RUN/checkpoints/step-$(printf %07d "$STEPS")/model.safetensors" ]; then
  resume=()
  if [ -d "$RUN/checkpoints" ]; then resume=(--resume); fi
  $FW train --data "$DATA" --preset "$PRESET" --variant fastwam --steps "$STEPS" --ema 0.999 \
    --checkpoint-every 500 --keep-checkpoints 0 --seed "$SEED" --out "$RUN" "${resume[@]}"
fi

for reference in "${OUT}_failures.json" "$OUT.json"; do  # never two models under one name
  $PY benchmarks/same_weights.py "$reference" "$RUN"
done
if [ ! -f "${OUT}_failures.json" ]; then
  $PY benchmarks/libero_failures.py --checkpoint "$RUN" --split validation --episodes 10 --workers 2 --tasks all \
    --json "${OUT}_failures.json"
fi
if [ ! -f "$OUT.json" ]; then
  $FW eval libero --checkpoint "$RUN" --tasks all --episodes 20 --workers 2 --quiet --json "$OUT.json" \
    --video "${OUT}_rollouts.mp4" --video-episodes 4
fi
