"""Where things live. Every path the package uses is derived here."""

from __future__ import annotations

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
MODELS_DIR = REPO_ROOT / "models"
SOLVERS_DIR = REPO_ROOT / "solvers"
EXPERIMENTS_DIR = REPO_ROOT / "scripts" / "experiments"
RESULTS_DIR = REPO_ROOT / "results"


def data_dir() -> Path:
    """Data sets; ``OLMP_DATA_DIR`` overrides ``<repo>/data``."""
    return Path(os.environ.get("OLMP_DATA_DIR", REPO_ROOT / "data"))


def mnist_dir() -> Path:
    return data_dir() / "mnist"


def cache_dir() -> Path:
    """Build and download cache; ``OLMP_CACHE_DIR`` overrides ``~/.cache/olmp``."""
    return Path(os.environ.get("OLMP_CACHE_DIR", Path.home() / ".cache" / "olmp"))


def external_models_dir() -> Path:
    """The authors' released caffemodels (optional, read-only, never copied)."""
    return Path(os.environ.get("OLMP_EXTERNAL_MODELS", REPO_ROOT.parent / "shared" / "external-models"))


def from_cwd(path: str | None) -> str | None:
    """A path given on the command line, made to mean relative to the current directory.

    Library calls read relative paths against the repository root (the shipped experiments and
    records are written that way), so a relative argument becomes absolute, except when the current
    directory is the repository root: there both readings agree and the string is kept as typed,
    which keeps what run records store (e.g. ``--weights ../shared/...``) unchanged.
    """
    if path is None or Path(path).is_absolute():
        return path
    cwd = Path.cwd().resolve()
    if cwd == REPO_ROOT and Path(path).parts[:1] != ("data",):  # data/... would mean OLMP_DATA_DIR
        return path
    return os.path.normpath(cwd / path)


def in_experiment_file(value: str, experiment_file: Path) -> str:
    """A path inside an experiment file: relative to that file's folder.

    The shipped experiments (scripts/experiments/) name repository-relative paths, and so do files
    written before this rule: for them, and for a path found only under the repository, the string is
    kept as written (run records store it). A path found under the file's folder, or found nowhere
    (so that the error names where it was looked for), becomes absolute.
    """
    p = Path(value)
    folder = experiment_file.resolve().parent
    if p.is_absolute() or folder == EXPERIMENTS_DIR:
        return value
    beside = os.path.normpath(folder / p)
    if os.path.exists(beside):
        return beside
    return value if resolve_path(value).exists() else beside


def resolve_path(path: str | Path) -> Path:
    """A relative path means relative to the repo root; ``data/...`` means the data dir."""
    p = Path(path)
    if p.is_absolute():
        return p
    if p.parts and p.parts[0] == "data":
        return data_dir().joinpath(*p.parts[1:])
    return REPO_ROOT / p


NAME_BYTES = 200  # a folder name's limit is 255 bytes on most file systems; room for a suffix


def default_run_folder(name: str, run: str, where: str | Path | None = None) -> Path:
    """``runs/<name>/<run>``, the folder ``olmp prune`` writes without ``--out``.

    The experiment's ``name`` becomes one folder name, so it must be one: not empty, no ``/``,
    no control characters, not ``.`` or ``..``, at most NAME_BYTES bytes; the folder then stays
    inside ``runs/``. ``where`` (the experiment file) is named in the error.
    """
    from olmp.errors import OlmpError  # noqa: PLC0415

    why = None
    if not name.strip():
        why = "is empty"
    elif name in (".", "..") or any(c in name for c in "/\\") or any(ord(c) < 32 or ord(c) == 127 for c in name):
        why = "is not a single folder name (no /, \\, control characters, '.' or '..')"
    elif len(name.encode("utf-8", "surrogatepass")) > NAME_BYTES:
        why = f"is longer than {NAME_BYTES} bytes"
    runs = Path("runs")
    folder = runs / name / run
    if why is None and not os.path.normpath(folder).startswith(f"{runs}{os.sep}"):
        why = "would leave runs/"
    if why is not None:
        raise OlmpError(f"name {name[:60]!r} {why}: it names the default output folder runs/<name>/; "
                        "fix the name or pass --out", where)
    return folder
