"""``olmp sweep FILE --dry-run``: where each run stands before the sweep runs it, and the drifts
between the file and the folders (a record made otherwise is caught before anything reruns)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from olmp import checkpoint, record
from olmp.config import Experiment
from olmp.errors import OlmpError
from olmp.sweep.file import Experiments, Run, Sweep, shown
from olmp.sweep.records import parse_source, prune_records


@dataclass
class Row:
    """Where one run stands before the sweep runs it."""

    run: Run
    state: str  # "done", "resume", "run", "drift"
    detail: str = ""
    wall: float | None = None  # a done run's recorded wall seconds (over all its sessions)


def _record_check(exp: Experiment, run: Run, made_with: dict[str, Any], rec: record.RunRecord | None
                  ) -> tuple[bool, str]:
    """(matches, what differs): the same settings, or (for a finished record) the same recorded source."""
    changed = checkpoint.changed_settings(exp.to_dict(), made_with)
    if not changed:
        return True, ""
    if rec is not None and isinstance(made_with.get("source"), str):
        name, sets = parse_source(made_with["source"])
        same = (name == Path(exp.source.split(" --set ")[0]).name and sets == run.sets
                and made_with.get("seed") == exp.seed and made_with.get("optimizer") == exp.optimizer
                and made_with.get("weights") == exp.weights)
        if same:  # the file changed since; olmp prune itself would refuse the folder
            return True, f"same recorded source; the experiment file now differs in {', '.join(changed)}"
    return False, ", ".join(changed)


def plan(sweep: Sweep, runs: Sequence[Run] | None = None) -> tuple[list[Row], list[str]]:
    """Each run's state, and the drifts: one line each (a folder made otherwise, and for a complete
    sweep also a listed folder without a record and a record no entry lists)."""
    exps = Experiments(sweep)
    rows, drifts = [], []
    for run in sweep.runs if runs is None else runs:
        exp, folder = exps(run), sweep.folder(run)
        rec_path = folder / record.FILE
        if rec_path.is_file():
            try:
                rec = record.RunRecord.load(rec_path)
            except OlmpError as exc:
                drifts.append(str(exc))
                rows.append(Row(run, "drift", "unreadable record"))
                continue
            if not rec.finished:
                drifts.append(f"{shown(rec_path)}: an unfinished run record (olmp prune writes only finished ones)")
                rows.append(Row(run, "drift", "unfinished record"))
                continue
            ok, why = _record_check(exp, run, rec.experiment, rec)
            if ok:
                f = rec.final
                note = f"{f['ratio']:.1f}x, test {f['test']['accuracy']:.4f}" + (f" ({why})" if why else "")
                rows.append(Row(run, "done", note, rec.seconds.get("wall", rec.seconds.get("this_session_wall"))))
            else:
                drifts.append(f"{shown(folder)}: its record was made with other settings ({why})")
                rows.append(Row(run, "drift", why))
        elif checkpoint.exists(folder):
            try:
                state = checkpoint.read_state(folder)
                ok, why = _record_check(exp, run, state["record"]["experiment"], None)
            except OlmpError as exc:
                ok, why = False, f"unreadable checkpoint: {exc}"
            if ok:
                rows.append(Row(run, "resume", f"from iteration {state['next_itr']}"))
            else:
                drifts.append(f"{shown(folder)}: its checkpoint was made with other settings ({why})")
                rows.append(Row(run, "drift", why))
        elif sweep.complete:
            drifts.append(f"{shown(folder)}: listed in {shown(sweep.path)} but holds no record")
            rows.append(Row(run, "drift", "no record"))
        else:
            rows.append(Row(run, "run"))
    if sweep.complete and runs is None:
        listed = {sweep.folder(r).resolve() for r in sweep.runs}
        for path in prune_records(sweep.root):
            if path.parent.resolve() not in listed:
                drifts.append(f"{shown(path)}: a run record that {shown(sweep.path)} does not list")
    return rows, drifts


def describe(sweep: Sweep, rows: Sequence[Row]) -> list[str]:
    """The plan as lines: each run's state and command, then the totals."""
    lines = [f"{shown(sweep.path)}: {len(rows)} runs into {shown(sweep.root)}/"]
    for r in rows:
        lines.append(f"  {r.state:<6} {r.run.out}" + (f"  [{r.detail}]" if r.detail else ""))
        lines.append(f"         {r.run.command(sweep.root)}")
    counts = {s: sum(r.state == s for r in rows) for s in ("done", "resume", "run", "drift")}
    walls = [r.wall for r in rows if r.wall is not None]
    lines.append(", ".join(f"{n} {s}" for s, n in counts.items() if n)
                 + (f"; the {len(walls)} done runs took {sum(walls) / 3600:.1f} core-hours "
                    "(their records' seconds.wall)" if walls else ""))
    return lines
