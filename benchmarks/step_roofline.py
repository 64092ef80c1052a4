"""The SGD step against the machine's matrix throughput, per Caffe code path, in one run.

    python benchmarks/step_roofline.py [--model lenet5|lenet300100] [--quick] [--pipeline]
                                       [--configs NAME ...] [--set SECTION.KEY=VALUE ...]

(a) the machine's large-SGEMM throughput (numpy's OpenBLAS, 2048x2048 float32) at 1 and 2 threads;
(b) the FLOPs of one training step, counted from the net's shapes (multiply-adds x 2: forward, weight
    gradient, and data gradient for every learnable layer after the first);
(c) per Caffe code path (one worker process each, since Caffe reads its environment once; all started
    together and timed in alternating chunks so the machine's load falls on all alike): a plain
    ``solver.step``, the pipeline's own step (``Pipeline.sgd_step``: mask callbacks, divergence check;
    with the masks of the first search), and every layer's forward and backward alone. Each is given
    in ms, GFLOP/s and as a fraction of the same-run SGEMM throughput at the path's thread count;
(d) two runs at once: the default path's plain steps in two processes together against one after
    the other (together must not be slower);
(e) with ``--pipeline``: the whole pipeline (``olmp prune --experiment MODEL``) under the unpatched
    path and the default one, one after the other, and their wall-time ratio.

The paths (see docs/speed.md "Threads and the fast Caffe paths"):
- ``caffe``: Caffe's own code (per-image GEMMs, its pooling loops, one thread): the unpatched build;
- ``batched-1``: olmp's default group of images per GEMM, one thread;
- ``batched-2``: the same with OMP_NUM_THREADS=2 (threads share out the slices; same bits).
Writes ``<out>/step_roofline_<model>.json`` and ``.md`` (``_quick`` with ``--quick``), atomically.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))
import report  # noqa: E402

from olmp import tables  # noqa: E402

EXPERIMENTS = {"lenet5": "scripts/experiments/lenet5.toml", "lenet300100": "scripts/experiments/lenet300100.toml"}
CONFIGS: dict[str, dict[str, str]] = {
    "caffe": {"OLMP_CONV_GROUP": "0", "OLMP_CAFFE_LOOPS": "1", "OMP_NUM_THREADS": "1"},
    "batched-1": {"OMP_NUM_THREADS": "1"},
    "batched-2": {"OMP_NUM_THREADS": "2"},
}
SGEMM_N = 2048


# -- (a) SGEMM --------------------------------------------------------------------------------------
SGEMM_CHILD = f"""
import time, numpy as np
n = {SGEMM_N}
a = np.random.default_rng(0).random((n, n), dtype=np.float32); b = a.T.copy(); a @ b
t = []
for _ in range(7):
    t0 = time.perf_counter(); a @ b; t.append(time.perf_counter() - t0)
t.sort(); print(2 * n ** 3 / t[len(t) // 2] / 1e9)
"""


def sgemm_gflops(threads: int) -> float:
    env = {**os.environ, "OPENBLAS_NUM_THREADS": str(threads), "OMP_NUM_THREADS": str(threads)}
    r = subprocess.run([sys.executable, "-c", SGEMM_CHILD], env=env, capture_output=True, text=True, check=True)
    return float(r.stdout.strip())


# -- (b) FLOPs from the shapes ----------------------------------------------------------------------
def layer_flops(net: Any) -> dict[str, dict[str, float]]:
    """Per learnable layer: forward, weight-gradient and data-gradient FLOPs of one step (2 per multiply-add)."""
    out: dict[str, dict[str, float]] = {}
    first = True
    for name, layer in zip(net._layer_names, net.layers):
        if layer.type not in ("Convolution", "InnerProduct"):
            continue
        w = net.params[name][0].data
        top = net.blobs[net.top_names[name][0]].data
        if layer.type == "Convolution":  # out channels x (in channels / group x kernel) x output positions x images
            macs = top.shape[0] * top.shape[1] * w[0].size * (top.size // (top.shape[0] * top.shape[1]))
        else:
            macs = top.shape[0] * w.size
        out[name] = {"forward": 2.0 * macs, "weight_grad": 2.0 * macs, "data_grad": 0.0 if first else 2.0 * macs}
        first = False
    return out


# -- (c) the worker ---------------------------------------------------------------------------------
def worker(model: str, chunk: int) -> int:
    """Child: a real pipeline of the experiment; each stdin line names what to time, answered in seconds."""
    from olmp import config
    from olmp.pipeline import Pipeline

    sys.path.insert(0, str(REPO / "benchmarks"))
    from bench import plain_solver

    exp = config.load(REPO / EXPERIMENTS[model])
    with tempfile.TemporaryDirectory() as tmp:
        pipe = Pipeline(exp, Path(tmp), progress=False)
        pipe.sgd_step(-1)
        pipe.policy.prune(0, list(exp.layers))  # the masks of the first search, as the adjusting phase runs them
        plain = plain_solver(pipe)
        plain.step(chunk)
        net = plain.net
        names = list(net._layer_names)
        flops = layer_flops(net)
        print(json.dumps({"ready": True, "flops": flops, "layers": names}), flush=True)

        def layer_times() -> dict[str, list[float]]:
            net.forward()
            fwd, bwd = [], []
            for i in range(len(names)):
                t0 = time.perf_counter()
                net._forward(i, i)
                fwd.append(time.perf_counter() - t0)
            for i in reversed(range(len(names))):
                t0 = time.perf_counter()
                net._backward(i, i)
                bwd.append(time.perf_counter() - t0)
            return {"forward": fwd, "backward": bwd[::-1]}

        for line in sys.stdin:
            what = line.strip()
            if what == "plain":
                t0 = time.perf_counter()
                plain.step(chunk)
                print(json.dumps((time.perf_counter() - t0) / chunk), flush=True)
            elif what == "pipeline":
                t0 = time.perf_counter()
                for _ in range(chunk):
                    pipe.sgd_step(0)
                print(json.dumps((time.perf_counter() - t0) / chunk), flush=True)
            elif what == "layers":
                print(json.dumps(layer_times()), flush=True)
    return 0


def config_env(name: str) -> dict[str, str]:
    """A named path, or ``gGtT``: group G images per GEMM on T threads (to compare group sizes)."""
    m = re.fullmatch(r"g(\d+)t(\d+)", name)
    if m:
        return {"OLMP_CONV_GROUP": m[1], "OMP_NUM_THREADS": m[2]}
    if name not in CONFIGS:
        raise SystemExit(f"step_roofline: unknown path '{name}' (one of {', '.join(CONFIGS)}, or gGtT)")
    return CONFIGS[name]


def worker_env(name: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OMP_NUM", "OLMP_CONV", "OLMP_CAFFE"))}
    env["OPENBLAS_NUM_THREADS"] = "1"
    env.update(config_env(name))
    return env


def start(model: str, name: str, chunk: int) -> tuple[subprocess.Popen, dict[str, Any]]:
    p = subprocess.Popen([sys.executable, __file__, "--model", model, "--worker", str(chunk)], cwd=REPO,
                         env=worker_env(name), stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    hello = json.loads(p.stdout.readline() or "{}")
    if not hello.get("ready"):
        raise SystemExit(f"step_roofline: the worker '{name}' failed to start")
    return p, hello


def ask(p: subprocess.Popen, what: str) -> Any:
    p.stdin.write(what + "\n")
    p.stdin.flush()
    return json.loads(p.stdout.readline())


def bench_paths(model: str, names: list[str], chunk: int, repeats: int) -> tuple[dict[str, Any], dict[str, Any]]:
    procs, hello = {}, {}
    try:
        for n in names:
            procs[n], hello = start(model, n, chunk)
        raw: dict[str, dict[str, list]] = {n: {"plain": [], "pipeline": [], "layers": []} for n in names}
        for r in range(repeats):
            for n in names if r % 2 == 0 else names[::-1]:  # alternate who goes first
                for what in ("plain", "pipeline", "layers"):
                    raw[n][what].append(ask(procs[n], what))
    finally:
        for p in procs.values():
            p.stdin.close()
            p.wait(timeout=120)
    out = {}
    for n, r in raw.items():
        layers = hello["layers"]
        per_layer = {lay: {"forward_ms": 1e3 * statistics.median(t["forward"][i] for t in r["layers"]),
                           "backward_ms": 1e3 * statistics.median(t["backward"][i] for t in r["layers"])}
                     for i, lay in enumerate(layers)}
        out[n] = {"plain_ms": 1e3 * statistics.median(r["plain"]), "pipeline_ms": 1e3 * statistics.median(r["pipeline"]),
                  "layers": per_layer, "env": config_env(n)}
    return out, hello["flops"]


# -- (d) two runs at once ---------------------------------------------------------------------------
def bench_concurrent(model: str, name: str, steps: int) -> dict[str, Any]:
    """Wall seconds of `steps` plain steps: one process alone twice (sequential) vs two processes together."""
    def launch() -> subprocess.Popen:
        p, _ = start(model, name, steps)
        return p

    a, b = launch(), launch()
    try:
        t0 = time.perf_counter()
        ask(a, "plain")
        ask(b, "plain")
        sequential = time.perf_counter() - t0
        t0 = time.perf_counter()
        for p in (a, b):
            p.stdin.write("plain\n")
            p.stdin.flush()
        for p in (a, b):
            json.loads(p.stdout.readline())
        together = time.perf_counter() - t0
    finally:
        for p in (a, b):
            p.stdin.close()
            p.wait(timeout=120)
    return {"path": name, "steps": steps, "sequential_s": sequential, "together_s": together,
            "together_over_sequential": together / sequential}


# -- (e) the whole pipeline -------------------------------------------------------------------------
def bench_pipeline(model: str, names: list[str], sets: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for n in names:
            run = Path(tmp) / n
            cmd = [sys.executable, "-m", "olmp", "prune", "--experiment", model, "--out", str(run), "--quiet"]
            cmd += [a for s in sets for a in ("--set", s)]
            print(f"[step_roofline] pipeline, path {n}: {' '.join(cmd[1:])}", file=sys.stderr)
            subprocess.run(cmd, cwd=REPO, env=worker_env(n), check=True)
            rec = json.loads((run / "record.json").read_text())
            s = rec["seconds"]
            out[n] = {"wall_s": s["wall"], "sgd_s": s["sgd"], "search_s": s["search"], "ratio": rec["final"]["ratio"],
                      "test_accuracy": rec["final"]["test"]["accuracy"]}
    for r in out.values():
        r["speedup"] = out[names[0]]["wall_s"] / r["wall_s"]
    return out


# -- the report -------------------------------------------------------------------------------------
def summarize(paths: dict[str, Any], flops: dict[str, dict[str, float]], sgemm: dict[str, float]) -> None:
    step_flops = sum(sum(f.values()) for f in flops.values())
    for r in paths.values():
        threads = int(r["env"].get("OMP_NUM_THREADS", "1"))
        peak = sgemm[str(min(threads, 2))]
        for key in ("plain", "pipeline"):
            gf = step_flops / (r[f"{key}_ms"] / 1e3) / 1e9
            r[f"{key}_gflops"] = gf
            r[f"{key}_fraction"] = gf / peak
        for lay, t in r["layers"].items():
            if lay in flops:
                f = flops[lay]
                t["forward_gflops"] = f["forward"] / (t["forward_ms"] / 1e3) / 1e9
                t["backward_gflops"] = (f["weight_grad"] + f["data_grad"]) / (t["backward_ms"] / 1e3) / 1e9
                t["forward_fraction"] = t["forward_gflops"] / peak
                t["backward_fraction"] = t["backward_gflops"] / peak


DEFAULT_ENV = "olmp's defaults"  # a path that sets no variable


def markdown(res: dict[str, Any]) -> str:
    m = res["machine"]
    sg = res["sgemm_gflops"]
    lines = [f"# {res['model']}: the SGD step against the machine's matrix throughput", "",
             f"Made by `{res['command']}` on {m['cpu']} ({m['cores']} cores, {m['usable_cores']} usable), "
             f"{m['date']}; load average {m['load_average_start']:.2f} at the start, {m['load_average_end']:.2f} at "
             f"the end; pycaffe build {m['pycaffe_build_key']}, numpy {m['numpy']}, OPENBLAS_NUM_THREADS=1 in Caffe. "
             "Every number comes from this one run.", "",
             f"- Large SGEMM ({SGEMM_N}x{SGEMM_N} float32, numpy's OpenBLAS): **{sg['1']:.1f} GFLOP/s** on 1 thread, "
             f"**{sg['2']:.1f}** on 2.",
             f"- One training step (batch {res['batch']}): **{res['step_gflop']:.3f} GFLOP** (forward, weight and data "
             "gradients of the learnable layers, counted from the shapes).",
             f"- Timing: {res['chunk']} steps x {res['repeats']} alternating chunks per path, medians. The fraction "
             "is of the SGEMM throughput at the path's thread count.", ""]
    base = res["paths"][next(iter(res["paths"]))]["pipeline_ms"]
    lines += tables.markdown(
        ["path", "environment", "plain step ms", "GFLOP/s", "of SGEMM", "pipeline step ms", "GFLOP/s", "of SGEMM",
         "speedup (pipeline step)"],
        ([n, f"`{' '.join(f'{k}={v}' for k, v in r['env'].items()) or DEFAULT_ENV}`",
          f"{r['plain_ms']:.2f}", f"{r['plain_gflops']:.1f}", f"{r['plain_fraction']:.0%}", f"{r['pipeline_ms']:.2f}",
          f"{r['pipeline_gflops']:.1f}", f"{r['pipeline_fraction']:.0%}", f"{base / r['pipeline_ms']:.2f}x"]
         for n, r in res["paths"].items()))
    rows = []
    for lay in next(iter(res["paths"].values()))["layers"]:
        cells = [lay]
        for r in res["paths"].values():
            t = r["layers"][lay]
            for d in ("forward", "backward"):
                extra = f" ({t[d + '_gflops']:.0f}, {t[d + '_fraction']:.0%})" if f"{d}_gflops" in t else ""
                cells.append(f"{t[d + '_ms']:.2f}{extra}")
        rows.append(cells)
    lines += ["", "Per layer (ms, and GFLOP/s with the fraction of SGEMM for the learnable layers):", "",
              *tables.markdown(["layer", *(f"{n} {d}" for n in res["paths"] for d in ("fwd", "bwd"))], rows)]
    if "concurrent" in res:
        c = res["concurrent"]
        lines += ["", f"Two runs at once ({c['path']}, {c['steps']} plain steps each): one after the other "
                  f"{c['sequential_s']:.2f} s, together {c['together_s']:.2f} s "
                  f"(**{c['together_over_sequential']:.2f}x** the sequential time; at most 1.00x is the goal)."]
    if "pipeline" in res:
        lines += ["", f"Whole pipeline (`olmp prune --experiment {res['model']}` {' '.join(res['pipeline_sets'])}):",
                  "", *tables.markdown(["path", "wall s", "SGD s", "search s", "speedup", "ratio", "test accuracy"], (
                      [n, f"{r['wall_s']:.0f}", f"{r['sgd_s']:.0f}", f"{r['search_s']:.0f}", f"{r['speedup']:.2f}x",
                       f"{r['ratio']:.1f}x", f"{r['test_accuracy']:.4f}"] for n, r in res["pipeline"].items()))]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", choices=sorted(EXPERIMENTS), default="lenet5")
    ap.add_argument("--configs", nargs="+", default=list(CONFIGS), metavar="PATH",
                    help=f"code paths to time ({', '.join(CONFIGS)}, or gGtT: group G on T threads); "
                         "the first is the base of the speedups")
    report.timing_options(ap, "also the whole pipeline, first and last path")
    args = ap.parse_args(argv)
    if args.worker:
        return worker(args.model, args.worker)
    import numpy as np

    from olmp import caffe_bridge, provenance

    chunk, repeats = (3, 2) if args.quick else (30, 9)
    m = {"cpu": provenance.cpu_model(), "cores": os.cpu_count(), "usable_cores": caffe_bridge.usable_cores(),
         "load_average_start": os.getloadavg()[0], "pycaffe_build_key": provenance.pycaffe_build_key(),
         "numpy": np.__version__, "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
    res: dict[str, Any] = {"command": "python benchmarks/step_roofline.py " + " ".join(argv or sys.argv[1:]),
                           "model": args.model, "machine": m, "chunk": chunk, "repeats": repeats}
    print("[step_roofline] SGEMM at 1 and 2 threads", file=sys.stderr)
    res["sgemm_gflops"] = {str(t): sgemm_gflops(t) for t in (1, 2)}
    print(f"[step_roofline] {args.model}: steps and layers of {', '.join(args.configs)}", file=sys.stderr)
    res["paths"], flops = bench_paths(args.model, args.configs, chunk, repeats)
    res["flops"] = flops
    res["step_gflop"] = sum(sum(f.values()) for f in flops.values()) / 1e9
    res["batch"] = config_batch(args.model)
    summarize(res["paths"], flops, res["sgemm_gflops"])
    default = args.configs[-1]
    print(f"[step_roofline] two runs at once ({default})", file=sys.stderr)
    res["concurrent"] = bench_concurrent(args.model, default, 10 if args.quick else 200)
    if args.pipeline:
        res["pipeline"] = bench_pipeline(args.model, [args.configs[0], default], args.sets)
        res["pipeline_sets"] = [f"--set {s}" for s in args.sets]
    m["load_average_end"] = os.getloadavg()[0]
    report.write(args.out, f"step_roofline_{args.model}" + ("_quick" if args.quick else ""), res, markdown)
    return 0


def config_batch(model: str) -> int:
    from olmp import config, prototxt

    exp = config.load(REPO / EXPERIMENTS[model])
    pb_net = prototxt.read_solver(exp.solver).net_param
    data = next(lay for lay in pb_net.layer if lay.type == "Data" and not any(r.phase == 1 for r in lay.include))
    return int(data.data_param.batch_size)


if __name__ == "__main__":
    sys.exit(main())
