#!/usr/bin/env bash
# The accuracy-vs-compression trade-off: each method rerun with one setting moved.
#   scripts/tradeoff.sh MODEL [SEED]        (MODEL: lenet300100 | lenet5)
# OLMP (ncs) at several delta values, Deep Compression at several quality scales, DNS at several
# crate scales; everything else as in scripts/experiments/MODEL{,_dc,_dns}.toml. Each run goes to
# results/MODEL/tradeoff/<method>-<setting>/ and resumes when killed; the default setting of each
# method is its main run (results/MODEL/<method>-seed1/), so it is not repeated here.
# Then: olmp report results/MODEL   (draws tradeoff.png from both).
set -euo pipefail
cd "$(dirname "$0")/.."
export OPENBLAS_NUM_THREADS=${OPENBLAS_NUM_THREADS:-1}
MODEL=${1:?usage: tradeoff.sh MODEL [SEED]}
SEED=${2:-1}
OLMP=${OLMP:-.venv/bin/olmp}
[ -f "results/references/$MODEL/model.caffemodel" ] || bash scripts/train_references.sh "$MODEL"
run() {  # run EXPERIMENT FOLDER SETTING
  echo "[tradeoff] $MODEL $2 ($3)" >&2
  "$OLMP" prune --experiment "scripts/experiments/$1.toml" --seed "$SEED" --set "$3" \
    --out "results/$MODEL/tradeoff/$2" --resume --quiet \
    || [ -f "results/$MODEL/tradeoff/$2/record.json" ]  # a run whose accuracy collapsed is still a point
}
for d in 0.02 0.04 0.12; do run "$MODEL" "olmp-ncs-delta$d" "search.delta=$d"; done
for s in 1.5 2 3; do run "${MODEL}_dc" "deep-compression-scale$s" "baseline.scale=$s"; done
for s in 2 3 4; do run "${MODEL}_dns" "dns-scale$s" "baseline.scale=$s"; done
