"""The status table the driver rewrites while a sweep runs: the sweep's progress at a glance, and the
marker (it carries the sweep's id) by which a worker finds out whether it sees the driver's files."""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from olmp import checkpoint, tables
from olmp.sweep.file import Run, Sweep, shown


@dataclass
class Status:
    """One run as the driver sees it."""

    run: Run
    niter: int
    state: str = "queued"
    iteration: int | None = None
    ratio: float | None = None
    test: float | None = None
    note: str = ""


def read_progress(folder: Path) -> dict[str, Any] | None:
    """The latest progress entry of a running run (from its checkpoint), or None."""
    try:
        state = json.loads((folder / checkpoint.CHECKPOINT / "state.json").read_text())
        return dict(state["record"]["progress"][-1])
    except (OSError, ValueError, KeyError, IndexError, TypeError):
        return None


def status_table(sweep: Sweep, statuses: Sequence[Status], started: float, token: str = "") -> str:
    """The live summary table (markdown); ``token``, the sweep's id, tells workers they see this file."""
    counts: dict[str, int] = {}
    for s in statuses:
        counts[s.state] = counts.get(s.state, 0) + 1
    lines = [f"# Sweep {sweep.name}", "",
             f"`olmp sweep {shown(sweep.path)}`; updated {time.strftime('%Y-%m-%d %H:%M:%S %Z')}, "
             f"{(time.time() - started) / 60:.1f} min in: "
             + ", ".join(f"{n} {k}" for k, n in sorted(counts.items())) + "."
             + (f" Sweep id {token}." if token else ""), "",
             *tables.markdown(
                 ["run", "experiment", "optimizer", "seed", "state", "iteration", "ratio", "test accuracy", "note"],
                 ([s.run.out, s.run.experiment, s.run.optimizer or "", "" if s.run.seed is None else s.run.seed,
                   s.state, "" if s.iteration is None else f"{s.iteration}/{s.niter}",
                   "" if s.ratio is None else f"{s.ratio:.1f}x", "" if s.test is None else f"{s.test:.4f}", s.note]
                  for s in statuses))]
    return "\n".join(lines) + "\n"
