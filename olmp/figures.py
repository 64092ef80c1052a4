"""Figures regenerated from run records alone (record.json), never from a rerun.

Five figures per model folder, each as PNG and SVG, written atomically:

- ``progress``: compression ratio and test accuracy against iteration, one line per run;
- ``convergence``: best feasible size against evaluations in each run's first search,
  coloured by optimizer (ncs, cmaes, sampling), so optimizers compare on one budget;
- ``layers``: remaining % per layer, one bar per run, grouped by layer;
- ``methods``: remaining % per layer of each method's median-ratio run, grouped by layer;
- ``tradeoff``: test accuracy against compression ratio, every run of every method, with the
  sweeps under ``<model>/tradeoff/`` (delta for OLMP, scales for the baselines) joined by lines.

matplotlib is driven through its object API on the Agg canvas: no pyplot state, no
display needed, and the SVG hash salt and dates are fixed so that regenerating from
the same records gives the same files. SVG text is kept as text (searchable, editable).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np
from matplotlib import ticker
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from olmp import atomic
from olmp.record import RunRecord

FORMATS = ("png", "svg")
COLLAPSED = 0.5  # test accuracy under which a run is named on the trade-off figure, not drawn
_RC = {"svg.hashsalt": "olmp", "svg.fonttype": "none", "font.size": 9}  # SVG text stays text
_METADATA = {"png": {"Software": None}, "svg": {"Date": None, "Creator": None}}


def _color(rec: RunRecord, i: int) -> str:
    from olmp.search import OPTIMIZERS  # noqa: PLC0415  (pycma: only when a figure is drawn)

    optimizer = OPTIMIZERS.get(rec.optimizer)
    return optimizer.color if optimizer is not None and optimizer.color else f"C{i % 10}"


def _log_y(ax: Any) -> None:
    """Log y axis with plain tick labels (40, not 4x10^1)."""
    ax.set_yscale("log")
    ax.yaxis.set_major_formatter(ticker.LogFormatter(labelOnlyBase=False))
    ax.yaxis.set_minor_formatter(ticker.LogFormatter(labelOnlyBase=False))


def save(fig: Figure, base: Path) -> list[Path]:
    """``base``.png and ``base``.svg, each through a temporary file and a rename."""
    FigureCanvasAgg(fig)
    written = []
    for fmt in FORMATS:
        target = base.with_suffix(f".{fmt}")
        with atomic.atomic_path(target) as tmp:
            fig.savefig(tmp, format=fmt, dpi=150, metadata=_METADATA[fmt])
        written.append(target)
    return written


def progress_figure(runs: list[RunRecord]) -> Figure:
    """Ratio (log scale) above test accuracy, against pipeline iteration."""
    fig = Figure(figsize=(7.0, 5.5), layout="constrained")
    ax_ratio, ax_acc = fig.subplots(2, 1, sharex=True)
    for i, rec in enumerate(runs):
        prog = rec.progress
        if not prog:
            continue
        it = [p["iteration"] for p in prog]
        style = {"color": f"C{i % 10}", "label": rec.name, "linewidth": 1.2}
        ax_ratio.plot(it, [p["ratio"] for p in prog], **style)
        ax_acc.plot(it, [p["test_accuracy"] for p in prog], **style)
    for acc in sorted({r.reference["test"]["accuracy"] for r in runs if r.reference}):
        ax_acc.axhline(acc, color="grey", linestyle="--", linewidth=0.8)
        ax_acc.annotate(f"reference {acc:.4f}", (0.01, acc), xycoords=("axes fraction", "data"),
                        textcoords="offset points", xytext=(0, 3), color="grey", fontsize=7)
    prune_stop = {r.experiment["pipeline"]["prune_stop_iter"] for r in runs
                  if "prune_stop_iter" in r.experiment.get("pipeline", {})}
    for x in prune_stop:
        for ax in (ax_ratio, ax_acc):
            ax.axvline(x, color="black", linestyle=":", linewidth=0.8)
    _log_y(ax_ratio)
    ax_ratio.set_ylabel("compression ratio (all / remaining)")
    ax_acc.set_ylabel("test accuracy")
    ax_acc.set_xlabel("iteration (dotted: pruning stops, retraining only)")
    ax_ratio.set_title("Pipeline progress")
    for ax in (ax_ratio, ax_acc):
        ax.grid(True, alpha=0.3)
    if runs:
        ax_ratio.legend(fontsize=7, loc="best")
    return fig


def _feasible_trace(rec: RunRecord) -> tuple[list[int], list[float]] | None:
    """The first search's (evaluations, best feasible size so far); sizes > 1 are the infeasible penalty."""
    searches = rec.searches
    if not searches or not searches[0].get("trace"):
        return None
    pts = [(int(e), float(f)) for e, f in searches[0]["trace"] if f is not None and f <= 1.0]
    if not pts:
        return None
    return [e for e, _ in pts], np.minimum.accumulate([f for _, f in pts]).tolist()


def convergence_figure(runs: list[RunRecord]) -> Figure:
    """Best feasible size against evaluations in the first search of each run, by optimizer."""
    fig = Figure(figsize=(7.0, 4.2), layout="constrained")
    ax = fig.subplots()
    labelled: set[str] = set()
    none_feasible = []
    runs = [r for r in runs if r.searched]  # baselines run no search
    for i, rec in enumerate(runs):
        trace = _feasible_trace(rec)
        opt = rec.optimizer
        if trace is None:
            none_feasible.append((rec, i))
            continue
        ax.step(*trace, where="post", color=_color(rec, i), linewidth=1.2, alpha=0.8,
                label=None if opt in labelled else opt)
        labelled.add(opt)
    for rec, i in none_feasible:  # say so in the legend rather than drop the run silently
        ax.plot([], [], color=_color(rec, i), marker="x", linestyle="none",
                label=f"{rec.optimizer}: {rec.name} found no feasible point")
    ax.set_xlabel("evaluations")
    ax.set_ylabel("best feasible size (remaining / all)")
    ax.set_title("Search convergence: first search of each run")
    ax.grid(True, alpha=0.3)
    if not labelled:
        ax.text(0.5, 0.5, "no feasible search trace in these records", ha="center", transform=ax.transAxes)
    if runs:
        ax.legend(title="optimizer", fontsize=7)
    return fig


def layers_figure(runs: list[RunRecord], names: list[str] | None = None) -> Figure:
    """Grouped bars: remaining % of each layer (log scale), one bar per run, named by ``names`` or its folder."""
    names = names or [r.name for r in runs]
    layer_names = list(dict.fromkeys(n for r in runs for n in r.final["layers"]))
    fig = Figure(figsize=(max(5.0, 1.2 + 0.35 * len(runs) * len(layer_names)), 4.2), layout="constrained")
    ax = fig.subplots()
    width = 0.8 / max(len(runs), 1)
    x = np.arange(len(layer_names))
    for i, (rec, name) in enumerate(zip(runs, names)):
        layers = rec.final["layers"]
        pct = [100.0 * layers[n]["remaining"] / layers[n]["total"] if n in layers else np.nan for n in layer_names]
        bars = ax.bar(x - 0.4 + width * (i + 0.5), pct, width, label=f"{name} ({rec.final['ratio']:.1f}x)",
                      color=f"C{i % 10}")
        if len(runs) <= 6:
            ax.bar_label(bars, fmt="%.2f", fontsize=6, padding=1)
    ax.set_xticks(x, layer_names)
    _log_y(ax)
    ax.set_ylabel("remaining parameters (%)")
    ax.set_title("Remaining parameters per layer")
    ax.grid(True, axis="y", alpha=0.3)
    if runs:
        ax.legend(fontsize=7)
    return fig


def median_runs(runs: list[RunRecord]) -> list[RunRecord]:
    """Each method's median-ratio run from the project's own references (the lower one of an even count)."""
    by_method: dict[str, list[RunRecord]] = {}
    for rec in runs:
        if rec.paper_setting:
            by_method.setdefault(rec.label, []).append(rec)
    out = []
    for method in sorted(by_method):
        ranked = sorted(by_method[method], key=lambda r: r.final["ratio"])
        out.append(ranked[(len(ranked) - 1) // 2])
    return out


def methods_figure(runs: list[RunRecord]) -> Figure:
    """Grouped bars: remaining % per layer of each method's median run (paper settings, own reference)."""
    picked = median_runs(runs)
    fig = layers_figure(picked, [r.label for r in picked])
    fig.axes[0].set_title("Median-ratio run of each method")
    return fig


def tradeoff_figure(runs: list[RunRecord]) -> Figure:
    """Test accuracy against ratio: every run a point, the runs of one method joined in ratio order."""
    fig = Figure(figsize=(7.0, 4.5), layout="constrained")
    ax = fig.subplots()
    collapsed = [r for r in runs if r.final["test"]["accuracy"] < COLLAPSED]
    runs = [r for r in runs if r.final["test"]["accuracy"] >= COLLAPSED]
    if collapsed:  # a net that lost everything would stretch the ratio axis a hundredfold: named instead
        ax.text(0.99, 0.01, "not drawn (collapsed): " + ", ".join(
            f"{r.series} {r.final['ratio']:.0f}x at {r.final['test']['accuracy']:.4f}" for r in collapsed),
            transform=ax.transAxes, ha="right", va="bottom", fontsize=6, color="grey")
    if not runs:
        return fig
    methods = sorted({r.series for r in runs})
    # runs far below the reference would squash the interesting band: drawn on the floor, value written
    floor = min(r.reference["test"]["accuracy"] for r in runs) - 0.03
    for i, method in enumerate(methods):
        mine = sorted((r for r in runs if r.series == method), key=lambda r: r.final["ratio"])
        xs = [r.final["ratio"] for r in mine]
        ys = [r.final["test"]["accuracy"] for r in mine]
        shown = [max(y, floor) for y in ys]
        marker = "os^D"[i // 10 % 4]  # ten colours, then the next marker: no two series look alike
        ax.scatter(xs, shown, s=18, color=f"C{i % 10}", marker=marker, label=method, zorder=3)
        for x, y in zip(xs, ys):
            if y < floor:
                ax.annotate(f"{y:.4f}", (x, floor), textcoords="offset points", xytext=(3, 3), fontsize=6,
                            color=f"C{i % 10}")
        sweep = [(x, y) for r, x, y in zip(mine, xs, shown) if r.seed == 1]  # the settings sweep
        if len(sweep) > 1:
            ax.plot(*zip(*sweep), linewidth=0.9, color=f"C{i % 10}")
    for acc in sorted({r.reference["test"]["accuracy"] for r in runs}):
        ax.axhline(acc, color="grey", linestyle="--", linewidth=0.8)
        ax.annotate(f"reference {acc:.4f}", (0.01, acc), xycoords=("axes fraction", "data"),
                    textcoords="offset points", xytext=(0, 3), color="grey", fontsize=7)
    ax.set_xscale("log")
    ax.xaxis.set_major_formatter(ticker.FuncFormatter(lambda v, _: f"{v:g}"))
    ax.xaxis.set_minor_formatter(ticker.FuncFormatter(lambda v, _: f"{v:g}"))
    ax.set_xlabel("compression ratio (all / remaining)")
    ax.set_ylabel("test accuracy")
    ax.set_ylim(bottom=floor - 0.001)
    ax.set_title("Accuracy against compression (points: runs; lines: seed-1 settings sweeps)", fontsize=9)
    ax.grid(True, alpha=0.3)
    if runs:
        ax.legend(fontsize=7)
    return fig


FIGURES: dict[str, Callable[[list[RunRecord]], Figure]] = {
    "progress": progress_figure,
    "convergence": convergence_figure,
    "layers": layers_figure,
    "methods": methods_figure,
}


def write_figures(model_dir: str | Path, runs: list[RunRecord],
                  sweeps: list[RunRecord] | None = None) -> list[Path]:
    """Every figure for ``runs`` (and the trade-off of runs + ``sweeps``) into ``model_dir``, PNG and SVG."""
    model_dir = Path(model_dir)
    written: list[Path] = []
    with matplotlib.rc_context(_RC):
        for name, make in FIGURES.items():
            written += save(make(runs), model_dir / name)
        own = [r for r in runs + (sweeps or []) if r.own_reference]
        if own:
            written += save(tradeoff_figure(own), model_dir / "tradeoff")
    return written


def write_report_figures(model_dir: str | Path) -> list[Path]:
    """``olmp report``'s figures: the finished runs under ``model_dir`` and its tradeoff/ sweeps."""
    from olmp import reports  # noqa: PLC0415

    runs = reports.load_runs(model_dir)
    sweeps = reports.load_runs(Path(model_dir) / "tradeoff")
    return write_figures(model_dir, runs, sweeps) if runs else []
