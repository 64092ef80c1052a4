"""The CUDA variant of pycaffe: its pinned wheels, and `--gpu` on a CUDA build without a device.

CI builds the CPU variant only; the CUDA build itself is checked by scripts/gpu_check.sh on a GPU machine.
"""

from __future__ import annotations

import re
import subprocess
import sys

import pytest
from conftest import REPO, run_olmp

from olmp import caffe_bridge


def test_cuda_wheels_are_pinned() -> None:
    lines = [ln.strip() for ln in (REPO / "scripts" / "cuda-requirements.txt").read_text().splitlines()]
    pins = dict(ln.split("==") for ln in lines if ln and not ln.startswith("#"))
    assert all(re.fullmatch(r"[0-9][0-9.]*", v) for v in pins.values()), pins  # exact versions: part of the key
    # the compiler (nvcc, its front end cicc, the crt headers) and what _caffe.so links
    for name in ("nvidia-cuda-nvcc", "nvidia-nvvm", "nvidia-cuda-crt", "nvidia-cuda-runtime", "nvidia-cuda-cccl",
                 "nvidia-cublas", "nvidia-curand"):
        assert name in pins, name
    assert pins["nvidia-cuda-nvcc"].startswith("13.")  # the CUDA 12 nvcc wheels cannot compile .cu files


def _gpu_mode_in_a_child() -> subprocess.CompletedProcess[str]:
    """``caffe.set_mode_gpu()`` in its own process: where Caffe aborts, only the child dies."""
    code = "from olmp import caffe_bridge; caffe_bridge.caffe().set_mode_gpu(); print('gpu mode')"
    return subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)


def test_set_mode_gpu_without_a_device_raises_instead_of_aborting() -> None:
    """Patch 0011: pycaffe's own GPU calls raise RuntimeError (CPU_ONLY build, or no device/driver)."""
    r = _gpu_mode_in_a_child()
    if r.returncode == 0:
        pytest.skip("this machine has a CUDA device and a CUDA build")
    assert r.returncode == 1, r.stderr  # an exception, not Caffe's abort (-6)
    last = r.stderr.strip().splitlines()[-1]
    want = "no device (" if caffe_bridge.has_cuda() else "a CPU_ONLY build"
    assert last.startswith("RuntimeError: ") and want in last, r.stderr


def test_gpu_flag_on_a_cuda_build_without_a_device_is_one_line() -> None:
    if not caffe_bridge.has_cuda():
        pytest.skip("this pycaffe is the CPU build (OLMP_CAFFE_VARIANT=cuda makes the CUDA one)")
    if _gpu_mode_in_a_child().returncode == 0:
        pytest.skip("this machine has a CUDA device")
    r = run_olmp("evaluate", "--net", "models/lenet5/train_test.prototxt", "--weights",
                 "results/references/lenet5/model.caffemodel", "--gpu", "0")
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1, r.stderr  # never Caffe's abort
    assert lines[0].startswith("olmp: error: --gpu 0: the CUDA runtime sees no device ("), lines
