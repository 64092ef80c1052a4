"""What the pipeline adds to a plain SGD step, part by part, with the previous divergence check beside the current one.

    OPENBLAS_NUM_THREADS=1 python benchmarks/step_overhead.py [--models lenet300100 lenet5] [--quick] [--out DIR]

One pipeline per model (masks from the initial crates, as after the first mask update), timed in
alternating chunks so the machine's load falls on all alike (medians of the chunks):

- ``plain``: ``solver.step(1)`` on a second solver with the same net and weights, no callbacks;
- ``step``: ``Pipeline.sgd_step`` (mask callbacks around the solver step, the divergence check);
- ``iteration``: one adjusting iteration of ``Pipeline.run`` without its periodic work (records,
  tests, checkpoints): the selection draw, ``policy.prune`` on the selected layers at iterations
  spread over the adjusting phase (search iterations left out), the selection counts, ``sgd_step``;
- the parts alone: the mask callbacks (``_apply`` + ``_restore``), the divergence check, the mask
  updates of ``policy.prune``.

``step`` and ``iteration`` run twice, with ``train.divergence`` and with ``previous_divergence`` (the
max/min pass over every blob it replaced, kept here for the comparison); ``before_over_after`` is
their ratio in this run. Writes ``<out>/step_overhead.json`` and ``.md`` (``_quick`` with ``--quick``).
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))
import report  # noqa: E402

from olmp import tables  # noqa: E402

EXPERIMENTS = {"lenet5": "scripts/experiments/lenet5.toml", "lenet300100": "scripts/experiments/lenet300100.toml"}


def previous_divergence(net: Any, layers: Any = None) -> str | None:
    """The check before the one-pass sum of squares: max and min of every blob."""
    from olmp.train import WEIGHT_LIMIT

    loss = float(net.blobs["loss"].data)
    names = list(net.params) if layers is None else layers
    big = max(max(float(b.data.max()), -float(b.data.min())) for n in names for b in net.params[n])
    if math.isfinite(loss) and big < WEIGHT_LIMIT:
        return None
    return f"loss {loss}, max |w| {big:.3g}"


def measure(model: str, chunk: int, repeats: int) -> dict[str, Any]:
    from bench import plain_solver

    from olmp import config, train
    from olmp.pipeline import Pipeline

    exp = config.load(REPO / EXPERIMENTS[model])
    current = train.divergence
    with tempfile.TemporaryDirectory() as tmp:
        pipe = Pipeline(exp, Path(tmp), progress=False)
        pipe.sgd_step(-1)
        pipe.policy.update_masks(list(exp.layers))
        plain = plain_solver(pipe)
        every, stop = exp.search.every, exp.pipeline.prune_stop_iter
        itrs = [i for i in range(1, stop) if i % every][:: max(1, stop // 997)]
        counts = {n: 0 for n in exp.layers}
        at = [0]

        def selection() -> tuple[int, list[str]]:
            itr = itrs[at[0] % len(itrs)]
            at[0] += 1
            u = pipe.draws.selection(len(exp.layers))
            return itr, [n for n, d in zip(exp.layers, u) if d < pipe.policy.selection_probability(n, itr)]

        def iteration() -> None:  # Pipeline.run's loop body in the adjusting phase, less its periodic work
            itr, selected = selection()
            for n in selected:
                counts[n] += 1
            pipe.policy.prune(itr, selected)
            pipe.sgd_step(itr)

        def with_check(check: Callable[..., str | None], f: Callable[[], None]) -> Callable[[], None]:
            def run() -> None:
                train.divergence = check  # sgd_step looks it up at each call
                try:
                    f()
                finally:
                    train.divergence = current
            return run

        def mask_updates() -> None:
            itr, selected = selection()
            pipe.policy.prune(itr, selected)

        def callbacks() -> None:
            pipe.layers._apply()
            pipe.layers._restore()

        parts: dict[str, Callable[[], None]] = {
            "plain": lambda: plain.step(1),
            "step": lambda: pipe.sgd_step(0),
            "step_previous": lambda: pipe.sgd_step(0),
            "iteration": iteration,
            "iteration_previous": iteration,
            "callbacks": callbacks,
            "divergence": lambda: current(pipe.net, exp.layers),
            "divergence_previous": lambda: previous_divergence(pipe.net, exp.layers),
            "mask_updates": mask_updates,
        }
        for key in ("step_previous", "iteration_previous"):
            parts[key] = with_check(previous_divergence, parts[key])
        for f in parts.values():  # warm up
            f()
        times: dict[str, list[float]] = {k: [] for k in parts}
        keys = list(parts)
        for r in range(repeats):
            for k in keys if r % 2 == 0 else keys[::-1]:
                f = parts[k]
                t0 = time.perf_counter()
                for _ in range(chunk):
                    f()
                times[k].append((time.perf_counter() - t0) / chunk)
        ms = {k: 1e3 * statistics.median(v) for k, v in times.items()}
    res: dict[str, Any] = {f"{k}_ms": v for k, v in ms.items()}
    res.update({
        "iterations_timed": len(itrs),
        "overhead_ms": ms["step"] - ms["plain"],
        "overhead_previous_ms": ms["step_previous"] - ms["plain"],
        "step_over_plain": ms["step"] / ms["plain"],
        "step_previous_over_plain": ms["step_previous"] / ms["plain"],
        "step_before_over_after": ms["step_previous"] / ms["step"],
        "iteration_before_over_after": ms["iteration_previous"] / ms["iteration"],
        "divergence_before_over_after": ms["divergence_previous"] / ms["divergence"],
    })
    return res


def markdown(res: dict[str, Any]) -> str:
    m = res["machine"]
    lines = ["# What the pipeline adds to a plain SGD step", "",
             f"Made by `{res['command']}` on {m['cpu']} ({m['cores']} cores), {m['date']}; load average "
             f"{m['load_average_start']:.2f} at the start, {m['load_average_end']:.2f} at the end; "
             f"{res['chunk']} calls x {res['repeats']} alternating chunks, medians, ms per call. "
             "Every number comes from this one run.", "",
             *tables.markdown(
                 ["model", "plain step", "pipeline step (before)", "pipeline step", "step / plain (before)",
                  "step / plain", "step before/after", "adjusting iteration (before)", "adjusting iteration",
                  "iteration before/after"],
                 ([model, f"{r['plain_ms']:.3f}", f"{r['step_previous_ms']:.3f}", f"{r['step_ms']:.3f}",
                   f"{r['step_previous_over_plain']:.3f}", f"{r['step_over_plain']:.3f}",
                   f"{r['step_before_over_after']:.3f}x", f"{r['iteration_previous_ms']:.3f}",
                   f"{r['iteration_ms']:.3f}", f"{r['iteration_before_over_after']:.3f}x"]
                  for model, r in res["models"].items()))]
    lines += ["", "The parts alone (ms per call):", "",
              *tables.markdown(
                  ["model", "mask callbacks (apply + restore)", "divergence check (before)", "divergence check",
                   "check before/after", "mask updates of the selected layers"],
                  ([model, f"{r['callbacks_ms']:.3f}", f"{r['divergence_previous_ms']:.3f}", f"{r['divergence_ms']:.3f}",
                    f"{r['divergence_before_over_after']:.2f}x", f"{r['mask_updates_ms']:.3f}"]
                   for model, r in res["models"].items()))]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=list(EXPERIMENTS), choices=list(EXPERIMENTS))
    ap.add_argument("--quick", action="store_true", help="few short chunks (a smoke test; rough figures)")
    ap.add_argument("--out", default=str(REPO / "results" / "benchmarks"))
    args = ap.parse_args(argv)
    from olmp import provenance

    chunk, repeats = (3, 4) if args.quick else (20, 41)
    res: dict[str, Any] = {
        "command": "python benchmarks/step_overhead.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "machine": {"cpu": provenance.cpu_model(), "cores": os.cpu_count(), "load_average_start": os.getloadavg()[0],
                    "openblas_threads": os.environ.get("OPENBLAS_NUM_THREADS", "unset"),
                    "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())},
        "chunk": chunk, "repeats": repeats, "models": {}}
    for model in args.models:
        print(f"[step_overhead] {model}", file=sys.stderr)
        res["models"][model] = measure(model, chunk, repeats)
    res["machine"]["load_average_end"] = os.getloadavg()[0]
    report.write(args.out, "step_overhead" + ("_quick" if args.quick else ""), res, markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())
