"""A plain LeNet-5 SGD step and the candidate evaluation on one device, with benchmarks/bench.py's code.

    python benchmarks/device_speed.py [--gpu N] [--quick] --out FILE.json

For scripts/gpu_check.sh: run once with ``--gpu 0`` and once without (the CPU), each in
its own process, since Caffe's mode belongs to the process. Measured on the pipeline's own state
(scripts/experiments/lenet5.toml, its reference weights, a training minibatch, the masks of the
initial crates), exactly as bench.py measures it: (b) ``bench_step``, a plain ``solver.step`` and the
pipeline's masked step, in alternating chunks; (a) ``bench_evaluation``, olmp's candidate evaluation
against the naive one over the layer sets a search gets.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

import bench  # noqa: E402  (after the path: the benchmark's functions, not copies)

from olmp import atomic, caffe_bridge, config  # noqa: E402
from olmp.pipeline import Pipeline  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--gpu", type=int, metavar="N", help="CUDA device N (default: the CPU)")
    ap.add_argument("--quick", action="store_true", help="few repeats (the dry run); rough figures")
    ap.add_argument("--out", required=True, help="JSON file to write")
    args = ap.parse_args(argv)
    caffe_bridge.use_gpu(args.gpu)
    evals, repeats, chunk = (5, 1, 5) if args.quick else (20, 2, 50)  # the whole check: under 10 minutes
    exp = config.load(REPO / bench.EXPERIMENTS["lenet5"])
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        pipe = Pipeline(exp, Path(tmp), progress=False)
        pipe.sgd_step(-1)  # as bench.py: a minibatch in the blobs, the initial crates' masks
        pipe.policy.update_masks(list(exp.layers))
        ev = bench.bench_evaluation(pipe, evals, repeats, np.random.default_rng(1))
        step = bench.bench_step(pipe, chunk, repeats * 3)
    res = {"device": f"gpu {args.gpu}" if args.gpu is not None else "cpu",
           "plain_step_ms": step["plain_step_ms"], "masked_step_ms": step["masked_step_ms"],
           "evals_per_second": ev["evals_per_second"], "naive_evals_per_second": ev["naive_evals_per_second"],
           "eval_ms": 1e3 / ev["evals_per_second"], "decisions_agree": ev["decisions_agree"],
           "settings": {"evals": evals, "repeats": repeats, "chunk": chunk}, "seconds": time.perf_counter() - t0}
    atomic.write_json(args.out, res)
    print(f"[device_speed] {res['device']}: plain step {res['plain_step_ms']:.2f} ms, "
          f"candidate evaluation {res['eval_ms']:.2f} ms", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
