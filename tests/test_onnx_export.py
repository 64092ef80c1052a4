"""ONNX export: ONNX Runtime against pycaffe on the real MNIST test set, every exported layer type
against Caffe's own forward, one-line refusals, and the deployment benchmark's report."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from conftest import REPO, run_olmp

from olmp import caffe_bridge, evaluate, prototxt, weights

MODELS = {  # (net, weights): both references and every committed best/ model
    "lenet300100-reference": ("models/lenet300100/train_test.prototxt", "results/references/lenet300100/model.caffemodel"),
    "lenet5-reference": ("models/lenet5/train_test.prototxt", "results/references/lenet5/model.caffemodel"),
    "lenet300100-best": ("models/lenet300100/train_test.prototxt", "results/lenet300100/best/pruned.caffemodel"),
    "lenet5-best": ("models/lenet5/train_test.prototxt", "results/lenet5/best/pruned.caffemodel"),
}


def _session(path: Path) -> ort.InferenceSession:
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def _caffe_test_set(net_path: str, weights_path: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every test image as Caffe's TEST data layer hands it on, its label, and pycaffe's logits."""
    net_param = prototxt.read_net(net_path)
    net = caffe_bridge.make_net(net_param, "test", source=net_path)
    weights.load_weights(net, REPO / weights_path)
    logits_name, label_name = evaluate.loss_inputs(net)
    images, labels, logits = [], [], []
    n = evaluate.test_set_size(net_param)
    while sum(len(x) for x in images) < n:
        net.forward()
        images.append(net.blobs["data"].data.copy())
        labels.append(net.blobs[label_name].data.copy())
        logits.append(net.blobs[logits_name].data.copy())
    return np.concatenate(images), np.concatenate(labels), np.concatenate(logits)


def _export(*args: str) -> dict:
    r = run_olmp("export", "--onnx", *args)
    assert r.returncode == 0, r.stderr[-2000:]
    return json.loads(r.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("name", list(MODELS))
def test_onnx_runtime_predicts_as_pycaffe_on_the_whole_test_set(name: str, tmp_path: Path, mnist_dir: Path) -> None:
    net_path, weights_path = MODELS[name]
    dense = tmp_path / "dense.onnx"
    info = _export(net_path, weights_path, str(dense))
    assert info["inputs"] == {"data": ["N", 1, 28, 28]} and list(info["outputs"].values()) == [["N", 10]]
    onnx.checker.check_model(str(dense), full_check=True)
    images, _, want = _caffe_test_set(net_path, weights_path)
    assert len(images) == 10_000

    got = _session(dense).run(None, {"data": images})[0]
    assert np.abs(got - want).max() <= 1e-4
    assert np.array_equal(got.argmax(1), want.argmax(1))

    if name.endswith("best"):  # the pruned form: sparse initializers, a fixed batch of 100
        small = tmp_path / "sparse.onnx"
        info = _export(net_path, weights_path, str(small), "--sparse-initializers", "--batch", "100")
        assert info["inputs"] == {"data": [100, 1, 28, 28]} and info["sparse_initializers"] >= 2
        model = onnx.load(str(small))
        onnx.checker.check_model(model)
        assert len(model.graph.sparse_initializer) == info["sparse_initializers"]
        assert small.stat().st_size < dense.stat().st_size / 10  # both models keep under 1% of the weights
        sess = _session(small)
        got = np.concatenate([sess.run(None, {"data": images[i:i + 100]})[0] for i in range(0, len(images), 100)])
        assert np.abs(got - want).max() <= 1e-4
        assert np.array_equal(got.argmax(1), want.argmax(1))
        with pytest.raises(Exception, match="data"):  # a fixed batch is fixed
            sess.run(None, {"data": images[:3]})


ZOO = """
name: "zoo"
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 2 dim: 3 dim: 15 dim: 15 } } }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
  convolution_param { num_output: 8 kernel_size: 3 stride: 2 pad: 1 FILL bias_filler { type: "gaussian" std: 0.3 } } }
layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" relu_param { negative_slope: 0.1 } }
# 8x8 -> 4x4: Caffe rounds up, so the last window reaches past the edge
layer { name: "pool1" type: "Pooling" bottom: "conv1" top: "pool1" pooling_param { pool: MAX kernel_size: 3 stride: 2 } }
layer { name: "split" type: "Split" bottom: "pool1" top: "p1a" top: "p1b" }
layer { name: "conv2" type: "Convolution" bottom: "p1a" top: "a"
  convolution_param { num_output: 6 kernel_h: 3 kernel_w: 1 pad_h: 1 pad_w: 0 group: 2 bias_term: false FILL } }
layer { name: "conv3" type: "Convolution" bottom: "data" top: "d"
  convolution_param { num_output: 6 kernel_size: 3 dilation: 2 pad: 2 group: 3 FILL } }
layer { name: "sig" type: "Sigmoid" bottom: "p1b" top: "s" }
layer { name: "tanh" type: "TanH" bottom: "p1b" top: "t" }
layer { name: "sum" type: "Eltwise" bottom: "s" bottom: "t" top: "sum" eltwise_param { operation: SUM coeff: 0.5 coeff: -1 } }
layer { name: "prod" type: "Eltwise" bottom: "s" bottom: "t" bottom: "p1a" top: "prod" eltwise_param { operation: PROD } }
layer { name: "max" type: "Eltwise" bottom: "s" bottom: "t" top: "max" eltwise_param { operation: MAX } }
layer { name: "cat" type: "Concat" bottom: "a" bottom: "sum" bottom: "prod" bottom: "max" top: "cat" }
layer { name: "norm" type: "LRN" bottom: "cat" top: "norm" lrn_param { local_size: 3 alpha: 0.5 beta: 0.75 k: 2 } }
# 4x4 -> 2x2, past the edge (divided by the real elements); 4x4 -> 3x3 padded (divided by the whole window)
layer { name: "avg" type: "Pooling" bottom: "norm" top: "avg" pooling_param { pool: AVE kernel_size: 3 stride: 2 } }
layer { name: "avgpad" type: "Pooling" bottom: "norm" top: "avgpad" pooling_param { pool: AVE kernel_size: 2 stride: 2 pad: 1 } }
# 4x4 -> 3x3 past the padding; 4x4 -> 2x2 where Caffe drops a last window that would start in the padding
layer { name: "maxpad" type: "Pooling" bottom: "cat" top: "maxpad" pooling_param { pool: MAX kernel_size: 3 stride: 2 pad: 1 } }
layer { name: "maxdrop" type: "Pooling" bottom: "cat" top: "maxdrop" pooling_param { pool: MAX kernel_size: 3 stride: 3 pad: 2 } }
layer { name: "gpool" type: "Pooling" bottom: "a" top: "gpool" pooling_param { pool: AVE global_pooling: true } }
layer { name: "gmax" type: "Pooling" bottom: "d" top: "gmax" pooling_param { pool: MAX global_pooling: true } }
layer { name: "flat" type: "Flatten" bottom: "avg" top: "flat" }
layer { name: "fc1" type: "InnerProduct" bottom: "flat" top: "fc1" inner_product_param { num_output: 16 FILL BIAS } }
layer { name: "relu2" type: "ReLU" bottom: "fc1" top: "fc1" }
layer { name: "drop" type: "Dropout" bottom: "fc1" top: "fc1d" dropout_param { dropout_ratio: 0.5 } }
layer { name: "fc2" type: "InnerProduct" bottom: "fc1d" top: "fc2" inner_product_param { num_output: 5 FILL BIAS } }
layer { name: "fc3" type: "InnerProduct" bottom: "avgpad" top: "fc3" inner_product_param { num_output: 7 FILL BIAS } }
layer { name: "fc4" type: "InnerProduct" bottom: "maxpad" top: "fc4" inner_product_param { num_output: 4 transpose: true FILL BIAS } }
layer { name: "fc5" type: "InnerProduct" bottom: "maxdrop" top: "fc5" inner_product_param { num_output: 3 FILL BIAS } }
layer { name: "gflat" type: "Flatten" bottom: "gpool" top: "gflat" }
layer { name: "mflat" type: "Flatten" bottom: "gmax" top: "mflat" }
layer { name: "logits" type: "Concat" bottom: "fc2" bottom: "fc3" bottom: "fc4" bottom: "fc5" bottom: "gflat" bottom: "mflat"
  top: "logits" concat_param { axis: 1 } }
layer { name: "prob" type: "Softmax" bottom: "logits" top: "prob" }
""".replace("FILL", 'weight_filler { type: "gaussian" std: 0.3 }').replace("BIAS", 'bias_filler { type: "gaussian" std: 0.3 }')
IN_PLACE = {"conv1", "fc1"}  # Caffe keeps only the value after the in-place ReLU
CAFFE_FORWARD = """
import sys
import numpy as np
from olmp import caffe_bridge, prototxt, weights
net_file, model, x, out = sys.argv[1:]
net = caffe_bridge.make_net(prototxt.read_net(net_file), "test", source=net_file)
weights.load_weights(net, model)
net.blobs["data"].data[...] = np.load(x)
net.forward()
np.savez(out, **{name: blob.data for name, blob in net.blobs.items()})
"""  # in a child process: a Caffe abort fails this test, not the whole session


@pytest.fixture(scope="module")
def zoo(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A net of every exported layer type and its Caffe-filled random weights."""
    folder = tmp_path_factory.mktemp("zoo")
    net_file, model = folder / "zoo.prototxt", folder / "zoo.caffemodel"
    net_file.write_text(ZOO)
    caffe_bridge.set_random_seed(3)
    net_param = prototxt.read_net(net_file)
    weights.save_net(caffe_bridge.make_net(net_param, "test", source=net_file), model, net_param)
    return net_file, model


def test_every_exported_layer_type_computes_as_caffe(zoo: tuple[Path, Path], tmp_path: Path) -> None:
    net_file, model = zoo
    out = tmp_path / "zoo.onnx"
    info = _export(str(net_file), str(model), str(out), "--batch", "2")
    assert info["outputs"] == {"prob": [2, 31]}
    x = np.random.default_rng(0).standard_normal((2, 3, 15, 15)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    r = subprocess.run([sys.executable, "-c", CAFFE_FORWARD, str(net_file), str(model), str(tmp_path / "x.npy"),
                        str(tmp_path / "blobs.npz")], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, f"Caffe's own forward failed: {r.stderr[-1500:]}"
    caffe_blobs = dict(np.load(tmp_path / "blobs.npz"))

    m = onnx.load(str(out))  # every value that stands for a Caffe blob becomes an output, to compare them all
    inferred = onnx.shape_inference.infer_shapes(m)
    blobs = [v for v in inferred.graph.value_info if v.name in caffe_blobs and v.name not in IN_PLACE]
    m.graph.output.extend(blobs)
    names = [o.name for o in m.graph.output]
    assert {"pool1", "a", "d", "cat", "norm", "avg", "avgpad", "maxpad", "maxdrop", "gpool", "fc3", "logits"} <= set(names)
    got = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(names, {"data": x})
    for name, value in zip(names, got):
        want = caffe_blobs[name]
        assert value.shape == want.shape, name
        np.testing.assert_allclose(value, want, rtol=1e-4, atol=1e-5, err_msg=name)


def _one_line_error(r: subprocess.CompletedProcess, *needles: str) -> None:
    assert r.returncode == 2, (r.stdout, r.stderr)
    assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    for needle in needles:
        assert needle in r.stderr, r.stderr


def test_refusals_are_one_line(zoo: tuple[Path, Path], tmp_path: Path, mnist_dir: Path) -> None:
    net_file, model = zoo
    out = str(tmp_path / "x.onnx")
    head = ZOO.split('layer { name: "pool1"')[0]
    bn = tmp_path / "bn.prototxt"
    bn.write_text(head + 'layer { name: "bn" type: "BatchNorm" bottom: "conv1" top: "bn" }\n')
    _one_line_error(run_olmp("export", "--onnx", str(bn), str(model), out), str(bn), "'bn'", "'BatchNorm'")
    ave = tmp_path / "ave.prototxt"  # 8x8, kernel 3, stride 2, pad 1: Caffe's last window runs past the padding
    ave.write_text(head + 'layer { name: "p" type: "Pooling" bottom: "conv1" top: "p" '
                   "pooling_param { pool: AVE kernel_size: 3 stride: 2 pad: 1 } }\n")
    _one_line_error(run_olmp("export", "--onnx", str(ave), str(model), out), str(ave), "'p'", "AVE")
    _one_line_error(run_olmp("export", "--onnx", MODELS["lenet5-best"][0], MODELS["lenet300100-best"][1], out),
                    MODELS["lenet300100-best"][1], "conv1")
    _one_line_error(run_olmp("export", "--onnx", str(tmp_path / "none.prototxt"), str(model), out), "none.prototxt")
    _one_line_error(run_olmp("export", "--onnx", str(net_file), str(model)), "OUT.onnx")
    _one_line_error(run_olmp("export", "--onnx", str(net_file), str(model), out, "--batch", "0"), "--batch")
    _one_line_error(run_olmp("export", "--sparse", str(model), str(tmp_path / "m.npz"), "--batch", "2"), "--onnx")
    before = model.read_bytes()
    _one_line_error(run_olmp("export", "--onnx", str(net_file), str(model), str(model)), "is also the input")
    assert model.read_bytes() == before
    assert not any(tmp_path.glob("*.onnx")) and not any(tmp_path.glob(".*.tmp"))


def test_deployment_benchmark_reports_what_it_measured(tmp_path: Path, mnist_dir: Path) -> None:
    r = subprocess.run([sys.executable, "benchmarks/deployment.py", "results/lenet300100", "--quick", "--out",
                        str(tmp_path)], cwd=REPO, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-2000:]
    res = json.loads((tmp_path / "lenet300100" / "deployment.json").read_text())
    md = (tmp_path / "lenet300100" / "deployment.md").read_text()
    if (REPO / "results" / "lenet300100" / "lossless" / "pruned.caffemodel").is_file():
        assert res["models"]["lossless"]["batches"]
    else:
        assert res["models"]["lossless"] is None and "absent" in res["absent"]["lossless"]
        assert "| lossless | absent (no `results/lenet300100/lossless/pruned.caffemodel` yet) |" in md
    ref, best = res["models"]["reference"], res["models"]["best"]
    assert ref["ratio"] == 1.0 and best["ratio"] > 100
    for m in (ref, best):
        assert all(m["gzip_bytes"][k] <= m["bytes"][k] for k in m["bytes"])
        assert m["bytes"]["caffemodel"] == (REPO / m["weights"]).stat().st_size
        assert set(m["batches"]) == {"1", "64"}
        for row in m["batches"].values():
            assert {"pycaffe", "ort", "scipy_csr"} <= set(row)
            for method in row.values():  # every method computes pycaffe's logits
                assert method["same_predictions"] and method["max_abs_diff"] <= 1e-4
                assert method["vs_pycaffe"] == pytest.approx(row["pycaffe"]["seconds"] / method["seconds"], rel=1e-9)
    assert best["bytes"]["onnx_sparse"] < best["bytes"]["onnx"] / 10 and "ort_csr" in best["batches"]["1"]
    assert ref["sparse_initializers"] == 0 and "ort_csr" not in ref["batches"]["1"]  # nothing to gain: not offered
    row = best["batches"]["1"]
    assert (f"| best | 1 | 1 ({row['pycaffe']['seconds'] * 1e6:.1f} µs) | {row['ort']['vs_pycaffe']:.2f}x |" in md
            or f"| best | 1 | 1 ({row['pycaffe']['seconds'] * 1e6:,.0f} µs) | {row['ort']['vs_pycaffe']:.2f}x |" in md)
    assert f"{row['scipy_csr']['vs_pycaffe']:.2f}x its speed" in md
