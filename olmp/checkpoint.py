"""Run folders: one owner at a time, and checkpoints that are whole or absent.

A checkpoint holds everything the pipeline needs to go on as if never stopped:
Caffe's snapshot (dense weights + solver history + iteration), the masks, the
crates, the pipeline's RNG state and the record so far. It is assembled in a
temporary folder and renamed into place, so a kill at any moment leaves either
the previous checkpoint or the new one.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from olmp import atomic, caffe_bridge, weights
from olmp.errors import OlmpError

CHECKPOINT = "checkpoint"


class RunLock:
    """An exclusive lock on a run folder; a second run pointed at it is refused."""

    def __init__(self, out: Path) -> None:
        out.mkdir(parents=True, exist_ok=True)
        self.path = out / ".lock"
        self._fh = open(self.path, "a+")  # noqa: SIM115
        try:
            fcntl.flock(self._fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as exc:
            self._fh.close()
            raise OlmpError("another olmp run is using this folder; wait for it or choose another --out", out) from exc

    def release(self) -> None:
        fcntl.flock(self._fh, fcntl.LOCK_UN)
        self._fh.close()

    def __enter__(self) -> "RunLock":
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def save(out: Path, solver: Any, mask_state: dict[str, np.ndarray], state: dict[str, Any]) -> None:
    """Write ``out/checkpoint`` atomically. Call between solver steps (blobs hold dense W)."""
    snap_dir = out / ".snapshot"
    shutil.rmtree(snap_dir, ignore_errors=True)
    snap_dir.mkdir()
    solver.snapshot()  # writes <snapshot_prefix>_iter_N.{caffemodel,solverstate} into .snapshot/
    model = next(snap_dir.glob("*.caffemodel"))
    solverstate = next(snap_dir.glob("*.solverstate"))
    with atomic.atomic_path(out / CHECKPOINT) as tmp:
        tmp.mkdir()
        os.replace(model, tmp / "weights.caffemodel")
        os.replace(solverstate, tmp / "solver.solverstate")
        with open(tmp / "masks.npz", "wb") as fh:
            np.savez(fh, **mask_state)
        (tmp / "state.json").write_text(json.dumps(state))
        for f in tmp.iterdir():
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())
    shutil.rmtree(snap_dir, ignore_errors=True)


def exists(out: Path) -> bool:
    return (out / CHECKPOINT / "state.json").is_file()


def load(out: Path, solver: Any) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Restore the solver (weights, history, iteration); return (mask_state, state)."""
    ck = out / CHECKPOINT
    try:
        state = json.loads((ck / "state.json").read_text())
        with np.load(ck / "masks.npz") as z:
            mask_state = {k: z[k] for k in z.files}
    except (OSError, ValueError, KeyError) as exc:
        raise OlmpError(f"unreadable checkpoint ({exc})", ck) from exc
    pb = caffe_bridge.caffe_pb2()
    ss = pb.SolverState()
    ss.ParseFromString((ck / "solver.solverstate").read_bytes())
    ss.ClearField("learned_net")  # weights are loaded below, through our checked loader
    with tempfile.NamedTemporaryFile(suffix=".solverstate", delete=True) as fh:
        fh.write(ss.SerializeToString())
        fh.flush()
        solver.restore(fh.name)
    weights.load_weights(solver.net, ck / "weights.caffemodel")
    return mask_state, state
