#!/usr/bin/env bash
# Reproduce OLMP on one model: train the reference if missing, prune, evaluate, inspect.
#   scripts/reproduce.sh MODEL [OPTIMIZER] [SEED]
#   (MODEL: lenet300100 | lenet5 | caffenet_caltech256; defaults: ncs 1)
# Writes results/MODEL/<optimizer>-seed<seed>/ (record.json, pruned.caffemodel); OUT overrides the
# folder, OLMP_PRUNE_ARGS adds `olmp prune` flags (e.g. --weights REF) and OLMP_GPU=N runs every
# net on CUDA device N (a CUDA pycaffe build). A killed run resumes where it stopped when the same
# command is run again; a finished one is only reported.
set -euo pipefail
cd "$(dirname "$0")/.."
export OPENBLAS_NUM_THREADS=${OPENBLAS_NUM_THREADS:-1}
MODEL=${1:?usage: reproduce.sh MODEL [OPTIMIZER] [SEED]}
OPT=${2:-ncs}; SEED=${3:-1}
OUT=${OUT:-results/$MODEL/$OPT-seed$SEED}
NET=models/$MODEL/train_test.prototxt
[ -f "$NET" ] || NET=models/$MODEL/train_val.prototxt
GPU_ARGS=(); [ -z "${OLMP_GPU:-}" ] || GPU_ARGS=(--gpu "$OLMP_GPU")
[ -f "results/references/$MODEL/model.caffemodel" ] || bash scripts/train_references.sh "$MODEL"
# shellcheck disable=SC2086  # OLMP_PRUNE_ARGS is a list of flags
.venv/bin/olmp prune --experiment "scripts/experiments/$MODEL.toml" --optimizer "$OPT" --seed "$SEED" \
  --out "$OUT" --resume "${GPU_ARGS[@]}" ${OLMP_PRUNE_ARGS:-}
echo "[reproduce] test-set evaluation of $OUT/pruned.caffemodel" >&2
.venv/bin/olmp evaluate --net "$NET" --weights "$OUT/pruned.caffemodel" "${GPU_ARGS[@]}"
.venv/bin/olmp inspect "$OUT/pruned.caffemodel"
