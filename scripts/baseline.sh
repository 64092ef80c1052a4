#!/usr/bin/env bash
# One baseline run on one LeNet (the policies are documented in olmp/policies/__init__.py):
#   scripts/baseline.sh MODEL METHOD [SEED]
#     MODEL:  lenet300100 | lenet5
#     METHOD: dc (deep-compression) | dns | global (global-magnitude) | uniform
# Runs scripts/experiments/MODEL_METHOD.toml into results/MODEL/<method>-seed<SEED>/ (record.json,
# pruned.caffemodel), trains the reference first if missing; a killed run resumes when the same
# command is run again, a finished one is only reported. Then: olmp compare --model MODEL.
set -euo pipefail
cd "$(dirname "$0")/.."
export OPENBLAS_NUM_THREADS=${OPENBLAS_NUM_THREADS:-1}
MODEL=${1:?usage: baseline.sh MODEL METHOD [SEED]}
SHORT=${2:?usage: baseline.sh MODEL METHOD [SEED]}
SEED=${3:-1}
case "$SHORT" in
  dc|deep-compression) SHORT=dc; METHOD=deep-compression ;;
  dns) METHOD=dns ;;
  global|global-magnitude) SHORT=global; METHOD=global-magnitude ;;
  uniform) METHOD=uniform ;;
  *) echo "baseline.sh: unknown method '$SHORT' (dc | dns | global | uniform)" >&2; exit 2 ;;
esac
OLMP=${OLMP:-.venv/bin/olmp}
OUT=${OUT:-results/$MODEL/$METHOD-seed$SEED}
[ -f "results/references/$MODEL/model.caffemodel" ] || bash scripts/train_references.sh "$MODEL"
"$OLMP" prune --experiment "scripts/experiments/${MODEL}_${SHORT}.toml" --seed "$SEED" --out "$OUT" --resume
"$OLMP" inspect "$OUT/pruned.caffemodel"
