#!/usr/bin/env bash
# Reproduce OLMP on one model: train the reference if missing, prune, evaluate, inspect, and print
# the run side by side with the committed record of the same seed and the paper's released model.
#   scripts/reproduce.sh MODEL [OPTIMIZER] [SEED]
#   (MODEL: lenet300100 | lenet5 | caffenet_caltech256; defaults: ncs 1)
# Writes a fresh run folder runs/reproduce/MODEL/<optimizer>-seed<seed>/ (record.json,
# pruned.caffemodel, side-by-side.md), outside results/ and ignored by git. OUT overrides the folder
# (relative to the repository root; the committed runs were made with
# OUT=results/MODEL/<optimizer>-seed<seed>), OLMP_PRUNE_ARGS adds `olmp prune` flags (e.g. --weights REF)
# and OLMP_GPU=N runs every net on CUDA device N (a CUDA pycaffe build). A killed run resumes where it
# stopped when the same command is run again; a finished one is only reported.
set -euo pipefail
cd "$(dirname "$0")/.."
export OPENBLAS_NUM_THREADS=${OPENBLAS_NUM_THREADS:-1}
say() { echo "[reproduce] $*" >&2; }
MODEL=${1:?usage: reproduce.sh MODEL [OPTIMIZER] [SEED]}
OPT=${2:-ncs}; SEED=${3:-1}
OUT=${OUT:-runs/reproduce/$MODEL/$OPT-seed$SEED}
NET=models/$MODEL/train_test.prototxt
[ -f "$NET" ] || NET=models/$MODEL/train_val.prototxt
GPU_ARGS=(); [ -z "${OLMP_GPU:-}" ] || GPU_ARGS=(--gpu "$OLMP_GPU")
[ -f "results/references/$MODEL/model.caffemodel" ] || bash scripts/train_references.sh "$MODEL"
if [ -f "$OUT/record.json" ]; then
  say "$OUT holds a finished run: reporting it if it was made with these settings (remove the folder to run again)"
elif [ -d "$OUT/checkpoint" ]; then
  say "resuming the interrupted run in $OUT"
else
  say "pruning $MODEL ($OPT, seed $SEED) into $OUT; progress below (a rerun of this command resumes)"
fi
# shellcheck disable=SC2086  # OLMP_PRUNE_ARGS is a list of flags
.venv/bin/olmp prune --experiment "scripts/experiments/$MODEL.toml" --optimizer "$OPT" --seed "$SEED" \
  --out "$OUT" --resume "${GPU_ARGS[@]}" ${OLMP_PRUNE_ARGS:-}
say "test-set evaluation of $OUT/pruned.caffemodel"
.venv/bin/olmp evaluate --net "$NET" --weights "$OUT/pruned.caffemodel" "${GPU_ARGS[@]}"
.venv/bin/olmp inspect "$OUT/pruned.caffemodel"
say "side by side (also in $OUT/side-by-side.md):"
.venv/bin/python -m olmp.sidebyside "$OUT" "$MODEL" "$OPT" "$SEED"
