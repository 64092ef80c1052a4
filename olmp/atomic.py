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
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

# errors of the file system written to, not of the data: reported against the file the user named
_WRITE_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EIO, errno.EROFS, errno.EFBIG, errno.EACCES, errno.EPERM)


def check_target(target: str | Path, folder: bool = False) -> Path:
    """Refuse, before any work, an output that write-then-rename would damage or cannot make.

    A rename over a device or FIFO (``/dev/full``, ``/dev/null``) would replace it with a
    regular file, so an existing target must be a regular file (a folder with
    ``folder=True``). Its nearest existing parent must be a folder this process can create
    files in: that is tried (an empty file made and removed), since as root permission
    bits say nothing about ``/proc`` or a read-only mount.
    """
    from olmp.errors import OlmpError  # noqa: PLC0415

    target = Path(target)
    try:
        st = os.stat(target)  # follows a symlink: a link to a device is refused too
    except FileNotFoundError:
        st = None
    except OSError as exc:
        raise OlmpError(f"cannot use as an output ({exc.strerror})", target) from None
    if st is not None:
        if folder and not stat.S_ISDIR(st.st_mode):
            raise OlmpError("exists and is not a folder; give a folder to write into", target)
        if not folder and stat.S_ISDIR(st.st_mode):
            raise OlmpError("is a folder; give a file name to write", target)
        if not folder and not stat.S_ISREG(st.st_mode):
            raise OlmpError("exists and is not a regular file (a device, FIFO or socket); "
                            "olmp only replaces regular files", target)
    parent = target.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise OlmpError(f"cannot be written: {parent} is not a folder", target)
    try:
        fd, probe = tempfile.mkstemp(prefix=".olmp-probe.", suffix=".tmp", dir=parent)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise OlmpError(f"cannot be written: {parent} is not writable ({exc.strerror})", target) from None
    return target


def same_file(a: str | Path, b: str | Path) -> bool:
    """Whether two paths name one file: the same path once links are resolved, or the same inode."""
    if os.path.realpath(a) == os.path.realpath(b):
        return True
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def check_new(target: str | Path, inputs: tuple[str | Path | None, ...] = (), force: bool = False) -> Path:
    """Refuse an output that is one of the command's inputs (even with ``force``: the input would be
    gone before it is read whole), or one that exists, unless ``force`` (``--force``) says to replace it."""
    from olmp.errors import OlmpError  # noqa: PLC0415

    target = Path(target)
    for given in inputs:
        if given is not None and same_file(target, given):
            raise OlmpError(f"is also the input {given}; write the output to another file", target)
    if not force and (target.exists() or target.is_symlink()):
        raise OlmpError("exists; pass --force to replace it", target)
    return target


def _write_error(exc: OSError, target: Path, tmp: Path) -> Exception | None:
    """The one-line error naming ``target`` for a failed write into its temporary ``tmp``."""
    from olmp.errors import OlmpError  # noqa: PLC0415

    names = [str(n) for n in (exc.filename, exc.filename2) if n is not None]
    ours = any(n.startswith(str(tmp)) for n in names)
    if not ours and not (exc.errno in _WRITE_ERRNOS and not names):
        return None
    why = exc.strerror or str(exc)
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        why += " (disk full); nothing was written"
    return OlmpError(f"cannot write: {why}", target)


@contextlib.contextmanager
def atomic_path(target: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``target``; rename it over ``target`` on success.

    Works for files and for directories (an LMDB, a run folder). On failure the
    temporary is removed, ``target`` is left exactly as it was, and so are the folders
    above it: those made here are removed again.
    """
    target = Path(target)
    if target.exists() and not target.is_dir():
        check_target(target)  # never rename over a device or FIFO
    made = _missing_folders(target.parent)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    except OSError as exc:
        from olmp.errors import OlmpError  # noqa: PLC0415

        _remove_empty(made)
        raise OlmpError(f"cannot write into {target.parent}: {exc.strerror or exc}", target) from None
    tmp_target = tmp / target.name
    done = False
    try:
        try:
            yield tmp_target
            _fsync_tree(tmp_target)  # a disk's write error shows at writeback: here, before the rename
        except OSError as exc:  # a full disk, an I/O error: name the file asked for, not the temporary
            err = _write_error(exc, target, tmp)
            if err is None:
                raise
            raise err from None
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
        done = True
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        if not done:
            _remove_empty(made)


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


def _missing_folders(folder: Path) -> list[Path]:
    """``folder`` and its parents that do not exist yet, innermost first."""
    return [p for p in (folder, *folder.parents) if not p.exists()]


def _remove_empty(folders: list[Path]) -> None:
    """Remove the folders a failed write made (innermost first) while they are empty."""
    for folder in folders:
        try:
            folder.rmdir()
        except OSError:  # not empty (another writer's files), or gone: leave it
            break


def write_bytes(target: str | Path, data: bytes) -> None:
    with atomic_path(target) as tmp, open(tmp, "wb") as fh:
        fh.write(data)


def write_text(target: str | Path, text: str) -> None:
    write_bytes(target, text.encode("utf-8"))


def write_json(target: str | Path, obj: Any) -> None:
    """Strict JSON: a number that is not finite is written as ``null`` (olmp.schemas.finite)."""
    from olmp.schemas import finite  # noqa: PLC0415  (pydantic: only when JSON is written)

    write_text(target, json.dumps(finite(obj), indent=2, sort_keys=False, allow_nan=False) + "\n")


def _fsync_tree(path: Path) -> None:
    """fsync a written file, or every file under a written folder. Writers that never sync (matplotlib,
    a copy) would otherwise have a failing disk's EIO lost, and a damaged file renamed into place."""
    if not path.exists():
        return
    for f in [path] if not path.is_dir() else sorted(path.rglob("*")):
        if f.is_file() and not f.is_symlink():
            fd = os.open(f, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
