#!/usr/bin/env bash
# Reproduce OLMP on lenet300100: train the reference if missing, prune, evaluate, inspect.
#   scripts/reproduce_lenet300100.sh [OPTIMIZER] [SEED]      (defaults: ncs 1)
# Writes results/lenet300100/<optimizer>-seed<seed>/ (record.json, pruned.caffemodel). A killed run
# resumes where it stopped when the same command is run again.
set -euo pipefail
cd "$(dirname "$0")/.."
export OPENBLAS_NUM_THREADS=${OPENBLAS_NUM_THREADS:-1}
OPT=${1:-ncs}; SEED=${2:-1}
OUT=${OUT:-results/lenet300100/$OPT-seed$SEED}
[ -f results/references/lenet300100/model.caffemodel ] || bash scripts/train_references.sh lenet300100
.venv/bin/olmp prune --experiment scripts/experiments/lenet300100.toml --optimizer "$OPT" --seed "$SEED" \
  --out "$OUT" --resume ${OLMP_PRUNE_ARGS:-}
echo "[reproduce] test-set evaluation of $OUT/pruned.caffemodel" >&2
.venv/bin/olmp evaluate --net models/lenet300100/train_test.prototxt --weights "$OUT/pruned.caffemodel"
.venv/bin/olmp inspect "$OUT/pruned.caffemodel"
