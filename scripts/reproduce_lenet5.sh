#!/usr/bin/env bash
# Reproduce OLMP on lenet5: train the reference if missing, prune, evaluate, inspect.
#   scripts/reproduce_lenet5.sh [OPTIMIZER] [SEED]      (defaults: ncs 1)
# Writes results/lenet5/<optimizer>-seed<seed>/ (record.json, pruned.caffemodel). A killed run
# resumes where it stopped when the same command is run again.
set -euo pipefail
cd "$(dirname "$0")/.."
export OPENBLAS_NUM_THREADS=${OPENBLAS_NUM_THREADS:-1}
OPT=${1:-ncs}; SEED=${2:-1}
OUT=${OUT:-results/lenet5/$OPT-seed$SEED}
[ -f results/references/lenet5/model.caffemodel ] || bash scripts/train_references.sh lenet5
.venv/bin/olmp prune --experiment scripts/experiments/lenet5.toml --optimizer "$OPT" --seed "$SEED" \
  --out "$OUT" --resume ${OLMP_PRUNE_ARGS:-}
echo "[reproduce] test-set evaluation of $OUT/pruned.caffemodel" >&2
.venv/bin/olmp evaluate --net models/lenet5/train_test.prototxt --weights "$OUT/pruned.caffemodel"
.venv/bin/olmp inspect "$OUT/pruned.caffemodel"
