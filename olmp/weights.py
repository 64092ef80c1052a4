"""Caffemodels read and written through protobuf in Python.

Reading in Python (not ``Net.copy_from``) lets us check names, shapes and values
before Caffe sees them, and read the DNS/OLMP forks' formats (reference doc §7):
``CInnerProduct``/``CConvolution`` layers with 4 blobs (weights, bias, weight
mask, bias mask; weights under a zero mask are not zeroed) or 2 blobs with zeros
in place. Every model comes back as stock blobs with masks applied.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from google.protobuf.message import DecodeError

from olmp import atomic, caffe_bridge, prototxt
from olmp.errors import OlmpError

MAX_BLOB = 2**31 - 1  # Caffe counts a blob's values in an int
FORK_TYPES = {"CInnerProduct": "InnerProduct", "CConvolution": "Convolution"}


@dataclass
class LayerParams:
    """One layer's parameter blobs, stock layout (masks already applied)."""

    name: str
    type: str
    blobs: list[np.ndarray]
    masks: list[np.ndarray] | None = None  # from 4-blob fork files
    source_type: str = ""

    @property
    def total(self) -> int:
        return int(sum(b.size for b in self.blobs))

    @property
    def remaining(self) -> int:
        if self.masks is not None:
            return int(sum(np.count_nonzero(m) for m in self.masks))
        return int(sum(np.count_nonzero(b) for b in self.blobs))


@dataclass
class Model:
    path: Path
    layers: dict[str, LayerParams] = field(default_factory=dict)


PRUNABLE = ("Convolution", "InnerProduct")  # prototxt.PRUNABLE_TYPES (kept apart: no Caffe import here)


def check_blob_count(layer: LayerParams, path: Path) -> None:
    """The one rule for parameter blobs: a Convolution or InnerProduct layer holds its weights and at
    most a bias (a fork layer also their two masks); a file with more is refused, since no other code
    would read, count or convert the extra blob the same way. Other layer types' blobs (BatchNorm,
    Scale, PReLU...) are kept and counted as they are."""
    if layer.type in PRUNABLE and len(layer.blobs) > 2:
        raise OlmpError(f"layer '{layer.name}' ({layer.type}) holds {len(layer.blobs)} parameter blobs; "
                        "a Convolution or InnerProduct layer holds its weights and at most a bias", path)


def _blob_array(blob: Any, path: Path, where: str) -> np.ndarray:
    if blob.HasField("shape"):
        shape = tuple(int(d) for d in blob.shape.dim)
    else:  # legacy 4-D blob header
        shape = tuple(int(d) for d in (blob.num, blob.channels, blob.height, blob.width))
    if any(d < 0 for d in shape):
        raise OlmpError(f"{where} has a negative dimension {shape}", path)
    declared = math.prod(shape)  # exact: a float product overflows on absurd dims
    if declared == 0:
        raise OlmpError(f"{where} is empty (shape {shape})", path)
    if declared > MAX_BLOB:
        raise OlmpError(f"{where} declares shape {shape}, more than Caffe's {MAX_BLOB} values per blob", path)
    values = blob.data if len(blob.data) else blob.double_data
    if len(values) != declared:
        raise OlmpError(f"{where} declares shape {shape} ({declared} values) but holds {len(values)}", path)
    arr = np.asarray(values, dtype=np.float32).reshape(shape)
    if not np.all(np.isfinite(arr)):
        raise OlmpError(f"{where} holds NaN or infinite values", path)
    return arr


def read_caffemodel(path: str | Path) -> Model:
    """Parse a stock or fork caffemodel; raise a one-line OlmpError on anything off."""
    path = Path(path)
    if not path.is_file():
        raise OlmpError("caffemodel not found", path)
    pb = caffe_bridge.caffe_pb2()
    net = pb.NetParameter()
    try:
        net.ParseFromString(path.read_bytes())
    except (DecodeError, RuntimeError, ValueError) as exc:
        raise OlmpError(f"not a valid caffemodel (truncated or corrupt: {exc})", path) from exc
    prototxt.refuse_shared_params([(lay.name, [p.name for p in lay.param]) for lay in net.layer]
                                  + [(lay.name, list(lay.param)) for lay in net.layers], path)
    model = Model(path=path)
    v1 = [(lay.name, pb.V1LayerParameter.LayerType.Name(lay.type), lay.blobs) for lay in net.layers]
    for name, ltype, blobs in [(lay.name, lay.type, lay.blobs) for lay in net.layer] + v1:
        if not blobs:
            continue
        arrays = [_blob_array(b, path, f"layer '{name}' blob {i}") for i, b in enumerate(blobs)]
        stock = FORK_TYPES.get(ltype, ltype)
        masks = None
        if ltype in FORK_TYPES and len(arrays) not in (1, 2, 4):
            raise OlmpError(f"layer '{name}' ({ltype}) holds {len(arrays)} blobs; a fork layer holds weights and "
                            "bias, with or without their two masks", path)
        if ltype in FORK_TYPES and len(arrays) == 4:
            masks = [arrays[2], arrays[3]]
            for a, m in zip(arrays[:2], masks):
                if a.shape != m.shape:
                    raise OlmpError(f"layer '{name}': mask shape {m.shape} differs from blob {a.shape}", path)
            arrays = [arrays[0] * (masks[0] != 0), arrays[1] * (masks[1] != 0)]
        if name in model.layers:
            raise OlmpError(f"layer '{name}' appears twice", path)
        model.layers[name] = LayerParams(name, stock, arrays, masks, ltype)
        check_blob_count(model.layers[name], path)
    if not model.layers:
        raise OlmpError("caffemodel holds no parameter blobs", path)
    return model


def check_against_net(model: Model, net: Any) -> None:
    """Every parameter layer of ``net`` must be in the model with the same blob shapes."""
    for name, blobs in net.params.items():
        if name not in model.layers:
            have = ", ".join(model.layers) or "none"
            raise OlmpError(f"weights do not match the net: no layer '{name}' (file has: {have})", model.path)
        got = model.layers[name].blobs
        want = [tuple(b.data.shape) for b in blobs]
        if [a.shape for a in got] != want:
            raise OlmpError(
                f"weights do not match the net: layer '{name}' blobs {[a.shape for a in got]}, net wants {want}",
                model.path,
            )


def load_into(net: Any, model: Model) -> None:
    check_against_net(model, net)
    for name, blobs in net.params.items():
        for blob, arr in zip(blobs, model.layers[name].blobs):
            blob.data[...] = arr


def load_weights(net: Any, path: str | Path) -> Model:
    """Check then copy a caffemodel into a live net (never Caffe's aborting copy_from)."""
    model = read_caffemodel(path)
    load_into(net, model)
    return model


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _field(tag: bytes, payload: bytes) -> bytes:
    """One length-delimited protobuf field: its tag byte(s), the length, the bytes."""
    return tag + _varint(len(payload)) + payload


def blob_bytes(arr: np.ndarray) -> bytes:
    """A BlobProto as Caffe writes it: ``shape`` (field 7) and packed float ``data`` (field 5)."""
    dims = b"".join(_varint(int(d)) for d in arr.shape)
    shape = _field(b"\x0a", dims) if dims else b""
    data = np.ascontiguousarray(arr, dtype="<f4").tobytes()
    return _field(b"\x3a", shape) + (_field(b"\x2a", data) if data else b"")


def net_bytes(net: Any, net_param: Any = None, phase: int | None = None) -> bytes:
    """A live net's caffemodel, serialised here in Python rather than by Caffe.

    Caffe's writer CHECK-fails (aborting the process) when the disk fills; these bytes go
    through ``atomic.write_bytes``, where a full disk is a one-line error. Layers come in
    the net's order with the blobs as Caffe's ``Net::ToProto`` lays them out; with
    ``net_param`` and ``phase`` each layer's full definition from the prototxt is kept
    (otherwise name, type, bottoms and tops: all that ``copy_from`` and olmp read).
    """
    pb = caffe_bridge.caffe_pb2()
    defs: dict[str, Any] = {}
    if net_param is not None:
        defs = {lay.name: lay for lay in prototxt.layers_in_phase(net_param, phase)}
    head = pb.NetParameter()
    if net_param is not None and net_param.name:
        head.name = net_param.name
    parts = [head.SerializeToString()]
    for name, layer in zip(net._layer_names, net.layers):
        lp = pb.LayerParameter()
        if name in defs:
            lp.CopyFrom(defs[name])
            lp.ClearField("blobs")
        else:
            lp.name, lp.type = name, layer.type
        if phase is not None:
            lp.phase = phase
        if lp.type.endswith("Loss") and not lp.loss_weight:
            lp.loss_weight.append(1.0)  # what Caffe's LossLayer setup adds
        del lp.bottom[:], lp.top[:]  # as the net wired them (split layers inserted)
        lp.bottom.extend(net.bottom_names[name])
        lp.top.extend(net.top_names[name])
        body = lp.SerializeToString() + b"".join(_field(b"\x3a", blob_bytes(b.data)) for b in layer.blobs)
        parts.append(_field(b"\xa2\x06", body))  # NetParameter.layer is field 100
    return b"".join(parts)


def save_net(net: Any, path: str | Path, net_param: Any = None, phase: int | None = None) -> None:
    """Write a live net's weights as a stock caffemodel, through a temporary file and a rename."""
    atomic.write_bytes(path, net_bytes(net, net_param, phase))


def summary(model: Model) -> dict[str, Any]:
    """The ``olmp inspect`` contract: totals, remaining (nonzero or unmasked) and ratio."""
    layers = {n: {"total": lp.total, "remaining": lp.remaining} for n, lp in model.layers.items()}
    total = sum(v["total"] for v in layers.values())
    remaining = sum(v["remaining"] for v in layers.values())
    return {
        "total": total,
        "remaining": remaining,
        "ratio": (total / remaining) if remaining else float("inf"),
        "layers": layers,
    }
