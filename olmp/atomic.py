"""Write-then-rename helpers, so that no output is ever seen half-written.

Every temporary is a ``.NAME.*.tmp`` folder beside its target; ``clean`` finishes or
drops the ones a killed process left behind.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator


@contextlib.contextmanager
def atomic_path(target: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``target``; rename it over ``target`` on success.

    Works for files and for directories (an LMDB, a run folder). On failure the
    temporary is removed and ``target`` is left exactly as it was.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    tmp_target = tmp / target.name
    try:
        yield tmp_target
        if tmp_target.is_dir() and target.exists():
            # rename() cannot replace a non-empty directory: swap the two in one step where the
            # kernel can, else via a second name (``clean`` completes a swap cut in the middle)
            if not _exchange(tmp_target, target):
                os.replace(target, tmp / (target.name + OLD))
                os.replace(tmp_target, target)
        else:
            if target.is_dir() and not tmp_target.is_dir():
                from olmp.errors import OlmpError  # noqa: PLC0415

                raise OlmpError("is a folder; give a file name to write", target)
            os.replace(tmp_target, target)
        _fsync_dir(target.parent)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


OLD = ".old"
_AT_FDCWD, _RENAME_EXCHANGE = -100, 2


def _exchange(a: Path, b: Path) -> bool:
    """Swap two existing paths atomically (Linux renameat2); False where the system cannot."""
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return False
    if renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP):
        return False
    raise OSError(err, os.strerror(err), str(b))


def clean(folder: str | Path) -> list[str]:
    """Remove the temporaries of interrupted writes in ``folder``; return their names.

    A two-step directory swap cut between its renames has moved the old target aside
    and not yet put the new one (complete by then) in place: that one is finished.
    Call only while no other process writes into ``folder`` (e.g. under a run lock).
    """
    folder = Path(folder)
    removed = []
    for tmp in sorted(folder.glob(".*.tmp")):
        if not tmp.is_dir():
            continue
        for new in tmp.iterdir():
            if (tmp / (new.name + OLD)).exists() and not (folder / new.name).exists():
                os.replace(new, folder / new.name)
        shutil.rmtree(tmp, ignore_errors=True)
        removed.append(tmp.name)
    return removed


def write_bytes(target: str | Path, data: bytes) -> None:
    with atomic_path(target) as tmp:
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())


def write_text(target: str | Path, text: str) -> None:
    write_bytes(target, text.encode("utf-8"))


def write_json(target: str | Path, obj: Any) -> None:
    write_text(target, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
