"""Read, check and resolve Caffe prototxts in Python, before Caffe sees them.

Caffe CHECK-fails (aborting the whole process) on a malformed net, so every
problem Python can see is reported here as a one-line OlmpError naming the file.
Relative data sources and net paths resolve from the repository root, so a
prototxt works from any working directory.
"""

from __future__ import annotations

import functools
import importlib
import math
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from google.protobuf import text_format

from olmp import caffe_bridge
from olmp.errors import OlmpError
from olmp.paths import resolve_path

PRUNABLE_TYPES = ("Convolution", "InnerProduct")
_DATA_PARAMS = ("data_param", "hdf5_data_param", "image_data_param")
SOLVER_TYPES = ("SGD", "Nesterov", "AdaGrad", "RMSProp", "AdaDelta", "Adam")
REGULARIZATION = ("L2", "L1")  # Caffe's SGDSolver::Regularize aborts on any other at the first step
# Caffe's learning-rate policies and the settings each divides by or needs (sgd_solver.cpp)
LR_POLICIES: dict[str, tuple[str, ...]] = {
    "fixed": (), "step": ("stepsize",), "exp": ("gamma",), "inv": ("gamma", "power"),
    "multistep": ("stepvalue",), "poly": ("power", "max_iter"), "sigmoid": ("stepsize",),
}


def refuse_shared_params(layers: Iterable[tuple[str, Sequence[str]]], path: str | Path) -> None:
    """The one rule for parameters shared between layers (``param { name: "w" }`` in two layers): such a
    net or model is refused. olmp reads, counts, masks and converts each layer's blobs on their own, so a
    shared blob would be counted (and pruned) once per layer holding it. ``layers`` are (layer name, the
    names of its params); the same layer name twice (its TRAIN and TEST definitions) is one layer."""
    holders: dict[str, list[str]] = {}
    for layer, names in layers:
        for name in names:
            if name and layer not in holders.setdefault(name, []):
                holders[name].append(layer)
    for name, held in holders.items():
        if len(held) > 1:
            raise OlmpError(f"layers {', '.join(repr(n) for n in held)} share the parameter '{name}' "
                            "(param { name }); olmp counts and prunes each layer's parameters on their own, "
                            "so it does not take nets that share parameters", path)


def _parse(path: str | Path, message: Any, what: str) -> Any:
    path = Path(path)
    if not path.is_file():
        raise OlmpError(f"{what} not found", path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise OlmpError(f"cannot read {what}: {exc}", path) from exc
    try:
        text_format.Parse(text, message)
    except text_format.ParseError as exc:
        raise OlmpError(f"malformed {what}: {exc}", path) from exc
    return message


def read_net(path: str | Path, check_sources: bool = True) -> Any:
    """Parse and check a net prototxt; data sources come back absolute."""
    path = resolve_path(path)
    net = _parse(path, caffe_bridge.caffe_pb2().NetParameter(), "net prototxt")
    check_net(net, path, check_sources=check_sources)
    return net


def read_solver(path: str | Path) -> Any:
    """Parse a solver prototxt and embed its (checked, resolved) net as ``net_param``."""
    path = resolve_path(path)
    solver = _parse(path, caffe_bridge.caffe_pb2().SolverParameter(), "solver prototxt")
    if solver.HasField("net"):
        if not resolve_path(solver.net).is_file():
            raise OlmpError(f"its net {resolve_path(solver.net)} does not exist", path)
        net = read_net(solver.net)
        solver.ClearField("net")
        solver.net_param.CopyFrom(net)
    elif solver.HasField("net_param"):
        check_net(solver.net_param, path)
    else:
        raise OlmpError("solver names no net (set `net:`)", path)
    check_solver(solver, path)
    require_loss(solver.net_param, path, caffe_bridge.caffe_pb2().TRAIN)
    require_loss(solver.net_param, path, caffe_bridge.caffe_pb2().TEST)
    return solver


def check_experiment_net(net_path: str | Path, solver_path: str | Path, where: str | Path) -> None:
    """An experiment's ``net`` must parse as a net and be the net its solver trains.

    The pipeline builds everything from the solver; a ``net`` that says otherwise would be
    recorded but never used. Same file, or the same layers once parsed, is accepted.
    """
    net_file = resolve_path(net_path)
    try:
        ours = read_net(net_file, check_sources=False)
    except OlmpError as exc:
        raise OlmpError(f"net: {exc}", where) from None
    solver_file = resolve_path(solver_path)
    solver = _parse(solver_file, caffe_bridge.caffe_pb2().SolverParameter(), "solver prototxt")
    if solver.HasField("net"):
        theirs_file = resolve_path(solver.net)
        if theirs_file.is_file() and theirs_file.samefile(net_file):
            return
        if not theirs_file.is_file():
            return  # read_solver reports the solver's missing net, naming the solver
        theirs = read_net(theirs_file, check_sources=False)
        named = str(theirs_file)
    elif solver.HasField("net_param"):
        theirs = solver.net_param
        check_net(theirs, solver_file, check_sources=False)
        named = "its inline net_param"
    else:
        return  # read_solver reports a solver without a net
    if theirs != ours:
        raise OlmpError(f"net {net_file} is not the net solver {solver_file} trains ({named}); "
                        "set net to that file", where)


def check_solver(solver: Any, path: str | Path) -> None:
    """Reject what Caffe would abort on (or divide by zero with) once training starts."""
    def fail(msg: str) -> None:
        raise OlmpError(msg, path)

    if not (math.isfinite(solver.base_lr) and solver.base_lr > 0):
        fail(f"base_lr must be > 0, got {solver.base_lr}")
    if solver.type not in SOLVER_TYPES:
        fail(f"unknown solver type '{solver.type}' (choose from {', '.join(SOLVER_TYPES)})")
    if solver.lr_policy not in LR_POLICIES:
        fail(f"unknown lr_policy '{solver.lr_policy}' (choose from {', '.join(LR_POLICIES)})")
    for name in LR_POLICIES[solver.lr_policy]:
        value = getattr(solver, name)
        if name == "stepvalue":
            if not value or list(value) != sorted(value):
                fail("lr_policy 'multistep' needs increasing stepvalue entries")
        elif not (math.isfinite(value) and value > 0):
            fail(f"lr_policy '{solver.lr_policy}' needs {name} > 0, got {value}")
    for name in ("momentum", "momentum2", "delta", "rms_decay", "weight_decay", "gamma", "power"):
        value = getattr(solver, name)
        if not math.isfinite(value) or value < 0:
            fail(f"{name} must be a finite number >= 0, got {value}")
    if solver.momentum >= 1:
        fail(f"momentum must be < 1, got {solver.momentum}")
    if solver.regularization_type not in REGULARIZATION:
        fail(f"unknown regularization_type '{solver.regularization_type}' (choose from {', '.join(REGULARIZATION)})")
    if solver.iter_size < 1:
        fail(f"iter_size must be >= 1, got {solver.iter_size}")
    if len(solver.test_iter) != 1 or solver.test_iter[0] <= 0:
        fail("needs one test_iter > 0: Caffe builds the net's TEST phase, where olmp evaluates, only with it")


def require_loss(net: Any, path: str | Path, phase: int) -> None:
    """olmp reads logits and labels at the SoftmaxWithLoss layer (its top named 'loss' when training),
    and counts test images in the TEST phase's Data layer."""
    pb = caffe_bridge.caffe_pb2()
    layers = layers_in_phase(net, phase)
    losses = [lay for lay in layers if lay.type == "SoftmaxWithLoss"]
    if not losses or (phase == pb.TRAIN and "loss" not in losses[0].top):
        need = "with top 'loss' " if phase == pb.TRAIN else ""
        raise OlmpError(f"net has no SoftmaxWithLoss layer {need}in phase {pb.Phase.Name(phase)}", path)
    if phase == pb.TEST and not any(lay.type == "Data" and lay.data_param.source for lay in layers):
        raise OlmpError("net has no TEST-phase Data layer to evaluate on", path)


def _in_phase(layer: Any, phase: int) -> bool:
    if layer.include:
        return any(r.HasField("phase") and r.phase == phase or not r.HasField("phase") for r in layer.include)
    if layer.exclude:
        return not any(r.HasField("phase") and r.phase == phase for r in layer.exclude)
    return True


def layers_in_phase(net: Any, phase: int) -> list[Any]:
    return [layer for layer in net.layer if _in_phase(layer, phase)]


def check_net(net: Any, path: str | Path, check_sources: bool = True) -> None:
    """Reject what would make Caffe abort: unknown types, dangling bottoms, missing data."""
    pb = caffe_bridge.caffe_pb2()
    if net.layers:
        raise OlmpError("uses the pre-2015 `layers` (V1) format; upgrade it with Caffe's upgrade_net_proto_text", path)
    if not net.layer:
        raise OlmpError("net has no layers", path)
    known = set(caffe_bridge.layer_types())
    for layer in net.layer:
        if any(ord(c) < 32 or ord(c) == 127 for c in layer.name + "".join(layer.top) + "".join(layer.bottom)):
            raise OlmpError(f"layer {layer.name!r} has a control character in its name, a top or a bottom", path)
        if not layer.type:
            raise OlmpError(f"layer '{layer.name}' has no type", path)
        if layer.type not in known:
            raise OlmpError(f"layer '{layer.name}' has unknown type '{layer.type}'", path)
        _check_layer_params(layer, path)
    refuse_shared_params([(lay.name, [p.name for p in lay.param]) for lay in net.layer], path)
    for phase in (pb.TRAIN, pb.TEST):
        produced: set[str] = set(net.input)
        for layer in layers_in_phase(net, phase):
            for bottom in layer.bottom:
                if bottom not in produced:
                    raise OlmpError(
                        f"layer '{layer.name}' reads blob '{bottom}' that no earlier layer produces "
                        f"(missing layer?) in phase {pb.Phase.Name(phase)}",
                        path,
                    )
            produced.update(layer.top)
        names = [layer.name for layer in layers_in_phase(net, phase)]
        dup = {n for n in names if names.count(n) > 1}
        if dup:
            raise OlmpError(f"duplicate layer name(s) {sorted(dup)} in phase {pb.Phase.Name(phase)}", path)
    for layer in net.layer:
        for field in _DATA_PARAMS:
            if layer.HasField(field) and getattr(layer, field).source:
                param = getattr(layer, field)
                src = resolve_path(param.source)
                param.source = str(src)
                if check_sources and not src.exists():
                    raise OlmpError(f"layer '{layer.name}' data source {src} does not exist{_data_hint(src)}", path)
                if check_sources and field == "data_param":
                    _check_lmdb(layer, src, path)
            if layer.HasField(field) and getattr(layer, field).batch_size <= 0:
                raise OlmpError(f"layer '{layer.name}' has batch_size {getattr(layer, field).batch_size}", path)
        if layer.HasField("transform_param") and layer.transform_param.mean_file:
            mean = resolve_path(layer.transform_param.mean_file)
            layer.transform_param.mean_file = str(mean)
            if check_sources and not mean.is_file():
                raise OlmpError(f"layer '{layer.name}' mean file {mean} does not exist{_data_hint(mean)}", path)
        if layer.type in PRUNABLE_TYPES:
            n_out = (layer.convolution_param if layer.type == "Convolution" else layer.inner_product_param).num_output
            if n_out <= 0:
                raise OlmpError(f"layer '{layer.name}' has num_output {n_out}", path)
    if check_sources:
        for phase in (pb.TRAIN, pb.TEST):
            check_labels(net, phase, path)


def _check_layer_params(layer: Any, path: str | Path) -> None:
    """Settings Caffe takes at build time and aborts on (or hangs with) only once data flows."""
    if layer.type == "Dropout" and not 0 <= layer.dropout_param.dropout_ratio < 1:
        raise OlmpError(f"layer '{layer.name}' dropout_ratio must be in [0, 1), got "
                        f"{layer.dropout_param.dropout_ratio}", path)
    if layer.HasField("data_param") and layer.data_param.prefetch < 1:
        raise OlmpError(f"layer '{layer.name}' prefetch must be >= 1 (batches read ahead), got "
                        f"{layer.data_param.prefetch}", path)
    if layer.type == "Python":
        module, name = layer.python_param.module, layer.python_param.layer
        try:
            found = getattr(importlib.import_module(module), name, None) if module else None
        except Exception as exc:  # noqa: BLE001 - the user's module: whatever importing it raises
            raise OlmpError(f"layer '{layer.name}': its Python module '{module}' does not import "
                            f"({type(exc).__name__}: {exc})", path) from None
        if found is None:
            raise OlmpError(f"layer '{layer.name}': Python layer '{name}' not found in module '{module}'", path)


@functools.lru_cache(maxsize=16)
def label_range(source: str) -> tuple[int, int]:
    """The smallest and largest label of an LMDB data source (read once per process)."""
    import lmdb  # noqa: PLC0415

    datum = caffe_bridge.caffe_pb2().Datum()
    lo, hi = 0, -1
    with lmdb.open(source, readonly=True, lock=False) as env, env.begin() as txn:
        for i, (_, value) in enumerate(txn.cursor()):
            try:
                datum.ParseFromString(value)
            except Exception:  # noqa: BLE001 - Caffe's own reader reports a record it cannot parse
                continue
            lo, hi = (datum.label, datum.label) if i == 0 else (min(lo, datum.label), max(hi, datum.label))
    return lo, hi


def loss_classes(net: Any, phase: int) -> int | None:
    """The outputs the SoftmaxWithLoss layer reads: the num_output of the Convolution or InnerProduct
    layer computing its first bottom; None where another layer type computes it."""
    layers = layers_in_phase(net, phase)
    loss = next((lay for lay in layers if lay.type == "SoftmaxWithLoss" and lay.bottom), None)
    if loss is None:
        return None
    made = [lay for lay in layers if loss.bottom[0] in lay.top and loss.bottom[0] not in lay.bottom]
    if not made or made[-1].type not in PRUNABLE_TYPES:
        return None
    last = made[-1]
    return int((last.convolution_param if last.type == "Convolution" else last.inner_product_param).num_output)


def check_labels(net: Any, phase: int, path: str | Path) -> None:
    """Labels must index the outputs the loss reads: Caffe's release build does not check them and
    aborts or reads past its buffers. The classes are the num_output of the layer computing the loss's
    first bottom (where it is a Convolution or InnerProduct); the labels come from the LMDB source of
    the Data layer giving its second."""
    layers = layers_in_phase(net, phase)
    loss = next((lay for lay in layers if lay.type == "SoftmaxWithLoss" and len(lay.bottom) >= 2), None)
    if loss is None:
        return
    made = [lay for lay in layers if loss.bottom[0] in lay.top and loss.bottom[0] not in lay.bottom]
    data = [lay for lay in layers if loss.bottom[1] in lay.top and lay.type == "Data" and lay.data_param.source]
    if not made or made[-1].type not in PRUNABLE_TYPES or not data or not Path(data[-1].data_param.source).is_dir():
        return
    last = made[-1]
    classes = (last.convolution_param if last.type == "Convolution" else last.inner_product_param).num_output
    lo, hi = label_range(str(data[-1].data_param.source))
    if lo < 0 or hi >= classes:
        raise OlmpError(f"the labels of {data[-1].data_param.source} run from {lo} to {hi}, but layer '{last.name}', "
                        f"which the loss reads, has num_output {classes}: every label must be in [0, {classes})",
                        path)


def _check_lmdb(layer: Any, src: Path, path: str | Path) -> None:
    """Caffe aborts on a source that is not a non-empty LMDB; say so first."""
    import lmdb  # noqa: PLC0415

    if layer.data_param.backend != caffe_bridge.caffe_pb2().DataParameter.LMDB:
        raise OlmpError(f"layer '{layer.name}': olmp reads LMDB data sources only", path)
    try:
        with lmdb.open(str(src), readonly=True, lock=False) as env:
            entries = env.stat()["entries"]
    except lmdb.Error as exc:
        raise OlmpError(f"layer '{layer.name}' data source {src} is not a readable LMDB ({exc})", path) from None
    if entries == 0:
        raise OlmpError(f"layer '{layer.name}' data source {src} is an empty LMDB", path)
    check_batch_memory(layer, src, path)


MAX_BLOB = 2**31 - 1  # Caffe counts a blob's values in an int


def available_memory() -> int:
    """Bytes this process may still allocate: MemAvailable, less where a cgroup limit is tighter."""
    avail = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                avail = int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        used = int(Path("/sys/fs/cgroup/memory.current").read_text())
        if limit != "max":
            avail = min(avail, int(limit) - used)
    except (OSError, ValueError):
        pass
    return avail


def check_data_batches(net: Any, path: str | Path) -> None:
    """``check_batch_memory`` for every LMDB Data layer of a net about to be built."""
    for layer in net.layer:
        if layer.type == "Data" and layer.data_param.source and Path(layer.data_param.source).is_dir():
            check_batch_memory(layer, Path(layer.data_param.source), path)


def make_net(net_param: Any, phase: str = "test", source: str | os.PathLike | None = None) -> Any:
    """A caffe.Net from a checked NetParameter, its data batches checked first (derived nets too)."""
    check_data_batches(net_param, source or getattr(net_param, "name", "") or "net")
    try:
        return caffe_bridge.make_net(net_param, phase, source)
    except caffe_bridge.CaffeError as exc:
        raise OlmpError(str(exc)) from None


def check_validation_batch(net: Any, images: int, where: str | Path) -> None:
    """Refuse a fixed validation batch of ``images`` training images (``validation_images``) that the
    training set cannot fill or Caffe cannot hold, naming the experiment file ``where``: the solver's
    net is sound, the setting is not. More images than the set holds would read some twice.
    """
    import lmdb  # noqa: PLC0415

    pb = caffe_bridge.caffe_pb2()
    layer = next((lay for lay in layers_in_phase(net, pb.TRAIN) if lay.type == "Data"), None)
    if layer is None or not Path(layer.data_param.source).is_dir():
        return  # nothing to read a batch from: building the net says so
    src = Path(layer.data_param.source)
    try:
        with lmdb.open(str(src), readonly=True, lock=False) as env:
            entries = env.stat()["entries"]
    except lmdb.Error:
        return  # an unreadable source: building the net says so
    if images > entries:
        raise OlmpError(f"validation_images {images} is more than the {entries} images of the training set "
                        f"{src}", where)
    probe = pb.LayerParameter()
    probe.CopyFrom(layer)
    probe.data_param.batch_size = images
    check_batch_memory(probe, src, where, what=f"validation_images {images}")


def check_batch_memory(layer: Any, src: Path, path: str | Path, what: str | None = None) -> None:
    """Refuse a Data layer whose batch Caffe could not hold, before Caffe tries.

    An absurd ``batch_size`` makes Caffe abort (a blob past 2**31 values) or hang in its data
    reader; the bytes one batch needs come from the first record's shape, and the data layer
    keeps ``prefetch`` such batches plus the one it hands on. ``what`` names the setting in errors.
    """
    import lmdb  # noqa: PLC0415

    pb = caffe_bridge.caffe_pb2()
    with lmdb.open(str(src), readonly=True, lock=False) as env, env.begin() as txn:
        first = next(iter(txn.cursor()), (None, None))[1]
    datum = pb.Datum()
    try:
        datum.ParseFromString(first or b"")
    except Exception:  # noqa: BLE001 - Caffe's own reader reports a record it cannot parse
        return
    crop = layer.transform_param.crop_size
    per_image = max(datum.channels, 1) * (crop * crop if crop else max(datum.height, 1) * max(datum.width, 1))
    batch = int(layer.data_param.batch_size)
    values = batch * per_image
    what = what or f"layer '{layer.name}' batch_size {batch}"
    if values > MAX_BLOB:
        raise OlmpError(f"{what} makes a blob of {values} values, more than Caffe's {MAX_BLOB}", path)
    need = 4 * values * (int(layer.data_param.prefetch) + 1)
    avail = available_memory()
    if need > avail:
        raise OlmpError(f"{what} needs at least {need / 2**30:.1f} GiB for its batches, more than the "
                        f"{avail / 2**30:.1f} GiB of memory available", path)


def _data_hint(path: Path) -> str:
    """Which ``olmp data`` command makes a missing input."""
    for dataset in ("mnist", "caltech256"):
        if any(dataset in part for part in path.parts[-2:]):
            return f" (run `olmp data {dataset}`)"
    return ""


def prunable_layer_names(net: Any) -> list[str]:
    """Convolution and InnerProduct layers, in net order (OLMP's L prunable layers)."""
    seen: list[str] = []
    for layer in net.layer:
        if layer.type in PRUNABLE_TYPES and layer.name not in seen:
            seen.append(layer.name)
    return seen


def to_text(message: Any) -> str:
    return text_format.MessageToString(message)


def input_net_param(net_param: Any, phase: int, shapes: dict[str, tuple[int, ...]]) -> Any:
    """The layers of ``phase`` with every data layer (a layer without bottoms) turned into an Input layer."""
    pb = caffe_bridge.caffe_pb2()
    out = pb.NetParameter()
    out.name = net_param.name
    for layer in layers_in_phase(net_param, phase):
        if layer.bottom:
            new = out.layer.add()
            new.CopyFrom(layer)
            del new.include[:]
            del new.exclude[:]
            continue
        new = out.layer.add()
        new.name, new.type = layer.name, "Input"
        for top in layer.top:
            new.top.append(top)
            new.input_param.shape.add().dim.extend(shapes[top])
    return out
