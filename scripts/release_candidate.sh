#!/usr/bin/env bash
# The unattended part of a weights release (docs/releasing.md steps 2-4 and 6) for one snapshot
# of a training run: blendshape map, a staging export (float16, model card), the full evaluation
# and the measurement benchmarks that need no idle machine, each logged with its wall time. The
# fit calibration (step 5), the timed benchmarks (step 7), renders and docs stay by hand. The
# last two steps (unseen_fits, pinhole) fit with the calibration constants in the tree, which
# step 5 re-measures for new weights: re-run them after it for the published figures.
#
# Usage (repository root, venv active):
#     OUT=~/.cache/facemodel/rc/v060 bash scripts/release_candidate.sh RUN/snapshots/step0009000
#
# Environment: OUT (required; replaced only with FORCE=1), DATA (ICT 4D dataset, default
# ~/.cache/facemodel/ict4d-id1000), ICT (ICT-FaceKit, default ../shared/data/ict-facekit),
# RUN (the training run, default: the snapshot's grandparent), CARD_NOTES (the model card notes,
# default docs/model_card_notes.md; a copy with the candidate's version keeps the tree clean),
# THREADS (per job, default 1: run it beside a one-thread training run, or give it 2 alone),
# QUICK=1 (a smoke test: few meshes, the evaluation's --quick, minutes). The staging card carries
# the version named first in CARD_NOTES: benchmarks print it, so set it before a real release.
#
# Writes to OUT: bs/ (the model with its map), weights/ (the staging release), eval/ (report.md,
# results.json, figures/), logs/*.log (one per step, the command first) and times.txt.
set -euo pipefail
SNAP=${1:?usage: OUT=... bash scripts/release_candidate.sh RUN/snapshots/stepNNNNNNN}
OUT=${OUT:?set OUT}
DATA=${DATA:-$HOME/.cache/facemodel/ict4d-id1000}
ICT=${ICT:-../shared/data/ict-facekit}
RUN=${RUN:-$(dirname "$(dirname "$SNAP")")}
CARD_NOTES=${CARD_NOTES:-docs/model_card_notes.md}
THREADS=${THREADS:-1}
QUICK=${QUICK:-0}
[ -f "$SNAP/model.safetensors" ] || { echo "error: $SNAP has no model.safetensors (a snapshot folder of a run)" >&2; exit 2; }
[ -f "$DATA/manifest.json" ] || { echo "error: $DATA is not an ICT 4D dataset: facemodel data build-ict --source $ICT --out $DATA --tracker-fraction 0.25 --identities 1000 --size 40000 --split-base 300 (configs/release.yaml)" >&2; exit 2; }
[ -f "$CARD_NOTES" ] || { echo "error: card notes $CARD_NOTES not found: set CARD_NOTES=..." >&2; exit 2; }
[ -d "$ICT" ] || { echo "error: ICT-FaceKit folder $ICT not found: set ICT=..." >&2; exit 2; }
if [ -e "$OUT" ] && [ "${FORCE:-0}" != 1 ]; then
  echo "error: $OUT exists: choose another OUT or set FORCE=1 to replace it" >&2; exit 2
fi
rm -rf "$OUT"
mkdir -p "$OUT/logs"
export OMP_NUM_THREADS=$THREADS PYTHONUNBUFFERED=1

step() {  # step NAME COMMAND...: run it, log it, time it; stop at the first failure
  local name=$1; shift
  local t0=$SECONDS
  echo "$ $*" > "$OUT/logs/$name.log"
  if ! "$@" >> "$OUT/logs/$name.log" 2>&1; then
    echo "error: step $name failed, see $OUT/logs/$name.log" >&2
    tail -5 "$OUT/logs/$name.log" >&2
    exit 1
  fi
  echo "$name $((SECONDS - t0)) s" | tee -a "$OUT/times.txt"
}

if [ "$QUICK" = 1 ]; then
  MAP_SIZES=(--encoded-meshes 40 --encoded-val-meshes 20 --train-meshes 400 --val-meshes 100)
  EVAL_ARGS=(--quick)
  FACES=5
else
  MAP_SIZES=(--encoded-meshes 2000 --encoded-val-meshes 400)
  EVAL_ARGS=()
  FACES=20
fi

step map python -m facemodel.training.blendshape_map --model "$SNAP" --data "$DATA" --out "$OUT/bs" \
  "${MAP_SIZES[@]}" --anchor-init --epochs 0 --kind linear --fallback none --ict "$ICT" --quiet
step export python -m facemodel.training.release --model "$OUT/bs" --out "$OUT/weights" --run "$RUN" \
  --card-notes "$CARD_NOTES"
# the figures most likely to rule a candidate out come first: label strength, blendshape drive
step labels python benchmarks/label_strength.py --model "$OUT/weights" --data "$DATA"
if [ "$QUICK" != 1 ]; then
  step animate python benchmarks/bench_animate.py --models "candidate=$OUT/weights" --data "$DATA" --ict "$ICT" \
    --skip-throughput --cache "$OUT/animate-encoded.pt"
fi
step unseen_codes python benchmarks/bench_unseen_codes.py --model "$OUT/weights" --faces "$FACES"
step evaluate facemodel evaluate --model "$OUT/weights" --data "$DATA" --ict "$ICT" --out "$OUT/eval" "${EVAL_ARGS[@]}"
if [ "$QUICK" = 1 ]; then
  step unseen_fits python benchmarks/bench_fit_unseen.py --model "$OUT/weights" --faces "$FACES" --linear --data "$DATA"
else
  step unseen_fits python benchmarks/bench_fit_unseen.py --model "$OUT/weights" --linear --test-split 100 --data "$DATA"
fi
step pinhole python benchmarks/bench_fit_pinhole.py --model "$OUT/weights" --faces 30
echo "done: $OUT (times in $OUT/times.txt)"
