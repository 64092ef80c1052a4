"""What runs on a Ray worker: one run, as ``olmp prune --resume`` would make it.

Where the workers see the driver's file system (shared), a task writes the driver's run folder
itself. Where they do not, the driver sends the folder's files (a checkpoint, or a finished run) with
the task; the task runs in a temporary folder, mirrors each new checkpoint back through a Ray queue
while it runs, and returns the finished folder's files, which the driver writes. Either way the
driver's folders hold every checkpoint, so a rerun resumes.
"""

from __future__ import annotations

import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from olmp import atomic, caffe_bridge, checkpoint, record
from olmp.config import Experiment
from olmp.errors import OlmpError

POLL_SECONDS = 2.0  # how often the driver reads the run folders (and a task its checkpoint)


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
            except (OlmpError, caffe_bridge.CaffeError, OSError) as exc:  # named as the driver's folder
                return {"out": task.out, "error": str(exc).replace(str(local), task.folder)}
            finally:
                stop.set()
                watcher.join()
            res["files"] = read_folder(local)
            return res
    except (OlmpError, caffe_bridge.CaffeError, OSError) as exc:
        return {"out": task.out, "error": str(exc)}


def _prune(exp: Experiment, folder: Path, task: Task) -> dict[str, Any]:
    # the pipeline imports Caffe, whose log level is set before its first import: only where a run starts
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
