"""Test-set accuracy and loss of a net, computed in numpy from the logits.

Accuracy and softmax cross-entropy come from the blobs that feed the net's
SoftmaxWithLoss layer, so every image counts exactly once whatever the batch size.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from olmp import caffe_bridge, prototxt, weights
from olmp.errors import OlmpError


def loss_inputs(net: Any) -> tuple[str, str]:
    """Names of the (logits, label) blobs read by the net's SoftmaxWithLoss layer."""
    for name, layer in zip(net._layer_names, net.layers):
        if layer.type == "SoftmaxWithLoss":
            bottoms = net.bottom_names[name]
            return bottoms[0], bottoms[1]
    raise OlmpError("net has no SoftmaxWithLoss layer to read logits and labels from")


def correct(logits: np.ndarray, labels: np.ndarray) -> int:
    return int(np.sum(np.argmax(logits.reshape(len(logits), -1), axis=1) == labels.reshape(-1).astype(int)))


def batch_accuracy(logits: np.ndarray, labels: np.ndarray) -> float:
    return correct(logits, labels) / len(logits)


def _cross_entropy_sum(logits: np.ndarray, labels: np.ndarray) -> float:
    z = logits.reshape(len(logits), -1).astype(np.float64)
    z -= z.max(axis=1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    return float(-logp[np.arange(len(z)), labels.reshape(-1).astype(int)].sum())


def test_set_size(net_param: Any) -> int:
    """Entries in the TEST phase's LMDB source (10,000 for MNIST)."""
    import lmdb  # noqa: PLC0415

    pb = caffe_bridge.caffe_pb2()
    for layer in prototxt.layers_in_phase(net_param, pb.TEST):
        if layer.type == "Data" and layer.data_param.source:
            with lmdb.open(layer.data_param.source, readonly=True, lock=False) as env:
                return int(env.stat()["entries"])
    raise OlmpError("net has no TEST-phase Data layer to evaluate on")


def evaluate_net(net: Any, images: int, where: str | Path | None = None) -> dict[str, Any]:
    """Run a TEST-phase net over ``images`` images from its data layer's start position; ``where``
    (the net's file) is named when a label does not index the net's outputs."""
    logits_name, label_name = loss_inputs(net)
    right = 0
    loss_sum = 0.0
    seen = 0
    while seen < images:
        net.forward()
        logits = net.blobs[logits_name].data
        labels = net.blobs[label_name].data
        take = min(len(logits), images - seen)
        if take <= 0:  # an empty batch would never finish the loop
            raise OlmpError("the net's TEST batch is empty")
        logits, labels = logits[:take], labels[:take]
        classes = int(np.prod(logits.shape[1:]))
        if take and not (labels.min() >= 0 and labels.max() < classes):
            raise OlmpError(f"a test label ({labels.min():g} to {labels.max():g}) does not index the net's "
                            f"{classes} outputs: the data and the net's last layer disagree", where)
        right += correct(logits, labels)
        loss_sum += _cross_entropy_sum(logits, labels)
        seen += take
    return {"accuracy": right / seen, "loss": loss_sum / seen, "images": seen}


def evaluate(net_path: str | Path, weights_path: str | Path) -> dict[str, Any]:
    """``olmp evaluate``: accuracy and loss over the whole test set."""
    net_param = prototxt.read_net(net_path)
    prototxt.require_loss(net_param, prototxt.resolve_path(net_path), caffe_bridge.caffe_pb2().TEST)
    model = weights.read_caffemodel(weights_path)
    images = test_set_size(net_param)
    net = prototxt.make_net(net_param, "test", source=net_path)
    weights.load_into(net, model)
    return evaluate_net(net, images, prototxt.resolve_path(net_path))
