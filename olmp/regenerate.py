"""Regenerating a results folder's tables and figures from its run records, in one place.

``olmp report``, ``olmp compare`` and a finished ``olmp sweep`` call these; none reruns anything.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from olmp.errors import OlmpError


def report(dirs: Sequence[str | Path], references: str | Path | None = None,
           say: Callable[[str], None] = print) -> None:
    """runs.csv/.md, best/, the figures, the distributions and lossless.md of each ``results/<model>``
    folder, and references.md from ``references``; every output and input is checked before the first
    file is written."""
    from olmp import atomic, distributions, figures, lossless_report, reports  # noqa: PLC0415  (matplotlib)

    if not dirs and not references:
        raise OlmpError("report needs a results folder (results/<model>) or --references DIR")
    names = ["runs.csv", "runs.md"] + [f"{f}.{x}" for f in [*figures.FIGURES, "tradeoff"] for x in figures.FORMATS]
    names += [*distributions.OUTPUTS, lossless_report.OUTPUT]
    for d in dirs:
        for name in names:
            atomic.check_target(Path(d) / name)
        reports.check_report(d)
    if references:
        atomic.check_target(Path(references).parent / "references.md")
        if Path(references).is_dir():
            reports.references_table(references)  # every train.json read and checked
        say(f"wrote {reports.write_references_table(references)}")
    for d in dirs:
        res = reports.write_runs_table(d)
        figs = sorted({p.stem for p in figures.write_report_figures(d)})
        more = [p.name for p in [*distributions.write_reports(d), lossless_report.write(d)] if p is not None]
        say(f"{d}: {res['runs']} runs, best {res['best']}; wrote runs.csv, runs.md, best/"
            + (f", {'/'.join(figs)} .png/.svg" if figs else "") + "".join(f", {n}" for n in more))


def comparison(model: str, results: str | Path | None, say: Callable[[str], None] = print) -> dict[str, Any]:
    """``results/<model>/comparison.csv`` and ``.md``: every method, measured and reported."""
    from olmp import compare  # noqa: PLC0415

    res = compare.write_comparison(model, results)
    say(f"wrote {res['csv']} and {res['md']}: {res['measured']} measured, {res['reported']} reported rows")
    return res


def models(dirs: Sequence[Path]) -> bool:
    """``report`` and, for a model the comparison knows, ``comparison`` of each folder; False if one
    failed (said on stderr in the CLI's words)."""
    from olmp import compare  # noqa: PLC0415

    ok = True
    for d in dirs:
        jobs: list[tuple[Callable[..., Any], tuple[Any, ...]]] = [(report, ([str(d)],))]
        if d.name in compare.LAYERS:
            jobs.append((comparison, (d.name, str(d.parent))))
        for job, args in jobs:
            try:
                job(*args)
            except OlmpError as exc:
                print(f"olmp: error: {exc}", file=sys.stderr)
                ok = False
            except OSError as exc:
                where = exc.filename2 or exc.filename
                print(f"olmp: error: {where}: {exc.strerror or exc}" if where else f"olmp: error: {exc}",
                      file=sys.stderr)
                ok = False
    return ok
