"""A compressed sparse form of a pruned model: CSR with 8-bit relative indices.

As in Deep Compression (Han et al. 2016, §2): only the nonzero weights are kept,
and each one's position is stored as a small gap from the previous one instead of
an absolute index. A gap too large for its bits is bridged by padding entries of
value zero. The result is a plain ``.npz`` (``numpy.load(f, allow_pickle=False)``).

Layout (format "olmp-sparse-csr8", version 1)
---------------------------------------------
``meta``
    0-d unicode array holding JSON: ``{"format": "olmp-sparse-csr8", "version": 1,
    "index_bits": 8, "source": file name, "layers": [{"name", "type", "blobs":
    [{"shape": [...]}]}]}``; layers and blobs in the caffemodel's order.
``L{i}_B{j}_values`` (float32[E]), ``L{i}_B{j}_gaps`` (uint8[E]), ``L{i}_B{j}_rowptr`` (uint[rows+1])
    Blob j of layer i as a CSR matrix. The blob is viewed as ``rows x cols`` with
    rows = shape[0] and cols = the product of the other dimensions (a 1-D bias is
    one row; a conv filter bank is one row per output channel). Row r owns entries
    ``rowptr[r]:rowptr[r+1]``. Within a row, the entry's column is the previous
    entry's column + gap + 1, starting from column -1; so gap 0 means "next to
    the previous one". Gaps above 255 are bridged by padding entries (value 0.0,
    gap 255), each advancing 256 columns. ``rowptr`` has the smallest unsigned
    dtype (uint8/16/32/64) that holds E.

Everything not stored is +0.0, and stored values are exact float32, so loading
back gives every blob bit for bit, masks applied, except that a zero stored as
-0.0 comes back as +0.0. (Saving W*M, as the forks and ``olmp prune`` do, leaves
-0.0 wherever a negative weight was pruned; storing those signs would cost more
than the weights. No value Caffe computes depends on them.)

Bytes: ``sparse_bytes`` counts what the format needs, values (4 B) + gaps (1 B)
per entry + row pointers; ``dense_bytes`` is 4 B per parameter (float32). The
``.npz`` file adds a zip and npy header per array (``file_bytes``).
"""

from __future__ import annotations

import json
import os
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from olmp import atomic, caffe_bridge, convert, prototxt, schemas, weights
from olmp.errors import OlmpError

FORMAT = "olmp-sparse-csr8"
VERSION = 1
INDEX_BITS = 8
MAX_GAP = (1 << INDEX_BITS) - 1  # 255: a padding entry advances MAX_GAP + 1 columns
MAX_BLOB = 2**31 - 1  # Caffe's limit on a blob's element count


def _as_rows(shape: tuple[int, ...]) -> tuple[int, int]:
    if len(shape) == 0:
        return 1, 1
    if len(shape) == 1:
        return 1, int(shape[0])
    return int(shape[0]), int(np.prod(shape[1:], dtype=np.int64))


def _index_dtype(n: int) -> np.dtype:
    for dt in (np.uint8, np.uint16, np.uint32):
        if n <= np.iinfo(dt).max:
            return np.dtype(dt)
    return np.dtype(np.uint64)


def encode(arr: np.ndarray) -> dict[str, np.ndarray]:
    """One blob -> {values, gaps, rowptr}; zeros (either sign) are not stored."""
    rows, cols = _as_rows(arr.shape)
    flat = np.asarray(arr, dtype=np.float32).reshape(rows, cols)
    r, c = np.nonzero(flat)  # row-major: sorted by row, then column
    vals = flat[r, c]
    prev = np.full(len(c), -1, dtype=np.int64)
    same_row = np.zeros(len(c), dtype=bool)
    same_row[1:] = r[1:] == r[:-1]
    prev[1:][same_row[1:]] = c[:-1][same_row[1:]]
    gap = c.astype(np.int64) - prev - 1
    pads = gap // (MAX_GAP + 1)
    counts = pads + 1
    owner = np.repeat(np.arange(len(c)), counts)
    starts = np.cumsum(counts) - counts
    k = np.arange(int(counts.sum())) - starts[owner]
    real = k == pads[owner]
    values = np.where(real, vals[owner], np.float32(0)).astype(np.float32)
    gaps = np.where(real, gap[owner] - (MAX_GAP + 1) * pads[owner], MAX_GAP).astype(np.uint8)
    per_row = np.bincount(r, weights=counts, minlength=rows).astype(np.int64)
    rowptr = np.concatenate([[0], np.cumsum(per_row)])
    return {"values": values, "gaps": gaps, "rowptr": rowptr.astype(_index_dtype(len(values)))}


def decode(shape: tuple[int, ...], values: np.ndarray, gaps: np.ndarray, rowptr: np.ndarray,
           where: str = "blob") -> np.ndarray:
    """{values, gaps, rowptr} -> the dense float32 blob; OlmpError on anything inconsistent."""
    rows, cols = _as_rows(shape)
    if values.dtype != np.float32 or gaps.dtype != np.uint8 or rowptr.dtype.kind != "u":
        raise OlmpError(f"{where}: wrong dtypes ({values.dtype}, {gaps.dtype}, {rowptr.dtype})")
    if values.ndim != 1 or gaps.shape != values.shape or rowptr.shape != (rows + 1,):
        raise OlmpError(f"{where}: array lengths do not fit shape {tuple(shape)}")
    ptr = rowptr.astype(np.int64)
    if ptr[0] != 0 or ptr[-1] != len(values) or np.any(np.diff(ptr) < 0):
        raise OlmpError(f"{where}: row pointers are not a partition of the {len(values)} entries")
    if not np.all(np.isfinite(values)):
        raise OlmpError(f"{where}: holds NaN or infinite values")
    row = np.repeat(np.arange(rows), np.diff(ptr))
    steps = np.cumsum(gaps.astype(np.int64) + 1)
    before = np.concatenate([[0], steps])[ptr[:-1]]  # steps taken before each row starts
    col = steps - before[row] - 1
    if len(col) and col.max() >= cols:
        raise OlmpError(f"{where}: an index runs past the row length {cols}")
    dense = np.zeros((rows, cols), dtype=np.float32)
    dense[row, col] = values
    return dense.reshape(shape)


def export_sparse(src: str | Path, dst: str | Path, force: bool = False) -> dict[str, Any]:
    """``olmp export --sparse``: any caffemodel (stock or fork) -> the npz above; an existing ``dst``
    only with ``force``, never ``src`` itself."""
    src, dst = Path(src), Path(dst)
    atomic.check_target(dst)  # never a device or FIFO, and a writable folder: before any work
    atomic.check_new(dst, (src,), force)
    model = weights.read_caffemodel(src)
    arrays: dict[str, np.ndarray] = {}
    layers_meta = []
    sparse_bytes = dense_bytes = nonzero = entries = 0
    per_layer = {}
    for i, (name, lp) in enumerate(model.layers.items()):
        blobs_meta = []
        layer_bytes = 0
        for j, arr in enumerate(convert.stock_arrays(lp)):
            enc = encode(arr)
            for key, a in enc.items():
                arrays[f"L{i}_B{j}_{key}"] = a
            layer_bytes += sum(a.nbytes for a in enc.values())
            nonzero += int(np.count_nonzero(arr))
            entries += len(enc["values"])
            dense_bytes += 4 * arr.size
            blobs_meta.append({"shape": [int(d) for d in arr.shape]})
        sparse_bytes += layer_bytes
        per_layer[name] = layer_bytes
        layers_meta.append({"name": name, "type": lp.type, "blobs": blobs_meta})
    meta = {"format": FORMAT, "version": VERSION, "index_bits": INDEX_BITS, "source": src.name,
            "layers": layers_meta}
    arrays["meta"] = np.array(json.dumps(meta))
    with atomic.atomic_path(dst) as tmp, open(tmp, "wb") as fh:  # a file object: numpy would append ".npz"
        np.savez(fh, **arrays)
        fh.flush()
        os.fsync(fh.fileno())
    return {
        "out": str(dst),
        "nonzero": nonzero,
        "padding": entries - nonzero,
        "dense_bytes": dense_bytes,
        "sparse_bytes": sparse_bytes,
        "compression": dense_bytes / sparse_bytes if sparse_bytes else float("inf"),
        "file_bytes": dst.stat().st_size,
        "layers": per_layer,
    }


def load_sparse(path: str | Path) -> weights.Model:
    """The npz above -> a Model of stock dense blobs (no masks)."""
    path = Path(path)
    if not path.is_file():
        raise OlmpError("sparse file not found", path)
    try:
        with np.load(path, allow_pickle=False) as z:
            files = {k: z[k] for k in z.files}
    except (zipfile.BadZipFile, ValueError, OSError, EOFError, KeyError) as exc:
        raise OlmpError(f"not a valid sparse npz (truncated or corrupt: {exc})", path) from exc
    if "meta" not in files or files["meta"].dtype.kind != "U" or files["meta"].shape != ():
        raise OlmpError(f"not an olmp sparse npz: no meta entry (a {FORMAT} file from `olmp export --sparse`)", path)
    try:
        raw = json.loads(str(files["meta"]))
    except ValueError as exc:
        raise OlmpError(f"not an olmp sparse npz: its meta is not JSON ({exc})", path) from None
    if not isinstance(raw, dict) or raw.get("format") != FORMAT or raw.get("version") != VERSION:
        got = (raw.get("format"), raw.get("version")) if isinstance(raw, dict) else (None, None)
        raise OlmpError(f"format {got[0]} v{got[1]}, expected {FORMAT} v{VERSION}", path)
    meta = schemas.check(schemas.SparseMeta, raw, "sparse npz meta", path)
    if meta.index_bits != INDEX_BITS:
        raise OlmpError(f"malformed sparse npz meta: index_bits {meta.index_bits}, expected {INDEX_BITS}", path)
    try:
        model = weights.Model(path=path)
        for i, layer in enumerate(meta.layers):
            blobs = []
            for j, b in enumerate(layer.blobs):
                shape = tuple(b.shape)
                if np.prod(shape, dtype=np.float64) > MAX_BLOB:
                    raise OlmpError(f"layer '{layer.name}' blob {j} shape {shape} is too large for Caffe", path)
                parts = [files[f"L{i}_B{j}_{k}"] for k in ("values", "gaps", "rowptr")]
                try:
                    blobs.append(decode(shape, *parts, where=f"layer '{layer.name}' blob {j}"))
                except OlmpError as exc:
                    raise OlmpError(str(exc), path) from exc
            if layer.name in model.layers:
                raise OlmpError(f"layer '{layer.name}' appears twice", path)
            model.layers[layer.name] = weights.LayerParams(layer.name, layer.type, blobs)
            weights.check_blob_count(model.layers[layer.name], path)
    except (KeyError, TypeError, ValueError) as exc:
        raise OlmpError(f"not a valid sparse npz (missing or malformed entry: {exc})", path) from exc
    if not model.layers:
        raise OlmpError("sparse file holds no layers", path)
    return model


def import_dense(src: str | Path, dst: str | Path, net_path: str | Path | None = None,
                 force: bool = False) -> dict[str, Any]:
    """``olmp export --dense``: the npz -> a stock caffemodel.

    Without ``net_path`` the file holds only the parameter layers (all ``copy_from``
    needs); with it, the arrays are checked against that net and Caffe writes the
    whole net, as ``olmp train`` does. An existing ``dst`` only with ``force``, never an input.
    """
    atomic.check_target(dst)
    atomic.check_new(dst, (src, None if net_path is None else prototxt.resolve_path(net_path)), force)
    model = load_sparse(src)
    if net_path is None:
        convert.write_params_only([(n, lp.type, lp.blobs) for n, lp in model.layers.items()], dst)
    else:
        net_param = prototxt.read_net(net_path)
        net = prototxt.make_net(net_param, "test", source=net_path)
        weights.load_into(net, model)
        weights.save_net(net, dst, net_param, caffe_bridge.caffe_pb2().TEST)
    info = weights.summary(weights.read_caffemodel(dst))
    return {"out": str(dst), "total": info["total"], "remaining": info["remaining"], "ratio": info["ratio"]}
