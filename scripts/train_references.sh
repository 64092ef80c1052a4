#!/usr/bin/env bash
# Train the dense reference models (LeNet-300-100, LeNet-5; CaffeNet on request) with Caffe's solver, once.
#   scripts/train_references.sh [lenet300100] [lenet5] [caffenet_caltech256]
# Each lands in results/references/<model>/ (model.caffemodel + train.json); an existing
# model is kept. Iterations: ITERS, else the solver's max_iter (10,000 for the LeNets);
# OLMP_GPU=N trains on CUDA device N. results/references.md is rewritten from the LeNet records
# (`olmp report --references results/references`).
set -euo pipefail
cd "$(dirname "$0")/.."
export OPENBLAS_NUM_THREADS=${OPENBLAS_NUM_THREADS:-1}
OLMP=.venv/bin/olmp
models=("$@"); [ ${#models[@]} -gt 0 ] || models=(lenet300100 lenet5 lenet300100_holdout lenet5_holdout)
for m in "${models[@]}"; do
  out=results/references/$m
  if [ -f "$out/model.caffemodel" ]; then
    echo "[reference] $m: $out/model.caffemodel exists" >&2
    continue
  fi
  echo "[reference] training $m" >&2
  args=(--solver "solvers/${m}_solver.prototxt" --seed 1 --out "$out")
  [ -z "${ITERS:-}" ] || args+=(--iters "$ITERS")
  [ -z "${OLMP_GPU:-}" ] || args+=(--gpu "$OLMP_GPU")
  $OLMP train "${args[@]}"
done
$OLMP report --references results/references >&2
