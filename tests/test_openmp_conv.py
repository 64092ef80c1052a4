"""Caffe patch 0007: ConvolutionLayer's CPU forward and backward split a batch's images over OpenMP threads.

A real LeNet-5 (models/lenet5/train_test.prototxt, data layers turned into Input layers, fixed weights
and a fixed odd-sized batch) runs one forward and backward per subprocess, since Caffe reads
OMP_NUM_THREADS once per process. 1 must be Caffe's serial code (bitwise equal); 2 and 3 threads must
agree with it within float tolerance (the gradient sums are added in another order); unset is olmp's
default, the usable cores. Every run takes Caffe's per-image path (OLMP_CONV_GROUP=0) that this splits.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import REPO

BATCH = 37  # odd: the threads get unequal shares

CHILD = """
import json, sys
import numpy as np
import pytest
from olmp import caffe_bridge, prototxt

out, batch = sys.argv[1], int(sys.argv[2])
caffe = caffe_bridge.caffe()
param = prototxt.read_net("models/lenet5/train_test.prototxt", check_sources=False)
pb = caffe_bridge.caffe_pb2()
net = caffe_bridge.make_net(prototxt.input_net_param(param, pb.TRAIN, {"data": (batch, 1, 28, 28), "label": (batch,)}),
                            "train")
rng = np.random.default_rng(7)
for name in net.params:  # fixed weights, small enough for a sane loss
    for blob in net.params[name]:
        blob.data[...] = rng.normal(0.0, 0.1, blob.data.shape)
net.blobs["data"].data[...] = rng.random(net.blobs["data"].data.shape)
net.blobs["label"].data[...] = rng.integers(0, 10, batch)
net.clear_param_diffs()
net.forward()
net.backward()
arrays = {"loss": np.array(net.blobs["loss"].data), "conv1": net.blobs["conv1"].data, "conv2": net.blobs["conv2"].data,
          "pool1_diff": net.blobs["pool1"].diff}
for name in ("conv1", "conv2", "ip1"):
    for i, blob in enumerate(net.params[name]):
        arrays[f"{name}_{i}_diff"] = blob.diff
np.savez(out, **arrays)
threads = int(next(ln.split()[1] for ln in open("/proc/self/status") if ln.startswith("Threads:")))
print(json.dumps({"threads": threads}))
"""


def run_child(tmp: Path, omp: str | None) -> tuple[dict[str, np.ndarray], int]:
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    env["OPENBLAS_NUM_THREADS"] = "1"  # BLAS in the calling thread: the threads are Caffe's own
    env["OLMP_CONV_GROUP"] = "0"  # the per-image path this patch threads (olmp's default batches: patch 0012)
    if omp is not None:
        env["OMP_NUM_THREADS"] = omp
    out = tmp / f"omp-{omp}-{len(list(tmp.iterdir()))}.npz"
    r = subprocess.run([sys.executable, "-c", CHILD, str(out), str(BATCH)], cwd=REPO, env=env, capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    with np.load(out) as z:
        return {k: z[k].copy() for k in z.files}, json.loads(r.stdout.strip().splitlines()[-1])["threads"]


def test_pycaffe_is_built_with_openmp() -> None:
    from olmp import caffe_bridge

    data = caffe_bridge.library_path().read_bytes()
    assert b"GOMP_parallel" in data, "pycaffe lacks patch 0007 (OpenMP convolution): rerun `make setup`"


def test_threaded_convolution_agrees_with_the_serial_one(tmp_path: Path) -> None:
    unset, threads_unset = run_child(tmp_path, None)
    one, threads_one = run_child(tmp_path, "1")
    junk, threads_junk = run_child(tmp_path, "junk")  # a value Caffe cannot read is 1 as well
    two, threads_two = run_child(tmp_path, "2")
    two_again, _ = run_child(tmp_path, "2")
    three, threads_three = run_child(tmp_path, "3")
    from olmp import caffe_bridge

    default = {"1": one, "2": two, "3": three}.get(str(caffe_bridge.usable_cores()))
    assert set(unset) == set(one) == set(two) == set(three)
    for key in unset:
        if default is not None:  # unset: olmp's default, the usable cores
            assert np.array_equal(unset[key], default[key]), key
        assert np.array_equal(junk[key], one[key]), key  # a value Caffe cannot read is 1: its serial code
        assert np.array_equal(two[key], two_again[key]), key  # fixed image ranges: a thread count repeats itself
    assert float(one["loss"]) > 0 and np.abs(one["conv2_0_diff"]).max() > 0  # gradients that mean something
    for key in one:
        for other in (two, three):
            scale = float(np.abs(one[key]).max()) or 1.0
            np.testing.assert_allclose(other[key], one[key], rtol=1e-5, atol=1e-5 * scale, err_msg=key)
    # the serial path starts no OpenMP thread; 2 and 3 keep 1 and 2 pool threads beside the main one
    assert threads_one == threads_junk
    assert (threads_two, threads_three) == (threads_one + 1, threads_one + 2)
    assert threads_unset == threads_one + caffe_bridge.usable_cores() - 1


def quick_benchmark(out: Path, *args: str) -> None:
    r = subprocess.run([sys.executable, "benchmarks/openmp_conv.py", *args, "--quick", "--out", str(out)], cwd=REPO,
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]


def test_quick_benchmark_reports_both_thread_counts(tmp_path: Path, mnist_dir: Path) -> None:
    quick_benchmark(tmp_path)
    res = json.loads((tmp_path / "openmp_conv_quick.json").read_text())
    rows = res["step"]["threads"]
    assert set(rows) == {"1", "2 passive", "2 active"} and rows["1"]["speedup"] == 1.0
    two = rows["2 passive"]  # olmp's default wait policy
    assert two["speedup"] == pytest.approx(rows["1"]["step_ms"] / two["step_ms"], rel=1e-9)
    md = (tmp_path / "openmp_conv_quick.md").read_text()  # the table shows the JSON's numbers
    assert f"| 2 passive | {two['step_ms']:.2f} | {two['step_ms_min']:.2f} | {two['speedup']:.2f}x |" in md


def test_quick_benchmark_of_lenet300100_varies_blas_threads(tmp_path: Path, mnist_dir: Path) -> None:
    """LeNet-300-100 has no convolution: its row varies OPENBLAS_NUM_THREADS, with no wait-policy rows."""
    quick_benchmark(tmp_path, "--model", "lenet300100")
    res = json.loads((tmp_path / "blas_threads_lenet300100_quick.json").read_text())
    rows = res["step"]["threads"]
    assert res["model"] == "lenet300100" and set(rows) == {"1", "2"} and rows["1"]["speedup"] == 1.0
    md = (tmp_path / "blas_threads_lenet300100_quick.md").read_text()
    assert "| OPENBLAS_NUM_THREADS | step ms (median)" in md and "OMP_NUM_THREADS=1 everywhere" in md
    assert f"| 2 | {rows['2']['step_ms']:.2f} | {rows['2']['step_ms_min']:.2f} | {rows['2']['speedup']:.2f}x |" in md
