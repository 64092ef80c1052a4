"""What pruning buys when a model is shipped: bytes on disk and CPU inference time, per LeNet.

    OPENBLAS_NUM_THREADS=1 OMP_NUM_THREADS=1 python benchmarks/deployment.py [results/lenet300100 results/lenet5]
        [--rounds 51] [--threads 1] [--quick] [--out DIR]

For the reference (results/references/<model>/) and the ``best/`` and ``lossless/`` models of each
results folder (a missing one is named in the report), it writes ``<folder>/deployment.md`` and
``.json`` (``--out DIR``: ``DIR/<model>/``):

- bytes of the caffemodel as committed (pruned weights stored as zeros), the package's sparse npz
  (``olmp export --sparse``), the ONNX model (``olmp export --onnx``) and its sparse-initializer
  form (``--sparse-initializers``), each also gzip-compressed (level 9);
- the time of one forward pass at batch 1 and batch 64 on the first test images, as the median over
  rounds of a few calls each, the methods taking turns within a round so that they share the
  machine's load: pycaffe (dense), ONNX Runtime on each ONNX file, a sparse forward (Caffe's dense
  layers up to the first inner product, then scipy.sparse CSR products), and ONNX Runtime's own
  sparse kernel (com.microsoft SparseToDenseMatMul, its weights fed as CSR tensors: ONNX Runtime
  makes sparse initializers dense when it loads a model, so a file cannot carry this form).

Each time is reported as the ratio of pycaffe's dense time for the same model and batch to it
(above 1: faster than pycaffe), measured in the same run. Every method's outputs are compared with
pycaffe's first (``max_abs_diff``, ``same_predictions``).
"""

from __future__ import annotations

import argparse
import gzip
import importlib.metadata
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from olmp import tables  # noqa: E402
from olmp.published import NAMES  # noqa: E402

BATCHES = (1, 64)
CHUNK_SECONDS = 0.02  # calls per timed chunk: enough to last about this long


def _threads(n: int) -> None:
    """One thread count for every library, set before any of them loads."""
    for key in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[key] = str(n)


def _version(name: str) -> str:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return "absent"


def _gz(path: Path) -> int:
    return len(gzip.compress(path.read_bytes(), compresslevel=9, mtime=0))


def test_images(net_path: Path, count: int) -> np.ndarray:
    """The first ``count`` test images as Caffe's TEST data layer hands them on (scaled)."""
    from olmp import prototxt

    net = prototxt.make_net(prototxt.read_net(net_path), "test", source=net_path)
    out: list[np.ndarray] = []
    while sum(len(x) for x in out) < count:
        net.forward()
        out.append(net.blobs["data"].data.copy())
    return np.concatenate(out)[:count]


class SparseForward:
    """Caffe's dense forward up to the first inner product, then CSR products in scipy.

    Activations are kept as (features, batch) so that each product is ``W @ A`` on a C-ordered
    array, scipy's fastest path; at batch 1 a plain vector (a matrix-vector product). The input
    blob's array is taken once: pycaffe builds a dict of every blob on each ``net.blobs``.
    """

    def __init__(self, deploy: Any, net: Any, model: Any) -> None:
        import scipy.sparse as sp

        layers = [lay for lay in deploy.layer if lay.type != "Input"]
        first = next(i for i, lay in enumerate(layers) if lay.type == "InnerProduct")
        self.net, self.head = net, layers[first - 1].name if first else None
        self.x = net.blobs[layers[first].bottom[0]].data  # a view: Caffe's forward writes into it
        self.ops: list[tuple[str, Any, Any]] = []
        for lay in layers[first:]:
            if lay.type == "InnerProduct":
                w, b = model.layers[lay.name].blobs
                self.ops.append(("ip", sp.csr_matrix(w.reshape(len(w), -1)), b if len(self.x) == 1 else b[:, None]))
            elif lay.type in ("ReLU", "Softmax", "Dropout"):
                self.ops.append((lay.type, None, None))
            else:
                raise ValueError(f"the sparse forward runs no {lay.type} layer after an inner product")

    def __call__(self) -> np.ndarray:
        if self.head:
            self.net.forward(end=self.head)
        x = self.x
        a = x.reshape(-1) if len(x) == 1 else np.ascontiguousarray(x.reshape(len(x), -1).T)
        for kind, w, b in self.ops:
            if kind == "ip":
                a = w @ a
                a += b
            elif kind == "ReLU":
                np.maximum(a, 0, out=a)
            elif kind == "Softmax":
                a = np.exp(a - a.max(axis=0))
                a /= a.sum(axis=0)
        return a.reshape(1, -1) if len(x) == 1 else a.T


def _session(path_or_bytes: str | bytes, threads: int) -> Any:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.log_severity_level = 3  # the contrib op's output shape is unknown to ONNX: a warning per run
    return ort.InferenceSession(path_or_bytes, so, providers=["CPUExecutionProvider"])


def _runner(sess: Any, x: np.ndarray) -> Callable[[], np.ndarray]:
    return lambda: sess.run(None, {"data": x})[0]


def csr_kernel(onnx_path: Path, threads: int, x: np.ndarray) -> Callable[[], np.ndarray] | None:
    """ONNX Runtime's sparse kernel in place of each Gemm whose weights are under a third kept:
    SparseToDenseMatMul(W as CSR, x transposed) -> transpose -> add the bias. None when no Gemm qualifies."""
    import onnx
    import onnxruntime as ort
    import scipy.sparse as sp
    from onnx import TensorProto, helper, numpy_helper

    model = onnx.load(str(onnx_path))
    g = model.graph
    inits = {i.name: i for i in g.initializer}
    fed: dict[str, Any] = {}
    nodes = []
    for node in g.node:
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        w = numpy_helper.to_array(inits[node.input[1]]) if node.op_type == "Gemm" else None
        if w is None or attrs.get("transB") != 1 or 3 * np.count_nonzero(w) >= w.size:
            nodes.append(node)
            continue
        c = sp.csr_matrix(w)
        fed[node.input[1]] = ort.OrtValue.ort_value_from_sparse_tensor(ort.SparseTensor.sparse_csr_from_numpy(
            np.array(w.shape, dtype=np.int64), c.data, c.indices.astype(np.int64), c.indptr.astype(np.int64),
            ort.OrtDevice.make("cpu", 0)))
        out = node.output[0]
        nodes += [helper.make_node("Transpose", [node.input[0]], [out + "_xt"], perm=[1, 0]),  # its transB
                  helper.make_node("SparseToDenseMatMul", [node.input[1], out + "_xt"], [out + "_t"],  # misreads shapes
                                   domain="com.microsoft"),
                  helper.make_node("Transpose", [out + "_t"], [out + "_nb"], perm=[1, 0])]
        nodes.append(helper.make_node("Add", [out + "_nb", node.input[2]], [out]) if len(node.input) > 2
                     else helper.make_node("Identity", [out + "_nb"], [out]))
    if not fed:
        return None
    sparse_inputs = [helper.make_sparse_tensor_value_info(n, TensorProto.FLOAT, list(inits[n].dims)) for n in fed]
    graph = helper.make_graph(nodes, g.name, [*g.input, *sparse_inputs], g.output,
                              initializer=[i for i in g.initializer if i.name not in fed])
    variant = helper.make_model(graph, opset_imports=[*model.opset_import, helper.make_opsetid("com.microsoft", 1)],
                                ir_version=model.ir_version)
    sess = _session(variant.SerializeToString(), threads)
    feeds = {**fed, g.input[0].name: ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(x))}
    names = [o.name for o in g.output]
    return lambda: sess.run_with_ort_values(names, feeds)[0].numpy()


def timed(fns: dict[str, Callable[[], Any]], rounds: int) -> dict[str, float]:
    """Median seconds per call of each function; in each round every function runs one chunk, in
    an order that rotates from round to round."""
    per_chunk = {}
    for name, fn in fns.items():
        for _ in range(3):
            fn()
        t0 = time.perf_counter()
        fn()
        per_chunk[name] = max(1, int(CHUNK_SECONDS / max(time.perf_counter() - t0, 1e-7)))
    times: dict[str, list[float]] = {name: [] for name in fns}
    names = list(fns)
    for r in range(rounds):
        for name in names[r % len(names):] + names[:r % len(names)]:
            fn, n = fns[name], per_chunk[name]
            t0 = time.perf_counter()
            for _ in range(n):
                fn()
            times[name].append((time.perf_counter() - t0) / n)
    return {name: statistics.median(ts) for name, ts in times.items()}


METHODS = {
    "pycaffe": "pycaffe, dense",
    "ort": "ONNX Runtime, dense",
    "ort_sparse_init": "ONNX Runtime, sparse initializers",
    "scipy_csr": "sparse forward (scipy CSR inner products)",
    "ort_csr": "ONNX Runtime CSR kernel",
}
FORMS = {
    "caffemodel": "caffemodel (as committed; pruned weights stored as zeros)",
    "npz": "sparse npz (`olmp export --sparse`)",
    "onnx": "ONNX (`olmp export --onnx`)",
    "onnx_sparse": "ONNX, sparse initializers (`--sparse-initializers`)",
}


def measure_model(name: str, net_path: Path, weights_path: Path, images: np.ndarray, rounds: int, threads: int,
                  tmp: Path) -> dict[str, Any]:
    from olmp import onnx_export, prototxt, sparse, weights

    model = weights.read_caffemodel(weights_path)
    info = weights.summary(model)
    files = {"caffemodel": weights_path, "npz": tmp / f"{name}.npz", "onnx": tmp / f"{name}.onnx",
             "onnx_sparse": tmp / f"{name}-sparse.onnx"}
    sparse.export_sparse(weights_path, files["npz"])
    onnx_export.export(net_path, weights_path, files["onnx"])
    n_sparse = onnx_export.export(net_path, weights_path, files["onnx_sparse"], sparse=True)["sparse_initializers"]
    res: dict[str, Any] = {
        "weights": str(weights_path.relative_to(REPO) if weights_path.is_relative_to(REPO) else weights_path),
        "total": info["total"], "remaining": info["remaining"], "ratio": info["ratio"],
        "sparse_initializers": n_sparse,
        "bytes": {k: f.stat().st_size for k, f in files.items()},
        "gzip_bytes": {k: _gz(f) for k, f in files.items()}, "batches": {}}
    net_param = prototxt.read_net(net_path)
    for batch in BATCHES:
        x = images[:batch]
        deploy, _ = onnx_export.deploy_net(net_param, batch, net_path)
        net = prototxt.make_net(deploy, "test", source=net_path)
        weights.load_into(net, model)
        net.blobs["data"].data[...] = x
        out = [b for b in net.outputs][0]

        def pycaffe(net: Any = net, out: str = out) -> np.ndarray:
            return net.forward()[out]

        fns: dict[str, Callable[[], Any]] = {"pycaffe": pycaffe}
        for key, f in (("ort", files["onnx"]), ("ort_sparse_init", files["onnx_sparse"])):
            if key == "ort_sparse_init" and not n_sparse:
                continue  # the same file as the dense one
            fns[key] = _runner(_session(str(f), threads), x)
        fns["scipy_csr"] = SparseForward(deploy, net, model)
        kernel = csr_kernel(files["onnx"], threads, x)
        if kernel is not None:
            fns["ort_csr"] = kernel
        want = pycaffe().copy()
        checks = {}
        for key, fn in fns.items():
            got = np.asarray(fn()).reshape(want.shape)
            checks[key] = {"max_abs_diff": float(np.abs(got - want).max()),
                           "same_predictions": bool(np.array_equal(got.argmax(1), want.argmax(1)))}
        seconds = timed(fns, rounds)
        res["batches"][str(batch)] = {
            key: {"seconds": seconds[key], "vs_pycaffe": seconds["pycaffe"] / seconds[key], **checks[key]}
            for key in fns}
    return res


def _record(folder: Path) -> dict[str, Any] | None:
    path = folder / "record.json"
    return json.loads(path.read_text()) if path.is_file() else None


def _net_of(results: Path) -> Path:
    rec = _record(results / "best")
    if rec and rec.get("experiment", {}).get("net"):
        return REPO / rec["experiment"]["net"]
    return REPO / "models" / results.name / "train_test.prototxt"


def _size(n: int) -> str:
    return f"{n / 1e6:.2f} MB" if n >= 1e6 else f"{n / 1e3:.1f} kB"


def _us(s: float) -> str:
    return f"{s * 1e6:,.0f} µs" if s >= 1e-4 else f"{s * 1e6:.1f} µs"


def _speed(row: dict[str, Any], key: str) -> str:
    """A method's cell of the inference table: pycaffe's own time, the others relative to it."""
    if key not in row:
        return "n/a"
    if key == "pycaffe":
        return f"1 ({_us(row[key]['seconds'])})"
    return f"{row[key]['vs_pycaffe']:.2f}x"


def render(model: str, r: dict[str, Any]) -> str:
    present = [k for k, v in r["models"].items() if v is not None]
    lines = [f"# Shipping {NAMES.get(model, model)}: bytes on disk and CPU inference time", "",
             f"Made by `{r['command']}` on {r['date']}, in one process. Machine: {r['machine']['cpu']}, "
             f"{r['machine']['usable_cores']} usable cores, load average {r['machine']['load_before']:.2f} at the "
             f"start and {r['machine']['load_after']:.2f} at the end; {r['threads']} thread(s) for every library "
             "(OpenBLAS, OpenMP, ONNX Runtime intra-op). Versions: "
             + ", ".join(f"{k} {v}" for k, v in r["versions"].items()) + ".", ""]
    lines += tables.markdown(
        ["model", "weights", "parameters left", "ratio", "test accuracy (its record)"],
        ([key, r["absent"][key], None, None, None] if v is None else
         [key, f"`{v['weights']}`", f"{v['remaining']:,} / {v['total']:,}", f"{v['ratio']:.1f}x",
          f"{100 * v['test_accuracy']:.2f}%" if v.get("test_accuracy") is not None else ""]
         for key, v in r["models"].items()))
    rows = []
    for form, label in FORMS.items():
        cells = [label]
        for k in present:
            v = r["models"][k]
            if form == "onnx_sparse" and not v["sparse_initializers"]:
                cells += ["as ONNX (no weight under a third kept)", ""]
            else:
                cells += [_size(v["bytes"][form]), _size(v["gzip_bytes"][form])]
        rows.append(cells)
    lines += ["", "## Bytes on disk", "",
              *tables.markdown(["form", *(c for k in present for c in (k, f"{k}, gzip -9"))], rows)]
    lines += ["", "## CPU inference time", "",
              f"Median of {r['rounds']} rounds, as the ratio of pycaffe's dense time for the same model and batch "
              "to each method's (above 1: faster than pycaffe, below 1: slower); pycaffe's own time in brackets. "
              "Every method's outputs were compared with pycaffe's first: the largest absolute difference of the "
              f"logits over all rows is {r['max_abs_diff']:.1e}, with the same predictions: {r['same_predictions']}.",
              "", *tables.markdown(["model", "batch", *METHODS.values()], (
                  [k, batch, *(_speed(row, key) for key in METHODS)]
                  for k in present for batch, row in r["models"][k]["batches"].items())), ""]
    for k in present:
        if k == "reference":
            continue
        row = r["models"][k]["batches"]["1"]
        v = row["scipy_csr"]["vs_pycaffe"]
        lines.append(f"**{k}, batch 1:** the sparse forward (scipy CSR) is {'faster' if v > 1 else 'slower'} than the "
                     f"dense pycaffe forward: {v:.2f}x its speed "
                     f"({_us(row['scipy_csr']['seconds'])} against {_us(row['pycaffe']['seconds'])}).")
    lines += ["", "n/a: ONNX Runtime's CSR kernel replaces only inner products with under a third of their weights "
              "kept, and the sparse-initializer file is the dense one when no weight qualifies. Why the numbers "
              "fall as they do: docs/shipping.md."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("folders", nargs="*", default=["results/lenet300100", "results/lenet5"])
    ap.add_argument("--rounds", type=int, default=51)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--quick", action="store_true", help="3 rounds (a check of the report, not of the times)")
    ap.add_argument("--out", help="write DIR/<model>/deployment.{md,json} instead of into each folder")
    args = ap.parse_args(argv)
    _threads(args.threads)
    from olmp import atomic, caffe_bridge, provenance

    caffe_bridge.caffe()
    build_key = provenance.pycaffe_build_key() or "unknown"  # of the pycaffe this process loaded
    rounds = 3 if args.quick else args.rounds
    command = "python benchmarks/deployment.py " + " ".join(argv if argv is not None else sys.argv[1:])
    for folder in args.folders:
        results = (REPO / folder).resolve() if not Path(folder).is_absolute() else Path(folder)
        model = results.name
        net_path = _net_of(results)
        candidates = {"reference": REPO / "results" / "references" / model / "model.caffemodel",
                      "best": results / "best" / "pruned.caffemodel",
                      "lossless": results / "lossless" / "pruned.caffemodel"}
        out_dir = Path(args.out) / model if args.out else results
        for name in ("deployment.md", "deployment.json"):
            atomic.check_target(out_dir / name)
        r: dict[str, Any] = {"command": command, "date": time.strftime("%Y-%m-%d"), "rounds": rounds,
                             "threads": args.threads, "net": str(net_path.relative_to(REPO)),
                             "machine": {"cpu": provenance.cpu_model(), "usable_cores": len(os.sched_getaffinity(0)),
                                         "load_before": os.getloadavg()[0], "python": platform.python_version()},
                             "versions": {p: _version(p) for p in ("numpy", "scipy", "onnx", "onnxruntime")}
                             | {"pycaffe": build_key},
                             "models": {}, "absent": {}}
        images = test_images(net_path, max(BATCHES))
        with tempfile.TemporaryDirectory() as tmp:
            for key, path in candidates.items():
                if not path.is_file():
                    r["models"][key] = None
                    r["absent"][key] = f"absent (no `{path.relative_to(REPO)}` yet)"
                    continue
                print(f"[deployment] {model} {key}: {rounds} rounds", file=sys.stderr)
                m = measure_model(f"{model}-{key}", net_path, path, images, rounds, args.threads, Path(tmp))
                rec = _record(path.parent)
                train = path.parent / "train.json"
                m["test_accuracy"] = (rec["final"]["test"]["accuracy"] if rec else
                                      json.loads(train.read_text())["test"]["accuracy"] if train.is_file() else None)
                r["models"][key] = m
        rows = [row for m in r["models"].values() if m for b in m["batches"].values() for row in b.values()]
        r["max_abs_diff"] = max(row["max_abs_diff"] for row in rows)
        r["same_predictions"] = all(row["same_predictions"] for row in rows)
        r["machine"]["load_after"] = os.getloadavg()[0]
        atomic.write_json(out_dir / "deployment.json", r)
        atomic.write_text(out_dir / "deployment.md", render(model, r))
        print(f"wrote {out_dir / 'deployment.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
