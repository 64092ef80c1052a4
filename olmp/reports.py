"""Tables regenerated from run records alone (record.json), never from a rerun."""

from __future__ import annotations

import csv
import io
import json
import shutil
import statistics
from pathlib import Path
from typing import Any

from olmp import atomic, record, schemas, tables
from olmp.errors import OlmpError
from olmp.published import NAMES, REFERENCE_ACCURACY
from olmp.record import RunRecord


def load_runs(model_dir: str | Path) -> list[RunRecord]:
    """Finished runs under ``model_dir`` (one folder per run, ``best/`` aside), sorted by folder name."""
    runs = []
    for rec_path in sorted(Path(model_dir).glob(f"*/{record.FILE}")):
        rec = RunRecord.load(rec_path)
        if rec.finished and rec_path.parent.name != "best":
            runs.append(rec)
    return runs


def best_retraining_accuracy(rec: RunRecord) -> float:
    """The release's practice (reference doc §9): the best snapshot by test accuracy. Chosen on the test set.

    Only progress records from prune_stop_iter on count: they hold the final masks, so the pick
    keeps the final ratio, as a snapshot of the retraining phase would.
    """
    stop = rec.experiment.get("pipeline", {}).get("prune_stop_iter", 0)
    late = [p["test_accuracy"] for p in rec.progress if p.get("iteration", -1) >= stop and "test_accuracy" in p]
    return max(late + [rec.final["test"]["accuracy"]])


def run_row(rec: RunRecord) -> dict[str, Any]:
    """One row of runs.csv; the ``optimizer`` column is the run's summary group."""
    f = rec.final
    row = {
        "run": rec.name,
        "optimizer": rec.group,
        "seed": rec.seed,
        "reference_weights": rec.experiment["weights"],
        "remaining": f["remaining"],
        "total": f["total"],
        "ratio": round(f["ratio"], 2),
        "test_accuracy": f["test"]["accuracy"],
        "best_retraining_test_accuracy_chosen_on_test_set": best_retraining_accuracy(rec),
        "reference_accuracy": rec.reference["test"]["accuracy"],
    }
    for name, v in f["layers"].items():
        row[f"{name}_remaining_pct"] = round(100.0 * v["remaining"] / v["total"], 2)
    row["sgd_seconds"] = rec.seconds["sgd"]
    row["search_seconds"] = rec.seconds["search"]
    return row


def best_run(runs: list[RunRecord]) -> RunRecord | None:
    """Highest ratio among OLMP runs; the rule never reads the test set.

    Only OLMP runs compete (``best/`` is OLMP's result, baselines are compared in comparison.csv),
    and among them only those from the project's own reference models (when there are any). Every
    such run already met its accuracy constraint on training images at each search, so the ratio is
    what is left to choose by; choosing by test accuracy would make the test set a validation set.
    """
    runs = [r for r in runs if r.method_searches]
    runs = [r for r in runs if r.own_reference] or runs
    if not runs:
        return None
    return max(runs, key=lambda r: r.final["ratio"])


def _markdown(rows: list[dict[str, Any]], cols: list[str]) -> str:
    return "\n".join(tables.markdown(cols, ([_fmt(r.get(c, "")) for c in cols] for r in rows)))


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4f}" if v < 1.5 else f"{v:.2f}"
    return str(v)


def check_report(model_dir: str | Path) -> list[RunRecord]:
    """What ``olmp report`` reads from ``model_dir``, checked before it writes its first file: the
    folder, every record (olmp.schemas), and the files ``best/`` copies from the chosen run."""
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise OlmpError("results folder not found", model_dir)
    runs = load_runs(model_dir)
    chosen = best_run(runs)
    if chosen is not None:
        for name in ("record.json", "pruned.caffemodel"):
            if not (model_dir / chosen.name / name).is_file():
                raise OlmpError(f"the best run {chosen.name} has no {name} to copy into best/",
                                model_dir / chosen.name)
    return runs


def write_runs_table(model_dir: str | Path) -> dict[str, Any]:
    """results/<model>/runs.csv and runs.md: every run, then median and best per optimizer."""
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise OlmpError("results folder not found", model_dir)
    runs = load_runs(model_dir)
    rows = [run_row(r) for r in runs]
    cols = list(dict.fromkeys(k for r in rows for k in r))
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=cols)
    w.writeheader()
    w.writerows(rows)
    atomic.write_text(model_dir / "runs.csv", buf.getvalue())
    summary = []
    for opt in sorted({r["optimizer"] for r in rows}):
        mine = [r for r in rows if r["optimizer"] == opt]
        ratios = [r["ratio"] for r in mine]
        best = max(mine, key=lambda r: r["ratio"])
        summary.append({
            "optimizer": opt,
            "runs": len(mine),
            "median_ratio": round(statistics.median(ratios), 2),
            "best_ratio": best["ratio"],
            "best_run": best["run"],
            "median_test_accuracy": statistics.median(r["test_accuracy"] for r in mine),
            "best_run_test_accuracy": best["test_accuracy"],
        })
    chosen = best_run(runs)
    best_name = "none" if chosen is None else chosen.name
    text = (f"# OLMP runs: {model_dir.name}\n\nRegenerated by `olmp report {model_dir}` from the run records.\n"
            "Ratio = all parameters (weights + biases) / remaining; test accuracy on the 10,000 MNIST test images.\n"
            "`best/` holds the highest-ratio OLMP run from the project's own reference model; the rule reads "
            f"no test accuracy (now: {best_name}). `best_retraining_test_accuracy_chosen_on_test_set` is the best "
            "test accuracy over a run's progress records (every 500 iterations) from prune_stop_iter on, where the "
            "masks are the final ones: a snapshot chosen on the test set, "
            "as the authors' release very likely was (reference doc §9); it is not a fair estimate.\n\n"
            "## Per optimizer\n\n" + _markdown(summary, list(summary[0]) if summary else ["optimizer"]) +
            "\n\n## Every run\n\n" + _markdown(rows, cols) + "\n")
    atomic.write_text(model_dir / "runs.md", text)
    if chosen is not None:
        best_dir = model_dir / "best"
        with atomic.atomic_path(best_dir) as tmp:
            tmp.mkdir()
            for name in ("record.json", "pruned.caffemodel"):
                shutil.copy2(model_dir / chosen.name / name, tmp / name)
            (tmp / "SOURCE").write_text(f"{chosen.name}\n")
    return {"runs": len(rows), "summary": summary, "best": None if chosen is None else chosen.name}


REFERENCE_MODELS = ("lenet300100", "lenet5")  # the models references.md tabulates


def references_table(ref_dir: str | Path) -> str:
    """The text of references.md: one row per ``ref_dir/<model>/train.json`` present (``olmp train``'s record)."""
    rows: list[list[Any]] = []
    for m in REFERENCE_MODELS:
        p = Path(ref_dir) / m / "train.json"
        if not p.is_file():
            continue
        try:
            r = json.loads(p.read_text())
        except (OSError, ValueError) as exc:
            raise OlmpError(f"unreadable training record ({type(exc).__name__}: {exc})", p) from None
        schemas.check(schemas.TrainRecord, r, "training record", p)
        rows.append([m, r["iters"], r["seed"], f"{100 * r['test']['accuracy']:.2f}%", f"{r['test']['loss']:.4f}",
                     f"{r['train_seconds']:.0f} s"])
    return ("# Reference models\n\nTrained by `scripts/train_references.sh` (`make reference`), i.e.\n"
            "`olmp train --solver solvers/<model>_solver.prototxt --iters 10000 --seed 1 "
            "--out results/references/<model>`,\n"
            "with `OPENBLAS_NUM_THREADS=1` on the 2-core development machine. Accuracy and loss on all\n"
            "10,000 MNIST test images. Papers' references: "
            + ", ".join(f"{NAMES[m]} {100 * a:.2f}%" for m, a in REFERENCE_ACCURACY.items()) + ".\n"
            "Wall times were measured on a shared, busy machine (the LeNet-5 run shared both cores with\n"
            "the pycaffe compile), so read them as upper bounds.\n\n"
            + "\n".join(tables.markdown(["model", "iterations", "seed", "test accuracy", "test loss",
                                         "training wall time"], rows)) + "\n")


def write_references_table(ref_dir: str | Path) -> Path:
    """references.md beside ``ref_dir`` (results/references -> results/references.md); returns its path."""
    ref_dir = Path(ref_dir)
    if not ref_dir.is_dir():
        raise OlmpError("reference models folder not found", ref_dir)
    out = ref_dir.parent / "references.md"
    atomic.write_text(out, references_table(ref_dir))
    return out
