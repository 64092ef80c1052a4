"""LeNet-5 with Caffe's convolution over 1 vs N OpenMP threads (Caffe patch 0007).

    python benchmarks/openmp_conv.py [--model lenet5|lenet300100] [--quick] [--threads 1 2]
                                     [--pipeline [--set SECTION.KEY=VALUE ...]]

(a) a plain SGD step (``solver.step``, the solver and reference weights of scripts/experiments/lenet5.toml):
    one worker process per thread count (Caffe reads OMP_NUM_THREADS once per process), all started
    together and timed in alternating chunks, so that the machine's load falls on every thread
    count alike; the medians and their ratio come from this one run.
    olmp sets OMP_WAIT_POLICY=passive (waiting threads sleep); each thread count above 1 also runs
    with OMP_WAIT_POLICY=active (they spin), which costs much when other processes share the cores.
(b) with ``--pipeline``: the whole LeNet-5 pipeline (``olmp prune --experiment lenet5``, fresh
    folders), once per thread count, one after the other; wall, SGD and search seconds from each
    record. About 13 minutes per run on one idle core of the development machine.

Every worker runs with OPENBLAS_NUM_THREADS=1: the threads are Caffe's, over a batch's images.
``--model lenet300100`` measures the same for LeNet-300-100, which has no convolution: there the only
threads that can act are OpenBLAS's, inside the inner products, so it varies OPENBLAS_NUM_THREADS
(with OMP_NUM_THREADS=1).
Writes ``<out>/openmp_conv.json`` and ``.md`` (``openmp_conv_quick.*`` with ``--quick``;
``blas_threads_lenet300100*`` for LeNet-300-100), atomically.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import types
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))
import report  # noqa: E402

# the model's threaded part: the environment variable that sets its thread count, and the output name
MODELS = {"lenet5": ("OMP_NUM_THREADS", "openmp_conv"), "lenet300100": ("OPENBLAS_NUM_THREADS", "blas_threads_lenet300100")}

from olmp import provenance, tables  # noqa: E402


def worker_env(model: str, threads: int, wait: str | None = None) -> dict[str, str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", MODELS[model][0]: str(threads)}
    env.pop("OMP_WAIT_POLICY", None)  # unset: olmp's default, passive (olmp/caffe_bridge.py)
    if wait:
        env["OMP_WAIT_POLICY"] = wait
    return env


def configs(model: str, threads: list[int]) -> list[tuple[str, int, str | None]]:
    """(label, threads, OMP_WAIT_POLICY): every count as olmp runs it (waiting threads sleep), and for
    OpenMP each count above 1 also with libgomp's spinning wait (OMP_WAIT_POLICY=active)."""
    if MODELS[model][0] != "OMP_NUM_THREADS":
        return [(str(n), n, None) for n in threads]
    return [(str(n) if n == 1 else f"{n} passive", n, None) for n in threads] + [
        (f"{n} active", n, "active") for n in threads if n > 1]


def worker(model: str, chunk: int) -> int:
    """Child: the model's plain solver; each line on stdin is a step count, answered with its seconds."""
    sys.path.insert(0, str(REPO / "benchmarks"))
    from bench import plain_solver  # the benchmark's own plain solver, not a copy

    from olmp import config

    solver = plain_solver(types.SimpleNamespace(exp=config.load(REPO / "scripts" / "experiments" / f"{model}.toml")))
    solver.step(chunk)  # warm-up: buffers allocated, data prefetch running
    print("ready", flush=True)
    for line in sys.stdin:
        t0 = time.perf_counter()
        solver.step(int(line))
        print(time.perf_counter() - t0, flush=True)
    return 0


def bench_step(model: str, threads: list[int], chunk: int, repeats: int) -> dict[str, Any]:
    runs = configs(model, threads)
    procs = {label: subprocess.Popen([sys.executable, __file__, "--model", model, "--worker", str(chunk)], cwd=REPO,
                                     env=worker_env(model, n, wait), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     text=True)
             for label, n, wait in runs}
    try:
        for label, p in procs.items():
            if p.stdout.readline().strip() != "ready":
                raise SystemExit(f"openmp_conv: the worker '{label}' failed to start")
        per_step: dict[str, list[float]] = {label: [] for label in procs}
        order = list(procs)
        for r in range(repeats):
            for label in order if r % 2 == 0 else order[::-1]:  # alternate who goes first
                procs[label].stdin.write(f"{chunk}\n")
                procs[label].stdin.flush()
                per_step[label].append(float(procs[label].stdout.readline()) / chunk)
    finally:
        for p in procs.values():
            p.stdin.close()
            p.wait(timeout=60)
    base = statistics.median(per_step[order[0]])
    return {label: {"step_ms": 1e3 * statistics.median(t), "step_ms_min": 1e3 * min(t),
                    "speedup": base / statistics.median(t)} for label, t in per_step.items()}


def bench_pipeline(model: str, threads: list[int], sets: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for n in threads:
            run = Path(tmp) / f"omp{n}"
            cmd = [sys.executable, "-m", "olmp", "prune", "--experiment", model, "--out", str(run), "--quiet"]
            cmd += [a for s in sets for a in ("--set", s)]
            print(f"[openmp_conv] pipeline with {n} thread(s): {' '.join(cmd[1:])}", file=sys.stderr)
            subprocess.run(cmd, cwd=REPO, env=worker_env(model, n, os.environ.get("OMP_WAIT_POLICY")), check=True)
            rec = json.loads((run / "record.json").read_text())
            s = rec["seconds"]
            out[str(n)] = {"wall_s": s["wall"], "sgd_s": s["sgd"], "search_s": s["search"],
                           "ratio": rec["final"]["ratio"], "test_accuracy": rec["final"]["test"]["accuracy"]}
    for r in out.values():
        r["speedup"] = out[str(threads[0])]["wall_s"] / r["wall_s"]
    return out


def machine() -> dict[str, Any]:
    cpu = ""
    try:
        cpu = next(ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo") if ln.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {"cpu": cpu or platform.processor(), "cores": os.cpu_count(), "load_average_start": os.getloadavg()[0],
            "pycaffe_build_key": provenance.pycaffe_build_key(),
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}


def markdown(res: dict[str, Any]) -> str:
    m, model = res["machine"], res.get("model", "lenet5")
    var = MODELS[model][0]
    other = "OPENBLAS_NUM_THREADS" if var == "OMP_NUM_THREADS" else "OMP_NUM_THREADS"
    title = ("# LeNet-5: convolution over OpenMP threads (Caffe patch 0007)" if model == "lenet5" else
             "# LeNet-300-100: inner products over OpenBLAS threads (it has no convolution)")
    lines = [title, "",
             f"Made by `{res['command']}` on {m['cpu']} ({m['cores']} cores), {m['date']}; load average "
             f"{m['load_average_start']:.2f} at the start, {m['load_average_end']:.2f} at the end. "
             f"{other}=1 everywhere; ratios measured inside this one run. Other processes on "
             "the cores (a load average near or above the core count) take the threads' cores away: "
             "only a run on idle cores shows what the threads can give.", "",
             f"Plain SGD step ({res['step']['chunk']} steps x {res['step']['repeats']} alternating chunks, medians):", "",
             *tables.markdown(
                 [var + (" (OMP_WAIT_POLICY)" if var == "OMP_NUM_THREADS" else ""), "step ms (median)",
                  "step ms (min)", "speedup"],
                 ([n, f"{r['step_ms']:.2f}", f"{r['step_ms_min']:.2f}", f"{r['speedup']:.2f}x"]
                  for n, r in res["step"]["threads"].items()))]
    if "pipeline" in res:
        lines += ["", f"Whole pipeline (`olmp prune --experiment {model}` {' '.join(res['pipeline_sets'])}):", "",
                  *tables.markdown([var, "wall s", "SGD s", "search s", "speedup", "ratio", "test accuracy"], (
                      [n, f"{r['wall_s']:.0f}", f"{r['sgd_s']:.0f}", f"{r['search_s']:.0f}", f"{r['speedup']:.2f}x",
                       f"{r['ratio']:.1f}x", f"{r['test_accuracy']:.4f}"] for n, r in res["pipeline"].items()))]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", choices=sorted(MODELS), default="lenet5",
                    help="lenet5: Caffe's OpenMP convolution threads; lenet300100: OpenBLAS threads")
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2], help="thread counts; the first is the base")
    report.timing_options(ap, "also one whole pipeline per thread count")
    args = ap.parse_args(argv)
    if args.worker:
        return worker(args.model, args.worker)
    chunk, repeats = (5, 3) if args.quick else (50, 15)
    res: dict[str, Any] = {"command": "python benchmarks/openmp_conv.py " + " ".join(argv or sys.argv[1:]),
                           "model": args.model, "machine": machine()}
    print(f"[openmp_conv] {args.model} SGD step at {args.threads} threads", file=sys.stderr)
    res["step"] = {"chunk": chunk, "repeats": repeats, "threads": bench_step(args.model, args.threads, chunk, repeats)}
    if args.pipeline:
        res["pipeline"] = bench_pipeline(args.model, args.threads, args.sets)
        res["pipeline_sets"] = [f"--set {s}" for s in args.sets]
    res["machine"]["load_average_end"] = os.getloadavg()[0]
    report.write(args.out, MODELS[args.model][1] + ("_quick" if args.quick else ""), res, markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())
