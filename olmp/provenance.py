"""Which code, libraries and machine made a run record.

A record's numbers are only comparable with another's when one knows what produced both: the
commit (and whether the tree had uncommitted changes), the package versions behind the search,
the pycaffe build, and the CPU and thread count behind the floating-point order. Every value is
best effort: a missing git or /proc gives null, never an error, since a run must not fail for it.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import platform
import subprocess
from pathlib import Path
from typing import Any

from olmp import __version__, paths


def _git(*args: str) -> str | None:
    try:
        r = subprocess.run(["git", "-C", str(paths.REPO_ROOT), *args], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.SubprocessError):
        return None
    return r.stdout.strip() if r.returncode == 0 else None


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def cpu_model() -> str | None:
    """The CPU's model name from /proc/cpuinfo (Linux), else what platform knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or None


def pycaffe_build_key() -> str | None:
    """The key scripts/build_pycaffe.sh stamps into the caffe package (sdist, patches, Python, numpy)."""
    spec = importlib.util.find_spec("caffe")
    if spec is None or not spec.origin:
        return None
    stamp = Path(spec.origin).parent / ".olmp-build-key"
    try:
        return stamp.read_text().strip() or None
    except OSError:
        return None


def collect() -> dict[str, Any]:
    """The provenance block stored under ``"provenance"`` in every new run record."""
    commit = _git("rev-parse", "HEAD")
    status = _git("status", "--porcelain", "--untracked-files=no")
    return {
        "git_commit": commit,
        "git_dirty": None if status is None else bool(status),
        "olmp_version": __version__,
        "python": platform.python_version(),
        "numpy": _version("numpy"),
        "cma": _version("cma"),
        "protobuf": _version("protobuf"),
        "pycaffe_build_key": pycaffe_build_key(),
        "cpu_model": cpu_model(),
        "cpu_count": os.cpu_count(),
        "openblas_num_threads": os.environ.get("OPENBLAS_NUM_THREADS"),
        # images per convolution GEMM (patch 0012) change the order of the sums, hence the run; the
        # threads do not, except on Caffe's per-image path (group 0, patch 0007); a CUDA device does
        "conv_group": os.environ.get("OLMP_CONV_GROUP"),
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "gpu": _gpu_device(),
    }


def _gpu_device() -> int | None:
    from olmp import caffe_bridge  # noqa: PLC0415  (pycaffe is not imported for this)

    return caffe_bridge.gpu_device()
