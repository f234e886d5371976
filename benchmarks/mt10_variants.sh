#!/usr/bin/env bash
# The controlled comparison on MT10 (issue #18): every variant trained with the headline recipe
# (benchmarks/mt10_96px_stem.yaml, 6000 steps, EMA 0.999, seeds 0 and 1), each evaluated with its own
# inference procedure on the test and the validation split (50 episodes per task, the headline's
# episode seeds), and the imagination of every video-trained variant scored on the validation
# episodes. Results: docs/results/mt10_variants/<name>_s<seed>_<split>.json and
# imagination_<name>_s<seed>.json, <name> one of fastwam joint idm lambda0 dual_fastwam dual_idm, and
# idm_noised: IDM whose actions train and act on a future noised at sigma 0.08, the level of its
# imaginations' measured error (docs/RESULTS.md, the open-loop section): the remedy to IDM's loss.
#
# A queue for an otherwise idle CPU: every step whose output exists is skipped, a run stopped
# mid-training resumes from its newest checkpoint, so it can be stopped and restarted at will.
# Heavy (about 45-70 min of training per run and seed on 2 cores, and over 20 min of evaluation where
# imagination is scored): run it
# alone, one heavy job at a time.
#
#   bash benchmarks/mt10_variants.sh                 # everything, seed 0 first
#   bash benchmarks/mt10_variants.sh joint idm       # some variants
#   SEEDS=1 bash benchmarks/mt10_variants.sh fastwam # some seeds
set -euo pipefail
cd "$(dirname "$0")/.."
FW=${FW:-.venv/bin/fastwam}
DATA=${DATA:-data/mt10_c3_96}
OUT=docs/results/mt10_variants
STEPS=6000
read -r -a SEEDS <<<"${SEEDS:-0 1}"
for seed in "${SEEDS[@]}"; do
  case $seed in 0|1) ;; *) echo "SEEDS: expected 0 and/or 1, got $seed" >&2; exit 2 ;; esac
done
NAMES=("${@:-fastwam joint idm lambda0 dual idm_noised}")
read -r -a NAMES <<<"${NAMES[*]}"
for name in "${NAMES[@]}"; do
  case $name in fastwam|joint|idm|lambda0|dual|idm_noised) ;;
    *) echo "unknown variant $name: expected fastwam joint idm lambda0 dual idm_noised" >&2; exit 2 ;; esac
done
mkdir -p "$OUT" logs

if [ ! -d "$DATA" ]; then
  $FW collect metaworld --tasks mt10 --episodes 10 --cameras corner3 --image-size 96 --workers 2 \
    --video-encoding lossless --out "$DATA"  # as the headline's data
fi

train() {  # name seed -> runs/mt10_<name>_s<seed>
  local name=$1 seed=$2 run=runs/mt10_${1}_s${2} args
  case $name in
    lambda0) args=(--variant fastwam --video-weight 0) ;;
    idm_noised) args=(--variant idm --idm-future-noise 0.08) ;;
    *) args=(--variant "$name") ;;
  esac
  if [ -f "$run/checkpoints/step-$(printf %07d $STEPS)/model.safetensors" ]; then return; fi
  local resume=()
  if [ -d "$run/checkpoints" ]; then resume=(--resume); fi
  $FW train --data "$DATA" --preset benchmarks/mt10_96px_stem.yaml "${args[@]}" --steps $STEPS --ema 0.999 \
    --checkpoint-every 500 --seed "$seed" --out "$run" "${resume[@]}" 2>&1 | tee -a "logs/mt10_${name}_s${seed}.log"
}

evaluate() {  # row seed run [mode]: both splits; imagination on validation for video-trained rows
  local row=$1 seed=$2 run=$3 mode=${4:-} extra=()
  if [ -n "$mode" ]; then extra=(--mode "$mode"); fi
  for split in validation test; do
    local out="$OUT/${row}_s${seed}_${split}.json" imagination=()
    [ -f "$out" ] && continue
    if [ "$split" = validation ] && [ "$row" != lambda0 ] && [ "$row" != dual_idm ]; then
      imagination=(--imagination "$OUT/imagination_${row}_s${seed}.json")
    fi
    $FW eval metaworld --checkpoint "$run" --split "$split" --episodes 50 --workers 2 --quiet \
      "${extra[@]}" "${imagination[@]}" --json "$out"
  done
}

for seed in "${SEEDS[@]}"; do
  for name in "${NAMES[@]}"; do
    train "$name" "$seed"
    run=runs/mt10_${name}_s${seed}
    if [ "$name" = dual ]; then
      evaluate dual_fastwam "$seed" "$run" action_only
      evaluate dual_idm "$seed" "$run" video_then_action
    else
      evaluate "$name" "$seed" "$run"
    fi
  done
done
