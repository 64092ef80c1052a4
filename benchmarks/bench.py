"""Speed benchmarks of the pipeline's hot paths, measured as ratios inside one run (the machine is shared and noisy).

    python benchmarks/bench.py [--quick] [--models lenet5 lenet300100] [--pipeline] [--out results/benchmarks]

(a) candidate evaluation: olmp.candidate.CandidateEvaluator (forward from the first selected layer,
    masks of the selected layers only, from a precomputed |w|, in-place writes, and the batch in the
    experiment's ``search.chunks`` parts with infeasible candidates stopped early) against a naive
    evaluation (every layer's |w| and mask rebuilt in fresh arrays, W*M written for every layer, the
    whole net re-run after the data layer). Both score the same crates on the same minibatch, and must
    decide alike (the same feasibility, the same accuracy for every feasible candidate). Measured
    for every layer set a search can get (two or more layers) and combined
    with the probability that the §3 schedule hands each set to a search (the "pipeline mix").
(a') the pipeline's first search (real ``Pipeline.search``: all layers, sigma of iteration 0, the
    experiment's budget) with the batch whole and in ``search.chunks`` parts, from the same state;
    the two search records must be equal.
(b) one masked SGD step of the pipeline (callbacks W*M / dense W, divergence check) against a plain
    ``solver.step(1)`` on a second solver with the same net and weights, in alternating chunks.
(c) the full pipeline: wall time split into SGD and search, from the finished paper-setting OLMP
    runs under results/<model>/ (their record.json), and with ``--pipeline`` one fresh run of the
    first model in a temporary folder.

Writes ``<out>/latest.json`` and ``<out>/latest.md`` (atomically). Run it with
OPENBLAS_NUM_THREADS=1, as the pipelines run.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))
import report  # noqa: E402

from olmp import atomic, caffe_run, config, evaluate, reports, tables  # noqa: E402
from olmp import masks as mask_rule  # noqa: E402
from olmp.candidate import CandidateEvaluator  # noqa: E402
from olmp.crate_search import Scoring, search_crates  # noqa: E402
from olmp.pipeline import Pipeline  # noqa: E402
from olmp.policies import POLICIES  # noqa: E402
from olmp.thresholds import threshold  # noqa: E402

EXPERIMENTS = {"lenet5": "scripts/experiments/lenet5.toml", "lenet300100": "scripts/experiments/lenet300100.toml"}


# -- (a) candidate evaluation ---------------------------------------------------------------------
def search_mix(pipe: Pipeline) -> dict[tuple[str, ...], float]:
    """Expected number of searches that get each layer set, under the §3 selection schedule."""
    exp = pipe.exp
    mix: dict[tuple[str, ...], float] = {}
    for itr in range(0, exp.pipeline.prune_stop_iter, exp.search.every):
        p = {n: pipe.policy.selection_probability(n, itr) for n in exp.layers}
        for k in range(2, len(exp.layers) + 1):
            for subset in itertools.combinations(exp.layers, k):
                prob = 1.0
                for n in exp.layers:
                    prob *= p[n] if n in subset else 1.0 - p[n]
                mix[subset] = mix.get(subset, 0.0) + prob
    return mix


def naive_accuracy(pipe: Pipeline, selected: tuple[str, ...], crates: np.ndarray) -> float:
    """Every mask rebuilt from scratch, every blob rewritten, the whole net re-run after the data layer."""
    lay, net = pipe.layers, pipe.net
    chosen = dict(zip(selected, crates))
    for n in lay.names:
        for blob, w, m in zip(lay.data(n), lay.dense(n), lay.masks[n]):
            new = mask_rule.update_mask(w, m, threshold(pipe.stats[n], float(chosen[n]))) if n in chosen else m.copy()
            blob[...] = w * new
    net.forward(start=net._layer_names[1])
    logits, labels = evaluate.loss_inputs(net)
    return evaluate.batch_accuracy(net.blobs[logits].data, net.blobs[labels].data)


def time_evaluations(pipe: Pipeline, selected: tuple[str, ...], xs: np.ndarray) -> tuple[float, float, bool]:
    """Seconds per evaluation (ours, naive) on the same candidates, and whether they decide alike.

    Alike: the same feasibility for every candidate and the same accuracy for every feasible one
    (with chunks, an infeasible candidate is reported with a bound once it is certainly infeasible).
    """
    ev = CandidateEvaluator(pipe.net, pipe.layers, pipe.stats, list(selected), pipe.exp.search.delta, chunks=pipe.chunks)
    order = list(pipe.net._layer_names)
    ordered = tuple(sorted(selected, key=order.index))
    with ev.session():
        t0 = time.perf_counter()
        ours = [ev(x) for x in xs]
        t_ours = (time.perf_counter() - t0) / len(xs)
    with pipe.layers.masked():
        t0 = time.perf_counter()
        naive = [naive_accuracy(pipe, ordered, x) for x in xs]
        t_naive = (time.perf_counter() - t0) / len(xs)
    floor = ev.reference_accuracy - ev.delta
    alike = all(o.feasible == (a - floor >= 0) and (not o.feasible or o.accuracy == a) for o, a in zip(ours, naive))
    return t_ours, t_naive, alike


def bench_evaluation(pipe: Pipeline, evals: int, repeats: int, rng: np.random.Generator) -> dict[str, Any]:
    mix = search_mix(pipe)
    lo, hi = pipe.exp.search.bounds
    per_set = {}
    agree = True
    for subset in mix:
        ours, naive = [], []
        for _ in range(repeats):
            # crates around where searches look (the start plus sigma-scale steps), within the bounds
            xs = np.clip(rng.normal(2.0, 2.0, size=(evals, len(subset))), lo, hi)
            o, nv, ok = time_evaluations(pipe, subset, xs)
            ours.append(o)
            naive.append(nv)
            agree &= ok
        per_set["+".join(subset)] = {"searches_expected": round(mix[subset], 3),
                                     "ours_ms": 1e3 * statistics.median(ours),
                                     "naive_ms": 1e3 * statistics.median(naive),
                                     "speedup": statistics.median(naive) / statistics.median(ours)}
    weight = sum(mix.values())
    ours_mix = sum(mix[s] * per_set["+".join(s)]["ours_ms"] for s in mix) / weight
    naive_mix = sum(mix[s] * per_set["+".join(s)]["naive_ms"] for s in mix) / weight
    return {"eval_speedup": naive_mix / ours_mix, "evals_per_second": 1e3 / ours_mix,
            "naive_evals_per_second": 1e3 / naive_mix, "decisions_agree": agree,
            "searches_expected": round(weight, 2), "per_layer_set": per_set}


def bench_search(pipe: Pipeline, budget: int, repeats: int) -> dict[str, Any]:
    """The pipeline's first search (all layers, sigma at iteration 0) with the batch whole and in chunks.

    The real search (olmp/crate_search.py), run repeatedly from the same state (generator, crates,
    masks put back after each), alternating; the two records must be the same apart from their seconds.
    """
    exp = pipe.exp
    crates = dict(pipe.policy.fields()["crates"])  # a copy: the search changes it, and it is put back
    saved = (pipe.draws.state(), dict(crates), pipe.layers.state())
    parts = pipe.chunks
    small = exp.replace(search=exp.search.__class__(**{**vars(exp.search), "budget": budget}))
    times: dict[str, list[float]] = {"whole": [], "chunks": []}
    records = {}
    for _ in range(repeats):
        for key, chunks in (("whole", []), ("chunks", parts)):
            rec = search_crates(small, 0, list(exp.layers), crates, pipe.layers, pipe.stats,
                                Scoring(pipe.eval_net, chunks), pipe.draws)
            times[key].append(rec.pop("seconds"))
            records[key] = rec
            pipe.draws.load_state(saved[0])
            crates.update(saved[1])
            pipe.layers.load_state(saved[2])
    return {"search_chunks": len(parts), "search_evaluations": records["whole"]["evaluations"],
            "search_whole_s": statistics.median(times["whole"]), "search_chunked_s": statistics.median(times["chunks"]),
            "search_speedup_chunks": statistics.median(times["whole"]) / statistics.median(times["chunks"]),
            "search_records_equal": records["whole"] == records["chunks"]}


# -- (b) masked SGD step --------------------------------------------------------------------------
def plain_solver(pipe: Pipeline) -> Any:
    """The same solver and reference with no masks: Caffe's own step, the baseline of the masked one."""
    exp = pipe.exp
    return caffe_run.open_run(caffe_run.solver_param(exp.solver, exp.seed), exp.seed, (), weights_file=exp.weights,
                              source=exp.solver).solver


def bench_step(pipe: Pipeline, chunk: int, repeats: int) -> dict[str, Any]:
    plain = plain_solver(pipe)
    plain.step(chunk)  # warm both up
    for _ in range(chunk):
        pipe.sgd_step(0)
    t_plain, t_masked = [], []
    for _ in range(repeats):
        t0 = time.perf_counter()
        plain.step(chunk)
        t_plain.append((time.perf_counter() - t0) / chunk)
        t0 = time.perf_counter()
        for _ in range(chunk):
            pipe.sgd_step(0)
        t_masked.append((time.perf_counter() - t0) / chunk)
    return {"plain_step_ms": 1e3 * statistics.median(t_plain), "masked_step_ms": 1e3 * statistics.median(t_masked),
            "masked_step_ratio": statistics.median(t_masked) / statistics.median(t_plain)}


# -- (c) the pipeline ---------------------------------------------------------------------------
def pipeline_from_records(model: str) -> dict[str, Any]:
    """Medians over the finished paper-setting OLMP runs of this model (minibatch estimate, own reference)."""
    runs = [r for r in reports.load_runs(REPO / "results" / model)
            if POLICIES[r.method].searches and r.own_reference
            and r.experiment["search"]["accuracy_on"] == "minibatch"]
    if not runs:
        return {}
    wall = [r.seconds.get("wall", r.seconds["this_session_wall"]) for r in runs]
    sgd = [r.seconds["sgd"] for r in runs]
    search = [r.seconds["search"] for r in runs]
    return {"pipeline_seconds": statistics.median(wall), "sgd_seconds": statistics.median(sgd),
            "search_seconds": statistics.median(search),
            "search_fraction": statistics.median(s / w for s, w in zip(search, wall)),
            "pipeline_runs": [str(r.dir.relative_to(REPO)) for r in runs]}


def pipeline_fresh(exp: config.Experiment) -> dict[str, Any]:
    from olmp import pipeline

    with tempfile.TemporaryDirectory() as tmp:
        rec = pipeline.prune(exp, Path(tmp) / "run", progress=True)
    s = rec["seconds"]
    return {"pipeline_seconds": s["wall"], "sgd_seconds": s["sgd"], "search_seconds": s["search"],
            "search_fraction": s["search"] / s["wall"], "ratio": rec["final"]["ratio"],
            "test_accuracy": rec["final"]["test"]["accuracy"]}


# -- the report ---------------------------------------------------------------------------------
def machine() -> dict[str, Any]:
    cpu = ""
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {"cpu": cpu or platform.processor(), "cores": os.cpu_count(), "load_average": os.getloadavg(),
            "openblas_threads": os.environ.get("OPENBLAS_NUM_THREADS", "unset"), "python": platform.python_version(),
            "numpy": np.__version__, "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}


def markdown(result: dict[str, Any]) -> str:
    lines = ["# Benchmarks", "",
             report.made_by(result),
             "Ratios and medians are measured inside this one run; the pipeline rows come from run records.", ""]
    models = {k: r for k, r in result.items() if k not in ("machine", "command")}
    lines += tables.markdown(
        ["model", "eval speedup (pipeline mix)", "evals/s ours", "evals/s naive", "first search whole s",
         "in chunks s", "chunks speedup", "masked/plain SGD step", "plain step ms", "plain steps x niter s",
         "pipeline s", "search fraction", "pipeline source"],
        ([model, f"{r['eval_speedup']:.2f}x", f"{r['evals_per_second']:.0f}", f"{r['naive_evals_per_second']:.0f}",
          f"{r['search_whole_s']:.1f}", f"{r['search_chunked_s']:.1f}", f"{r['search_speedup_chunks']:.2f}x",
          f"{r['masked_step_ratio']:.3f}", f"{r['plain_step_ms']:.2f}", f"{r['sgd_floor_seconds']:.0f}",
          f"{r.get('pipeline_seconds', float('nan')):.0f}", f"{r.get('search_fraction', float('nan')):.3f}",
          r.get("pipeline_source", "-")] for model, r in models.items()))
    for model, r in models.items():
        lines += ["", f"## {model}: evaluation per layer set", "",
                  *tables.markdown(["layers", "searches expected", "ours ms", "naive ms", "speedup"], (
                      [name, f"{s['searches_expected']:.2f}", f"{s['ours_ms']:.2f}", f"{s['naive_ms']:.2f}",
                       f"{s['speedup']:.2f}x"] for name, s in r["per_layer_set"].items()))]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=list(EXPERIMENTS), choices=list(EXPERIMENTS))
    ap.add_argument("--quick", action="store_true", help="few repeats (CI smoke); the figures are rough")
    ap.add_argument("--pipeline", action="store_true", help="also run one full fresh pipeline of the first model")
    ap.add_argument("--out", default=str(REPO / "results" / "benchmarks"))
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args(argv)
    evals, repeats, chunk = (10, 1, 5) if args.quick else (60, 3, 30)
    rng = np.random.default_rng(args.seed)
    result: dict[str, Any] = {"machine": machine(), "command": "python benchmarks/bench.py " + " ".join(argv or sys.argv[1:])}
    for i, model in enumerate(args.models):
        exp = config.load(REPO / EXPERIMENTS[model])
        with tempfile.TemporaryDirectory() as tmp:
            pipe = Pipeline(exp, Path(tmp), progress=False)
            pipe.sgd_step(-1)  # a minibatch in the blobs, masks from the initial crates as at the first search
            pipe.policy.update_masks(list(exp.layers))
            print(f"[bench] {model}: candidate evaluation", file=sys.stderr)
            r = bench_evaluation(pipe, evals, repeats, rng)
            print(f"[bench] {model}: one search, whole batch and in chunks", file=sys.stderr)
            r.update(bench_search(pipe, 100 if args.quick else exp.search.budget, repeats))
            print(f"[bench] {model}: SGD step", file=sys.stderr)
            r.update(bench_step(pipe, chunk, repeats * 3))
            r["sgd_floor_seconds"] = r["plain_step_ms"] * exp.pipeline.niter / 1e3  # plain steps alone
        recorded = pipeline_from_records(model)
        if recorded:
            r.update(recorded, pipeline_source="run records (median)")
        if args.pipeline and i == 0:
            print(f"[bench] {model}: one full pipeline", file=sys.stderr)
            r.update(pipeline_fresh(exp), pipeline_source="fresh run in this benchmark")
        result[model] = r
        print(f"[bench] {model}: eval speedup {r['eval_speedup']:.2f}x, masked step x{r['masked_step_ratio']:.3f}",
              file=sys.stderr)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    name = "quick" if args.quick else "latest"
    atomic.write_json(out / f"{name}.json", result)
    atomic.write_text(out / f"{name}.md", markdown(result))
    print(json.dumps({m: ({k: v for k, v in r.items() if k != "per_layer_set"} if isinstance(r, dict) else r)
                      for m, r in result.items()}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
