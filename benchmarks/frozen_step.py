"""The SGD step of the frozen-weight baselines: unmasked gradients (ours) against masked ones.

    python benchmarks/frozen_step.py [--quick] [--models lenet300100 lenet5] [--out results/benchmarks]

Deep Compression, global-magnitude and uniform keep pruned weights at exactly zero by zeroing W
under the mask after every step (olmp/adjusting.py). An earlier version also zeroed their
gradients; their momentum history then decays as 0.9^n into float32 subnormals and stays there,
and every later step pays for subnormal arithmetic. Two pipelines of the experiment's
deep-compression setting, the same masks (90% of each layer pruned by magnitude after ``dense`` unpruned steps, so
that the pruned weights carry momentum as in a real run), the same data:
one as the package runs it, one with an extra callback that masks the gradients (the old way).
After ``warm`` steps (long enough for the history to go subnormal) both run alternating chunks;
the medians per step and their ratio are reported, and the kept weights must be equal at the end.

Writes ``<out>/frozen_step.json`` and ``.md`` (atomically); run it with OPENBLAS_NUM_THREADS=1.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from olmp import atomic, config, tables  # noqa: E402
from olmp.pipeline import Pipeline  # noqa: E402

EXPERIMENTS = {"lenet300100": "scripts/experiments/lenet300100_dc.toml",
               "lenet5": "scripts/experiments/lenet5_dc.toml"}
PRUNED = 0.9


def frozen_pipeline(exp: config.Experiment, out: Path, mask_gradients: bool, dense_steps: int) -> Pipeline:
    pipe = Pipeline(exp, out, progress=False)
    for i in range(dense_steps):  # momentum history for the weights about to be pruned, as in a real run
        pipe.sgd_step(i)
    lay = pipe.layers
    for n in lay.names:  # the same magnitude masks in both pipelines
        w = lay.dense(n)
        cut = np.quantile(np.abs(np.concatenate([b.ravel() for b in w])), PRUNED)
        lay.set_masks(n, [(np.abs(b) > cut).astype(np.float32) for b in w])
    if mask_gradients:
        def mask() -> None:
            for n in lay.names:
                for blob, m in zip(pipe.net.params[n], lay.masks[n]):
                    np.multiply(blob.diff, m, out=blob.diff)
        pipe.solver.add_callback(lambda: None, mask)
    return pipe


def bench(exp: config.Experiment, dense: int, warm: int, chunk: int, repeats: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        ours = frozen_pipeline(exp, Path(tmp) / "ours", mask_gradients=False, dense_steps=dense)
        old = frozen_pipeline(exp, Path(tmp) / "old", mask_gradients=True, dense_steps=dense)
        for i in range(warm):
            ours.sgd_step(i)
            old.sgd_step(i)
        t_ours, t_old = [], []
        for _ in range(repeats):
            for pipe, times in ((ours, t_ours), (old, t_old)):
                t0 = time.perf_counter()
                for i in range(chunk):
                    pipe.sgd_step(i)
                times.append((time.perf_counter() - t0) / chunk)
        with ours.layers.masked(), old.layers.masked():
            same = all(np.array_equal(a.data, b.data)
                       for n in ours.layers.names for a, b in zip(ours.net.params[n], old.net.params[n]))
        return {"dense_steps": dense, "steps_before_timing": warm,
                "unmasked_gradients_step_ms": 1e3 * statistics.median(t_ours),
                "masked_gradients_step_ms": 1e3 * statistics.median(t_old),
                "speedup": statistics.median(t_old) / statistics.median(t_ours), "kept_weights_equal": same}


def markdown(result: dict[str, Any]) -> str:
    """The report of ``result`` (the JSON beside it), so it can be rewritten from that file alone."""
    return "\n".join([
        "# Frozen pruned weights: SGD step with unmasked (ours) vs masked gradients", "",
        f"Made by `{result['command']}`; medians of alternating chunks in one run.", "",
        *tables.markdown(
            ["model", "pruned steps before timing", "ours ms/step", "masked gradients ms/step", "speedup",
             "kept weights equal"],
            ([model, r["steps_before_timing"], f"{r['unmasked_gradients_step_ms']:.2f}",
              f"{r['masked_gradients_step_ms']:.2f}", f"{r['speedup']:.2f}x", r["kept_weights_equal"]]
             for model, r in result.items() if model != "command"))]) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=["lenet300100"], choices=list(EXPERIMENTS))
    ap.add_argument("--quick", action="store_true", help="short warm-up (CI smoke): subnormals have not set in")
    ap.add_argument("--out", default=str(REPO / "results" / "benchmarks"))
    args = ap.parse_args(argv)
    dense, warm, chunk, repeats = (5, 20, 5, 1) if args.quick else (100, 1500, 100, 5)
    result: dict[str, Any] = {"command": "python benchmarks/frozen_step.py " + " ".join(argv or sys.argv[1:])}
    for model in args.models:
        print(f"[frozen_step] {model}: {dense} dense + {warm} pruned steps, then {repeats} x {chunk} timed",
              file=sys.stderr)
        result[model] = bench(config.load(REPO / EXPERIMENTS[model]), dense, warm, chunk, repeats)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    name = "frozen_step_quick" if args.quick else "frozen_step"
    atomic.write_json(out / f"{name}.json", result)
    atomic.write_text(out / f"{name}.md", markdown(result))
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
