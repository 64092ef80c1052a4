"""Stock-Caffe equivalents of DNS/OLMP-fork caffemodels (reference doc §7).

Stock ``Net.copy_from`` aborts on a 4-blob ``CInnerProduct`` layer, so the
authors' released models cannot be evaluated by stock Caffe as they are. This
module rewrites such a file: masks applied, two blobs per layer, stock layer
types, every other layer (and its blobs) kept as it was.

In the layers it rewrites, zeros are written as +0.0: the forks save W*M, which
leaves -0.0 wherever a negative weight was pruned. The sign of a zero changes no
value Caffe computes, and one canonical zero is what the sparse form
(``olmp.sparse``) gives back. Stock layers are copied byte for byte.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from olmp import atomic, caffe_bridge, weights
from olmp.errors import OlmpError

# LayerParameter fields a stock InnerProduct/Convolution layer uses; anything else on a
# fork layer is the fork's own pruning settings, which stock protobuf misreads (e.g. as
# bias_param or elu_param), so it is dropped.
STOCK_FIELDS = (
    "name", "type", "bottom", "top", "phase", "loss_weight", "param", "propagate_down",
    "include", "exclude", "inner_product_param", "convolution_param",
)


def canonical(arr: np.ndarray) -> np.ndarray:
    """float32 copy with every zero written as +0.0 (x + 0.0 turns -0.0 into +0.0)."""
    return np.asarray(arr, dtype=np.float32) + np.float32(0.0)


def stock_arrays(layer: weights.LayerParams) -> list[np.ndarray]:
    """A layer's blobs as stock Caffe holds them: masks applied, zeros canonical."""
    return [canonical(b) for b in layer.blobs]


def fill_blob(blob: Any, arr: np.ndarray) -> None:
    """Write ``arr`` into a BlobProto with an N-D shape header and float data."""
    blob.Clear()
    blob.shape.dim.extend(int(d) for d in arr.shape)
    blob.data.extend(np.asarray(arr, dtype=np.float32).ravel().tolist())


def _stock_layer(pb: Any, src: Any, arrays: list[np.ndarray]) -> Any:
    out = pb.LayerParameter()
    out.CopyFrom(src)
    for field, _ in src.ListFields():
        if field.name not in STOCK_FIELDS:
            out.ClearField(field.name)
    out.DiscardUnknownFields()
    out.type = weights.FORK_TYPES.get(src.type, src.type)
    del out.blobs[:]
    for arr in arrays:
        fill_blob(out.blobs.add(), arr)
    return out


def to_stock(src: str | Path, dst: str | Path, force: bool = False) -> dict[str, Any]:
    """``olmp convert``: write the stock equivalent of ``src`` to ``dst`` (atomically); an existing
    ``dst`` only with ``force``, never ``src`` itself."""
    src, dst = Path(src), Path(dst)
    atomic.check_target(dst)  # never a device or FIFO, and a writable folder: before any work
    atomic.check_new(dst, (src,), force)
    model = weights.read_caffemodel(src)  # every check (shapes, masks, NaN) happens here
    pb = caffe_bridge.caffe_pb2()
    net = pb.NetParameter()
    net.ParseFromString(src.read_bytes())
    converted = []
    for i, layer in enumerate(net.layer):
        if layer.type not in weights.FORK_TYPES:
            continue
        if not layer.blobs:
            raise OlmpError(f"fork layer '{layer.name}' holds no blobs", src)
        arrays = stock_arrays(model.layers[layer.name])
        net.layer[i].CopyFrom(_stock_layer(pb, layer, arrays))
        converted.append(layer.name)
    net.DiscardUnknownFields()
    atomic.write_bytes(dst, net.SerializeToString())
    info = weights.summary(weights.read_caffemodel(dst))
    return {"out": str(dst), "converted": converted, "total": info["total"], "remaining": info["remaining"],
            "ratio": info["ratio"]}


def write_params_only(layers: list[tuple[str, str, list[np.ndarray]]], dst: str | Path, name: str = "") -> None:
    """A stock caffemodel holding only named parameter layers: enough for ``copy_from``.

    ``copy_from`` matches layers by name and ignores the rest of the file, so a net
    definition is not needed to carry weights.
    """
    pb = caffe_bridge.caffe_pb2()
    net = pb.NetParameter()
    if name:
        net.name = name
    for lname, ltype, arrays in layers:
        layer = net.layer.add()
        layer.name = lname
        layer.type = ltype
        for arr in arrays:
            fill_blob(layer.blobs.add(), arr)
    atomic.write_bytes(dst, net.SerializeToString())
