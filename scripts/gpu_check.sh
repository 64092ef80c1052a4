#!/usr/bin/env bash
# The GPU check: one run on a fresh Debian 12 machine with one NVIDIA GPU and network
# access (16 cores: under 10 minutes, most of it the CUDA compile). It measures exactly this:
#   1. the NVIDIA driver (nvidia-smi: version, GPU name, memory); it stops if the driver is older
#      than CUDA 13 needs (R580);
#   2. the CUDA build of pycaffe (OLMP_CAFFE_VARIANT=cuda through scripts/setup.sh, 16 jobs): its wall
#      time, or that the cached build was used;
#   3. `olmp evaluate` of the authors' released LeNet-5 (../shared/external-models/
#      lenet5_olmp_compressed.caffemodel, converted to stock Caffe; the repository's own reference
#      model when that file is absent) on the 10,000 MNIST test images, with --gpu 0 and on the CPU:
#      accuracy and loss of each; the check passes when the accuracies are equal;
#   4. a plain LeNet-5 SGD step, the pipeline's masked step and a candidate evaluation
#      (benchmarks/device_speed.py, i.e. benchmarks/bench.py's code) on the GPU and on the CPU (one
#      core: OMP_NUM_THREADS=1, OPENBLAS_NUM_THREADS=1), and their GPU speedups;
#   5. a shortened LeNet-5 pipeline on the GPU (olmp prune --experiment lenet5 --gpu 0, niter 3001,
#      pruning until 2000: two searches): wall, SGD and search seconds, compression ratio, test accuracy.
# It writes results/benchmarks/gpu.json and gpu.md (or --out DIR), and exits 1 if a check failed.
#
#   scripts/gpu_check.sh [--dry-run] [--out DIR]
#
# --dry-run (or DRY_RUN=1): every step on the CPU path, with tiny sizes, for a machine without a GPU:
# no nvidia-smi, the CPU build, "--gpu" steps run on the CPU; it writes to $TMPDIR/olmp-gpu-check-dryrun/.
# Environment: GPU_CHECK_PYTHON  an interpreter whose site-packages get pycaffe (default: .venv via
#                                scripts/setup.sh; with it only scripts/build_pycaffe.sh runs)
#              OLMP_BUILD_JOBS   compile jobs (default: nproc)
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
say() { echo "[gpu_check] $*" >&2; }
die() { echo "[gpu_check] error: $*" >&2; exit 2; }

DRY=${DRY_RUN:-0}
OUT=""
while [ $# -gt 0 ]; do
  case "$1" in
    --dry-run) DRY=1 ;;
    --out) OUT=${2:?--out needs a folder}; shift ;;
    *) die "unknown argument '$1' (usage: scripts/gpu_check.sh [--dry-run] [--out DIR])" ;;
  esac
  shift
done
work=$(mktemp -d "${TMPDIR:-/tmp}/olmp-gpu-check.XXXXXX")
trap 'rm -rf "$work"' EXIT
[ -n "$OUT" ] || { if [ "$DRY" = 1 ]; then OUT="${TMPDIR:-/tmp}/olmp-gpu-check-dryrun"; else OUT="$ROOT/results/benchmarks"; fi; }
mkdir -p "$OUT"
export OLMP_BUILD_JOBS=${OLMP_BUILD_JOBS:-$(env -u OMP_NUM_THREADS -u OMP_THREAD_LIMIT nproc)}  # all cores
export OPENBLAS_NUM_THREADS=1 OMP_NUM_THREADS=1 PYTHONUNBUFFERED=1   # the CPU figures: one core
if [ "$DRY" = 1 ]; then
  VARIANT=cpu; GPU=(); say "dry run: CPU path, tiny sizes, results in $OUT"
else
  VARIANT=cuda; GPU=(--gpu 0)
fi
SYSPY=$(command -v python3 || command -v python3.11) || die "no python3 on PATH"   # before setup.sh made .venv
now() { date +%s.%N; }
step_start=0
begin() { step_start=$(now); say "$*"; }
took() { "$SYSPY" -c "print(round($(now) - $step_start, 1))"; }

# ---- 1. driver ----------------------------------------------------------------------------------
if [ "$DRY" = 1 ]; then
  echo '{"driver": "dry run: none", "gpu": "none"}' > "$work/driver.json"
else
  command -v nvidia-smi > /dev/null || die "nvidia-smi not found: no NVIDIA driver on this machine"
  smi=$(nvidia-smi --query-gpu=driver_version,name,memory.total --format=csv,noheader | head -1) \
    || die "nvidia-smi failed: the driver does not answer"
  driver=$(echo "$smi" | cut -d, -f1 | tr -d ' ')
  say "driver $driver, $(echo "$smi" | cut -d, -f2- | sed 's/^ //')"
  [ "${driver%%.*}" -ge 580 ] \
    || die "driver $driver is too old for CUDA 13 (the wheels in scripts/cuda-requirements.txt need R580 or newer)"
  "$SYSPY" -c 'import json, sys; d, n, m = [s.strip() for s in sys.argv[1].split(",")]
print(json.dumps({"driver": d, "gpu": n, "memory": m}))' "$smi" > "$work/driver.json"
fi

# ---- 2. the CUDA build of pycaffe ----------------------------------------------------------------
begin "pycaffe, $VARIANT variant, $OLMP_BUILD_JOBS jobs (the CUDA compile takes minutes; cached builds seconds)"
if [ -n "${GPU_CHECK_PYTHON:-}" ]; then
  PY=$GPU_CHECK_PYTHON
  OLMP_CAFFE_VARIANT=$VARIANT bash scripts/build_pycaffe.sh "$PY" 2>&1 | tee "$work/build.log" >&2
else
  PY=$ROOT/.venv/bin/python
  OLMP_CAFFE_VARIANT=$VARIANT bash scripts/setup.sh 2>&1 | tee "$work/build.log" >&2
fi
cached=$(grep -q "compiling with" "$work/build.log" && echo false || echo true)
echo "{\"variant\": \"$VARIANT\", \"seconds\": $(took), \"cached\": $cached}" > "$work/build.json"
OLMP=("$PY" -m olmp)
"$PY" -c 'from olmp import caffe_bridge as b; import sys; sys.exit(0 if b.has_cuda() or sys.argv[1] == "1" else 1)' "$DRY" \
  || die "the installed pycaffe is not a CUDA build"
"${OLMP[@]}" data mnist --quiet

# ---- 3. the released LeNet-5 on GPU and CPU --------------------------------------------------------
released=$ROOT/../shared/external-models/lenet5_olmp_compressed.caffemodel
if [ -f "$released" ]; then
  model="$work/lenet5_released_stock.caffemodel"
  "${OLMP[@]}" convert "$released" "$model" > /dev/null
else
  say "$released is absent: evaluating the repository's own reference LeNet-5 instead"
  model=results/references/lenet5/model.caffemodel; released=$model
fi
for dev in gpu cpu; do
  begin "olmp evaluate on the $dev"
  flags=(); [ "$dev" = gpu ] && flags=("${GPU[@]}")
  "${OLMP[@]}" evaluate --net models/lenet5/train_test.prototxt --weights "$model" --json "${flags[@]}" \
    | tail -1 > "$work/eval-$dev.json"
  "$SYSPY" -c 'import json, sys; d = json.load(open(sys.argv[1])); d["seconds"] = float(sys.argv[2]); d["model"] = sys.argv[3]
json.dump(d, open(sys.argv[1], "w"))' "$work/eval-$dev.json" "$(took)" "$released"
done

# ---- 4. SGD step and candidate evaluation on GPU and CPU ----------------------------------------
quick=(); [ "$DRY" = 1 ] && quick=(--quick)
begin "SGD step and candidate evaluation on the GPU"
"$PY" benchmarks/device_speed.py "${GPU[@]}" "${quick[@]}" --out "$work/speed-gpu.json"
begin "SGD step and candidate evaluation on the CPU"
"$PY" benchmarks/device_speed.py "${quick[@]}" --out "$work/speed-cpu.json"

# ---- 5. a shortened pipeline on the GPU -----------------------------------------------------------
if [ "$DRY" = 1 ]; then
  sets=(pipeline.niter=201 pipeline.prune_stop_iter=100 pipeline.record_every=100 pipeline.checkpoint_every=100
        search.every=100 search.budget=20)
else
  sets=(pipeline.niter=3001 pipeline.prune_stop_iter=2000 pipeline.record_every=500 pipeline.checkpoint_every=1000)
fi
begin "shortened LeNet-5 pipeline on the GPU (${sets[*]})"
"${OLMP[@]}" prune --experiment lenet5 --out "$work/pipeline" --quiet "${GPU[@]}" "${sets[@]/#/--set=}"
cp "$work/pipeline/record.json" "$work/pipeline.json"

# ---- report -------------------------------------------------------------------------------------
status=0
"$PY" - "$work" "$OUT" "$DRY" "${sets[*]}" <<'EOF' || status=$?
import json
import sys
from pathlib import Path

from olmp import atomic, tables

work, out, dry, sets = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3] == "1", sys.argv[4]
load = lambda name: json.loads((work / f"{name}.json").read_text())  # noqa: E731
ev = {d: load(f"eval-{d}") for d in ("gpu", "cpu")}
speed = {d: load(f"speed-{d}") for d in ("gpu", "cpu")}
rec = load("pipeline")
res = {
    "dry_run": dry, "driver": load("driver"), "build": load("build"),
    "evaluate": ev, "same_accuracy": abs(ev["gpu"]["accuracy"] - ev["cpu"]["accuracy"]) < 1e-9,
    "speed": speed,
    "gpu_speedup": {"plain_step": speed["cpu"]["plain_step_ms"] / speed["gpu"]["plain_step_ms"],
                    "masked_step": speed["cpu"]["masked_step_ms"] / speed["gpu"]["masked_step_ms"],
                    "candidate_evaluation": speed["cpu"]["eval_ms"] / speed["gpu"]["eval_ms"]},
    "pipeline": {"settings": sets, "wall_s": rec["seconds"]["wall"], "sgd_s": rec["seconds"]["sgd"],
                 "search_s": rec["seconds"]["search"], "ratio": rec["final"]["ratio"],
                 "test_accuracy": rec["final"]["test"]["accuracy"], "gpu": rec["provenance"].get("gpu")},
}
d, b, p, g = res["driver"], res["build"], res["pipeline"], res["gpu_speedup"]
md = [
    "# GPU check (scripts/gpu_check.sh)" + (" -- DRY RUN on the CPU path, tiny sizes" if dry else ""), "",
    f"GPU {d['gpu']}, driver {d['driver']}. pycaffe {b['variant']} build: "
    + ("cached" if b["cached"] else f"compiled in {b['seconds']:.0f} s") + ".", "",
    *tables.markdown([None, "GPU", "CPU (1 core)", "GPU speedup"], [
        ["released LeNet-5, test accuracy", f"{ev['gpu']['accuracy']:.4f}", f"{ev['cpu']['accuracy']:.4f}",
         f"same: {res['same_accuracy']}"],
        ["its test loss", f"{ev['gpu']['loss']:.6f}", f"{ev['cpu']['loss']:.6f}", None],
        *([label, f"{speed['gpu'][key]:.3f}", f"{speed['cpu'][key]:.3f}", f"{g[name]:.2f}x"] for label, key, name in (
            ("plain SGD step ms", "plain_step_ms", "plain_step"), ("masked SGD step ms", "masked_step_ms", "masked_step"),
            ("candidate evaluation ms", "eval_ms", "candidate_evaluation")))]), "",
    f"Shortened LeNet-5 pipeline on the GPU ({sets}): {p['wall_s']:.0f} s wall ({p['sgd_s']:.0f} s SGD, "
    f"{p['search_s']:.0f} s search), {p['ratio']:.1f}x, test accuracy {p['test_accuracy']:.4f}.",
]
name = "gpu-dryrun" if dry else "gpu"
atomic.write_json(out / f"{name}.json", res)
atomic.write_text(out / f"{name}.md", "\n".join(md) + "\n")
print("\n".join(md))
sys.exit(0 if res["same_accuracy"] else 1)
EOF
say "wrote $OUT/$([ "$DRY" = 1 ] && echo gpu-dryrun || echo gpu).json and .md"
[ $status = 0 ] || say "FAILED: the GPU and CPU accuracies differ"
exit $status
