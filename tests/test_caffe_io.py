"""Nets, solvers, weights, training, evaluation and inspection on real pycaffe and MNIST."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from conftest import REPO, run_olmp

from olmp import caffe_bridge, evaluate, prototxt, train, weights
from olmp.errors import OlmpError

NETS = {"lenet300100": ["ip1", "ip2", "ip3"], "lenet5": ["conv1", "conv2", "ip1", "ip2"]}
PARAMS = {"lenet300100": 266_610, "lenet5": 431_080}


@pytest.mark.parametrize("model", sorted(NETS))
def test_nets_load_from_any_directory(model: str, mnist_dir: Path, tmp_path: Path) -> None:
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        net_param = prototxt.read_net(f"models/{model}/train_test.prototxt")
        net = caffe_bridge.make_net(net_param, "test")
        solver_param = prototxt.read_solver(f"solvers/{model}_solver.prototxt")
    finally:
        os.chdir(cwd)
    assert prototxt.prunable_layer_names(net_param) == NETS[model]
    assert list(net.params) == NETS[model]
    assert sum(b.data.size for n in net.params for b in net.params[n]) == PARAMS[model]
    assert net.blobs["data"].data.shape[0] == 100
    train_layer = prototxt.layers_in_phase(net_param, caffe_bridge.caffe_pb2().TRAIN)[0]
    assert train_layer.data_param.batch_size == 64
    assert train_layer.transform_param.scale == pytest.approx(0.00390625)
    sp = solver_param
    assert sp.lr_policy == "inv"
    assert (sp.base_lr, sp.gamma, sp.power, sp.momentum, sp.weight_decay) == pytest.approx(
        (0.01, 1e-4, 0.75, 0.9, 5e-4))
    assert sp.test_iter[0] * 100 == 10_000


def test_short_training_lowers_the_loss(mnist_dir: Path, tmp_path: Path) -> None:
    res = train.train("solvers/lenet300100_solver.prototxt", iters=300, out=tmp_path, seed=3, progress=False)
    rec = json.loads((tmp_path / "train.json").read_text())
    curve = [c["loss"] for c in rec["loss_curve"]]
    assert curve[-1] < 0.6 < 2.0
    assert res["test"]["images"] == 10_000 and res["test"]["accuracy"] > 0.85
    assert weights.summary(weights.read_caffemodel(tmp_path / "model.caffemodel"))["total"] == PARAMS["lenet300100"]


def test_training_is_reproducible(mnist_dir: Path, tmp_path: Path) -> None:
    a = train.train("solvers/lenet300100_solver.prototxt", iters=100, out=tmp_path / "a", seed=5, progress=False)
    b = train.train("solvers/lenet300100_solver.prototxt", iters=100, out=tmp_path / "b", seed=5, progress=False)
    assert a["test"] == b["test"]
    assert (tmp_path / "a/model.caffemodel").read_bytes() == (tmp_path / "b/model.caffemodel").read_bytes()


def test_evaluate_and_inspect_cli(lenet300100_model: Path) -> None:
    r = run_olmp("evaluate", "--net", "models/lenet300100/train_test.prototxt", "--weights",
                 str(lenet300100_model), "--json")
    assert r.returncode == 0, r.stderr
    ev = json.loads(r.stdout.strip().splitlines()[-1])
    assert set(ev) == {"accuracy", "loss", "images"} and ev["images"] == 10_000 and ev["accuracy"] > 0.9
    # the numpy accuracy equals Caffe's own Accuracy layer over the same 100 batches
    net = caffe_bridge.make_net(prototxt.read_net("models/lenet300100/train_test.prototxt"), "test")
    weights.load_weights(net, lenet300100_model)
    caffe_acc = np.mean([float(net.forward()["accuracy"]) for _ in range(100)])
    assert caffe_acc == pytest.approx(ev["accuracy"], abs=1e-6)

    r = run_olmp("inspect", str(lenet300100_model), "--json")
    assert r.returncode == 0, r.stderr
    info = json.loads(r.stdout.strip().splitlines()[-1])
    assert info["total"] == PARAMS["lenet300100"]
    assert info["layers"]["ip1"]["total"] == 784 * 300 + 300
    assert info["layers"]["ip3"]["total"] == 100 * 10 + 10


def test_inspect_counts_zeros(lenet300100_model: Path, tmp_path: Path) -> None:
    """Zero a known number of weights through Caffe, save, and count them back."""
    net = caffe_bridge.make_net(prototxt.read_net("models/lenet300100/train_test.prototxt"), "test")
    weights.load_weights(net, lenet300100_model)
    net.params["ip1"][0].data[:, :100] = 0  # 300 * 100 weights
    net.params["ip3"][1].data[:] = 0  # 10 biases
    weights.save_net(net, tmp_path / "z.caffemodel")
    info = weights.summary(weights.read_caffemodel(tmp_path / "z.caffemodel"))
    assert info["layers"]["ip1"]["remaining"] == 784 * 300 + 300 - 30_000
    assert info["layers"]["ip3"]["remaining"] == 1000
    assert info["remaining"] == PARAMS["lenet300100"] - 30_010
    assert info["ratio"] == pytest.approx(PARAMS["lenet300100"] / (PARAMS["lenet300100"] - 30_010))


# ---- bad input: one line, nonzero exit, never a Caffe abort -----------------------------------

def _bad(tmp_path: Path, name: str, text: str | bytes) -> Path:
    p = tmp_path / name
    p.write_bytes(text if isinstance(text, bytes) else text.encode())
    return p


def _assert_one_line_error(r, needle: str) -> None:
    assert r.returncode == 2, (r.returncode, r.stderr)
    err = r.stderr.strip()
    assert len(err.splitlines()) == 1, err
    assert err.startswith("olmp: error: ") and needle in err, err
    assert "Traceback" not in err


def _net_text() -> str:
    return (REPO / "models/lenet300100/train_test.prototxt").read_text()


def test_bad_prototxts(tmp_path: Path, lenet300100_model: Path, mnist_dir: Path) -> None:
    text = _net_text()
    cases = {
        "missing.prototxt": None,
        "truncated.prototxt": text[: len(text) // 2],
        "wrongtype.prototxt": text.replace("num_output: 300", 'num_output: "many"'),
        "unknowntype.prototxt": text.replace('type: "ReLU"', 'type: "Frobnicate"', 1),
        "missinglayer.prototxt": text.replace('bottom: "ip1"\n  top: "ip2"', 'bottom: "ip9"\n  top: "ip2"'),
        "nosource.prototxt": text.replace("data/mnist/mnist_test_lmdb", "data/mnist/nowhere_lmdb"),
    }
    for name, body in cases.items():
        path = tmp_path / name if body is None else _bad(tmp_path, name, body)
        r = run_olmp("evaluate", "--net", str(path), "--weights", str(lenet300100_model))
        _assert_one_line_error(r, name)


def test_bad_weights(tmp_path: Path, lenet300100_model: Path) -> None:
    good = lenet300100_model.read_bytes()
    pb = caffe_bridge.caffe_pb2()
    model = pb.NetParameter()
    model.ParseFromString(good)

    renamed = pb.NetParameter(); renamed.CopyFrom(model)
    for layer in renamed.layer:
        if layer.name == "ip2":
            layer.name = "ipX"
    reshaped = pb.NetParameter(); reshaped.CopyFrom(model)
    for layer in reshaped.layer:
        if layer.name == "ip3":
            layer.blobs[0].shape.dim[:] = [5, 200]
    huge = pb.NetParameter(); huge.CopyFrom(model)
    for layer in huge.layer:
        if layer.name == "ip1":
            layer.blobs[0].shape.dim[:] = [1 << 40, 1 << 20]
    nan = pb.NetParameter(); nan.CopyFrom(model)
    for layer in nan.layer:
        if layer.name == "ip2":
            layer.blobs[1].data[3] = float("nan")
    cases = {
        "truncated.caffemodel": good[: len(good) // 3],
        "garbage.caffemodel": b"\xff\xfe not a protobuf " * 10,
        "renamed.caffemodel": renamed.SerializeToString(),
        "reshaped.caffemodel": reshaped.SerializeToString(),
        "huge.caffemodel": huge.SerializeToString(),
        "nan.caffemodel": nan.SerializeToString(),
        "empty.caffemodel": b"",
    }
    for name, body in cases.items():
        r = run_olmp("evaluate", "--net", "models/lenet300100/train_test.prototxt", "--weights",
                     str(_bad(tmp_path, name, body)))
        _assert_one_line_error(r, name)
    # the wrong net for the weights
    r = run_olmp("evaluate", "--net", "models/lenet5/train_test.prototxt", "--weights", str(lenet300100_model))
    _assert_one_line_error(r, "do not match the net")


def test_weights_check_in_process(lenet300100_model: Path) -> None:
    net = caffe_bridge.make_net(prototxt.read_net("models/lenet5/train_test.prototxt"), "test")
    with pytest.raises(OlmpError, match="no layer 'conv1'"):
        weights.load_weights(net, lenet300100_model)
    assert evaluate.batch_accuracy(np.eye(3), np.arange(3)) == 1.0
