#!/usr/bin/env python3
"""Time the real CaffeNet (batch 256) per SGD step and per candidate evaluation, then extrapolate.

A full Caltech-256 run cannot be timed on a small machine, so this measures its two
costs on the real net and batch, through the pipeline's own classes: one masked solver
step (forward + backward + SGD update, MaskedLayers attached, as in adjusting) and one
candidate evaluation of all eight layers (mask rule + forward from conv1, as in a search).
The images are synthetic (the Data layer cycles a small generated LMDB): pixel values do
not change the arithmetic. Writes results/caffenet_caltech256/<cpu|gpu>_speed.json.

    OPENBLAS_NUM_THREADS=1 .venv/bin/python scripts/caffenet_speed.py [--steps 5] [--gpu N]
"""

from __future__ import annotations

import argparse
import os
import platform
import shlex
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from olmp import atomic, caffe_bridge, caffe_run, caltech, config, paths
from olmp.candidate import CandidateEvaluator

SOLVER = "solvers/caffenet_caltech256_solver.prototxt"


def _images(root: Path, n: int) -> None:
    from PIL import Image

    rng = np.random.default_rng(0)
    for c in range(3):
        (root / f"{c:03d}.class").mkdir(parents=True)
        for i in range(n):
            Image.fromarray(rng.integers(0, 256, size=(256, 256, 3), dtype=np.uint8)).save(
                root / f"{c:03d}.class" / f"{i}.jpg")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=5, help="timed solver steps (after one warm-up step)")
    ap.add_argument("--forwards", type=int, default=5, help="timed candidate forwards")
    ap.add_argument("--gpu", type=int, help="CUDA device (needs a CUDA pycaffe build)")
    ap.add_argument("--out", help="default results/caffenet_caltech256/<cpu|gpu>_speed.json")
    args = ap.parse_args()
    caffe_bridge.set_verbose(False)
    caffe_bridge.use_gpu(args.gpu)
    with tempfile.TemporaryDirectory(prefix="olmp-speed-") as tmp:
        tmp = Path(tmp)
        _images(tmp / "images", 10)
        os.environ["OLMP_DATA_DIR"] = str(tmp / "data")
        caltech.prepare_caltech256(tmp / "images", progress=False)
        sp = caffe_run.solver_param(SOLVER, 1)  # the real net and batch, reading data/caltech256 of OLMP_DATA_DIR
        batch = next(lay for lay in sp.net_param.layer if lay.type == "Data").data_param.batch_size
        exp = config.load("caffenet_caltech256")
        run = caffe_run.open_run(sp, 1, exp.layers, weights_file=None, source=SOLVER)  # random weights: timing only
        solver, layers = run.solver, run.layers
        t0 = time.perf_counter()
        solver.step(1)  # warm-up: first allocations, prefetch start
        warm = time.perf_counter() - t0
        steps, step_cpu = [], []
        for _ in range(args.steps):
            t0, c0 = time.perf_counter(), time.process_time()
            solver.step(1)
            steps.append(time.perf_counter() - t0)
            step_cpu.append(time.process_time() - c0)
        evaluator = CandidateEvaluator(solver.net, layers, run.stats, exp.layers, exp.search.delta)
        forwards, forward_cpu = [], []
        rng = np.random.default_rng(0)
        with evaluator.session():
            for _ in range(args.forwards):
                t0, c0 = time.perf_counter(), time.process_time()
                evaluator(rng.uniform(0.0, 2.0, size=len(exp.layers)))
                forwards.append(time.perf_counter() - t0)
                forward_cpu.append(time.process_time() - c0)
    s, p = exp.search, exp.pipeline
    # the extrapolation uses CPU time (all threads of this process): wall time on a shared machine
    # also counts other jobs; on a GPU the wall time is what matters
    if args.gpu is None:
        step, fwd = float(np.median(step_cpu)), float(np.median(forward_cpu))
    else:
        step, fwd = float(np.median(steps)), float(np.median(forwards))
    max_searches = len(range(0, p.prune_stop_iter, s.every))
    device = "cpu" if args.gpu is None else f"gpu{args.gpu}"
    res = {
        "command": "OPENBLAS_NUM_THREADS={} .venv/bin/python {}".format(
            os.environ.get("OPENBLAS_NUM_THREADS", "(unset)"),
            shlex.join(["scripts/caffenet_speed.py", *sys.argv[1:]])),
        "device": device,
        "machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
                    "load_average_1m_at_end": round(os.getloadavg()[0], 2),
                    "openblas_threads": os.environ.get("OPENBLAS_NUM_THREADS")},
        "net": "models/caffenet_caltech256/train_val.prototxt (57,921,153 parameters), synthetic 256x256 images",
        "batch": batch,
        "warmup_step_seconds": round(warm, 2),
        "sgd_step_wall_seconds": [round(x, 2) for x in steps],
        "sgd_step_cpu_seconds": [round(x, 2) for x in step_cpu],
        "candidate_evaluation_wall_seconds": [round(x, 2) for x in forwards],
        "candidate_evaluation_cpu_seconds": [round(x, 2) for x in forward_cpu],
        "extrapolated": {
            "note": ("extrapolation from the medians of the " + ("CPU" if args.gpu is None else "wall")
                     + " seconds above, not a measured run"),
            "seconds_per_1000_sgd_steps": round(1000 * step),
            "hours_per_1000_sgd_steps": round(1000 * step / 3600, 2),
            "hours_sgd_full_run": round(p.niter * step / 3600, 1),
            "hours_per_search": round(s.budget * fwd / 3600, 2),
            "searches_at_most": max_searches,
            "hours_full_run_at_most": round((p.niter * step + max_searches * s.budget * fwd) / 3600, 1),
        },
    }
    default = paths.RESULTS_DIR / "caffenet_caltech256" / f"{'cpu' if args.gpu is None else 'gpu'}_speed.json"
    out = Path(args.out) if args.out else default
    atomic.write_json(out, res)
    print(f"{device}: {step:.2f} s per SGD step at batch {batch}, {fwd:.2f} s per candidate evaluation; "
          f"~{1000 * step / 3600:.1f} h per 1,000 iterations (extrapolated); wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
