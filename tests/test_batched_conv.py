"""Caffe patch 0012: batched convolution (OLMP_CONV_GROUP images per GEMM) and the fast pooling loops.

Each configuration runs in its own subprocess (Caffe reads its environment once per process) on a real
net of odd shapes: a strided, padded, grouped convolution, a 1x1 one, a dilated one, and pooling of
every kind the fast loops take (2x2/2 max with and without a mask top, overlapping 3x3/1 max and average, 2x2/2 average) and one they leave to
Caffe (padded max, and max whose last window runs past the edge). The reference is Caffe's own code: no group, one thread,
and ``OLMP_CAFFE_LOOPS=1`` (Caffe's pooling loops).
- the fast pooling loops are Caffe's results bit for bit;
- batched convolution agrees with Caffe's within float tolerance (the GEMM sums in another order),
  at groups that do and do not divide the batch, and gives the same bits at every thread count;
- the LeNet-5 of models/ gives the same loss and gradients batched as serial.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import REPO
from test_openmp_conv import BATCH as LENET_BATCH
from test_openmp_conv import CHILD as LENET_CHILD

NET = """
name: "odd"
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 7 dim: 4 dim: 12 dim: 10 } } }
layer { name: "conv_a" type: "Convolution" bottom: "data" top: "conv_a"
  convolution_param { num_output: 6 kernel_size: 3 pad: 1 stride: 2 group: 2 } }
layer { name: "conv_b" type: "Convolution" bottom: "data" top: "conv_b" convolution_param { num_output: 5 kernel_size: 1 } }
layer { name: "conv_c" type: "Convolution" bottom: "data" top: "conv_c"
  convolution_param { num_output: 3 kernel_h: 3 kernel_w: 2 dilation: 2 bias_term: false } }
layer { name: "pool_max" type: "Pooling" bottom: "conv_b" top: "pool_max" pooling_param { pool: MAX kernel_size: 2 stride: 2 } }
layer { name: "pool_max_s1" type: "Pooling" bottom: "conv_b" top: "pool_max_s1" pooling_param { pool: MAX kernel_size: 3 stride: 1 } }
layer { name: "pool_mask" type: "Pooling" bottom: "conv_b" top: "pool_mask" top: "pool_mask_idx"
  pooling_param { pool: MAX kernel_size: 2 stride: 2 } }
layer { name: "pool_ave" type: "Pooling" bottom: "conv_b" top: "pool_ave" pooling_param { pool: AVE kernel_size: 2 stride: 2 } }
layer { name: "pool_ave_s1" type: "Pooling" bottom: "conv_c" top: "pool_ave_s1" pooling_param { pool: AVE kernel_size: 3 stride: 1 } }
layer { name: "pool_over" type: "Pooling" bottom: "conv_b" top: "pool_over" pooling_param { pool: MAX kernel_size: 3 stride: 2 } }
layer { name: "pool_pad" type: "Pooling" bottom: "conv_a" top: "pool_pad" pooling_param { pool: MAX kernel_size: 3 stride: 2 pad: 1 } }
"""
# pool_over (the last window runs past the edge: ceil mode) and pool_pad (padding) take Caffe's own loops
TOPS = ("conv_a", "conv_b", "conv_c", "pool_max", "pool_max_s1", "pool_mask", "pool_mask_idx", "pool_ave",
        "pool_ave_s1", "pool_over", "pool_pad")
# the fast loops (no padding, every window inside) -> their input
POOLS = {"pool_max": "conv_b", "pool_max_s1": "conv_b", "pool_mask": "conv_b", "pool_ave": "conv_b",
         "pool_ave_s1": "conv_c"}

CHILD = """
import sys, tempfile
import numpy as np
from olmp import caffe_bridge

out, net_text, tops = sys.argv[1], sys.argv[2], sys.argv[3].split(",")
caffe = caffe_bridge.caffe()
with tempfile.NamedTemporaryFile("w", suffix=".prototxt", delete=False) as f:
    f.write(net_text)
net = caffe.Net(f.name, caffe.TRAIN)
rng = np.random.default_rng(11)
for name in net.params:
    for blob in net.params[name]:
        blob.data[...] = rng.normal(0.0, 0.3, blob.data.shape)
net.blobs["data"].data[...] = rng.normal(0.0, 1.0, net.blobs["data"].data.shape)
net.blobs["data"].data[0, 0, :2, :2] = 0.5  # ties inside a pooling window: the first maximum must win
net.forward()
for top in tops:
    net.blobs[top].diff[...] = rng.normal(0.0, 1.0, net.blobs[top].diff.shape)
net.clear_param_diffs()
net.backward()
arrays = {f"{t}": net.blobs[t].data for t in tops}
arrays["data_diff"] = net.blobs["data"].diff
for t in ("conv_b", "conv_c"):
    arrays[f"{t}_diff"] = net.blobs[t].diff
for name in net.params:
    for i, blob in enumerate(net.params[name]):
        arrays[f"{name}_{i}_diff"] = blob.diff
np.savez(out, **arrays)
"""

# Caffe's own code throughout: no group (olmp's default would batch), one thread, its pooling loops
CAFFE = {"OLMP_CONV_GROUP": "0", "OLMP_CAFFE_LOOPS": "1"}


def run(tmp: Path, env_extra: dict[str, str], child: str = CHILD, args: tuple[str, ...] = ()) -> dict[str, np.ndarray]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OMP_", "OLMP_CONV", "OLMP_CAFFE"))}
    env.update(OPENBLAS_NUM_THREADS="1", **env_extra)
    out = tmp / f"run-{len(list(tmp.iterdir()))}.npz"
    r = subprocess.run([sys.executable, "-c", child, str(out), *args], cwd=REPO, env=env, capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    with np.load(out) as z:
        return {k: z[k].copy() for k in z.files}


def odd(tmp: Path, **env: str) -> dict[str, np.ndarray]:
    return run(tmp, env, CHILD, (NET, ",".join(TOPS)))


def assert_close(got: dict[str, np.ndarray], want: dict[str, np.ndarray], what: str) -> None:
    assert set(got) == set(want)
    for key in want:
        scale = float(np.abs(want[key]).max()) or 1.0
        np.testing.assert_allclose(got[key], want[key], rtol=1e-5, atol=1e-5 * scale, err_msg=f"{what}: {key}")


def test_fast_pooling_is_caffes_pooling_bit_for_bit(tmp_path: Path) -> None:
    caffe = odd(tmp_path, **CAFFE)
    fast = odd(tmp_path, OLMP_CONV_GROUP="0")  # no group, one thread: only the pooling loops differ
    fast_threads = odd(tmp_path, OLMP_CONV_GROUP="0", OMP_NUM_THREADS="3")  # pooling planes over threads
    assert np.abs(caffe["pool_max"]).max() > 0 and np.abs(caffe["conv_b_diff"]).max() > 0
    for key in caffe:
        assert np.array_equal(fast[key], caffe[key]), key
    for top, bottom in POOLS.items():  # the pooled outputs and their input gradients, threads or not
        assert np.array_equal(fast_threads[top], caffe[top]), top
        assert np.array_equal(fast_threads[f"{bottom}_diff"], caffe[f"{bottom}_diff"]), bottom


@pytest.mark.parametrize("group", ["2", "3", "64"])
def test_batched_convolution_agrees_with_caffes(tmp_path: Path, group: str) -> None:
    """Groups that divide the batch of 7, that leave a short last slice, and one larger than the batch."""
    caffe = odd(tmp_path, **CAFFE)
    one = odd(tmp_path, OLMP_CONV_GROUP=group, OMP_NUM_THREADS="1")
    assert_close(one, caffe, f"group {group}")
    for threads in ("2", "3"):  # threads only share out the slices: the same bits at any thread count
        got = odd(tmp_path, OLMP_CONV_GROUP=group, OMP_NUM_THREADS=threads)
        for key in one:
            assert np.array_equal(got[key], one[key]), (threads, key)


def test_memory_bound_and_off_switch(tmp_path: Path) -> None:
    """OLMP_CONV_GROUP 0 or 1 is Caffe's per-image path; a 1 MiB bound still batches these small layers."""
    caffe = odd(tmp_path, **CAFFE)
    for off in ("0", "1", "junk"):
        got = odd(tmp_path, OLMP_CONV_GROUP=off, OLMP_CAFFE_LOOPS="1")
        for key in caffe:
            assert np.array_equal(got[key], caffe[key]), (off, key)
    assert_close(odd(tmp_path, OLMP_CONV_GROUP="64", OLMP_CONV_GROUP_MB="1"), caffe, "1 MiB bound")


def test_lenet5_batched_step_agrees_with_serial(tmp_path: Path) -> None:
    serial = run(tmp_path, CAFFE, LENET_CHILD, (str(LENET_BATCH),))
    batched = run(tmp_path, {"OLMP_CONV_GROUP": "16", "OMP_NUM_THREADS": "2"}, LENET_CHILD, (str(LENET_BATCH),))
    assert float(serial["loss"]) > 0 and np.abs(serial["conv2_0_diff"]).max() > 0
    assert_close(batched, serial, "LeNet-5")
