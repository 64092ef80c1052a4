#!/usr/bin/env bash
# Train the dense reference models (LeNet-300-100, LeNet-5; CaffeNet on request) with Caffe's solver, once.
#   scripts/train_references.sh [lenet300100] [lenet5] [caffenet_caltech256]
# Each lands in results/references/<model>/ (model.caffemodel + train.json); an existing
# model is kept. Iterations: ITERS, else the solver's max_iter (10,000 for the LeNets);
# OLMP_GPU=N trains on CUDA device N. results/references.md is rewritten from the LeNet records.
set -euo pipefail
cd "$(dirname "$0")/.."
export OPENBLAS_NUM_THREADS=${OPENBLAS_NUM_THREADS:-1}
OLMP=.venv/bin/olmp
models=("$@"); [ ${#models[@]} -gt 0 ] || models=(lenet300100 lenet5)
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
.venv/bin/python - <<'PY'
import json, pathlib
rows = []
for m in ("lenet300100", "lenet5"):
    p = pathlib.Path("results/references") / m / "train.json"
    if p.is_file():
        r = json.loads(p.read_text())
        rows.append(f"| {m} | {r['iters']} | {r['seed']} | {100 * r['test']['accuracy']:.2f}% | "
                    f"{r['test']['loss']:.4f} | {r['train_seconds']:.0f} s |")
text = ("# Reference models\n\nTrained by `scripts/train_references.sh` (`make reference`), i.e.\n"
        "`olmp train --solver solvers/<model>_solver.prototxt --iters 10000 --seed 1 --out results/references/<model>`,\n"
        "with `OPENBLAS_NUM_THREADS=1` on the 2-core development machine. Accuracy and loss on all\n"
        "10,000 MNIST test images. Papers' references: LeNet-300-100 97.73%, LeNet-5 99.09%.\n"
        "Wall times were measured on a shared, busy machine (the LeNet-5 run shared both cores with\n"
        "the pycaffe compile), so read them as upper bounds.\n\n"
        "| model | iterations | seed | test accuracy | test loss | training wall time |\n"
        "|---|---|---|---|---|---|\n" + "\n".join(rows) + "\n")
pathlib.Path("results/references.md").write_text(text)
PY
