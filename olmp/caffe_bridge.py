"""The only module that imports caffe.

Caffe's glog output floods a terminal, so its level is fixed before the first
import; ``set_verbose`` must therefore be called before anything touches caffe.
The first net or solver of a process is built in a forked child first, so that a
net Caffe CHECK-fails on becomes a one-line error instead of an abort. Later ones
are not: by then Caffe's data-prefetch threads run, and a forked child can block on
a lock one of them held. Later nets are derived from the first (the pipeline's
validation net), or built in fresh worker processes, whose first build is probed.
On the GPU (``--gpu``) nothing is probed: a forked child cannot use CUDA.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
import tempfile
import time
from pathlib import Path
from types import ModuleType
from typing import Callable

_caffe: ModuleType | None = None
PROBE_SECONDS = 60.0  # a probe child taking longer is given up on (see probe)
_built = False  # whether this process has built a Caffe net (and so may run Caffe's threads)
_gpu: int | None = None  # None: CPU (the default); else the CUDA device every net runs on
# a CUDA build of _caffe.so links the CUDA runtime (shared or static); a CPU_ONLY one never names it
_CUDA_MARKERS = (b"libcudart", b"cudaGetDeviceCount")


def set_verbose(verbose: bool) -> None:
    """Show Caffe's own INFO log (``--verbose``); default shows errors only."""
    if _caffe is not None:
        return
    os.environ["GLOG_minloglevel"] = "0" if verbose else os.environ.get("OLMP_GLOG_MINLOGLEVEL", "2")


def caffe() -> ModuleType:
    """Import pycaffe on first use, in CPU mode unless ``use_gpu`` chose a device."""
    global _caffe
    if _caffe is None:
        os.environ.setdefault("GLOG_minloglevel", os.environ.get("OLMP_GLOG_MINLOGLEVEL", "2"))
        try:
            import caffe as _c  # noqa: PLC0415
        except ImportError as exc:
            from olmp.errors import OlmpError

            raise OlmpError(f"pycaffe is not importable ({exc}); run `make setup`") from exc
        _c.set_mode_cpu()
        _caffe = _c
    return _caffe


def library_path() -> Path:
    """The compiled pycaffe extension (``caffe/_caffe.so``) in use."""
    return Path(caffe()._caffe.__file__)


def has_cuda() -> bool:
    """True for a pycaffe built with CUDA (OLMP_CAFFE_VARIANT=cuda), False for CPU_ONLY.

    Caffe's CPU_ONLY build aborts the whole process (LOG(FATAL), no exception) on any GPU
    call, so the build is inspected instead of asked.
    """
    data = library_path().read_bytes()
    return any(m in data for m in _CUDA_MARKERS)


def _cuda_device_count() -> int | None:
    """Devices the CUDA runtime sees, or None when it cannot be asked (then Caffe checks)."""
    try:
        rt = ctypes.CDLL("libcudart.so")
    except OSError:
        return None
    count = ctypes.c_int(0)
    return count.value if rt.cudaGetDeviceCount(ctypes.byref(count)) == 0 else 0


def use_gpu(device: int | None) -> None:
    """``--gpu N``: run every net on CUDA device N; None keeps the CPU (the default).

    Caffe's mode is per thread; the solver, its data prefetch threads and every net
    olmp makes run from the thread that called this.
    """
    global _gpu
    if device is None:
        return
    from olmp.errors import OlmpError  # noqa: PLC0415

    if device < 0:
        raise OlmpError(f"--gpu must be a device number >= 0, got {device}")
    c = caffe()
    if not has_cuda():
        raise OlmpError(
            f"--gpu {device}: this pycaffe is a CPU_ONLY build; run without --gpu, or on a CUDA machine "
            "rebuild with `OLMP_CAFFE_VARIANT=cuda make setup` (see docker/README.md)",
            library_path(),
        )
    count = _cuda_device_count()
    if count is not None and device >= count:
        raise OlmpError(f"--gpu {device}: the CUDA runtime sees {count} device(s)")
    c.set_mode_gpu()
    c.set_device(device)
    _gpu = device


def gpu_device() -> int | None:
    """The CUDA device in use, or None on the CPU (recorded with timings)."""
    return _gpu


def caffe_pb2() -> ModuleType:
    """Caffe's protobuf messages (NetParameter, SolverParameter, Datum, ...)."""
    caffe()
    from caffe.proto import caffe_pb2 as pb  # noqa: PLC0415

    return pb


def layer_types() -> list[str]:
    return list(caffe().layer_type_list())


def _fatal_line(log: str) -> str:
    """The reason in a glog FATAL/CHECK message, e.g. ``Check failed: ... takes 2 bottom blob(s)``."""
    lines = [ln for ln in log.splitlines() if ln.strip()]
    for ln in lines:
        if ln[:1] == "F" and "] " in ln:
            return ln.split("] ", 1)[1]
    return lines[-1] if lines else "no message"


def probe(build: Callable[[], object], where: str) -> None:
    """Build once in a forked child first (only safe while Caffe runs no threads: see above).

    Caffe reports a bad net by CHECK-failing, which aborts the whole process; in a child
    the abort only ends the child, and its glog line becomes a one-line OlmpError here.
    A Python exception in the child is ignored: the real build below raises it again. The
    child only builds and exits; one stuck past PROBE_SECONDS (fork copies the locks other
    threads held) is killed, and the build goes ahead unprobed.
    """
    from olmp.errors import OlmpError  # noqa: PLC0415

    with tempfile.TemporaryFile() as log:
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child
            try:
                os.dup2(log.fileno(), 2)
                os.dup2(log.fileno(), 1)
                build()
            except BaseException:  # noqa: BLE001, S110
                pass
            os._exit(0)
        deadline = time.monotonic() + PROBE_SECONDS
        while not (done := os.waitpid(pid, os.WNOHANG))[0]:
            if time.monotonic() > deadline:  # stuck (a lock copied by fork?): let it go, build for real
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
                return
            time.sleep(0.002)
        if os.waitstatus_to_exitcode(done[1]) != 0:
            log.seek(0)
            reason = _fatal_line(log.read().decode("utf-8", "replace"))
            raise OlmpError(f"Caffe rejects it: {reason}", where)


def _with_temp_prototxt(message: object, build, where: str | None):  # noqa: ANN001, ANN202
    """pycaffe only takes file names: hand it a resolved copy (probed first), then remove it."""
    from google.protobuf import text_format  # noqa: PLC0415

    global _built
    with tempfile.NamedTemporaryFile("w", suffix=".prototxt", prefix="olmp-", delete=True) as fh:
        fh.write(text_format.MessageToString(message))
        fh.flush()
        if not _built and _gpu is None:  # CUDA does not survive a fork: no probe on the GPU
            probe(lambda: build(fh.name), where or getattr(message, "name", "") or "net")
        _built = True
        return build(fh.name)


def make_net(net_param: object, phase: str = "test", source: str | os.PathLike | None = None):  # noqa: ANN201
    """A caffe.Net from a checked NetParameter (see olmp.prototxt.read_net); ``source`` names it in errors."""
    c = caffe()
    ph = c.TEST if phase == "test" else c.TRAIN
    return _with_temp_prototxt(net_param, lambda f: c.Net(f, ph), None if source is None else str(source))


def make_solver(solver_param: object, source: str | os.PathLike | None = None):  # noqa: ANN201
    """A Caffe solver of the prototxt's type from a checked SolverParameter; ``source`` names it in errors."""
    c = caffe()
    return _with_temp_prototxt(solver_param, c.get_solver, None if source is None else str(source))


def set_random_seed(seed: int) -> None:
    caffe().set_random_seed(int(seed))
