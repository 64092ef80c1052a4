"""What the lossless levers cost: a retraining step with distillation, an averaging snapshot, and a whole
LeNet-300-100 lossless run against the plain run of the same seed.

    OPENBLAS_NUM_THREADS=1 python benchmarks/lossless_cost.py [--seeds 3] [--quick] [--out DIR]

Steps: two pipelines per model on the held-out split (``<model>_holdout``), one with
``retrain.distill_weight=0.5`` and its teacher registered as at ``prune_stop_iter``; ``Pipeline.sgd_step``
of each timed in alternating chunks (medians), and ``WeightAverage.add`` per call. Runs: for each seed,
``<model>_holdout`` and ``<model>_lossless`` (averaging, then the guarantee) run whole, one after the
other in this process; the ratio of their wall times is the lossless run's cost. Their results are
checked against the committed records of the same seed. Writes ``<out>/lossless_cost.json`` and ``.md``.
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

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))
import report  # noqa: E402
from bench import machine  # noqa: E402

from olmp import config, distill, pipeline, provenance, tables  # noqa: E402
from olmp.averaging import WeightAverage  # noqa: E402


def step_costs(model: str, chunk: int, repeats: int) -> dict[str, Any]:
    """Median ms of a plain retraining step, one with distillation, and one averaging snapshot."""
    path = REPO / "scripts" / "experiments" / f"{model}_holdout.toml"
    with tempfile.TemporaryDirectory() as tmp:
        plain = pipeline.Pipeline(config.load(path), Path(tmp) / "plain", progress=False)
        taught = pipeline.Pipeline(config.load(path, ["retrain.distill_weight=0.5"]), Path(tmp) / "taught",
                                   progress=False)
        for pipe in (plain, taught):
            pipe.policy.update_masks(list(pipe.exp.layers))
        taught._start_retraining_levers()  # the teacher, as registered at prune_stop_iter
        average = WeightAverage(plain.net)
        parts = {"step": lambda: plain.sgd_step(0), "distill_step": lambda: taught.sgd_step(0),
                 "average_add": lambda: average.add(plain.layers)}
        times: dict[str, list[float]] = {k: [] for k in parts}
        for r in range(repeats):
            for k in parts if r % 2 == 0 else list(parts)[::-1]:
                t0 = time.perf_counter()
                for _ in range(chunk):
                    parts[k]()
                times[k].append((time.perf_counter() - t0) / chunk)
        distill.deactivate(taught.distill_key)
    ms = {k: 1e3 * statistics.median(v) for k, v in times.items()}
    every = config.load(REPO / "scripts" / "experiments" / f"{model}_lossless.toml").retrain.average_every
    return {**{f"{k}_ms": v for k, v in ms.items()}, "distill_over_plain": ms["distill_step"] / ms["step"],
            "average_every": every, "average_per_step_fraction": ms["average_add"] / every / ms["step"]}


def _result(rec: dict[str, Any]) -> tuple[Any, ...]:
    """What a run delivers: its ratio and its test and held-out accuracy and loss (the saved model's file
    also names the data paths of the checkout that made it)."""
    f = rec["final"]
    return f["ratio"], f["test"], f.get("holdout")


def run_costs(model: str, seed: int) -> dict[str, Any]:
    """Wall seconds of the plain and the lossless run of one seed, back to back, and whether they match the records."""
    out: dict[str, Any] = {"seed": seed}
    with tempfile.TemporaryDirectory() as tmp:
        for arm, experiment, folder in (("plain", f"{model}_holdout", f"holdout-ncs-seed{seed}"),
                                        ("lossless", f"{model}_lossless", f"lossless-seed{seed}")):
            exp = config.load(experiment).replace(seed=seed)
            t0 = time.perf_counter()
            rec = pipeline.prune(exp, Path(tmp) / arm, progress=False)
            out[f"{arm}_s"] = time.perf_counter() - t0
            committed = REPO / "results" / model / folder / "record.json"
            out[f"{arm}_same_as_committed"] = committed.is_file() and _result(rec) == _result(
                json.loads(committed.read_text()))
            if arm == "lossless":
                g = rec.get("guarantee") or {}
                out["guarantee_steps"] = len(g.get("steps", [])) - 1
                out["guarantee_s"] = rec["seconds"].get("guarantee")
    out["lossless_over_plain"] = out["lossless_s"] / out["plain_s"]
    return out


def markdown(res: dict[str, Any]) -> str:
    lines = ["# What the lossless levers cost", "", report.made_by(res) + " Every ratio is measured inside this one run.",
             "",
             "Retraining steps, median ms per call (alternating chunks):", "",
             *tables.markdown(["model", "plain step", "step with distillation", "distillation / plain",
                               "averaging snapshot", "snapshots every", "averaging per step / plain step"],
                              ([model, f"{r['step_ms']:.2f}", f"{r['distill_step_ms']:.2f}",
                                f"{r['distill_over_plain']:.2f}x", f"{r['average_add_ms']:.2f}", r["average_every"],
                                f"{100 * r['average_per_step_fraction']:.2f}%"] for model, r in res["steps"].items()))]
    if res["runs"]:
        lines += ["", f"Whole {res['runs_model']} runs, one after the other (the plain run on the held-out split, "
                  "then the lossless configuration: averaging and the guarantee):", "",
                  *tables.markdown(["seed", "plain s", "lossless s", "lossless / plain", "guarantee steps",
                                    "guarantee s", "same results as the committed records"],
                                   ([r["seed"], f"{r['plain_s']:.0f}", f"{r['lossless_s']:.0f}",
                                     f"{r['lossless_over_plain']:.2f}x", r["guarantee_steps"],
                                     f"{r['guarantee_s']:.0f}",
                                     "yes" if r["plain_same_as_committed"] and r["lossless_same_as_committed"]
                                     else "no"] for r in res["runs"]))]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=["lenet300100", "lenet5"], help="for the step costs")
    ap.add_argument("--seeds", nargs="*", type=int, default=[3], help="LeNet-300-100 seeds run whole (none: skip)")
    ap.add_argument("--quick", action="store_true", help="few short chunks, no whole runs (a smoke test)")
    ap.add_argument("--out", default=str(REPO / "results" / "benchmarks"))
    args = ap.parse_args(argv)
    chunk, repeats = (5, 2) if args.quick else (50, 10)
    res: dict[str, Any] = {"machine": machine(), "provenance": provenance.collect(),
                           "command": "python benchmarks/lossless_cost.py " + " ".join(argv or sys.argv[1:]),
                           "steps": {m: step_costs(m, chunk, repeats) for m in args.models},
                           "runs_model": "lenet300100",
                           "runs": [] if args.quick else [run_costs("lenet300100", s) for s in args.seeds]}
    report.write(args.out, "lossless_cost_quick" if args.quick else "lossless_cost", res, markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())
