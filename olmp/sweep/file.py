"""The sweep file: what each run folder is made with, checked as the experiment files are.

The file's shape is two pydantic models (unknown keys refused, TOML's types taken strictly), and a
bad value is one OlmpError line naming the file in the words of ``config.explain``; a run's fault
also names the run (``run 3 (lenet5/ncs-seed2): seed must be an integer, got '2'``).
"""

from __future__ import annotations

import fnmatch
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, TypeVar

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, Strict, ValidationError

from olmp import config, paths
from olmp.config import INT_MAX, Experiment, read_toml
from olmp.errors import OlmpError


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
        parts += ["--out", shown(root / self.out), "--resume"]
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


def shown(p: Path) -> str:
    """A path as a user reads it: relative to the current directory when under it."""
    try:
        return str(p.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(p)


# ---- the file's shape ----------------------------------------------------------------------------

def _under_root(out: str) -> str:
    """A run folder must stay under root: the sweep writes nowhere else."""
    if not out or Path(out).is_absolute() or ".." in Path(out).parts:
        raise ValueError("not a folder under root")
    return Path(out).as_posix()


def _override(setting: str) -> str:
    if "=" not in setting:
        raise ValueError("not SECTION.KEY=VALUE")
    return setting


_STRICT = ConfigDict(extra="forbid", frozen=True)  # TOML has real types: "1" is not a seed
_NAME = "a non-empty string"


class RunEntry(BaseModel):
    """One table of ``runs``; its fields are the keys a run may have, named as the file names them."""

    model_config = _STRICT
    out: Annotated[str, Strict(), AfterValidator(_under_root)] = Field(
        description="a folder under root (relative, no '..')")
    experiment: str = Field(strict=True, min_length=1, description=_NAME)
    optimizer: str | None = Field(None, strict=True, min_length=1, description=_NAME)
    seed: int | None = Field(None, strict=True, ge=0, le=INT_MAX, description="an integer")
    weights: str | None = Field(None, strict=True, min_length=1, description=_NAME)
    set: list[Annotated[str, Strict(), AfterValidator(_override)]] = Field(
        default_factory=list, strict=True, description='a list of "SECTION.KEY=VALUE" strings')

    def run(self) -> Run:
        return Run(out=self.out, experiment=self.experiment, optimizer=self.optimizer, seed=self.seed,
                   weights=self.weights, sets=tuple(self.set))


class SweepFile(BaseModel):
    """The file's top level; each entry of ``runs`` is checked on its own, so its fault names the run."""

    model_config = _STRICT
    root: str = Field(".", strict=True, min_length=1, description="a folder name")
    complete: bool = Field(False, strict=True, description="true or false")
    runs: list[Any] = Field(min_length=1, strict=True,
                            description="a non-empty list of tables (runs = [{out = ..., experiment = ...}])")


RUN_KEYS = tuple(RunEntry.model_fields)
TOP_KEYS = tuple(SweepFile.model_fields)
M = TypeVar("M", bound=BaseModel)


def _validated(model: type[M], data: dict[str, Any], what: str, path: Path, where: str = "") -> M:
    """``data`` as ``model``, or one OlmpError line; an unknown key's line lists the keys there are."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        msg = config.explain(exc, data, model=model)
        if msg.startswith("unknown key(s)"):
            msg += f" ({what} has {', '.join(model.model_fields)})"
        if where and "out" in data and not any(e["loc"][:1] == ("out",) for e in exc.errors()):
            where += f" ({_under_root(data['out'])})"
        raise OlmpError(f"{where}: {msg}" if where else msg, path) from None


def read(path: str | Path) -> Sweep:
    """Read and check a sweep file; anything wrong is one OlmpError line naming the file."""
    path = Path(path)
    raw = read_toml(path, "sweep file")
    top = _validated(SweepFile, {"runs": [], **raw}, "a sweep file", path)  # no runs: an empty list, refused
    runs: list[Run] = []
    seen = set()
    for i, entry in enumerate(top.runs, 1):
        if not isinstance(entry, dict):
            raise OlmpError(f"run {i} must be a table, got {entry!r}", path)
        run = _validated(RunEntry, entry, "a run", path, f"run {i}").run()
        if run.out in seen:
            raise OlmpError(f"run {i}: out {run.out!r} is listed twice", path)
        seen.add(run.out)
        runs.append(run)
    sweep = Sweep(path=path, root=Path(os.path.normpath(path.parent / top.root)), complete=top.complete,
                  runs=tuple(runs))
    for i, run in enumerate(runs, 1):
        if not sweep.experiment_file(run).is_file():
            raise OlmpError(f"run {i} ({run.out}): unknown experiment {run.experiment!r} "
                            f"(no {shown(sweep.experiment_file(run))})", path)
    return sweep


class Experiments:
    """The runs' experiments, each file (with its overrides) read and checked once."""

    def __init__(self, sweep: Sweep) -> None:
        self.sweep = sweep
        self._files: dict[tuple[Path, tuple[str, ...]], Experiment] = {}

    def base(self, run: Run) -> Experiment:
        """The experiment file with the run's overrides, before its optimizer, seed and weights."""
        key = (self.sweep.experiment_file(run), run.sets)
        if key not in self._files:
            try:
                self._files[key] = config.load(*key)
            except OlmpError as exc:
                raise OlmpError(f"{run.out}: {exc}", self.sweep.path) from None
        return self._files[key]

    def __call__(self, run: Run) -> Experiment:
        """What ``olmp prune`` would run for this entry (the same replace and check as the command)."""
        exp = self.base(run)
        changes = {k: v for k, v in (("optimizer", run.optimizer), ("seed", run.seed), ("weights", run.weights))
                   if v is not None}
        try:
            return config.check(exp.replace(**changes))
        except OlmpError as exc:
            raise OlmpError(f"{run.out}: {exc}", self.sweep.path) from None
