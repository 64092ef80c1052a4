"""``olmp sweep``: many ``olmp prune`` runs listed in one file, run as Ray tasks (issue 17).

A sweep file (TOML) says how each run folder is made: its experiment, optimizer, seed, reference
weights, ``--set`` overrides and output folder. ``sweeps/paper.toml`` lists every committed run
under ``results/``; it is generated from the records (:func:`from_results`) and checked against them
(:func:`plan`, ``--dry-run``), so a drift between the two is caught.

Each run is one Ray task calling the library's ``pipeline.prune(exp, out, resume=True)``: a finished
run is returned as it is, an interrupted one resumes from its checkpoint, and a folder made with other
settings is refused exactly as ``olmp prune`` refuses it. Ray does the scheduling; the driver only
submits, watches the run folders and writes the status table.

Two file-system modes. **Shared** (the default wherever the workers see the driver's paths: one
machine, or a cluster on NFS): a task writes its run folder itself. **Not shared** (``--no-shared-fs``,
or found out at start by a probe task that cannot read the driver's status file, which carries the
sweep's random id): the driver sends the folder's files (a checkpoint, or a finished run) with the
task, the task runs in a temporary folder, sends each new checkpoint back while it runs, and returns
the finished folder's files, which the driver writes. Either way the driver's folders hold every
checkpoint, so a rerun resumes.
"""

from __future__ import annotations

import fnmatch
import json
import os
import sys
import tempfile
import textwrap
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from olmp import atomic, checkpoint, paths, record, tables
from olmp.config import INT_MAX, Experiment, read_toml
from olmp.errors import OlmpError

RUN_KEYS = ("out", "experiment", "optimizer", "seed", "weights", "set")
TOP_KEYS = ("root", "complete", "runs")
POLL_SECONDS = 2.0  # how often the driver reads the run folders (and a task its checkpoint)


# ---- the sweep file ------------------------------------------------------------------------------

@dataclass(frozen=True)
class Run:
    """One entry: the ``olmp prune`` command that makes the folder ``root/out``."""

    out: str  # relative to the sweep's root
    experiment: str  # a name in scripts/experiments/, or a path relative to the sweep file
    optimizer: str | None = None  # None: the experiment's
    seed: int | None = None
    weights: str | None = None  # as ``olmp prune --weights`` from the repository root
    sets: tuple[str, ...] = ()

    def command(self, root: Path) -> str:
        """The equivalent ``olmp prune`` command line (run from the repository root)."""
        parts = ["olmp prune --experiment", self.experiment]
        for flag, value in (("--optimizer", self.optimizer), ("--seed", self.seed), ("--weights", self.weights)):
            if value is not None:
                parts += [flag, str(value)]
        parts += [f"--set {s}" for s in self.sets]
        parts += ["--out", _shown(root / self.out), "--resume"]
        return " ".join(parts)


@dataclass(frozen=True)
class Sweep:
    """A sweep file: where its folders go (``root``) and its runs, in the file's order."""

    path: Path
    root: Path
    complete: bool  # the file lists every run under root (paper.toml): --dry-run checks both ways
    runs: tuple[Run, ...]

    @property
    def name(self) -> str:
        return self.path.stem

    def folder(self, run: Run) -> Path:
        return self.root / run.out

    def experiment_file(self, run: Run) -> Path:
        """A bare name is scripts/experiments/NAME.toml; a path is relative to the sweep file."""
        p = Path(run.experiment)
        if not p.suffix and len(p.parts) == 1:
            return paths.EXPERIMENTS_DIR / f"{run.experiment}.toml"
        return p if p.is_absolute() else self.path.parent / p

    def select(self, pattern: str | None) -> list[Run]:
        """The runs whose ``out`` matches ``pattern`` (a glob; a folder matches what lies under it)."""
        if not pattern:
            return list(self.runs)
        chosen = [r for r in self.runs if fnmatch.fnmatch(r.out, pattern) or fnmatch.fnmatch(r.out, pattern + "/*")]
        if not chosen:
            raise OlmpError(f"--only {pattern}: no run's out matches", self.path)
        return chosen


def _shown(p: Path) -> str:
    """A path as a user reads it: relative to the current directory when under it."""
    try:
        return str(p.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(p)


def _in_repo(p: Path) -> str:
    """A path relative to the repository root where it lies under it (what generated text names)."""
    try:
        return p.resolve().relative_to(paths.REPO_ROOT).as_posix()
    except ValueError:
        return str(p)


def _is_seed(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= INT_MAX


def read(path: str | Path) -> Sweep:
    """Read and check a sweep file; anything wrong is one OlmpError line naming the file."""
    path = Path(path)
    raw = read_toml(path, "sweep file")
    unknown = sorted(set(raw) - set(TOP_KEYS))
    if unknown:
        raise OlmpError(f"unknown key(s) {', '.join(unknown)} (a sweep file has {', '.join(TOP_KEYS)})", path)
    root = raw.get("root", ".")
    if not isinstance(root, str) or not root:
        raise OlmpError(f"root must be a folder name, got {root!r}", path)
    complete = raw.get("complete", False)
    if not isinstance(complete, bool):
        raise OlmpError(f"complete must be true or false, got {complete!r}", path)
    entries = raw.get("runs")
    if not isinstance(entries, list) or not entries:
        raise OlmpError("runs must be a non-empty list of tables (runs = [{out = ..., experiment = ...}])", path)
    runs, seen = [], set()
    for i, entry in enumerate(entries, 1):
        run = _run(entry, f"run {i}", path)
        if run.out in seen:
            raise OlmpError(f"run {i}: out {run.out!r} is listed twice", path)
        seen.add(run.out)
        runs.append(run)
    sweep = Sweep(path=path, root=Path(os.path.normpath(path.parent / root)), complete=complete, runs=tuple(runs))
    for i, run in enumerate(runs, 1):
        if not sweep.experiment_file(run).is_file():
            raise OlmpError(f"run {i} ({run.out}): unknown experiment {run.experiment!r} "
                            f"(no {_shown(sweep.experiment_file(run))})", path)
    return sweep


def _run(entry: Any, where: str, path: Path) -> Run:
    """One entry of ``runs``, every key checked."""
    if not isinstance(entry, dict):
        raise OlmpError(f"{where} must be a table, got {entry!r}", path)
    missing = [k for k in ("out", "experiment") if k not in entry]
    if missing:
        raise OlmpError(f"{where}: missing key(s) {', '.join(missing)}", path)
    out = entry["out"]
    if not isinstance(out, str) or not out or Path(out).is_absolute() or ".." in Path(out).parts:
        raise OlmpError(f"{where}: out must be a folder under root (relative, no '..'), got {out!r}", path)
    out = Path(out).as_posix()
    where = f"{where} ({out})"
    unknown = sorted(set(entry) - set(RUN_KEYS))
    if unknown:
        raise OlmpError(f"{where}: unknown key(s) {', '.join(unknown)} (a run has {', '.join(RUN_KEYS)})", path)
    for key in ("experiment", "optimizer", "weights"):
        if key in entry and (not isinstance(entry[key], str) or not entry[key]):
            raise OlmpError(f"{where}: {key} must be a non-empty string, got {entry[key]!r}", path)
    if "seed" in entry and not _is_seed(entry["seed"]):
        raise OlmpError(f"{where}: seed must be an integer in [0, {INT_MAX}], got {entry['seed']!r}", path)
    sets = entry.get("set", [])
    if not isinstance(sets, list) or not all(isinstance(s, str) and "=" in s for s in sets):
        raise OlmpError(f"{where}: set must be a list of \"SECTION.KEY=VALUE\" strings, got {sets!r}", path)
    return Run(out=out, experiment=entry["experiment"], optimizer=entry.get("optimizer"), seed=entry.get("seed"),
               weights=entry.get("weights"), sets=tuple(sets))


class Experiments:
    """The runs' experiments, each file (with its overrides) read and checked once."""

    def __init__(self, sweep: Sweep) -> None:
        self.sweep = sweep
        self._files: dict[tuple[Path, tuple[str, ...]], Experiment] = {}

    def base(self, run: Run) -> Experiment:
        """The experiment file with the run's overrides, before its optimizer, seed and weights."""
        from olmp import config  # noqa: PLC0415

        key = (self.sweep.experiment_file(run), run.sets)
        if key not in self._files:
            try:
                self._files[key] = config.load(*key)
            except OlmpError as exc:
                raise OlmpError(f"{run.out}: {exc}", self.sweep.path) from None
        return self._files[key]

    def __call__(self, run: Run) -> Experiment:
        """What ``olmp prune`` would run for this entry (the same replace and check as the command)."""
        from olmp import config  # noqa: PLC0415

        exp = self.base(run)
        changes = {k: v for k, v in (("optimizer", run.optimizer), ("seed", run.seed), ("weights", run.weights))
                   if v is not None}
        try:
            return config.check(exp.replace(**changes))
        except OlmpError as exc:
            raise OlmpError(f"{run.out}: {exc}", self.sweep.path) from None


# ---- records: which folders hold runs made by `olmp prune` ------------------------------------------

def prune_records(root: Path) -> Iterator[Path]:
    """Every record.json under ``root`` of a run made by ``olmp prune``.

    Left aside: ``best/`` (``olmp report``'s copy of another run, marked by its SOURCE file),
    transplant records (their ``experiment`` is a file name, not the settings) and anything that is
    not a finished run record (reference models keep train.json, benchmarks their own JSON).
    """
    for path in sorted(root.rglob(record.FILE)):
        if (path.parent / "SOURCE").is_file():
            continue
        try:
            data = json.loads(path.read_text())
            rec = record.RunRecord.from_dict(data, path)
        except (OSError, ValueError, OlmpError):
            continue
        if rec.finished and isinstance(rec.experiment.get("source"), str) and "progress" in data:
            yield path


def parse_source(source: str) -> tuple[str, tuple[str, ...]]:
    """A record's ``experiment.source`` ("FILE --set K=V ...") as (file name, overrides)."""
    head, *sets = source.split(" --set ")
    return Path(head.strip()).name, tuple(s.strip() for s in sets)


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
        f"# Every pruning run under {_in_repo(results)}/: how each folder is made (issue 17).",
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


# ---- the plan, and --dry-run's check --------------------------------------------------------------

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
                drifts.append(f"{_shown(rec_path)}: an unfinished run record (olmp prune writes only finished ones)")
                rows.append(Row(run, "drift", "unfinished record"))
                continue
            ok, why = _record_check(exp, run, rec.experiment, rec)
            if ok:
                f = rec.final
                note = f"{f['ratio']:.1f}x, test {f['test']['accuracy']:.4f}" + (f" ({why})" if why else "")
                rows.append(Row(run, "done", note, rec.seconds.get("wall", rec.seconds.get("this_session_wall"))))
            else:
                drifts.append(f"{_shown(folder)}: its record was made with other settings ({why})")
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
                drifts.append(f"{_shown(folder)}: its checkpoint was made with other settings ({why})")
                rows.append(Row(run, "drift", why))
        elif sweep.complete:
            drifts.append(f"{_shown(folder)}: listed in {_shown(sweep.path)} but holds no record")
            rows.append(Row(run, "drift", "no record"))
        else:
            rows.append(Row(run, "run"))
    if sweep.complete and runs is None:
        listed = {sweep.folder(r).resolve() for r in sweep.runs}
        for path in prune_records(sweep.root):
            if path.parent.resolve() not in listed:
                drifts.append(f"{_shown(path)}: a run record that {_shown(sweep.path)} does not list")
    return rows, drifts


def describe(sweep: Sweep, rows: Sequence[Row]) -> list[str]:
    """The plan as lines: each run's state and command, then the totals."""
    lines = [f"{_shown(sweep.path)}: {len(rows)} runs into {_shown(sweep.root)}/"]
    for r in rows:
        lines.append(f"  {r.state:<6} {r.run.out}" + (f"  [{r.detail}]" if r.detail else ""))
        lines.append(f"         {r.run.command(sweep.root)}")
    counts = {s: sum(r.state == s for r in rows) for s in ("done", "resume", "run", "drift")}
    walls = [r.wall for r in rows if r.wall is not None]
    lines.append(", ".join(f"{n} {s}" for s, n in counts.items() if n)
                 + (f"; the {len(walls)} done runs took {sum(walls) / 3600:.1f} core-hours "
                    "(their records' seconds.wall)" if walls else ""))
    return lines


# ---- one task: what runs on a Ray worker ----------------------------------------------------------

@dataclass
class Task:
    """What a worker needs for one run (pickled by Ray)."""

    out: str
    folder: str  # the driver's run folder
    exp: Experiment
    shared: bool
    marker: str = ""  # shared: the driver's status file, which holds ``token`` (found only on its file system)
    token: str = ""
    files: dict[str, bytes] = field(default_factory=dict)  # not shared: the driver's folder
    gpu: bool = False
    mirror: Any = None  # not shared: a ray.util.queue.Queue for the checkpoints


def sees_marker(marker: str, token: str) -> bool:
    """Whether this machine sees the driver's file system: its file ``marker`` holding ``token``."""
    try:
        return token in Path(marker).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return False


def read_folder(folder: Path) -> dict[str, bytes]:
    """A run folder's files (relative path -> bytes), less the lock and temporaries."""
    files = {}
    if folder.is_dir():
        for f in sorted(folder.rglob("*")):
            rel = f.relative_to(folder)
            if f.is_file() and not any(p.startswith(".") for p in rel.parts):
                files[rel.as_posix()] = f.read_bytes()
    return files


def read_checkpoint(folder: Path) -> dict[str, bytes] | None:
    """The checkpoint's files, read whole: None while it is being replaced (state.json read twice)."""
    ck = folder / checkpoint.CHECKPOINT
    try:
        before = (ck / "state.json").read_bytes()
        files = {f.name: f.read_bytes() for f in sorted(ck.iterdir()) if f.is_file()}
        after = (ck / "state.json").read_bytes()
    except OSError:
        return None
    return files if before == after == files.get("state.json") else None


def write_checkpoint(folder: Path, files: dict[str, bytes]) -> None:
    """Put a checkpoint sent by a worker in place, whole or not at all (as the pipeline does)."""
    with atomic.atomic_path(folder / checkpoint.CHECKPOINT) as tmp:
        tmp.mkdir()
        for name, data in files.items():
            (tmp / name).write_bytes(data)


def _mirror(local: Path, task: Task, stop: threading.Event) -> None:
    """Send each new checkpoint of the local run folder to the driver until ``stop``."""
    last = None
    while not stop.wait(POLL_SECONDS / 2):
        files = read_checkpoint(local)
        if files and files["state.json"] != last:
            task.mirror.put((task.out, files))
            last = files["state.json"]


def run_task(task: Task) -> dict[str, Any]:
    """One run on a worker: ``pipeline.prune(exp, folder, resume=True)``, as ``olmp prune --resume``.

    Returns a summary (and, where the file system is not shared, the finished folder's files), or
    ``{"error": one line}`` for what ``olmp prune`` would report as an error.
    """
    from olmp import caffe_bridge  # noqa: PLC0415

    try:
        if task.gpu:
            caffe_bridge.use_gpu(0)  # Ray hands the task one GPU and makes it device 0
        if task.shared:
            if not sees_marker(task.marker, task.token):
                raise OlmpError("this worker does not see the driver's files; rerun with --no-shared-fs",
                                task.folder)
            return _prune(task.exp, Path(task.folder), task)
        with tempfile.TemporaryDirectory(prefix="olmp-sweep-") as tmp:
            local = Path(tmp) / "run"
            for rel, data in task.files.items():
                (local / rel).parent.mkdir(parents=True, exist_ok=True)
                (local / rel).write_bytes(data)
            stop = threading.Event()
            watcher = threading.Thread(target=_mirror, args=(local, task, stop), daemon=True)
            watcher.start()
            try:
                res = _prune(task.exp, local, task)
            except (OlmpError, OSError) as exc:  # named as the driver's folder, where the user looks
                return {"out": task.out, "error": str(exc).replace(str(local), task.folder)}
            finally:
                stop.set()
                watcher.join()
            res["files"] = read_folder(local)
            return res
    except (OlmpError, OSError) as exc:
        return {"out": task.out, "error": str(exc)}


def _prune(exp: Experiment, folder: Path, task: Task) -> dict[str, Any]:
    from olmp import pipeline  # noqa: PLC0415

    rec_path = folder / record.FILE
    before = "ran"
    if rec_path.is_file():
        before = "finished before"
    elif checkpoint.exists(folder):
        try:
            before = f"resumed at iteration {checkpoint.read_state(folder)['next_itr']}"
        except OlmpError:
            before = "resumed"  # the resume itself says what is wrong with it
    t0 = time.perf_counter()
    rec = pipeline.prune(exp, folder, resume=True, progress=False)
    f = rec["final"]
    return {"out": task.out, "how": before, "ratio": f["ratio"], "test": f["test"]["accuracy"],
            "wall": rec["seconds"].get("wall"), "seconds": time.perf_counter() - t0}


# ---- the driver -----------------------------------------------------------------------------------

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
             f"`olmp sweep {_shown(sweep.path)}`; updated {time.strftime('%Y-%m-%d %H:%M:%S %Z')}, "
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


def _start_ray(address: str | None, max_parallel: int | None) -> Any:
    """ray.init on the local cores (as many as --max-parallel), or joining the cluster at ``address``."""
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # no phoning home from a reproduction
    import logging  # noqa: PLC0415

    import ray  # noqa: PLC0415

    host, sep, port = (address or "").rpartition(":")
    if sep and host and port.isdigit() and "://" not in host:  # Ray itself retries a dead address for ever
        import socket  # noqa: PLC0415

        try:
            socket.create_connection((host, int(port)), timeout=10).close()
        except OSError as exc:
            raise OlmpError(f"cannot reach the Ray cluster ({exc.strerror or exc}); is `ray start --head` "
                            "running there?", address) from None
    # runs at once share the cores: each gets its share of OpenMP threads (the results do not depend on
    # the count, only the speed: Caffe patch 0012); oversubscribed threads wait for each other
    from olmp import caffe_bridge  # noqa: PLC0415  (pycaffe is not imported for this)

    share = max(1, caffe_bridge.usable_cores() // max(1, max_parallel or caffe_bridge.usable_cores()))
    env = {"env_vars": {"OPENBLAS_NUM_THREADS": os.environ.get("OPENBLAS_NUM_THREADS", "1"),
                        "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", str(share))}}
    kw: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False, "logging_level": logging.ERROR,
                          "runtime_env": env}
    try:
        if address:
            ray.init(address=address, **kw)
        else:
            ray.init(num_cpus=max_parallel or os.cpu_count() or 1, **kw)
    except Exception as exc:  # noqa: BLE001  (Ray's errors are many kinds; each is one line here)
        raise OlmpError(f"Ray did not start: {type(exc).__name__}: {exc}", address) from None
    return ray


def run(sweep: Sweep, only: str | None = None, max_parallel: int | None = None, address: str | None = None,
        gpu: bool = False, shared_fs: bool | None = None, status_file: str | Path | None = None,
        report: bool = True, say: Callable[[str], None] = print) -> int:
    """Run the selected runs as Ray tasks; 0 when every one finished, 2 when any failed."""
    runs = sweep.select(only)
    exps = Experiments(sweep)
    loaded = {r.out: exps(r) for r in runs}  # every file read and checked before Ray starts
    status_path = Path(status_file) if status_file else sweep.root / "sweeps" / f"{sweep.name}-status.md"
    atomic.check_target(status_path)
    for r in runs:
        atomic.check_target(sweep.folder(r), folder=True)
    statuses = {r.out: Status(r, loaded[r.out].pipeline.niter) for r in runs}
    started, token = time.time(), uuid.uuid4().hex

    def write_status() -> None:
        atomic.write_text(status_path, status_table(sweep, list(statuses.values()), started, token))

    ray = _start_ray(address, max_parallel)
    marker = status_path.resolve()
    locks: list[checkpoint.RunLock] = []
    try:
        write_status()  # also the marker a probe task looks for
        if shared_fs is None:
            shared_fs = bool(ray.get(ray.remote(num_cpus=0)(sees_marker).remote(str(marker), token)))
        mirror = None
        if not shared_fs:
            from ray.util.queue import Queue  # noqa: PLC0415

            mirror = Queue(actor_options={"num_cpus": 0})
            for r in runs:  # the driver owns its folders; the tasks work in their own
                locks.append(checkpoint.RunLock(sweep.folder(r)))
                checkpoint.clean(sweep.folder(r))
        where = f"the Ray cluster at {address}" if address else f"local Ray ({max_parallel or os.cpu_count()} cores)"
        say(f"sweep {sweep.name}: {len(runs)} run{'s' if len(runs) > 1 else ''} on {where}, "
            f"{'shared' if shared_fs else 'no shared'} file system; status in {_shown(status_path)}")
        # a fresh worker process per run (max_calls=1), as `olmp prune` would have: Caffe's first net of a
        # process is probed in a forked child, and no run inherits another's Caffe state
        remote = ray.remote(num_cpus=1, num_gpus=1 if gpu else 0, max_retries=2, max_calls=1)(run_task)
        queue = list(runs)
        window = max_parallel if address and max_parallel else len(runs)  # local: Ray's num_cpus limits
        pending: dict[Any, Run] = {}
        failed: list[str] = []
        while queue or pending:
            while queue and len(pending) < window:
                r = queue.pop(0)
                folder = sweep.folder(r)
                task = Task(out=r.out, folder=str(folder.resolve()), exp=loaded[r.out], shared=shared_fs,
                            marker=str(marker), token=token, gpu=gpu, mirror=mirror,
                            files={} if shared_fs else read_folder(folder))
                pending[remote.remote(task)] = r
                statuses[r.out].state = "submitted"
            done, _ = ray.wait(list(pending), num_returns=1, timeout=POLL_SECONDS)
            changed = _drain(mirror, sweep, statuses)
            for ref in done:
                r = pending.pop(ref)
                try:
                    res = ray.get(ref)
                except Exception as exc:  # noqa: BLE001  (a crashed worker: its run fails, the sweep goes on)
                    res = {"out": r.out, "error": f"{type(exc).__name__}: {str(exc).strip().splitlines()[-1]}"}
                _finish(sweep, r, res, statuses[r.out], failed, say)
                changed = True
            for s in statuses.values():
                if s.state in ("submitted", "running"):
                    p = read_progress(sweep.folder(s.run))
                    if p and p.get("iteration") != s.iteration:
                        s.state, s.iteration = "running", int(p["iteration"])
                        s.ratio, s.test = p.get("ratio"), p.get("test_accuracy")
                        say(f"{s.run.out}: iteration {s.iteration}/{s.niter}, "
                            f"{s.ratio or 0:.1f}x, test {s.test or 0:.4f}")
                        changed = True
            if changed:
                write_status()
        write_status()
    finally:
        for lock in locks:
            lock.release()
        ray.shutdown()
    ok = [statuses[r.out].state == "done" for r in runs]
    say(f"sweep {sweep.name}: {sum(ok)} of {len(runs)} runs done" + (f", {len(failed)} failed" if failed else ""))
    reported = _report(sweep, [r for r, good in zip(runs, ok) if good]) if report and any(ok) else True
    for line in failed:
        print(f"olmp: error: {line}", file=sys.stderr)
    return 2 if failed or not reported else 0


def _drain(mirror: Any, sweep: Sweep, statuses: dict[str, Status]) -> bool:
    """Write the checkpoints the workers sent (not shared file system) into the driver's folders."""
    if mirror is None:
        return False
    got = False
    while not mirror.empty():
        out, files = mirror.get(block=False)
        if statuses[out].state in ("submitted", "running"):  # a late one after the result is dropped
            write_checkpoint(sweep.folder(statuses[out].run), files)
            got = True
    return got


def _finish(sweep: Sweep, r: Run, res: dict[str, Any], s: Status, failed: list[str],
            say: Callable[[str], None]) -> None:
    """A task's result: its files written (not shared), its status and line."""
    folder = sweep.folder(r)
    if "error" in res:
        s.state, s.note = "failed", res["error"]
        failed.append(res["error"])
        say(f"{r.out}: failed: {res['error']}")
        return
    files = res.get("files")
    if files is not None:  # not shared: the finished folder, as the worker left it
        for name in ("pruned.caffemodel", record.FILE, *sorted(set(files) - {"pruned.caffemodel", record.FILE})):
            target = folder / name
            if name in files and not (target.is_file() and target.read_bytes() == files[name]):
                atomic.write_bytes(target, files[name])  # a finished run's files are rewritten only if new
        checkpoint.remove(folder)
    s.state, s.iteration, s.ratio, s.test = "done", s.niter - 1, res["ratio"], res["test"]
    s.note = res["how"]
    say(f"{r.out}: done ({res['how']}): {res['ratio']:.1f}x, test {res['test']:.4f}")


def _report(sweep: Sweep, runs: Sequence[Run]) -> bool:
    """The reports (``olmp report`` and ``olmp compare``'s) of the models the runs belong to
    (``root/<model>/``); False if one failed (it said why)."""
    from olmp import regenerate  # noqa: PLC0415

    return regenerate.models(sorted({sweep.root / Path(r.out).parts[0] if len(Path(r.out).parts) > 1 else sweep.root
                                     for r in runs}))
