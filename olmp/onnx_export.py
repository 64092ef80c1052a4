"""A Caffe net and its caffemodel as an ONNX model, the usual way a Caffe model is shipped.

The graph is the net's deployment form: the TEST phase, its data layers turned into graph inputs
(a ``Data`` layer's first top, shaped like its LMDB's images), and the layers that score against
the label (``Accuracy``, ``*Loss``) left out, so a train_test net exports its logits. Weights are
the caffemodel's (fork formats included, masks applied).

Caffe's pooling rounds its output size up (and drops a last window that would start in the
padding); ONNX's ``ceil_mode`` has differed between runtimes on that edge, so the export writes
the output size Caffe computes as explicit end padding with ``ceil_mode=0``. Every blob's shape
is then checked against the net Caffe builds (ONNX shape inference against ``net.blobs``), and the
model against ``onnx.checker`` (with its full shape check for the dense form).

``sparse=True`` stores each Convolution and InnerProduct weight with fewer than a third of its
values left as a ``sparse_initializer`` (COO, int64 positions: 12 bytes a nonzero against 4 a
weight dense; the others stay dense). ONNX
Runtime accepts that form and makes the weights dense when it loads the model: the file is
smaller, the arithmetic is the dense one.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from olmp import atomic, caffe_bridge, prototxt, weights
from olmp.errors import OlmpError

OPSET = 17  # ONNX Runtime 1.14 and later, and most other runtimes, run it
IR_VERSION = 8  # the IR that goes with opset 17; newer runtimes read it, older ones refuse newer IRs
SUPPORTED = ("Input", "Data", "Convolution", "Pooling", "InnerProduct", "ReLU", "LRN", "Dropout", "Softmax",
             "Sigmoid", "TanH", "Flatten", "Concat", "Eltwise", "Split")
BATCH = "N"  # the name of a dynamic batch dimension


def _scored(layer: Any) -> bool:
    """Layers that compare the net's output with the label: not part of a deployed net."""
    return layer.type == "Accuracy" or layer.type.endswith("Loss") or layer.type == "Silence"


def _datum_shape(layer: Any, where: Path) -> tuple[int, ...]:
    """(channels, height, width) of one image as a Data layer hands it on (after its crop)."""
    import lmdb  # noqa: PLC0415

    src = Path(layer.data_param.source)
    try:
        with lmdb.open(str(src), readonly=True, lock=False) as env, env.begin() as txn:
            first = next(iter(txn.cursor()), (None, None))[1]
    except lmdb.Error as exc:
        raise OlmpError(f"layer '{layer.name}' data source {src} is not a readable LMDB ({exc})", where) from None
    datum = caffe_bridge.caffe_pb2().Datum()
    datum.ParseFromString(first or b"")
    crop = layer.transform_param.crop_size
    h, w = (crop, crop) if crop else (datum.height, datum.width)
    if min(datum.channels, h, w) <= 0:
        raise OlmpError(f"layer '{layer.name}': the first image of {src} has no shape", where)
    return int(datum.channels), int(h), int(w)


def _transform_note(layer: Any) -> str:
    """What Caffe's data layer does to an image before the net sees it (the exported model does not)."""
    t = layer.transform_param
    parts = []
    if t.crop_size:
        parts.append(f"centre crop {t.crop_size}")
    if t.mean_file:
        parts.append(f"mean of {Path(t.mean_file).name} subtracted")
    if len(t.mean_value):
        parts.append(f"mean {list(t.mean_value)} subtracted")
    if t.HasField("scale"):
        parts.append(f"values times {t.scale:g}")
    return f"input '{layer.top[0]}': " + (", ".join(parts) if parts else "as stored") + ", as Caffe's data layer does"


def deploy_net(net_param: Any, batch: int, where: Path) -> tuple[Any, list[str]]:
    """The net's TEST phase as Input layers of ``batch`` images plus the layers a deployed net runs.

    Returns the NetParameter and notes on each input's preprocessing. Anything the export cannot
    write is refused here, naming the layer and its type.
    """
    pb = caffe_bridge.caffe_pb2()
    out = pb.NetParameter()
    out.name = net_param.name
    notes: list[str] = []
    for name in net_param.input:  # the legacy `input:` fields of old deploy prototxts
        i = list(net_param.input).index(name)
        if len(net_param.input_shape) > i:
            dims = list(net_param.input_shape[i].dim)
        elif len(net_param.input_dim) >= 4 * (i + 1):
            dims = list(net_param.input_dim[4 * i:4 * i + 4])
        else:
            raise OlmpError(f"input '{name}' has no shape", where)
        new = out.layer.add()
        new.name, new.type = name, "Input"
        new.top.append(name)
        new.input_param.shape.add().dim.extend([batch, *dims[1:]])
    kept = [lay for lay in prototxt.layers_in_phase(net_param, pb.TEST) if not _scored(lay)]
    for layer in kept:
        if layer.type not in SUPPORTED:
            raise OlmpError(f"layer '{layer.name}' has type '{layer.type}', which the ONNX export does not "
                            f"support (it writes {', '.join(SUPPORTED)})", where)
        new = out.layer.add()
        if layer.type == "Input":
            new.CopyFrom(layer)
            del new.include[:], new.exclude[:]
            for shape in new.input_param.shape:
                if len(shape.dim):
                    shape.dim[0] = batch
        elif layer.type == "Data":  # its first top is the image; the label is read only by scoring layers
            new.name, new.type = layer.name, "Input"
            new.top.append(layer.top[0])
            new.input_param.shape.add().dim.extend([batch, *_datum_shape(layer, where)])
            notes.append(_transform_note(layer))
        else:
            new.CopyFrom(layer)
            del new.include[:], new.exclude[:]
    produced = set()
    for layer in out.layer:
        for bottom in layer.bottom:
            if bottom not in produced:
                raise OlmpError(f"layer '{layer.name}' reads '{bottom}', which a deployed net does not have "
                                "(a label?)", where)
        produced.update(layer.top)
    return out, notes


def _pair(param: Any, name: str, default: int) -> list[int]:
    """A spatial setting of Caffe: its _h/_w fields where set (some builds give them defaults, so
    only a set field counts), else the field itself, one value for both axes or one each."""
    if name != "dilation" and (param.HasField(f"{name}_h") or param.HasField(f"{name}_w")):
        return [int(getattr(param, f"{name}_h")), int(getattr(param, f"{name}_w"))]
    field = getattr(param, "kernel_size" if name == "kernel" else name)
    if not isinstance(field, int):  # ConvolutionParameter: repeated
        vals = [int(v) for v in field]
    else:  # PoolingParameter: optional
        vals = [field] if param.HasField("kernel_size" if name == "kernel" else name) else []
    if not vals:
        return [default, default]
    return vals * 2 if len(vals) == 1 else vals


def _pool_size(size: int, kernel: int, stride: int, pad: int, padded: bool) -> int:
    """Caffe's pooled size (pooling_layer.cpp): rounded up, less a last window starting in the padding
    (checked on every axis when any axis is padded)."""
    out = int(math.ceil((size + 2 * pad - kernel) / stride)) + 1
    if padded and (out - 1) * stride >= size + pad:
        out -= 1
    return out


class _Graph:
    """ONNX nodes and initializers as the layers are walked, in static single assignment."""

    def __init__(self) -> None:
        self.nodes: list[Any] = []
        self.inits: list[Any] = []
        self.values: dict[str, str] = {}  # Caffe blob -> current ONNX value (in-place layers rename)
        self.names: set[str] = set()
        self.of_blob: dict[str, str] = {}  # ONNX value -> the Caffe blob it holds
        self.weights: set[str] = set()  # the prunable layers' weight initializers

    def fresh(self, blob: str) -> str:
        name, k = blob, 1
        while name in self.names:
            name, k = f"{blob}_{k}", k + 1
        self.names.add(name)
        self.of_blob[name] = blob
        return name

    def tensor(self, name: str, arr: np.ndarray) -> str:
        from onnx import numpy_helper  # noqa: PLC0415

        value = self.fresh(name)
        self.of_blob.pop(value)
        self.inits.append(numpy_helper.from_array(np.ascontiguousarray(arr, dtype=np.float32), value))
        return value

    def node(self, op: str, inputs: list[str], top: str, **attrs: Any) -> str:
        from onnx import helper  # noqa: PLC0415

        out = self.fresh(top)
        self.nodes.append(helper.make_node(op, inputs, [out], name=out, **attrs))
        self.values[top] = out
        return out


def _convolution(g: _Graph, layer: Any, x: str, blobs: list[np.ndarray]) -> None:
    p = layer.convolution_param
    if p.axis != 1 or len(blobs[0].shape) != 4:
        raise OlmpError(f"layer '{layer.name}': only 2-D convolutions over axis 1 are exported")
    kernel, stride, pad = _pair(p, "kernel", 0), _pair(p, "stride", 1), _pair(p, "pad", 0)
    dilation = _pair(p, "dilation", 1)
    inputs = [x, g.tensor(f"{layer.name}_w", blobs[0])]
    g.weights.add(inputs[1])
    if p.bias_term:
        inputs.append(g.tensor(f"{layer.name}_b", blobs[1]))
    g.node("Conv", inputs, layer.top[0], kernel_shape=kernel, strides=stride, pads=[*pad, *pad],
           dilations=dilation, group=int(p.group))


def _pooling(g: _Graph, layer: Any, x: str, shape: tuple[int, ...]) -> None:
    p = layer.pooling_param
    pb = caffe_bridge.caffe_pb2()
    if p.pool not in (pb.PoolingParameter.MAX, pb.PoolingParameter.AVE):
        raise OlmpError(f"layer '{layer.name}': {pb.PoolingParameter.PoolMethod.Name(p.pool)} pooling "
                        "is not exported (MAX and AVE are)")
    op = "Max" if p.pool == pb.PoolingParameter.MAX else "Average"
    if p.global_pooling:
        g.node(f"Global{op}Pool", [x], layer.top[0])
        return
    kernel, stride, pad = _pair(p, "kernel", 0), _pair(p, "stride", 1), _pair(p, "pad", 0)
    end = []
    for size, k, s, q in zip(shape[2:], kernel, stride, pad):
        out = _pool_size(size, k, s, q, any(pad))
        end.append(max((out - 1) * s + k - size - q, 0))  # whatever the last window reaches past the input
    attrs: dict[str, Any] = {"kernel_shape": kernel, "strides": stride, "pads": [*pad, *end]}
    if op == "Average":
        # Caffe divides by the window clipped to the padded input: every element when no window
        # reaches past the padding, only the real ones when there is no padding
        if all(e <= q for e, q in zip(end, pad)):
            attrs["count_include_pad"] = 1
        elif not any(pad):
            attrs["count_include_pad"] = 0
        else:
            raise OlmpError(f"layer '{layer.name}': AVE pooling with padding and a last window past it "
                            "divides as no ONNX AveragePool does")
    g.node(f"{op}Pool", [x], layer.top[0], **attrs)


def _inner_product(g: _Graph, layer: Any, x: str, shape: tuple[int, ...], blobs: list[np.ndarray]) -> None:
    p = layer.inner_product_param
    if p.axis not in (1, 1 - len(shape)):
        raise OlmpError(f"layer '{layer.name}': only inner products over axis 1 are exported")
    if len(shape) != 2:
        x = g.node("Flatten", [x], f"{layer.name}_flat", axis=1)
    inputs = [x, g.tensor(f"{layer.name}_w", blobs[0])]
    g.weights.add(inputs[1])
    if p.bias_term:
        inputs.append(g.tensor(f"{layer.name}_b", blobs[1]))
    g.node("Gemm", inputs, layer.top[0], transB=0 if p.transpose else 1)


def _eltwise(g: _Graph, layer: Any, xs: list[str]) -> None:
    p = layer.eltwise_param
    pb = caffe_bridge.caffe_pb2().EltwiseParameter
    if p.operation == pb.SUM:
        coeff = list(p.coeff) or [1.0] * len(xs)
        if any(c != 1.0 for c in coeff):
            xs = [x if c == 1.0 else g.node("Mul", [x, g.tensor(f"{layer.name}_c{i}", np.array(c, dtype=np.float32))],
                                              f"{layer.name}_scaled{i}")
                  for i, (x, c) in enumerate(zip(xs, coeff))]
        g.node("Sum", xs, layer.top[0])
    elif p.operation == pb.PROD:
        acc = xs[0]
        for i, x in enumerate(xs[1:], 1):
            acc = g.node("Mul", [acc, x], layer.top[0] if i == len(xs) - 1 else f"{layer.name}_prod{i}")
    else:
        g.node("Max", xs, layer.top[0])


def _layer(g: _Graph, layer: Any, blobs: list[np.ndarray], shapes: dict[str, tuple[int, ...]]) -> None:
    xs = [g.values[b] for b in layer.bottom]
    t = layer.type
    top = layer.top[0] if layer.top else ""
    if t == "Convolution":
        _convolution(g, layer, xs[0], blobs)
    elif t == "Pooling":
        _pooling(g, layer, xs[0], shapes[layer.bottom[0]])
    elif t == "InnerProduct":
        _inner_product(g, layer, xs[0], shapes[layer.bottom[0]], blobs)
    elif t == "ReLU":
        slope = layer.relu_param.negative_slope
        if slope:
            g.node("LeakyRelu", xs, top, alpha=float(slope))
        else:
            g.node("Relu", xs, top)
    elif t == "LRN":
        p = layer.lrn_param
        if p.norm_region != caffe_bridge.caffe_pb2().LRNParameter.ACROSS_CHANNELS:
            raise OlmpError(f"layer '{layer.name}': LRN WITHIN_CHANNEL is not exported (ACROSS_CHANNELS is)")
        g.node("LRN", xs, top, size=int(p.local_size), alpha=float(p.alpha), beta=float(p.beta), bias=float(p.k))
    elif t in ("Dropout", "Split"):  # Dropout passes its input on unchanged at test time
        for out in layer.top:
            g.node("Identity", xs, out)
    elif t == "Softmax":
        g.node("Softmax", xs, top, axis=int(layer.softmax_param.axis))
    elif t in ("Sigmoid", "TanH"):
        g.node({"Sigmoid": "Sigmoid", "TanH": "Tanh"}[t], xs, top)
    elif t == "Flatten":
        p = layer.flatten_param
        if p.end_axis not in (-1, len(shapes[layer.bottom[0]]) - 1):
            raise OlmpError(f"layer '{layer.name}': Flatten with end_axis {p.end_axis} is not exported "
                            "(only flattening to the last axis)")
        g.node("Flatten", xs, top, axis=int(p.axis))
    elif t == "Concat":
        p = layer.concat_param
        g.node("Concat", xs, top, axis=int(p.concat_dim if p.HasField("concat_dim") else p.axis))
    elif t == "Eltwise":
        _eltwise(g, layer, xs)


def _sparse_initializers(model: Any, names: set[str]) -> None:
    """Move the named initializers that are smaller so to ``sparse_initializer``: nonzero values
    (4 bytes) and their int64 positions (8 bytes), against 4 bytes a weight dense."""
    from onnx import helper, numpy_helper  # noqa: PLC0415

    dense = []
    for init in model.graph.initializer:
        arr = numpy_helper.to_array(init).ravel()
        at = np.flatnonzero(arr)
        if init.name not in names or 12 * len(at) >= 4 * arr.size:
            dense.append(init)
            continue
        values = numpy_helper.from_array(arr[at].astype(np.float32), init.name)
        positions = numpy_helper.from_array(at.astype(np.int64), f"{init.name}_positions")
        model.graph.sparse_initializer.append(helper.make_sparse_tensor(values, positions, list(init.dims)))
    del model.graph.initializer[:]
    model.graph.initializer.extend(dense)


def build(net_path: str | Path, weights_path: str | Path, batch: int | None = None,
          sparse: bool = False) -> tuple[Any, dict[str, Any]]:
    """The checked ONNX model (an ``onnx.ModelProto``) and a summary; ``batch`` None is dynamic."""
    import onnx  # noqa: PLC0415
    from onnx import TensorProto, helper, shape_inference  # noqa: PLC0415

    if batch is not None and batch < 1:
        raise OlmpError(f"--batch must be >= 1, got {batch}")
    net_file = prototxt.resolve_path(net_path)
    net_param = prototxt.read_net(net_file)
    deploy, notes = deploy_net(net_param, batch or 1, net_file)
    model = weights.read_caffemodel(weights_path)
    net = prototxt.make_net(deploy, "test", source=net_file)
    weights.load_into(net, model)  # the caffemodel must fit the net, blob for blob
    shapes = {name: tuple(int(d) for d in blob.data.shape) for name, blob in net.blobs.items()}

    g = _Graph()
    inputs = []
    for layer in deploy.layer:
        if layer.type == "Input":
            for top, shape in zip(layer.top, layer.input_param.shape):
                g.values[top] = g.fresh(top)
                dims = [BATCH if batch is None else batch, *[int(d) for d in shape.dim[1:]]]
                inputs.append(helper.make_tensor_value_info(g.values[top], TensorProto.FLOAT, dims))
            continue
        blobs = model.layers[layer.name].blobs if layer.name in net.params else []
        try:
            _layer(g, layer, blobs, shapes)
        except OlmpError as exc:
            raise OlmpError(str(exc), net_file) from None
    layers = list(deploy.layer)  # outputs: blobs that no later layer reads (an in-place last layer's too)
    ends = list(dict.fromkeys(top for i, lay in enumerate(layers) if lay.type != "Input" for top in lay.top
                              if not any(top in later.bottom for later in layers[i + 1:])))
    if not ends:
        raise OlmpError("the deployed net has no output", net_file)
    outputs = [helper.make_tensor_value_info(g.values[b], TensorProto.FLOAT,
                                             [BATCH if batch is None else batch, *shapes[b][1:]]) for b in ends]
    graph = helper.make_graph(g.nodes, deploy.name or net_file.stem, inputs, outputs, initializer=g.inits)
    onnx_model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                                   producer_name="olmp", ir_version=IR_VERSION)
    onnx_model.doc_string = (f"{net_file.name} with {Path(weights_path).name}. "
                             + "; ".join(notes or ["inputs as the net's Input layers take them"]))
    try:
        onnx.checker.check_model(onnx_model, full_check=True)
        inferred = shape_inference.infer_shapes(onnx_model, strict_mode=True)
    except (onnx.checker.ValidationError, shape_inference.InferenceError) as exc:
        raise OlmpError(f"the ONNX model does not check: {str(exc).splitlines()[0]}", net_file) from None
    _check_shapes(inferred, g, shapes, batch, net_file)
    if sparse:
        _sparse_initializers(onnx_model, g.weights)
        onnx.checker.check_model(onnx_model)  # the full check's shape inference takes no sparse initializer
    summary = {"inputs": {i.name: _dims(i) for i in onnx_model.graph.input},
               "outputs": {o.name: _dims(o) for o in onnx_model.graph.output},
               "nodes": len(onnx_model.graph.node), "opset": OPSET, "batch": batch or "dynamic",
               "sparse_initializers": len(onnx_model.graph.sparse_initializer), "notes": notes}
    return onnx_model, summary


def _dims(info: Any) -> list[int | str]:
    return [d.dim_param or d.dim_value for d in info.type.tensor_type.shape.dim]


def _check_shapes(inferred: Any, g: _Graph, shapes: dict[str, tuple[int, ...]], batch: int | None,
                  where: Path) -> None:
    """Every value ONNX infers must have the shape of the Caffe blob it stands for (the batch aside
    when it is dynamic): a pooling size rounded the other way shows here, not in a user's results."""
    for info in [*inferred.graph.value_info, *inferred.graph.output]:
        blob = g.of_blob.get(info.name)
        if blob is None or blob not in shapes:
            continue
        got = _dims(info)
        want: list[int | str] = [BATCH if batch is None else batch, *shapes[blob][1:]]
        if got != want:
            raise OlmpError(f"blob '{blob}': ONNX computes shape {got}, Caffe {want}", where)


def export(net_path: str | Path, weights_path: str | Path, out: str | Path, batch: int | None = None,
           sparse: bool = False, force: bool = False) -> dict[str, Any]:
    """``olmp export --onnx``: write the checked model to ``out`` (atomically); an existing ``out`` only
    with ``force``, never an input."""
    out = Path(out)
    atomic.check_target(out)  # a device, a FIFO or an unwritable folder: before any work
    atomic.check_new(out, (prototxt.resolve_path(net_path), Path(weights_path)), force)
    onnx_model, summary = build(net_path, weights_path, batch=batch, sparse=sparse)
    atomic.write_bytes(out, onnx_model.SerializeToString())
    return {"out": str(out), "bytes": out.stat().st_size, **summary}
