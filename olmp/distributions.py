"""Seed distributions and the size/accuracy frontier, from run records alone (record.json).

One seed decides much of a run's ratio, so a single run says little; ``seeds.md`` summarises each
configuration run at many seeds (median, quartiles, range, how often the paper's ratio is reached)
and ``frontier.png`` places every committed run against the published numbers.

A run belongs to a distribution by its record, not its folder name: OLMP, the distribution's
optimizer and reference (ours or the authors'), and every setting a result depends on equal to the
experiment file's, the seed and the experiment's name aside (and, on the authors' seeds, the delta the
authors noted for that seed). Each seed counts once. A record without provenance was made by earlier
code; where a rerun of the same settings and seed by code that records its provenance gave another
result, that code changed the results, and no record without provenance counts in the distribution.
Nothing is chosen on the test set: test accuracy is only reported.
"""

from __future__ import annotations

import functools
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np
from matplotlib import ticker
from matplotlib.figure import Figure
from matplotlib.transforms import blended_transform_factory

from olmp import atomic, checkpoint, config, figures, paths, reports, tables
from olmp.modes import reenacts_scripts
from olmp.published import AUTHORS_SEEDS, NAMES, OLMP, OTHERS
from olmp.record import RunRecord


@dataclass(frozen=True)
class Distribution:
    """One configuration run at many seeds."""

    key: str
    title: str
    experiment: str  # a file in scripts/experiments/, without .toml
    optimizer: str
    own_reference: bool  # our reference model, or one of the authors'


DISTRIBUTIONS: dict[str, tuple[Distribution, ...]] = {
    m: (Distribution("released-authors", "released mode, authors' reference", f"{m}_released", "sampling", False),
        Distribution("ncs", "paper's rule (NCS), our reference", m, "ncs", True),
        Distribution("lossless", f"lossless configuration (held-out split, averaging, guarantee{by})", lossless,
                     "ncs", True))
    for m, lossless, by in (("lenet300100", "lenet300100_lossless", ""),
                            ("lenet5", "lenet5_lossless_regrow", " by regrowth"))
}  # LeNet-5's lossless configuration regrows: restoring reached on no LeNet-5 run (results/lenet5/lossless.md)

# Frontier categories, in legend order, with their colours
CATEGORIES = {
    "released mode": "tab:purple", "paper's rule": "tab:blue", "best configuration": "tab:green",
    "lossless": "tab:olive", "OLMP, other settings": "silver", "DC": "tab:orange", "DNS": "tab:red",
    "global": "tab:brown", "uniform": "tab:pink",
}
PAPER_RULE_VARIANTS = ("", "rerun")  # "rerun": the paper's settings rerun beside earlier records


# ---- who belongs ---------------------------------------------------------------------------------

@functools.cache
def _file_settings(experiment: str) -> config.Experiment:
    return config.settings(paths.EXPERIMENTS_DIR / f"{experiment}.toml")


def settings_differ(dist: Distribution, rec: RunRecord, model: str, free: Sequence[str] = ()) -> list[str]:
    """The settings (``section.key``) in which ``rec`` departs from ``dist``'s, beyond seed, name and ``free``."""
    exp = rec.experiment
    want = _file_settings(dist.experiment).replace(seed=rec.seed, optimizer=dist.optimizer, weights=exp["weights"])
    changed = [k for k in checkpoint.changed_settings(want.to_dict(), exp) if k not in ("name", *free)]
    noted = AUTHORS_SEEDS.get(model, {}).get(rec.seed)
    if not dist.own_reference and noted and noted[0] is not None and exp.get("search", {}).get("delta") == noted[0]:
        changed = [k for k in changed if k != "search.delta"]
    return changed


def _result(rec: RunRecord) -> tuple[float, float]:
    return rec.final["ratio"], rec.final["test"]["accuracy"]


def members(dist: Distribution, runs: Sequence[RunRecord], model: str, free: Sequence[str] = (),
            once: Callable[[RunRecord], Any] = lambda r: r.seed,
            ) -> tuple[list[RunRecord], list[tuple[RunRecord, str]]]:
    """(the runs that count, one per ``once`` key in key order; the same configuration's runs left out, with why).

    ``free``: settings that may differ too (``search.delta`` for the frontier's line, counted once per
    delta and seed).
    """
    mine = [r for r in runs if r.method_searches and r.optimizer == dist.optimizer
            and r.own_reference == dist.own_reference and not settings_differ(dist, r, model, free)]
    by_key: dict[Any, list[RunRecord]] = {}
    for r in mine:
        by_key.setdefault(once(r), []).append(r)
    changed = [(old, new) for recs in by_key.values() for old in recs if old.provenance is None
               for new in recs if new.provenance is not None and _result(new) != _result(old)]
    counted, left = [], []
    for key in sorted(by_key):  # seeds, or (delta, seed)
        first = None
        for r in sorted(by_key[key], key=lambda r: (r.provenance is None, r.name)):
            if changed and r.provenance is None:
                old, new = changed[0]
                left.append((r, "made by earlier code (no provenance), whose results differ where rerun: seed "
                                f"{old.seed} {old.final['ratio']:.1f}x in {old.name}, {new.final['ratio']:.1f}x in "
                                f"{new.name}"))
            elif first is not None:
                left.append((r, f"seed {r.seed} counts once, from {first.name}"))
            else:
                first = r
                counted.append(r)
    return counted, left


# ---- the summary ---------------------------------------------------------------------------------

def _quartiles(xs: Sequence[float]) -> tuple[float, float, float]:
    """(Q1, median, Q3), linear between order statistics (numpy's default); one value is all three."""
    if len(xs) == 1:
        return xs[0], xs[0], xs[0]
    q1, q2, q3 = statistics.quantiles(xs, n=4, method="inclusive")
    return q1, q2, q3


def percentile_of(value: float, xs: Sequence[float]) -> float:
    """The percent of ``xs`` below ``value``, ties counting half."""
    below = sum(x < value for x in xs)
    equal = sum(x == value for x in xs)
    return 100.0 * (below + 0.5 * equal) / len(xs)


def summary(runs: Sequence[RunRecord], paper_ratio: float) -> dict[str, Any]:
    """Median, quartiles and range of ratio and final test accuracy; how often the paper's ratio is reached."""
    ratios = [r.final["ratio"] for r in runs]
    accs = [r.final["test"]["accuracy"] for r in runs]
    lossless = [r.final["test"]["accuracy"] >= r.reference["test"]["accuracy"] for r in runs]
    rq, aq = _quartiles(ratios), _quartiles(accs)
    reach = [x >= paper_ratio for x in ratios]
    return {
        "seeds": len(runs),
        "ratio_median": rq[1], "ratio_q1": rq[0], "ratio_q3": rq[2], "ratio_min": min(ratios), "ratio_max": max(ratios),
        "accuracy_median": aq[1], "accuracy_q1": aq[0], "accuracy_q3": aq[2],
        "accuracy_min": min(accs), "accuracy_max": max(accs),
        "reach": sum(reach), "reach_no_loss": sum(a and b for a, b in zip(reach, lossless)),
        "paper_percentile": percentile_of(paper_ratio, ratios),
    }


def _x(v: float) -> str:
    return f"{v:.1f}x"


def _pct(v: float) -> str:
    return f"{100 * v:.2f}%"


def seeds_table(model: str, runs: Sequence[RunRecord]) -> tuple[str, list[tuple[Distribution, list[RunRecord]]]]:
    """The text of seeds.md, and each distribution's counted runs."""
    paper = OLMP[model]
    p = paper.ratio
    dists, sections = [], []
    head = ["distribution", "seeds", "ratio median", "ratio IQR", "ratio min-max", "test accuracy median",
            "test accuracy IQR", "test accuracy min-max", f"reach {_x(p)}", f"reach {_x(p)} at no loss",
            f"{_x(p)} as a percentile"]
    cells: list[list[str]] = []
    for dist in DISTRIBUTIONS[model]:
        counted, left = members(dist, runs, model)
        dists.append((dist, counted))
        lines = [f"## {dist.title}", "",
                 f"`{dist.experiment}` with optimizer {dist.optimizer}, from "
                 + ("our reference model" if dist.own_reference else "the authors' reference model") + "."]
        if not counted:
            cells.append([dist.title, "0"] + [""] * (len(head) - 2))
            sections += lines + ["", "No run yet.", ""]
            continue
        s = summary(counted, p)
        cells.append([
            dist.title, str(s["seeds"]), _x(s["ratio_median"]), f"{_x(s['ratio_q1'])}-{_x(s['ratio_q3'])}",
            f"{_x(s['ratio_min'])}-{_x(s['ratio_max'])}", _pct(s["accuracy_median"]),
            f"{_pct(s['accuracy_q1'])}-{_pct(s['accuracy_q3'])}",
            f"{_pct(s['accuracy_min'])}-{_pct(s['accuracy_max'])}",
            f"{s['reach']}/{s['seeds']}", f"{s['reach_no_loss']}/{s['seeds']}", f"{s['paper_percentile']:.1f}",
        ])
        noted = AUTHORS_SEEDS[model] if not dist.own_reference else {}
        runs_head = ["run", "seed", "delta", "ratio", "test accuracy", "reference accuracy", "change (points)"]
        runs_rows = []
        for r in sorted(counted, key=lambda r: r.final["ratio"]):
            acc, ref = r.final["test"]["accuracy"], r.reference["test"]["accuracy"]
            row = [r.name, str(r.seed), f"{r.experiment['search']['delta']:g}", _x(r.final["ratio"]), _pct(acc),
                   _pct(ref), f"{100 * (acc - ref):+.2f}"]
            if noted:
                row.append(f"{noted[r.seed][1]:g}x" if r.seed in noted else "")
            runs_rows.append(row)
        lines += ["", *tables.markdown(runs_head + (["authors' noted ratio"] if noted else []), runs_rows)]
        if left:
            lines += ["", "Left out:"] + [f"- `{r.name}`: {why}" for r, why in left]
        sections += lines + [""]
    text = "\n".join([
        f"# Seed distributions: {NAMES[model]}", "",
        f"Regenerated by `olmp report results/{model}` from the run records. The paper's {NAMES[model]} "
        f"model: {_x(p)} at {_pct(paper.test_accuracy)} (reference {_pct(paper.reference_accuracy)}).",
        "A run counts in a distribution by its record: OLMP with the distribution's optimizer and reference "
        "model, every setting a result depends on as in the experiment file except the seed (and, on the "
        "authors' seeds, the delta they noted for it); each seed once. Records without provenance were made "
        "by earlier code and do not count where a rerun by later code gave other results.",
        "Ratio = all parameters / remaining; test accuracy at the final iteration on the 10,000 MNIST test "
        "images, only reported (nothing is chosen on it). IQR: first to third quartile. "
        f"Reach {_x(p)} at no loss: the ratio reached and the final test accuracy at least the run's own "
        f"reference accuracy. Percentile: the percent of seeds whose ratio is below {_x(p)} (ties count half).",
        "", *tables.markdown(head, cells), "", *sections]).rstrip() + "\n"
    return text, dists


def seeds_figure(model: str, dists: Sequence[tuple[Distribution, list[RunRecord]]]) -> Figure:
    """Ratio and final test accuracy of every counted seed, a box and a strip per distribution."""
    fig = Figure(figsize=(8.0, 1.2 + 1.1 * max(len(dists), 1)), layout="constrained")
    ax_r, ax_a = fig.subplots(1, 2, sharey=True)
    paper = OLMP[model]
    for i, (dist, runs) in enumerate(dists):
        if not runs:
            continue
        color = CATEGORIES["paper's rule" if dist.own_reference else "released mode"]
        ratios = [r.final["ratio"] for r in runs]
        accs = [r.final["test"]["accuracy"] for r in runs]
        offsets = np.linspace(-0.25, 0.25, len(runs)) if len(runs) > 1 else np.zeros(1)  # spread, not random
        for ax, xs in ((ax_r, ratios), (ax_a, accs)):
            ax.boxplot([xs], positions=[i], vert=False, widths=0.6, showfliers=False,
                       medianprops={"color": "black"}, boxprops={"color": "grey"}, whiskerprops={"color": "grey"},
                       capprops={"color": "grey"})
            ax.scatter(xs, i + offsets, s=16, color=color, zorder=3)
        noted = [v[1] for s, v in AUTHORS_SEEDS[model].items()] if not dist.own_reference else []
        if noted:
            ax_r.scatter(noted, [i + 0.38] * len(noted), s=22, facecolors="none", edgecolors="black", zorder=3,
                         label="authors' noted ratio per seed (§9)")
        for ref in sorted({r.reference["test"]["accuracy"] for r in runs}):
            ax_a.plot([ref, ref], [i - 0.4, i + 0.4], color="grey", linestyle="--", linewidth=0.8)
    ax_r.axvline(paper.ratio, color="black", linestyle=":", linewidth=1.0)
    ax_r.annotate(f"paper {paper.ratio:g}x", (paper.ratio, 1.0), xycoords=("data", "axes fraction"),
                  textcoords="offset points", xytext=(2, -10), fontsize=7)
    ax_a.axvline(paper.test_accuracy, color="black", linestyle=":", linewidth=1.0)
    ax_r.set_xscale("log")
    ax_r.xaxis.set_major_formatter(ticker.FuncFormatter(lambda v, _: f"{v:g}"))
    ax_r.xaxis.set_minor_formatter(ticker.FuncFormatter(lambda v, _: f"{v:g}"))
    ax_r.tick_params(axis="x", which="minor", labelsize=6)
    ax_r.set_yticks(range(len(dists)), [f"{d.title}\n({len(r)} seeds)" for d, r in dists])
    ax_r.set_ylim(-0.7, len(dists) - 0.3)
    ax_r.set_xlabel("compression ratio (all / remaining)")
    ax_a.set_xlabel("final test accuracy")
    for ax in (ax_r, ax_a):
        ax.grid(True, axis="x", alpha=0.3)
    if ax_r.get_legend_handles_labels()[0]:
        ax_r.legend(fontsize=7, loc="lower left")
    fig.suptitle(f"{NAMES[model]}: one point per seed (dotted: the paper's released model; dashed: reference)",
                 fontsize=9)
    return fig


# ---- the frontier --------------------------------------------------------------------------------

def best_configuration(runs: Sequence[RunRecord]) -> str | None:
    """The runs.md group of OLMP runs from our reference with the highest median ratio over >= 3 seeds.

    The rule reads no test accuracy (each run met its accuracy constraint on training images).
    """
    groups: dict[str, list[float]] = {}
    for r in runs:
        if r.method_searches and r.own_reference and not reenacts_scripts(r.experiment.get("mode", "")):
            groups.setdefault(r.group, []).append(r.final["ratio"])
    ranked = [(statistics.median(v), g) for g, v in groups.items() if len(v) >= 3]
    return max(ranked)[1] if ranked else None


def category(rec: RunRecord, best: str | None) -> str:
    """The method a run is coloured by on the frontier."""
    if not rec.method_searches:
        return rec.policy_label
    if reenacts_scripts(rec.experiment.get("mode", "")):
        return "released mode"
    if rec.variant.startswith("lossless"):
        return "lossless"
    if best is not None and rec.group == best:
        return "best configuration"
    if rec.variant in PAPER_RULE_VARIANTS and rec.own_reference:
        return "paper's rule"
    return "OLMP, other settings"


def delta_line(model: str, runs: Sequence[RunRecord]) -> list[tuple[float, float, float, int]]:
    """The paper's rule (NCS, our reference) at each delta: (delta, median ratio, median accuracy, seeds)."""
    dist = next(d for d in DISTRIBUTIONS[model] if d.own_reference)
    counted, _ = members(dist, runs, model, free=("search.delta",),
                         once=lambda r: (r.experiment["search"]["delta"], r.seed))
    by_delta: dict[float, list[RunRecord]] = {}
    for r in counted:
        by_delta.setdefault(r.experiment["search"]["delta"], []).append(r)
    return [(d, statistics.median(r.final["ratio"] for r in v),
             statistics.median(r.final["test"]["accuracy"] for r in v), len(v)) for d, v in sorted(by_delta.items())]


def frontier_figure(model: str, runs: Sequence[RunRecord], best: str | None) -> Figure:
    """Final test accuracy against ratio (log): every run by method, the delta line, the paper, the anchors."""
    fig = Figure(figsize=(8.0, 5.2), layout="constrained")
    ax = fig.subplots()
    paper = OLMP[model]
    collapsed = [r for r in runs if r.final["test"]["accuracy"] < figures.COLLAPSED]
    shown = [r for r in runs if r.final["test"]["accuracy"] >= figures.COLLAPSED]
    refs = sorted({r.reference["test"]["accuracy"] for r in shown}) or [paper.reference_accuracy]
    floor = min(refs) - 0.02  # far-off runs are drawn on the floor with their value written
    for cat, color in CATEGORIES.items():
        mine = [r for r in shown if category(r, best) == cat]
        if not mine:
            continue
        xs = [r.final["ratio"] for r in mine]
        ys = [r.final["test"]["accuracy"] for r in mine]
        ax.scatter(xs, [max(y, floor) for y in ys], s=18, color=color, label=f"{cat} ({len(mine)})", zorder=3,
                   edgecolors="none")
        for x, y in zip(xs, ys):
            if y < floor:
                ax.annotate(f"{y:.4f}", (x, floor), textcoords="offset points", xytext=(3, 3), fontsize=6, color=color)
    line = delta_line(model, shown)
    if len(line) > 1:
        ax.plot([p[1] for p in line], [p[2] for p in line], color=CATEGORIES["paper's rule"], linewidth=1.0, zorder=2,
                label="paper's rule, median per delta")
        for d, x, y, n in line:
            ax.annotate(f"δ={d:g} ({n})", (x, y), textcoords="offset points", xytext=(3, -9), fontsize=6,
                        color=CATEGORIES["paper's rule"])
    labels: list[list[float]] = []  # references within 0.2 points share one label: two would overlap
    for ref in refs:
        ax.axhline(ref, color="grey", linestyle="--", linewidth=0.8)
        if labels and ref - labels[-1][0] < 0.002:
            labels[-1].append(ref)
        else:
            labels.append([ref])
    for group in labels:
        ax.annotate("reference " + " / ".join(f"{100 * r:.2f}%" for r in group), (0.01, group[-1]),
                    xycoords=("axes fraction", "data"), textcoords="offset points", xytext=(0, 3), color="grey",
                    fontsize=7)
    ax.scatter([paper.ratio], [paper.test_accuracy], marker="*", s=120, color="black", zorder=4,
               label=f"paper (released model) {paper.ratio:g}x")
    top = blended_transform_factory(ax.transData, ax.transAxes)
    first = True
    for a in OTHERS[model]:
        style: dict[str, Any] = {"facecolors": "none", "edgecolors": "black", "marker": "D", "s": 26, "zorder": 4,
                 "label": "reported (frontier.md cites each)" if first else None}
        first = False
        if a.test_accuracy is None:  # no accuracy published: on the top edge, not at a made-up height
            ax.scatter([a.ratio], [0.97], transform=top, clip_on=False, **style)
            ax.annotate(f"{a.label} {a.ratio:g}x", (a.ratio, 0.97), xycoords=top, textcoords="offset points",
                        xytext=(0, -6), fontsize=6, ha="center", va="top", rotation=90)
        else:
            ax.scatter([a.ratio], [max(a.test_accuracy, floor)], **style)
            ax.annotate(a.label, (a.ratio, max(a.test_accuracy, floor)), textcoords="offset points", xytext=(4, 2),
                        fontsize=6)
    if collapsed:
        ax.text(0.99, 0.01, "not drawn (collapsed): " + ", ".join(
            f"{r.name} {r.final['ratio']:.0f}x at {r.final['test']['accuracy']:.4f}" for r in collapsed),
            transform=ax.transAxes, ha="right", va="bottom", fontsize=6, color="grey")
    ax.set_xscale("log")
    ax.xaxis.set_major_formatter(ticker.FuncFormatter(lambda v, _: f"{v:g}"))
    ax.xaxis.set_minor_formatter(ticker.FuncFormatter(lambda v, _: f"{v:g}"))
    ax.tick_params(axis="x", which="minor", labelsize=6)
    highest = max([r.final["test"]["accuracy"] for r in shown] + [paper.test_accuracy]
                  + [a.test_accuracy for a in OTHERS[model] if a.test_accuracy is not None])
    # headroom: the top band holds the anchors published without an accuracy
    ax.set_ylim(floor - 0.001, highest + 0.35 * (highest - floor))
    ax.set_xlabel("compression ratio (all / remaining)")
    ax.set_ylabel("final test accuracy")
    ax.set_title(f"{NAMES[model]}: size against accuracy, every committed run and the published numbers", fontsize=9)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=6, loc="lower left", ncol=2)
    return fig


def frontier_caption(model: str, runs: Sequence[RunRecord], best: str | None) -> str:
    """The text of frontier.md: what the figure draws, and each reported point's source."""
    counts: dict[str, int] = {}
    for r in runs:
        counts[category(r, best)] = counts.get(category(r, best), 0) + 1
    paper = OLMP[model]
    line = delta_line(model, [r for r in runs if r.final["test"]["accuracy"] >= figures.COLLAPSED])
    lines = [
        f"# Frontier: {NAMES[model]}", "",
        "![frontier](frontier.svg)", "",
        f"Regenerated by `olmp report results/{model}` from the run records under `results/{model}/` and "
        f"`results/{model}/tradeoff/`. Final test accuracy (10,000 MNIST test images, nothing chosen on them) "
        "against the compression ratio (all parameters / remaining, log scale), one point per run, coloured by "
        "method: " + ", ".join(f"{c} ({counts[c]})" for c in CATEGORIES if c in counts) + ". "
        + (f"Best configuration: the OLMP group of runs.md with the highest median ratio over at least three "
           f"seeds, `{best}`. " if best else "")
        + ("The line joins the median of the paper's rule (NCS, our reference) at each search.delta: "
           + ", ".join(f"{d:g} ({n} seeds)" for d, _, _, n in line) + ". " if len(line) > 1 else "")
        + f"Dashed: the reference accuracies. Star: the paper's released model, {paper.ratio:g}x at "
        f"{100 * paper.test_accuracy:.2f}% (reference {100 * paper.reference_accuracy:.2f}%).", "",
        "Hollow diamonds, \"reported\": published numbers, not measured here (reference doc §10). Accuracies "
        "are comparable only within each paper's own reference; a number published without an accuracy sits "
        "on the top edge.", "",
    ]
    lines += tables.markdown(["reported", "ratio", "test accuracy", "reference accuracy", "source"], (
        [a.label, f"{a.ratio:g}x", "not published" if a.test_accuracy is None else f"{100 * a.test_accuracy:.2f}%",
         "" if a.reference_accuracy is None else f"{100 * a.reference_accuracy:.2f}%", a.citation]
        for a in OTHERS[model]))
    return "\n".join(lines) + "\n"


OUTPUTS = ("seeds.md", "seeds.png", "seeds.svg", "frontier.png", "frontier.svg", "frontier.md")


def write_reports(model_dir: str | Path) -> list[Path]:
    """seeds.md + seeds.png/.svg and frontier.png/.svg + frontier.md for a model folder named after a
    model the paper reports (results/lenet5, results/lenet300100); nothing for another folder."""
    model_dir = Path(model_dir)
    model = model_dir.name
    if model not in DISTRIBUTIONS:
        return []
    runs = reports.load_runs(model_dir)
    everything = runs + reports.load_runs(model_dir / "tradeoff")
    best = best_configuration(runs)  # from the runs in the folder, not the settings sweeps under tradeoff/
    text, dists = seeds_table(model, runs)
    atomic.write_text(model_dir / "seeds.md", text)
    written = [model_dir / "seeds.md"]
    with matplotlib.rc_context(figures._RC):  # type: ignore[arg-type]  # matplotlib types its keys as Literals
        written += figures.save(seeds_figure(model, dists), model_dir / "seeds")
        written += figures.save(frontier_figure(model, everything, best), model_dir / "frontier")
    atomic.write_text(model_dir / "frontier.md", frontier_caption(model, everything, best))
    return written + [model_dir / "frontier.md"]
