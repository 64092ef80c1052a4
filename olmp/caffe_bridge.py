"""The only module that imports caffe.

Caffe's glog output floods a terminal, so its level is fixed before the first
import; ``set_verbose`` must therefore be called before anything touches caffe.
The first net or solver of a process is built in a forked child first, so that a
net Caffe CHECK-fails on becomes a one-line error instead of an abort. Later ones
are not: by then Caffe's data-prefetch threads run, and a forked child can block on
a lock one of them held. Later nets are derived from the first (the pipeline's
validation net).
On the GPU (``--gpu``) nothing is probed: a forked child cannot use CUDA.
"""

from __future__ import annotations

import os
import signal
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

_caffe: ModuleType | None = None
PROBE_SECONDS = 60.0  # a probe child taking longer is given up on (see probe)
CONV_GROUP = 8  # images per convolution GEMM (patch 0012): fastest on one core here (benchmarks/step_roofline.py)
_built = False  # whether this process has built a Caffe net (and so may run Caffe's threads)
_gpu: int | None = None  # None: CPU (the default); else the CUDA device every net runs on
# a CUDA build of _caffe.so links the CUDA runtime (shared or static); a CPU_ONLY one never names it
_CUDA_MARKERS = (b"libcudart", b"cudaGetDeviceCount")


class CaffeError(Exception):
    """Caffe refused or failed (a rejected net, a failed write, no pycaffe), in one line naming ``where``.

    The bridge sits below the package and imports nothing from it: the callers that open Caffe
    objects (olmp/caffe_run.py, olmp/prototxt.py, olmp/checkpoint.py) re-raise it as their OlmpError,
    and the command line prints either as its one line."""

    def __init__(self, message: str, where: str | os.PathLike | None = None) -> None:
        message = " ".join(str(message).split())
        super().__init__(f"{where}: {message}" if where is not None else message)


def set_verbose(verbose: bool) -> None:
    """Show Caffe's own INFO log (``--verbose``); default shows errors only."""
    if _caffe is not None:
        return
    os.environ["GLOG_minloglevel"] = "0" if verbose else os.environ.get("OLMP_GLOG_MINLOGLEVEL", "2")  # noqa: SIM112


def caffe() -> ModuleType:
    """Import pycaffe on first use, in CPU mode unless ``use_gpu`` chose a device."""
    global _caffe
    if _caffe is None:
        os.environ.setdefault("GLOG_minloglevel", os.environ.get("OLMP_GLOG_MINLOGLEVEL", "2"))
        cpu_defaults()
        try:
            import caffe as _c  # noqa: PLC0415
        except ImportError as exc:
            raise CaffeError(f"pycaffe is not importable ({exc}); run `make setup`") from exc
        _c.set_mode_cpu()
        _caffe = _c
    return _caffe


def usable_cores() -> int:
    """The cores this process may run on: its CPU affinity, capped by a cgroup CPU quota (rounded down)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count() or 1
    quota = None
    try:  # cgroup v2: "QUOTA PERIOD" or "max PERIOD"
        q, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
        quota = None if q == "max" else int(q) / int(period)
    except (OSError, ValueError):
        try:  # cgroup v1: a quota of -1 is none
            q1 = int(Path("/sys/fs/cgroup/cpu/cpu.cfs_quota_us").read_text())
            p1 = int(Path("/sys/fs/cgroup/cpu/cpu.cfs_period_us").read_text())
            quota = q1 / p1 if q1 > 0 and p1 > 0 else None
        except (OSError, ValueError):
            pass
    if quota is not None:
        cores = min(cores, int(quota))
    return max(1, cores)


def cpu_defaults() -> dict[str, str]:
    """Caffe's CPU settings, each set only where the environment leaves it unset; read once at import.

    - ``OLMP_CONV_GROUP`` (patch 0012): images per convolution GEMM. The batch is cut into fixed
      slices of this many images; the result depends on it (the GEMM sums in another order than
      Caffe's per-image products) but never on the thread count. 0 or 1: Caffe's per-image code.
    - ``OMP_NUM_THREADS``: the usable cores. Threads share out the slices and pooling planes, so a
      run gives the same bits at any count; only Caffe's per-image path (group 0, patch 0007) adds
      its gradients in an order that depends on it.
    - ``OPENBLAS_NUM_THREADS`` 1: a multithreaded BLAS makes the step's small products slower.
    - ``OMP_WAIT_POLICY`` passive: a waiting thread sleeps instead of spinning; spinning halved the
      speed of a LeNet-5 step on 2 cores shared with other runs (benchmarks/openmp_conv.py).
    """
    defaults = {"OLMP_CONV_GROUP": str(CONV_GROUP), "OMP_NUM_THREADS": str(usable_cores()),
                "OPENBLAS_NUM_THREADS": "1", "OMP_WAIT_POLICY": "passive"}
    for key, value in defaults.items():
        os.environ.setdefault(key, value)
    return {key: os.environ[key] for key in defaults}


def library_path() -> Path:
    """The compiled pycaffe extension (``caffe/_caffe.so``) in use."""
    return Path(caffe()._caffe.__file__)


def has_cuda() -> bool:
    """True for a pycaffe built with CUDA (OLMP_CAFFE_VARIANT=cuda), False for CPU_ONLY.

    The library is inspected rather than asked: a CPU_ONLY Caffe aborts the process (LOG(FATAL))
    on most GPU calls; only set_mode_gpu and set_device raise instead (patch 0011).
    """
    data = library_path().read_bytes()
    return any(m in data for m in _CUDA_MARKERS)


def use_gpu(device: int | None) -> None:
    """``--gpu N``: run every net on CUDA device N; None keeps the CPU (the default).

    Caffe's mode is per thread; the solver, its data prefetch threads and every net
    olmp makes run from the thread that called this.
    """
    global _gpu
    if device is None:
        return
    if device < 0:
        raise CaffeError(f"--gpu must be a device number >= 0, got {device}")
    c = caffe()
    if not has_cuda():
        raise CaffeError(
            f"--gpu {device}: this pycaffe is a CPU_ONLY build; run without --gpu, or on a CUDA machine "
            "rebuild with `OLMP_CAFFE_VARIANT=cuda make setup` (see docker/README.md)",
            library_path(),
        )
    try:  # the build's patch 0011 asks the CUDA runtime first and raises, where Caffe would abort
        c.set_mode_gpu()
        c.set_device(device)
    except RuntimeError as e:
        c.set_mode_cpu()
        raise CaffeError(f"--gpu {device}: {e}") from None
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


def _in_child(work: Callable[[], object], seconds: float, swallow: bool) -> tuple[int | None, str]:
    """Run ``work`` in a forked child, its output captured: (exit code, log), or (None, "") when it
    ran past ``seconds`` and was killed. ``swallow``: a Python exception in the child still exits 0."""
    with tempfile.TemporaryFile() as log:
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child
            code = 0
            try:
                os.dup2(log.fileno(), 2)
                os.dup2(log.fileno(), 1)
                work()
            except BaseException:  # noqa: BLE001
                code = 0 if swallow else 3
            os._exit(code)
        deadline = time.monotonic() + seconds
        pause = 0.002
        while not (done := os.waitpid(pid, os.WNOHANG))[0]:
            if time.monotonic() > deadline:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
                log.seek(0)
                return None, log.read().decode("utf-8", "replace")
            time.sleep(pause)
            pause = min(pause * 1.5, 0.1)
        log.seek(0)
        return os.waitstatus_to_exitcode(done[1]), log.read().decode("utf-8", "replace")


def probe(build: Callable[[], object], where: str) -> None:
    """Build once in a forked child first (only safe while Caffe runs no threads: see above).

    Caffe reports a bad net by CHECK-failing, which aborts the whole process; in a child
    the abort only ends the child, and its glog line becomes a one-line CaffeError here.
    A Python exception in the child is ignored: the real build below raises it again. No
    Caffe thread runs before the first build, so a child still building after
    PROBE_SECONDS is stuck in Caffe itself (e.g. its data reader on an absurd batch): an
    error, never a build for real that would hang the same way.
    """
    seconds = float(os.environ.get("OLMP_PROBE_SECONDS", PROBE_SECONDS))
    code, log = _in_child(build, seconds, swallow=True)
    if code is None and BUILT in log:
        return  # built; only the first training step after it is slow (a large net), not stuck
    if code is None:
        raise CaffeError(f"Caffe did not finish building the net within {seconds:.0f} s "
                        "(a batch or layer too large for this machine?)", where)
    if code != 0:
        raise CaffeError(f"Caffe rejects it: {_fatal_line(log)}", where)


SNAPSHOT_SECONDS = 600.0  # a snapshot child taking longer is given up on (see snapshot)


def snapshot(solver: Any, folder: Path, where: str | os.PathLike, need: int = 0) -> None:
    """``solver.snapshot()`` where a failed write cannot abort this process.

    Caffe CHECK-fails (SIGABRT) when it cannot write a snapshot, e.g. on a full disk. On the
    CPU the snapshot (into ``folder``, the solver's snapshot_prefix) is written by a forked child, whose
    abort becomes a one-line error naming ``where``. The child only serialises blobs (no data-reader
    lock); should it still hang past SNAPSHOT_SECONDS (a lock copied by fork), the snapshot is written here after
    checking that ``need`` bytes are free. On the GPU (no fork) only that check is made.
    """
    if _gpu is None:
        code, log = _in_child(solver.snapshot, SNAPSHOT_SECONDS, swallow=False)
        if code == 0:
            return
        if code is not None:
            if _free_bytes(folder) < max(need, 1):
                raise CaffeError("cannot write: No space left on device (disk full); nothing was written", where)
            raise CaffeError(f"cannot write: Caffe could not save the snapshot ({_fatal_line(log)})", where)
    if _free_bytes(folder) < need:
        raise CaffeError("cannot write: No space left on device (disk full); nothing was written", where)
    solver.snapshot()


def _free_bytes(folder: Path) -> int:
    import shutil  # noqa: PLC0415

    try:
        return shutil.disk_usage(folder).free
    except OSError:
        return 0


BUILT = "olmp-probe: built"  # the probe child's line between the build and its first step


def _built_then(build: Callable[[], object], then: Callable[[object], object] | None) -> Callable[[], None]:
    """The probe child's work: the build, the BUILT line, then ``then`` (a solver's first step)."""
    def work() -> None:
        made = build()
        os.write(2, f"\n{BUILT}\n".encode())
        if then is not None:
            then(made)
    return work


def _with_temp_prototxt(message: object, build, where: str | None, then=None):  # noqa: ANN001, ANN202
    """pycaffe only takes file names: hand it a resolved copy (probed first), then remove it.

    ``then`` runs on the probe's build too: a solver takes its first step there, since Caffe checks
    some settings (labels, a dropout ratio, the regularization) only once data flows."""
    from google.protobuf import text_format  # noqa: PLC0415

    global _built
    with tempfile.NamedTemporaryFile("w", suffix=".prototxt", prefix="olmp-", delete=True) as fh:
        fh.write(text_format.MessageToString(message))
        fh.flush()
        if not _built and _gpu is None:  # CUDA does not survive a fork: no probe on the GPU
            probe(_built_then(lambda: build(fh.name), then), where or getattr(message, "name", "") or "net")
        _built = True
        return build(fh.name)


def make_net(net_param: object, phase: str = "test", source: str | os.PathLike | None = None):  # noqa: ANN201
    """A caffe.Net from a checked NetParameter (``olmp.prototxt.make_net`` checks its data batches first);
    ``source`` names it in errors."""
    c = caffe()
    ph = c.TEST if phase == "test" else c.TRAIN
    return _with_temp_prototxt(net_param, lambda f: c.Net(f, ph), None if source is None else str(source))


def make_solver(solver_param: object, source: str | os.PathLike | None = None):  # noqa: ANN201
    """A Caffe solver of the prototxt's type from a checked SolverParameter; ``source`` names it in errors."""
    c = caffe()
    return _with_temp_prototxt(solver_param, c.get_solver, None if source is None else str(source),
                               then=lambda solver: solver.step(1))


def restore_solver(solver: Any, state: Any) -> None:
    """Put a live solver into ``state`` (a SolverState message): Caffe restores only from a file."""
    with tempfile.NamedTemporaryFile(suffix=".solverstate") as fh:
        fh.write(state.SerializeToString())
        fh.flush()
        solver.restore(fh.name)


def set_random_seed(seed: int) -> None:
    caffe().set_random_seed(int(seed))
