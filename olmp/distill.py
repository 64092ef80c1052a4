"""Distillation from the dense reference (Hinton et al. 2015) as a Caffe Python loss layer.

While a teacher is registered, the student's loss gains ``weight * T^2 * KL(p || q)``, where p and q are
the softmax at temperature T of the teacher's and the student's logits on the same minibatch; the hard
loss stays as it is. Its gradient with respect to the student's logits is ``weight * T * (q - p) / N``.

Why a loss layer rather than a numpy gradient added to the logits' diff: ``solver.step`` runs the forward
and backward passes in one C++ call, with a hook before and after but none in between. A loss layer is
where Caffe itself puts a term of the loss: its backward adds into the logits' gradient beside the hard
loss's (Caffe inserts the split), the solver's iteration and the loss it reports include it, and a
resumed run rebuilds it from the net's text. The teacher is a TEST-phase net with the reference weights
and an Input layer; the pipeline registers it at the start of retraining (before that the layer adds
nothing), so the masks of a run with distillation are those of the same seed's run without it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from olmp import caffe_bridge, prototxt, weights
from olmp.config import RetrainConfig
from olmp.errors import OlmpError

LAYER = "SoftTargetLoss"
TOP = "soft_target_loss"


@dataclass
class Teacher:
    net: Any  # TEST-phase net whose "data" input takes the minibatch's images
    logits: str  # its blob that feeds its SoftmaxWithLoss
    temperature: float
    weight: float


_TEACHERS: dict[str, Teacher] = {}  # key (param_str) -> the teacher; absent: the layer adds nothing


def train_io(net_param: Any) -> tuple[str, str]:
    """(logits, images) blob names of a net's TRAIN phase: its SoftmaxWithLoss's first bottom, its data top."""
    pb = caffe_bridge.caffe_pb2()
    layers = prototxt.layers_in_phase(net_param, pb.TRAIN)
    loss = next((lay for lay in layers if lay.type == "SoftmaxWithLoss"), None)
    data = next((lay for lay in layers if not lay.bottom and lay.top), None)
    if loss is None or data is None:
        raise OlmpError("retrain.distill_weight needs a TRAIN phase with a data layer and a SoftmaxWithLoss")
    return loss.bottom[0], data.top[0]


def student(sp: Any, key: str) -> Any:
    """A copy of solver settings ``sp`` whose net has the soft-target layer (inert until ``activate(key)``)."""
    pb = caffe_bridge.caffe_pb2()
    out = pb.SolverParameter()
    out.CopyFrom(sp)
    out.net_param.layer.append(layer_param(pb, key, *train_io(sp.net_param)))
    return out


def teacher(net: Any, net_param: Any, weights_file: str | Path, cfg: RetrainConfig,
            source: str | Path | None = None) -> Teacher:
    """``weights_file`` (the dense reference) as a TEST-phase net fed the student ``net``'s minibatch."""
    pb = caffe_bridge.caffe_pb2()
    logits, _ = train_io(net_param)
    shapes = {top: net.blobs[top].data.shape for top in net.blobs}
    tnet = prototxt.make_net(prototxt.input_net_param(net_param, pb.TEST, shapes), "test", source=source)
    weights.load_weights(tnet, prototxt.resolve_path(weights_file))
    return Teacher(tnet, logits, cfg.distill_temperature, cfg.distill_weight)


def activate(key: str, teacher: Teacher) -> None:
    _TEACHERS[key] = teacher


def deactivate(key: str) -> None:
    _TEACHERS.pop(key, None)


def layer_param(pb: Any, key: str, logits: str, data: str) -> Any:
    """The TRAIN-phase layer to append to the student's net."""
    layer = pb.LayerParameter(name="soft_target", type="Python", bottom=[logits, data], top=[TOP])
    layer.include.add(phase=pb.TRAIN)
    layer.loss_weight.append(1.0)
    layer.python_param.module = __name__
    layer.python_param.layer = LAYER
    layer.python_param.param_str = json.dumps({"key": key})
    layer.propagate_down.extend([True, False])
    return layer


def _softmax(z: np.ndarray, temperature: float) -> np.ndarray:
    z = z.reshape(len(z), -1).astype(np.float64) / temperature
    z -= z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def soft_target_loss(student: np.ndarray, teacher: np.ndarray, temperature: float,
                     weight: float) -> tuple[float, np.ndarray]:
    """The term and its gradient with respect to the student's logits (mean over the batch)."""
    p, q = _softmax(teacher, temperature), _softmax(student, temperature)
    n = len(p)
    kl = float(np.sum(p * (np.log(np.maximum(p, 1e-30)) - np.log(np.maximum(q, 1e-30))))) / n
    grad = weight * temperature * (q - p) / n
    return weight * temperature**2 * kl, grad.reshape(student.shape).astype(np.float32)


class SoftTargetLoss(caffe_bridge.caffe().Layer):  # type: ignore[misc,name-defined]
    """bottom[0]: the student's logits; bottom[1]: the minibatch's images (fed to the teacher)."""

    def setup(self, bottom: Any, top: Any) -> None:
        self.key = json.loads(self.param_str)["key"]
        self.grad: np.ndarray | None = None

    def reshape(self, bottom: Any, top: Any) -> None:
        top[0].reshape(1)

    def forward(self, bottom: Any, top: Any) -> None:
        teacher = _TEACHERS.get(self.key)
        if teacher is None:
            top[0].data[...] = 0.0
            self.grad = None
            return
        teacher.net.blobs["data"].data[...] = bottom[1].data
        teacher.net.forward()
        loss, self.grad = soft_target_loss(bottom[0].data, teacher.net.blobs[teacher.logits].data,
                                           teacher.temperature, teacher.weight)
        top[0].data[...] = loss

    def backward(self, top: Any, propagate_down: Any, bottom: Any) -> None:
        if not propagate_down[0]:
            return
        if self.grad is None:
            bottom[0].diff[...] = 0.0
        else:
            bottom[0].diff[...] = self.grad * top[0].diff[0]
