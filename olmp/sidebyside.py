"""The table that ends ``make reproduce``: this run, the committed record of the same seed, the paper.

A fresh run is only convincing next to what it should reproduce. On the machine that made the
committed records a rerun is bit-identical; on another CPU the floating-point order differs, the
runs part after the first differing rounding and behave like another seed, so the verdict compares
against the spread of the committed seeds (with a margin), not bit for bit.

    python -m olmp.sidebyside RUN_DIR MODEL OPTIMIZER SEED [--results DIR]
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from olmp import atomic, checkpoint, paths, record, tables
from olmp.errors import OlmpError
from olmp.published import NAMES, OLMP
from olmp.record import RunRecord

RATIO_MARGIN = 0.10  # relative, beyond the committed seeds' range
ACCURACY_MARGIN = 0.002  # absolute (0.2 points), beyond the committed seeds' range


def read_record(path: Path) -> RunRecord:
    """A finished run record, or a one-line error."""
    rec = RunRecord.load(path)
    if not rec.finished:
        raise OlmpError("the run is not finished", path)
    return rec


def _row(label: str, rec: RunRecord) -> dict[str, Any]:
    f, secs = rec.final, rec.seconds
    return {"label": label, "ratio": f["ratio"], "test_accuracy": f["test"]["accuracy"],
            "reference_accuracy": rec.reference["test"]["accuracy"],
            "wall_seconds": secs.get("wall", secs.get("this_session_wall"))}


def verdict(run: dict[str, Any], committed: dict[str, Any] | None, seeds: list[dict[str, Any]],
            changed: Sequence[str] = ()) -> str:
    """identical / within the committed seeds' range / outside it, with the range it was judged by."""
    if changed:
        return f"not comparable: this run's settings differ from the committed record's ({', '.join(changed)})"
    if committed is not None and run["ratio"] == committed["ratio"] and \
            run["test_accuracy"] == committed["test_accuracy"]:
        return "identical to the committed record (same ratio and test accuracy)"
    if not seeds:
        return "no committed records to compare with"
    lo_r, hi_r = min(s["ratio"] for s in seeds), max(s["ratio"] for s in seeds)
    lo_a, hi_a = min(s["test_accuracy"] for s in seeds), max(s["test_accuracy"] for s in seeds)
    ok = (lo_r * (1 - RATIO_MARGIN) <= run["ratio"] <= hi_r * (1 + RATIO_MARGIN)
          and lo_a - ACCURACY_MARGIN <= run["test_accuracy"] <= hi_a + ACCURACY_MARGIN)
    where = (f"committed seeds {lo_r:.1f}-{hi_r:.1f}x and {100 * lo_a:.2f}-{100 * hi_a:.2f}%, "
             f"margins {100 * RATIO_MARGIN:.0f}% and {100 * ACCURACY_MARGIN:.1f} points")
    if ok:
        return (f"not bit-identical, but within the committed seeds' range ({where}); causes: another CPU's "
                "floating-point order, or code changed since the record (compare the records' provenance)")
    return f"OUTSIDE the committed seeds' range ({where})"


def _fmt(v: Any, kind: str) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    if kind == "ratio":
        return f"{v:.1f}x"
    if kind == "acc":
        return f"{100 * v:.2f}%"
    return f"{v / 60:.1f} min" if v >= 60 else f"{v:.0f} s"


def _shown(path: Path) -> str:
    """A path as short as it can be said: relative to the repository when inside it."""
    try:
        return str(path.resolve().relative_to(paths.REPO_ROOT))
    except ValueError:
        return str(path)


def table(run_dir: str | Path, model: str, optimizer: str, seed: int, results: str | Path | None = None) -> str:
    """The side-by-side table as Markdown; also written to ``run_dir/side-by-side.md``."""
    run_dir = Path(run_dir)
    results = Path(results) if results else paths.RESULTS_DIR
    run_rec = read_record(run_dir / "record.json")
    run = _row(f"this run ({_shown(run_dir)})", run_rec)
    committed_name = record.run_name(run_rec.method, optimizer, seed, run_rec.method_searches)
    committed_path = results / model / committed_name / record.FILE
    committed, changed = None, []
    if committed_path.is_file():
        committed_rec = read_record(committed_path)
        committed = _row(f"committed ({_shown(committed_path.parent)})", committed_rec)
        changed = checkpoint.changed_settings(run_rec.experiment, committed_rec.experiment)
    seeds = [_row(p.parent.name, read_record(p))
             for p in sorted((results / model).glob(f"{optimizer}-seed*/{record.FILE}"))
             if p.parent.name.removeprefix(f"{optimizer}-seed").isdigit()]
    rows = [run] + ([committed] if committed else [])
    if model in OLMP:
        p = OLMP[model]
        rows.append({"label": "paper / released model", "ratio": p.ratio, "test_accuracy": p.test_accuracy,
                     "reference_accuracy": p.reference_accuracy, "wall_seconds": None})
    lines = [f"{NAMES.get(model, model)}, optimizer {optimizer}, seed {seed}", "",
             *tables.markdown(["", "ratio", "test accuracy", "reference accuracy", "wall time"], (
                 [r["label"], _fmt(r["ratio"], "ratio"), _fmt(r["test_accuracy"], "acc"),
                  _fmt(r["reference_accuracy"], "acc"), _fmt(r["wall_seconds"], "time")] for r in rows))]
    if committed is None:
        lines += ["", f"(no committed record at {committed_path})"]
    lines += ["", f"verdict: {verdict(run, committed, seeds, changed)}"]
    text = "\n".join(lines) + "\n"
    atomic.write_text(run_dir / "side-by-side.md", text)
    return text


def main(argv: list[str] | None = None) -> int:
    a = argparse.ArgumentParser(prog="python -m olmp.sidebyside", description=__doc__.splitlines()[0])
    a.add_argument("run_dir")
    a.add_argument("model")
    a.add_argument("optimizer")
    a.add_argument("seed", type=int)
    a.add_argument("--results", help="folder holding <model>/<optimizer>-seed<seed>/ (default: results/)")
    args = a.parse_args(argv)
    try:
        print(table(args.run_dir, args.model, args.optimizer, args.seed, args.results), end="")
    except OlmpError as exc:
        print(f"olmp: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
