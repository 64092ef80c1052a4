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
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
from google.protobuf.message import DecodeError

from olmp import atomic, caffe_bridge, schemas, weights
from olmp.config import Experiment
from olmp.errors import OlmpError

CHECKPOINT = "checkpoint"
# a resume may change these: same result either way (variant is a label; search.workers, a removed
# setting, was 1 in every checkpoint that names it)
RESULT_FREE = ("source", "variant", "search.workers", "search.chunks")
ARRAYS = "arrays.npz"
SNAPSHOT = ".snapshot"  # Caffe's own snapshot files land here (pipeline's snapshot_prefix), then move


class RunLock:
    """An exclusive lock on a run folder; a second run pointed at it is refused."""

    def __init__(self, out: Path) -> None:
        self.out = out
        self.created = [p for p in (out, *out.parents) if not p.exists()]  # removed again if left empty
        try:
            out.mkdir(parents=True, exist_ok=True)
        except OSError as exc:  # e.g. a name too long: no half-made folders stay behind
            self._remove_created()
            raise OlmpError(f"cannot make the run folder: {exc.strerror or exc}", out) from None
        self.path = out / ".lock"
        self._made_lock = not self.path.exists()  # a failed run removes a lock file it made
        self._fh = open(self.path, "a+")  # noqa: SIM115
        try:
            fcntl.flock(self._fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as exc:
            self._fh.close()
            raise OlmpError("another olmp run is using this folder; wait for it or choose another --out", out) from exc

    def release(self) -> None:
        fcntl.flock(self._fh, fcntl.LOCK_UN)
        self._fh.close()

    def __enter__(self) -> RunLock:
        return self

    def __exit__(self, exc_type: object, *exc: object) -> None:
        if exc_type is not None and {p.name for p in self.out.iterdir()} == {".lock"}:
            self.path.unlink()  # a failed run that kept nothing leaves nothing, not a folder with a .lock
            self.release()
            self._remove_created()
            return
        if exc_type is not None and self._made_lock:
            self.path.unlink(missing_ok=True)  # the folder is left as the failed run found it
        self.release()

    def _remove_created(self) -> None:
        for folder in self.created:  # innermost first; a folder another process filled meanwhile stays
            try:
                folder.rmdir()
            except FileNotFoundError:
                continue
            except OSError:
                break


def save(out: Path, solver: Any, mask_state: dict[str, np.ndarray], state: dict[str, Any],
         arrays: dict[str, np.ndarray] | None = None) -> None:
    """Write ``out/checkpoint`` atomically. Call between solver steps (blobs hold dense W).

    ``arrays``: other state of the run too large for state.json (a weight average's sums), in arrays.npz.
    """
    snap_dir = out / SNAPSHOT
    try:
        take_snapshot(solver, snap_dir, out / CHECKPOINT)
        _assemble(out, snap_dir, mask_state, state, arrays)
    finally:
        shutil.rmtree(snap_dir, ignore_errors=True)


def take_snapshot(solver: Any, snap_dir: Path, where: Path) -> None:
    """Caffe's snapshot (<snapshot_prefix>_iter_N.{caffemodel,solverstate}) into a fresh ``snap_dir``.

    The weights and one or two history blobs per parameter blob (Adam keeps two) need about
    three times the parameters' bytes; a write that fails is a one-line error naming ``where``.
    """
    shutil.rmtree(snap_dir, ignore_errors=True)
    try:
        snap_dir.mkdir()
    except OSError as exc:
        raise OlmpError(f"cannot write: {exc.strerror or exc}", where) from None
    need = 3 * 4 * sum(b.data.size for blobs in solver.net.params.values() for b in blobs)
    try:
        caffe_bridge.snapshot(solver, snap_dir, where, need)
    except caffe_bridge.CaffeError as exc:
        raise OlmpError(str(exc)) from None


def _assemble(out: Path, snap_dir: Path, mask_state: dict[str, np.ndarray], state: dict[str, Any],
              arrays: dict[str, np.ndarray] | None = None) -> None:
    model = next(snap_dir.glob("*.caffemodel"))
    solverstate = next(snap_dir.glob("*.solverstate"))
    with atomic.atomic_path(out / CHECKPOINT) as tmp:
        tmp.mkdir()
        os.replace(model, tmp / "weights.caffemodel")
        os.replace(solverstate, tmp / "solver.solverstate")
        with open(tmp / "masks.npz", "wb") as fh:
            np.savez(fh, **mask_state)  # type: ignore[arg-type]  # (numpy's stub reads ** as allow_pickle)
        if arrays is not None:
            with open(tmp / ARRAYS, "wb") as fh:
                np.savez(fh, **arrays)  # type: ignore[arg-type]
        with open(tmp / "state.json", "w") as fh:
            fh.write(json.dumps(state))
        for f in tmp.iterdir():
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())


def load_arrays(out: Path, shapes: dict[str, tuple[int, ...]]) -> dict[str, np.ndarray]:
    """The checkpoint's arrays.npz, with exactly these keys and shapes (a damaged one is never resumed from)."""
    path = out / CHECKPOINT / ARRAYS
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        raise OlmpError(f"unreadable checkpoint arrays ({exc}); remove the checkpoint to start again", path) from None
    if set(arrays) != set(shapes) or any(arrays[k].shape != tuple(v) for k, v in shapes.items()):
        raise OlmpError("checkpoint arrays do not fit the run; remove the checkpoint to start again", path)
    return arrays


def clean(out: Path) -> None:
    """Finish or drop what a killed run was writing: interrupted renames, Caffe's snapshot files.

    Call with the run's lock held; nothing else writes these temporaries.
    """
    atomic.clean(out)
    shutil.rmtree(out / SNAPSHOT, ignore_errors=True)


def remove(out: Path) -> None:
    """Drop the checkpoint in one rename, so a kill never leaves it half deleted."""
    ck = out / CHECKPOINT
    if ck.exists():
        gone = Path(tempfile.mkdtemp(prefix=f".{CHECKPOINT}.", suffix=".tmp", dir=out))
        os.replace(ck, gone / CHECKPOINT)
        shutil.rmtree(gone, ignore_errors=True)


def exists(out: Path) -> bool:
    return (out / CHECKPOINT / "state.json").is_file()


def _settings(experiment: dict[str, Any]) -> dict[str, Any]:
    """An experiment's settings as ``section.key`` -> value, less those the result does not depend on."""
    flat: dict[str, Any] = {}
    for key, value in json.loads(json.dumps(experiment)).items():
        if isinstance(value, dict):
            flat.update({f"{key}.{k}": v for k, v in value.items()})
        else:
            flat[key] = value
    for key in RESULT_FREE:
        flat.pop(key, None)
    return flat


def changed_settings(now: dict[str, Any], then: dict[str, Any]) -> list[str]:
    """The settings a resume would change. A setting the checkpoint does not name did not exist when
    it was made, so the run used that setting's default (a new setting's default keeps the old behaviour)."""
    now, then = _settings(now), _settings(then)
    defaults = _settings(Experiment(name="", solver="", net="", weights="", layers=()).to_dict())
    return sorted(k for k in set(now) | set(then) if now.get(k) != then.get(k, defaults.get(k)))


def _check_history(ss: Any, solver: Any, path: Path) -> None:
    """Caffe aborts (or overruns memory) on a solver history that does not fit the net: check first."""
    sizes = [b.data.size for blobs in solver.net.params.values() for b in blobs]
    got = [int(np.prod(h.shape.dim)) if h.HasField("shape") else h.num * h.channels * h.height * h.width
           for h in ss.history]
    if not sizes or len(got) % len(sizes) or got != sizes * (len(got) // len(sizes)):
        raise OlmpError("solver history does not fit the net; remove the checkpoint to start again", path)


def read_state(out: Path) -> dict[str, Any]:
    """A checkpoint's state.json, checked (olmp.schemas.CheckpointState); damaged is one line naming it."""
    path = out / CHECKPOINT / "state.json"
    try:
        state = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise OlmpError(f"unreadable checkpoint state ({exc}); remove the checkpoint to start again", path) from None
    schemas.check(schemas.CheckpointState, state, "checkpoint state", path)
    schemas.check_rng(state["rng"], path)
    return state


def load(
    out: Path, solver: Any, experiment: dict[str, Any] | None = None,
    mask_shapes: dict[str, tuple[int, ...]] | None = None,
) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Restore the solver (weights, history, iteration); return (mask_state, state).

    Every file of the checkpoint is checked before the solver is touched: one that fails is
    never resumed from. With ``experiment`` (``Experiment.to_dict()``), a checkpoint made with
    other settings is refused: resuming it could not give the uninterrupted run's result. With
    ``mask_shapes`` (the run's masks, ``MaskedLayers.state()``'s keys and shapes), masks.npz must
    hold exactly those masks.
    """
    ck = out / CHECKPOINT
    pb = caffe_bridge.caffe_pb2()
    ss = pb.SolverState()
    state = read_state(out)
    try:
        with np.load(ck / "masks.npz", allow_pickle=False) as z:
            mask_state = {k: z[k] for k in z.files}
    except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile) as exc:
        raise OlmpError(f"unreadable masks archive ({exc}); remove the checkpoint to start again",
                        ck / "masks.npz") from None
    if mask_shapes is not None:
        schemas.check_masks(mask_state, mask_shapes, ck / "masks.npz")
    try:
        ss.ParseFromString((ck / "solver.solverstate").read_bytes())
    except (OSError, DecodeError, RuntimeError, ValueError) as exc:
        raise OlmpError(f"unreadable solver state ({exc}); remove the checkpoint to start again",
                        ck / "solver.solverstate") from None
    made_with = state["record"]["experiment"]
    if experiment is not None:
        changed = changed_settings(experiment, made_with)
        if changed:
            raise OlmpError(f"the checkpoint was made with other settings ({', '.join(changed)}); resume with the "
                            "same experiment and options, or choose another --out", out)
    _check_history(ss, solver, ck / "solver.solverstate")
    weights.check_against_net(weights.read_caffemodel(ck / "weights.caffemodel"), solver.net)
    ss.ClearField("learned_net")  # weights are loaded below, through our checked loader
    caffe_bridge.restore_solver(solver, ss)
    weights.load_weights(solver.net, ck / "weights.caffemodel")
    return mask_state, state
