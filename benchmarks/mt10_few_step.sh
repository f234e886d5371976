#!/usr/bin/env bash
# Fast-WAM in one or two action steps on MT10 (issue #22), against the headline recipe's checkpoint
# (TEACHER, default runs/mt10_fastwam_s0 from benchmarks/mt10_variants.sh: mt10_96px_stem.yaml, 6000
# steps, seed 0):
#   1. the baseline curve: validation-split success of the teacher sampled in N = 10, 5, 3, 2, 1 action
#      steps, with the action timestep shift 5 (trained) and 1 (uniform steps);
#   2. a student distilled from it for 2 action steps (taught 1 too; `fastwam train --distill-from`),
#      evaluated at 1 and 2 steps on the same episodes;
#   3. latency per chunk of the MT10 size and of the `small` preset, compiled, 2 threads, at 1, 2 and 10 steps.
# Results: docs/results/mt10_few_step/*.json; compare with
#   .venv/bin/python benchmarks/paired_comparison.py docs/results/mt10_few_step/teacher_n10_shift5.json \
#       docs/results/mt10_few_step/*.json
# CURVE_ONLY=1 runs item 1 alone. A resumable queue (outputs that exist are skipped); heavy: run it alone on this 2-core machine.
set -euo pipefail
cd "$(dirname "$0")/.."
FW=${FW:-.venv/bin/fastwam}
DATA=${DATA:-data/mt10_c3_96}
TEACHER=${TEACHER:-runs/mt10_fastwam_s0}
STUDENT=${STUDENT:-runs/mt10_student2}
STUDENT_TRAIN_STEPS=${STUDENT_TRAIN_STEPS:-1000}  # as recorded in docs/RESULTS.md
OUT=${OUT:-docs/results/mt10_few_step}  # another directory for another teacher
mkdir -p "$OUT" logs
${PY:-.venv/bin/python} benchmarks/same_weights.py "$OUT/teacher_n10_shift5.json" "$TEACHER"  # never two models in one table

evaluate() {  # name checkpoint [eval options...]
  local name=$1 run=$2
  shift 2
  [ -f "$OUT/$name.json" ] && return
  $FW eval metaworld --checkpoint "$run" --split validation --episodes 50 --workers 2 --quiet "$@" --json "$OUT/$name.json"
}

evaluate teacher_n10_shift5 "$TEACHER" --steps 10 --action-shift 5  # the reference: the teacher as trained

if [ "${CURVE_ONLY:-0}" != 1 ]; then  # CURVE_ONLY=1: the baseline curve alone (e.g. of another teacher)
  # the student is trained only while one of its rows is missing
  if [ ! -f "$OUT/student2_n1.json" ] || [ ! -f "$OUT/student2_n2.json" ]; then
    if [ ! -f "$STUDENT/checkpoints/step-$(printf %07d "$STUDENT_TRAIN_STEPS")/model.safetensors" ]; then
      resume=()
      if [ -d "$STUDENT/checkpoints" ]; then resume=(--resume); fi
      $FW train --data "$DATA" --distill-from "$TEACHER" --student-steps 2 --steps "$STUDENT_TRAIN_STEPS" --lr 0.0001 \
        --checkpoint-every 500 --seed 0 --out "$STUDENT" "${resume[@]}" 2>&1 | tee -a logs/mt10_student2.log
    fi
    for n in 2 1; do
      evaluate "student2_n${n}" "$STUDENT" --steps "$n"
    done
  fi

  if [ ! -f "$OUT/latency.json" ]; then
    $FW bench latency --preset benchmarks/mt10_96px_stem.yaml --variants fastwam --steps 1,2,10 --compile \
      --threads 2 --calls 50 --json "$OUT/latency.json"
  fi
  if [ ! -f "$OUT/latency_small.json" ]; then  # the `small` preset, as the issue's latency rows name it
    $FW bench latency --preset small --variants fastwam --steps 1,2,10 --compile \
      --threads 2 --calls 50 --json "$OUT/latency_small.json"
  fi
fi

for shift in ${SHIFTS:-5 1}; do  # the baseline curve (SHIFTS: some of it)
  for n in 1 2 5 3 10; do
    evaluate "teacher_n${n}_shift${shift}" "$TEACHER" --steps "$n" --action-shift "$shift"
  done
done
