"""``olmp sweep FILE --from-results DIR``: the sweep file that lists every prune run under DIR,
written from the records alone, so a committed file can be checked against them byte for byte."""

from __future__ import annotations

import json
import os
import textwrap
from pathlib import Path

from olmp import atomic, paths, record
from olmp.errors import OlmpError
from olmp.sweep.file import Experiments, Run, Sweep, read
from olmp.sweep.records import parse_source, prune_records


def _in_repo(p: Path) -> str:
    """A path relative to the repository root where it lies under it (what generated text names)."""
    try:
        return p.resolve().relative_to(paths.REPO_ROOT).as_posix()
    except ValueError:
        return str(p)


def _first_sentence(file: Path) -> str:
    """The experiment file's leading comment up to its first full stop: what the group of runs is."""
    words = []
    for line in file.read_text(encoding="utf-8").splitlines():
        if not line.startswith("#"):
            break
        words += line.lstrip("#").split()
    for i, w in enumerate(words):
        if w.endswith(".") and w not in ("al.", "e.g.", "i.e.", "vs."):
            return " ".join(words[:i + 1])
    return " ".join(words)


def from_results(results: str | Path, target: str | Path) -> str:
    """The sweep file (its text) that lists every prune run under ``results``, to be written at ``target``.

    Each entry comes from its record alone: the experiment file's name in ``experiment.source``
    (the path may be another checkout's; the file must be in scripts/experiments/), its overrides,
    ``seed``, the optimizer (where the method searches) and ``experiment.weights`` where it is not the
    experiment's own. Entries are grouped by model (the first folder under ``results``), then by
    experiment file.
    """
    results, target = Path(results), Path(target)
    probe = Sweep(path=target, root=results, complete=True, runs=())
    exps = Experiments(probe)
    rows: list[tuple[str, str, Run]] = []  # (model, experiment, run)
    for path in prune_records(results):
        rec = record.RunRecord.load(path)
        name, sets = parse_source(rec.experiment["source"])
        if not (paths.EXPERIMENTS_DIR / name).is_file():
            raise OlmpError(f"experiment.source names {name}, which is not in {paths.EXPERIMENTS_DIR}", path)
        out = path.parent.relative_to(results).as_posix()
        run = Run(out=out, experiment=Path(name).stem, sets=sets, seed=rec.experiment["seed"],
                  optimizer=rec.experiment["optimizer"] if rec.searched else None)
        if rec.experiment["weights"] != exps.base(run).weights:
            run = Run(**{**vars(run), "weights": rec.experiment["weights"]})
        rows.append((Path(out).parts[0] if len(Path(out).parts) > 1 else "", run.experiment, run))
    if not rows:
        raise OlmpError("holds no run records made by olmp prune", results)
    root = os.path.relpath(results.resolve(), target.resolve().parent)
    lines = [
        f"# Every pruning run under {_in_repo(results)}/: how each folder is made.",
        f"# Generated from the records by `olmp sweep {_in_repo(target)} --from-results {_in_repo(results)}`;",
        "# regenerate it after committing new runs. `olmp sweep FILE --dry-run` checks that each record",
        "# was made by its entry; `olmp sweep FILE` (re)makes whatever is missing, on Ray.",
        "# An entry is `olmp prune --experiment EXPERIMENT [--optimizer O] [--seed S] [--weights W]",
        "# [--set K=V]... --out ROOT/OUT --resume`; weights are relative to the repository root.",
        f"root = {json.dumps(root)}  # out is relative to this folder (itself relative to this file)",
        "complete = true  # every run under root is listed: --dry-run fails on a record no entry lists",
        "",
        "runs = [",
    ]
    width: dict[tuple[str, str], int] = {}  # each group's columns aligned
    for m, e, run in rows:
        width[m, e] = max(width.get((m, e), 0), len(json.dumps(run.out)))
    model = group = None
    for m, e, run in sorted(rows, key=lambda t: (t[0], t[1] != t[0], t[1], t[2].sets, t[2].weights or "",
                                                  t[2].optimizer or "", t[2].seed or 0, t[2].out)):
        if m != model:
            lines += ["" if model is not None else "", f"  # ======== {m or 'runs'} ========"]
            model, group = m, None
        if e != group:
            about = f"{e}.toml: {_first_sentence(paths.EXPERIMENTS_DIR / f'{e}.toml')}"
            lines += textwrap.wrap(about, 116, initial_indent="  # ", subsequent_indent="  #   ",
                                   break_on_hyphens=False)
            group = e
        lines.append("  " + _inline(run, width[m, e]) + ",")
    lines.append("]")
    return "\n".join(lines).replace("runs = [\n\n", "runs = [\n") + "\n"


def _inline(run: Run, width: int) -> str:
    """One entry as a TOML inline table, its first fields aligned with its group's."""
    parts = [(f"out = {json.dumps(run.out)},", width + 7), (f"experiment = {json.dumps(run.experiment)},", 0)]
    if run.optimizer is not None:
        parts.append((f"optimizer = {json.dumps(run.optimizer)},", 23))
    if run.seed is not None:
        parts.append((f"seed = {run.seed},", 0))
    if run.weights is not None:
        parts.append((f"weights = {json.dumps(run.weights)},", 0))
    if run.sets:
        parts.append((f"set = [{', '.join(json.dumps(s) for s in run.sets)}],", 0))
    text = " ".join(p.ljust(w) for p, w in parts[:-1]) + " " + parts[-1][0]
    return "{ " + text.rstrip(",") + " }"


def write_from_results(results: str | Path, target: str | Path) -> int:
    """Write the sweep file of ``results`` at ``target`` (atomically); return its number of runs."""
    text = from_results(results, target)
    atomic.check_target(target)
    atomic.write_text(target, text)
    return len(read(target).runs)
