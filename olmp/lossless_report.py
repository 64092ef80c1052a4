"""results/<model>/lossless.md: the lossless configuration and its ablation, paired by seed, from the records.

The arms are told apart by what a record's ``retrain`` settings switch on, never by folder names: the
plain run on the held-out split, distillation alone, averaging alone, both, and each of these with the
guarantee (a lossless run); a lossless run's ``guarantee.before`` is the model of its lever arm. The
levers start at prune_stop_iter, so within a seed every arm has the same masks and ratio (up to the
guarantee's restored weights). Every choice read the held-out images; the test accuracy is reported.
"""

from __future__ import annotations

import functools
import statistics
from pathlib import Path
from typing import Any

from olmp import atomic, config, paths, tables
from olmp.record import RunRecord
from olmp.reports import load_runs

OUTPUT = "lossless.md"
ARMS = ("plain", "distill", "average", "both")
LABELS = {"plain": "held-out split only", "distill": "+ distillation", "average": "+ averaging",
          "both": "+ both levers", "plain + guarantee": "+ guarantee",
          "distill + guarantee": "+ distillation + guarantee", "average + guarantee": "+ averaging + guarantee",
          "both + guarantee": "+ both levers + guarantee", "average + regrowth": "+ averaging + guarantee by regrowth"}
GUARANTEES = ("+ guarantee", "+ regrowth")  # restoring dense values; regrowing from zero (retrain.guarantee_regrow)


def levers(rec: RunRecord) -> str | None:
    """The lever arm a held-out searching run trained with (plain, distill, average or both), else None."""
    r = rec.experiment.get("retrain") or {}
    if not rec.method_searches or not r.get("holdout_source"):
        return None
    return {(False, False): "plain", (True, False): "distill", (False, True): "average",
            (True, True): "both"}[(r.get("distill_weight", 0) > 0, r.get("average_last", 0) > 0)]


def arm(rec: RunRecord) -> str | None:
    """Which column a record fills: its lever arm, or "lossless" for a run with the guarantee."""
    if levers(rec) is None:
        return None
    return "lossless" if (rec.experiment.get("retrain") or {}).get("guarantee") else levers(rec)


def _point(rec: RunRecord, which: str) -> dict[str, Any]:
    """(ratio, test accuracy, held-out accuracy) of an arm; a lever arm from a lossless run's pre-guarantee model."""
    if which != "lossless" and "guarantee" in rec.raw:
        b = rec.raw["guarantee"]["before"]
        return {"ratio": b["ratio"], "test": b["test"]["accuracy"], "holdout": b.get("holdout", {}).get("accuracy")}
    f = rec.final
    return {"ratio": f["ratio"], "test": f["test"]["accuracy"], "holdout": (f.get("holdout") or {}).get("accuracy")}


def _row(rec: RunRecord) -> str:
    """The row a run pairs in: its seed, and its search's delta where that is not the model's usual one
    (another delta gives other masks: no pair with the usual runs)."""
    delta = (rec.experiment.get("search") or {}).get("delta")
    usual = _shipped_delta(rec.dir.parent.name if rec.dir else "")
    return f"{rec.seed}" if usual is None or delta == usual else f"{rec.seed} (delta {delta:g})"


@functools.cache
def _shipped_delta(model: str) -> float | None:
    """The delta of the model's shipped lossless experiment, read once per model (not once per record)."""
    shipped = paths.EXPERIMENTS_DIR / f"{model}_lossless.toml"
    return config.settings(shipped).search.delta if shipped.is_file() else None


def table(runs: list[RunRecord]) -> dict[str, dict[str, dict[str, Any]]]:
    """row -> column -> point; a guarantee column is named after the levers it ran on ("plain + guarantee")."""
    by_seed: dict[str, dict[str, dict[str, Any]]] = {}
    for rec in runs:
        a, lever = arm(rec), levers(rec)
        if a is None or lever is None:
            continue
        row = by_seed.setdefault(_row(rec), {})
        if a == "lossless":
            g = rec.raw.get("guarantee") or {}
            how = "regrowth" if (rec.experiment.get("retrain") or {}).get("guarantee_regrow") else "guarantee"
            row[f"{lever} + {how}"] = {**_point(rec, a), "reached": g.get("reached"),
                                           "steps": len(g.get("steps", [])) - 1}
            row.setdefault(lever, _point(rec, lever))
        else:
            row[lever] = _point(rec, lever)
    return by_seed


def _cell(p: dict[str, Any] | None) -> str:
    if p is None:
        return "-"
    held = f" ({100 * p['holdout']:.2f}%)" if p.get("holdout") is not None else ""
    out = f"{p['ratio']:.1f}x {100 * p['test']:.2f}%{held}"
    if "reached" in p:
        out += f", reached in {p['steps']} steps" if p["reached"] else f", not reached in {p['steps']} steps"
    return out


def markdown(model: str, runs: list[RunRecord]) -> str | None:
    by_seed = table(runs)
    if not by_seed:
        return None
    guarantees = sorted({c for row in by_seed.values() for c in row if c.endswith(GUARANTEES)},
                        key=lambda c: (ARMS.index(c.split(" + ")[0]), c))
    columns = [*ARMS[:4], *guarantees]
    any_rec = next(r for r in runs if arm(r) is not None)
    ref = any_rec.reference
    ref_holdout = (ref.get("holdout") or {}).get("accuracy")
    lines = [f"# {model}: lossless by construction, and its ablation", "",
             "Regenerated by `olmp report` from the run records. Every run prunes the net trained without the "
             "held-out images (the last 5,000 training images) from the reference trained the same way "
             f"({ref['weights']}: {100 * ref['test']['accuracy']:.2f}% test"
             + (f", {100 * ref_holdout:.2f}% held-out: the guarantee's target" if ref_holdout is not None else "")
             + "). The levers start at prune_stop_iter, so within a seed every arm has the same masks; only the "
             "guarantee restores weights, and a run it does not bring to the target keeps its model from before "
             "it. Each cell: ratio, **test** accuracy, and in brackets the held-out accuracy that every choice "
             "read. Nothing was chosen on the test set.", ""]
    rows = [[seed, *(_cell(by_seed[seed].get(c)) for c in columns)]
            for seed in sorted(by_seed, key=lambda k: (len(k), k))]
    med = []
    for c in columns:
        pts = [by_seed[s][c] for s in by_seed if c in by_seed[s] and "(delta" not in s]  # the usual delta only
        med.append("-" if not pts else f"{statistics.median(p['ratio'] for p in pts):.1f}x "
                   f"{100 * statistics.median(p['test'] for p in pts):.2f}%"
                   + (f" ({100 * statistics.median(p['holdout'] for p in pts):.2f}%)"
                      if all(p.get("holdout") is not None for p in pts) else ""))
    lines += tables.markdown(["seed", *(LABELS.get(c, c) for c in columns)], [*rows, ["median", *med]])
    for lever in ARMS[1:4]:
        paired = [100 * (by_seed[s][lever]["test"] - by_seed[s]["plain"]["test"]) for s in sorted(by_seed)
                  if lever in by_seed[s] and "plain" in by_seed[s]]
        held = [100 * (by_seed[s][lever]["holdout"] - by_seed[s]["plain"]["holdout"]) for s in sorted(by_seed)
                if lever in by_seed[s] and "plain" in by_seed[s] and by_seed[s][lever].get("holdout") is not None
                and by_seed[s]["plain"].get("holdout") is not None]
        if paired:
            lines += ["", f"Paired effect of {LABELS[lever].lstrip('+ ')} (minus plain, same masks), test accuracy: "
                      + ", ".join(f"{d:+.2f}" for d in paired) + f" points, median {statistics.median(paired):+.2f}"
                      + (f"; held-out: median {statistics.median(held):+.2f}" if held else "") + "."]
    for c in guarantees:
        reached = [(s, by_seed[s][c]) for s in by_seed if c in by_seed[s] and by_seed[s][c].get("reached")
                   and "(delta" not in s]
        if reached:
            seed, p = max(reached, key=lambda sp: (sp[1]["ratio"], sp[0]))
            lines += ["", f"The pick among the seeds of {LABELS.get(c, c).lstrip('+ ')} (the largest ratio whose "
                      f"held-out accuracy reached the target, chosen without the test set): seed {seed}, "
                      f"{_cell({k: v for k, v in p.items() if k != 'reached'})} ({len(reached)} of "
                      f"{sum(c in by_seed[s] and '(delta' not in s for s in by_seed)} seeds reached)."]
    lines += ["", f"Commands (S = seed): `olmp prune --experiment {model}_lossless --seed S --out "
              f"results/{model}/lossless-seedS`, `olmp prune --experiment {model}_holdout --seed S --out "
              f"results/{model}/holdout-ncs-seedS`"
              + (f", `olmp prune --experiment {model}_lossless_regrow --seed S --out "
                 f"results/{model}/lossless-regrow-seedS`" if any(c.endswith("+ regrowth") for c in columns) else "")
              + "; every run is listed in sweeps/lossless.toml."]
    return "\n".join(lines) + "\n"


def write(model_dir: str | Path) -> Path | None:
    model_dir = Path(model_dir)
    text = markdown(model_dir.name, load_runs(model_dir))
    if text is None:
        return None
    out = model_dir / OUTPUT
    atomic.write_text(out, text)
    return out
