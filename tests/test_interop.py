"""Fork-format models (reference doc §7): inspect, convert to stock Caffe, the sparse npz and back."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import run_olmp

from olmp import caffe_bridge, convert, evaluate, prototxt, sparse, weights
from olmp.errors import OlmpError

NET300 = "models/lenet300100/train_test.prototxt"
SHAPES = {"ip1": ((300, 784), (300,)), "ip2": ((100, 300), (100,)), "ip3": ((10, 100), (10,))}
KEEP = {"ip1": (1000, 30), "ip2": (200, 10), "ip3": (50, 5)}  # unmasked weights, biases per layer
TOTAL = 266_610
REMAINING = sum(sum(k) for k in KEEP.values())


def _exact_mask(rng: np.random.Generator, shape: tuple[int, ...], keep: int) -> np.ndarray:
    m = np.zeros(int(np.prod(shape)), dtype=np.float32)
    m[rng.choice(m.size, keep, replace=False)] = 1.0
    return m.reshape(shape)


def _blob(layer, arr: np.ndarray) -> None:
    b = layer.blobs.add()
    b.shape.dim.extend(arr.shape)
    b.data.extend(arr.ravel().tolist())


def write_fork_model(path: Path, four_blobs: bool, seed: int = 0) -> dict[str, list[np.ndarray]]:
    """A LeNet-300-100 caffemodel as the DNS/OLMP forks write it; returns the expected stock blobs.

    four_blobs: every layer CInnerProduct with (w, b, w-mask, b-mask), junk left under the masks.
    Otherwise zeros in place as the forks save W*M (so -0.0 where w < 0), with ip1 a stock
    InnerProduct layer that convert must keep untouched. Both carry a blob-less Data layer and
    the fork's own settings, which stock protobuf reads as bias_param.
    """
    rng = np.random.default_rng(seed)
    pb = caffe_bridge.caffe_pb2()
    net = pb.NetParameter()
    net.name = "LeNet"
    data = net.layer.add()
    data.name, data.type = "mnist", "Data"
    data.top.extend(["data", "label"])
    expected = {}
    bottom = "data"
    for name, shapes in SHAPES.items():
        layer = net.layer.add()
        layer.name, layer.bottom[:], layer.top[:] = name, [bottom], [name]
        layer.type = "InnerProduct" if (name == "ip1" and not four_blobs) else "CInnerProduct"
        layer.inner_product_param.num_output = shapes[0][0]
        if layer.type == "CInnerProduct":
            layer.bias_param.axis = 1  # stands for the fork's pruning settings
        w = [rng.standard_normal(s).astype(np.float32) * 0.1 for s in shapes]
        m = [_exact_mask(rng, s, k) for s, k in zip(shapes, KEEP[name])]
        stock = [np.where(mk != 0, a, np.float32(0)) for a, mk in zip(w, m)]
        for a in (w + m if four_blobs else [a * mk for a, mk in zip(w, m)]):
            _blob(layer, a)
        expected[name] = stock
        bottom = name
    path.write_bytes(net.SerializeToString())
    return expected


@pytest.fixture
def fork4(tmp_path: Path) -> tuple[Path, dict[str, list[np.ndarray]]]:
    p = tmp_path / "fork4.caffemodel"
    return p, write_fork_model(p, four_blobs=True)


@pytest.fixture
def fork2(tmp_path: Path) -> tuple[Path, dict[str, list[np.ndarray]]]:
    p = tmp_path / "fork2.caffemodel"
    return p, write_fork_model(p, four_blobs=False, seed=1)


def _bits_equal(a: np.ndarray, b: np.ndarray) -> bool:
    return a.dtype == b.dtype == np.float32 and a.shape == b.shape and np.array_equal(a.view(np.uint32),
                                                                                       b.view(np.uint32))


def _last_json(stdout: str) -> dict:
    return json.loads(stdout.strip().splitlines()[-1])


def _assert_one_line_error(r, needle: str) -> None:
    assert r.returncode == 2, (r.returncode, r.stdout, r.stderr)
    err = r.stderr.strip()
    assert len(err.splitlines()) == 1 and err.startswith("olmp: error: ") and needle in err, err


# ---- inspect and convert ------------------------------------------------------------------------

@pytest.mark.parametrize("fixture", ["fork4", "fork2"])
def test_inspect_counts_fork_models(fixture: str, request: pytest.FixtureRequest) -> None:
    path, _ = request.getfixturevalue(fixture)
    info = weights.summary(weights.read_caffemodel(path))
    assert info["total"] == TOTAL and info["remaining"] == REMAINING
    for name, (kw, kb) in KEEP.items():
        assert info["layers"][name]["remaining"] == kw + kb
    r = run_olmp("inspect", str(path), "--json")
    assert r.returncode == 0, r.stderr
    assert _last_json(r.stdout)["remaining"] == REMAINING


@pytest.mark.parametrize("fixture", ["fork4", "fork2"])
def test_convert_gives_a_model_stock_caffe_loads(fixture: str, request: pytest.FixtureRequest, tmp_path: Path,
                                                 mnist_dir: Path) -> None:
    src, expected = request.getfixturevalue(fixture)
    out = tmp_path / "stock.caffemodel"
    r = run_olmp("convert", str(src), str(out))
    assert r.returncode == 0, r.stderr
    res = _last_json(r.stdout)
    assert res["remaining"] == REMAINING and res["total"] == TOTAL
    assert res["converted"] == (["ip1", "ip2", "ip3"] if fixture == "fork4" else ["ip2", "ip3"])
    assert f"{REMAINING}/{TOTAL}" in r.stdout.splitlines()[0]

    pb = caffe_bridge.caffe_pb2()
    before, after = pb.NetParameter(), pb.NetParameter()
    before.ParseFromString(src.read_bytes())
    after.ParseFromString(out.read_bytes())
    assert [lay.name for lay in after.layer] == ["mnist", "ip1", "ip2", "ip3"]
    assert after.layer[0] == before.layer[0]  # layers without blobs kept
    for lay in after.layer[1:]:
        assert lay.type == "InnerProduct" and len(lay.blobs) == 2 and not lay.HasField("bias_param")
        assert list(lay.bottom) and lay.inner_product_param.num_output == SHAPES[lay.name][0][0]
    if fixture == "fork2":
        assert after.layer[1] == before.layer[1]  # a stock layer's blobs are kept as they were

    # stock Caffe's own loader (which aborts on 4-blob layers) takes the converted file
    net = caffe_bridge.make_net(prototxt.read_net(NET300), "test")
    net.copy_from(str(out))
    for name, arrays in expected.items():
        for blob, want in zip(net.params[name], arrays):
            assert np.array_equal(blob.data, want)
            assert not np.any(np.signbit(blob.data) & (blob.data == 0)) or name == "ip1"
    net.forward()
    h = net.blobs["data"].data.reshape(100, -1).astype(np.float64)
    for name in ("ip1", "ip2", "ip3"):
        w, b = (a.astype(np.float64) for a in expected[name])
        h = h @ w.T + b
        if name != "ip3":
            h = np.maximum(h, 0)
    np.testing.assert_allclose(net.blobs["ip3"].data, h, rtol=1e-4, atol=1e-5)


# ---- the sparse form ----------------------------------------------------------------------------

def test_encoding_by_hand() -> None:
    row = np.zeros((2, 700), dtype=np.float32)
    row[0, [0, 300, 699]] = [1.0, -2.0, 3.0]
    row[1, 555] = 4.0
    enc = sparse.encode(row)
    # row 0: col 0 (gap 0); col 300: gap 299 = one padding entry (256 columns) + gap 43; col 699: gap 398 = pad + 142
    # row 1: col 555: gap 555 = two paddings + 43
    assert enc["gaps"].tolist() == [0, 255, 43, 255, 142, 255, 255, 43]
    assert enc["values"].tolist() == [1.0, 0.0, -2.0, 0.0, 3.0, 0.0, 0.0, 4.0]
    assert enc["rowptr"].tolist() == [0, 5, 8] and enc["rowptr"].dtype == np.uint8
    assert _bits_equal(sparse.decode(row.shape, **enc), row)
    empty = np.zeros((3, 4, 5), dtype=np.float32)
    assert len(sparse.encode(empty)["values"]) == 0
    assert _bits_equal(sparse.decode(empty.shape, **sparse.encode(empty)), empty)


def test_encoding_round_trips_random_blobs() -> None:
    rng = np.random.default_rng(7)
    for shape in [(1,), (257,), (5, 1000), (20, 1, 5, 5), (7, 3, 11, 11), (300, 784), ()]:
        for density in (0.0, 0.002, 0.05, 0.5, 1.0):
            a = rng.standard_normal(shape).astype(np.float32)
            a[rng.random(shape) >= density] = 0.0
            enc = sparse.encode(a)
            assert _bits_equal(sparse.decode(a.shape, **enc), a)
            assert len(enc["values"]) >= np.count_nonzero(a)


@pytest.mark.parametrize("fixture", ["fork4", "fork2"])
def test_sparse_round_trip_is_bit_identical(fixture: str, request: pytest.FixtureRequest, tmp_path: Path) -> None:
    src, expected = request.getfixturevalue(fixture)
    npz = tmp_path / "model.npz"
    r = run_olmp("export", "--sparse", str(src), str(npz))
    assert r.returncode == 0, r.stderr
    res = _last_json(r.stdout)
    assert {"dense_bytes", "sparse_bytes", "compression"} <= set(res)
    assert res["dense_bytes"] == 4 * TOTAL and res["nonzero"] == REMAINING
    assert res["compression"] == pytest.approx(res["dense_bytes"] / res["sparse_bytes"]) and res["compression"] > 40
    assert res["file_bytes"] == npz.stat().st_size
    assert "bytes" in r.stdout.splitlines()[0] and f"{res['compression']:.1f}x" in r.stdout.splitlines()[0]

    with np.load(npz, allow_pickle=False) as z:  # the documented layout, readable without olmp
        meta = json.loads(str(z["meta"]))
        assert meta["format"] == "olmp-sparse-csr8" and [lay["name"] for lay in meta["layers"]] == list(SHAPES)
        entries = row_ptr_bytes = 0
        for i, (name, shapes) in enumerate(SHAPES.items()):
            for j, shape in enumerate(shapes):
                values, gaps, rowptr = (z[f"L{i}_B{j}_{k}"] for k in ("values", "gaps", "rowptr"))
                assert values.dtype == np.float32 and gaps.dtype == np.uint8 and len(values) == len(gaps)
                rows = shape[0] if len(shape) > 1 else 1  # a bias is one row
                assert len(rowptr) == rows + 1 and rowptr[-1] == len(values)
                assert rowptr.dtype == (np.uint8 if len(values) < 256 else np.uint16)  # the smallest that fits
                entries += len(values)
                row_ptr_bytes += rowptr.nbytes
    assert entries == REMAINING + res["padding"]
    assert res["sparse_bytes"] == 5 * entries + row_ptr_bytes  # float32 value + uint8 gap per entry

    back = tmp_path / "back.caffemodel"
    r = run_olmp("export", "--dense", str(npz), str(back))
    assert r.returncode == 0, r.stderr
    source = weights.read_caffemodel(src)
    loaded = weights.read_caffemodel(back)
    assert list(loaded.layers) == list(SHAPES)
    for name, arrays in expected.items():
        assert loaded.layers[name].type == "InnerProduct"
        for got, want, raw in zip(loaded.layers[name].blobs, arrays, source.layers[name].blobs):
            assert _bits_equal(got, want)  # bit for bit, zeros as +0.0
            assert np.array_equal(got, raw)  # and equal to what inspect/evaluate read from the fork file
    assert weights.summary(loaded)["remaining"] == REMAINING


def test_dense_load_back_into_a_net(fork4: tuple[Path, dict], tmp_path: Path, mnist_dir: Path) -> None:
    src, expected = fork4
    npz = tmp_path / "m.npz"
    sparse.export_sparse(src, npz)
    out = tmp_path / "net.caffemodel"
    res = sparse.import_dense(npz, out, NET300)
    assert res["remaining"] == REMAINING
    net = caffe_bridge.make_net(prototxt.read_net(NET300), "test")
    net.copy_from(str(out))
    for name, arrays in expected.items():
        for blob, want in zip(net.params[name], arrays):
            assert _bits_equal(blob.data.copy(), want)
    r = run_olmp("export", "--dense", str(npz), str(tmp_path / "x.caffemodel"), "--net",
                 "models/lenet5/train_test.prototxt")
    _assert_one_line_error(r, "do not match the net")
    assert not (tmp_path / "x.caffemodel").exists()


def test_bad_inputs_give_one_line_errors(fork4: tuple[Path, dict], tmp_path: Path) -> None:
    src, _ = fork4
    good = src.read_bytes()
    truncated = tmp_path / "truncated.caffemodel"
    truncated.write_bytes(good[: len(good) // 3])
    for argv in (["convert", str(truncated), str(tmp_path / "o.caffemodel")],
                 ["export", "--sparse", str(truncated), str(tmp_path / "o.npz")],
                 ["convert", str(tmp_path / "missing.caffemodel"), str(tmp_path / "o.caffemodel")]):
        _assert_one_line_error(run_olmp(*argv), "caffemodel")
    assert not (tmp_path / "o.caffemodel").exists() and not (tmp_path / "o.npz").exists()

    npz = tmp_path / "good.npz"
    sparse.export_sparse(src, npz)
    blob = npz.read_bytes()
    bad_npz = {"truncated.npz": blob[: len(blob) // 2], "garbage.npz": b"PK\x03\x04 not a zip" * 5}
    with np.load(npz, allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    broken = dict(arrays)
    broken["L1_B0_gaps"] = broken["L1_B0_gaps"].copy()
    broken["L1_B0_gaps"][:] = 255  # every second entry of a row lands past ip2's 300 columns
    huge_meta = json.loads(str(arrays["meta"]))
    huge_meta["layers"][0]["blobs"][0]["shape"] = [1 << 40, 1 << 20]
    for name, arrs in {"overrun.npz": broken,
                       "huge.npz": {**arrays, "meta": np.array(json.dumps(huge_meta))},
                       "missing.npz": {k: v for k, v in arrays.items() if k != "L2_B1_rowptr"},
                       "format.npz": {**arrays, "meta": np.array(json.dumps({"format": "other", "version": 1}))}
                       }.items():
        with open(tmp_path / name, "wb") as fh:
            np.savez(fh, **arrs)
    for name in ["truncated.npz", "garbage.npz"]:
        (tmp_path / name).write_bytes(bad_npz[name])
    for name in ["truncated.npz", "garbage.npz", "overrun.npz", "huge.npz", "missing.npz", "format.npz"]:
        r = run_olmp("export", "--dense", str(tmp_path / name), str(tmp_path / "o.caffemodel"))
        _assert_one_line_error(r, name)
    assert not (tmp_path / "o.caffemodel").exists()
    with pytest.raises(OlmpError, match="runs past"):
        sparse.load_sparse(tmp_path / "overrun.npz")
    _assert_one_line_error(run_olmp("export", "--sparse", str(src), str(tmp_path / "o.npz"), "--net", NET300),
                           "--net only goes with --dense")
    # the wrong net for converted weights: evaluate refuses in one line, never a Caffe abort
    conv = tmp_path / "c.caffemodel"
    convert.to_stock(src, conv)
    _assert_one_line_error(run_olmp("evaluate", "--net", "models/lenet5/train_test.prototxt", "--weights",
                                    str(conv)), "do not match the net")


# ---- the authors' released models ---------------------------------------------------------------

RELEASED = [
    # file, net, ratio, remaining, released test accuracy (external-models README), sparse bytes (format v1)
    ("lenet5_olmp_compressed", "lenet5", 297.71, 1448, 0.9909, 8454),
    ("lenet300100_olmp_compressed", "lenet300100", 113.50, 2349, 0.9782, 12646),
    ("lenet5_dns_sparse", "lenet5", 107.96, 3993, 0.9909, 21124),
    ("lenet300100_dns_sparse", "lenet300100", 53.45, 4988, 0.9801, 25811),
]


@pytest.mark.parametrize("model,net,ratio,remaining,accuracy,sparse_bytes", RELEASED)
def test_released_models_convert_evaluate_and_export(external_models: Path, mnist_dir: Path, tmp_path: Path,
                                                     model: str, net: str, ratio: float, remaining: int,
                                                     accuracy: float, sparse_bytes: int) -> None:
    src = external_models / f"{model}.caffemodel"
    out = tmp_path / f"{model}.caffemodel"
    res = convert.to_stock(src, out)
    assert res["remaining"] == remaining and res["ratio"] == pytest.approx(ratio, abs=0.005)
    r = run_olmp("inspect", str(out), "--json")
    assert r.returncode == 0 and _last_json(r.stdout)["remaining"] == remaining
    # stock pycaffe loads it and scores the released accuracy ...
    net_path = f"models/{net}/train_test.prototxt"
    caffe_net = caffe_bridge.make_net(prototxt.read_net(net_path), "test")
    caffe_net.copy_from(str(out))
    assert evaluate.evaluate_net(caffe_net, 10_000)["accuracy"] == pytest.approx(accuracy, abs=5e-5)
    # ... and so does `olmp evaluate`
    r = run_olmp("evaluate", "--net", net_path, "--weights", str(out), "--json")
    assert r.returncode == 0, r.stderr
    assert _last_json(r.stdout)["accuracy"] == pytest.approx(accuracy, abs=5e-5)

    npz = tmp_path / f"{model}.npz"
    info = sparse.export_sparse(src, npz)
    assert info["nonzero"] == remaining and info["sparse_bytes"] == sparse_bytes
    back = tmp_path / "back.caffemodel"
    sparse.import_dense(npz, back)
    a, b = weights.read_caffemodel(out), weights.read_caffemodel(back)
    for name in a.layers:
        for x, y in zip(a.layers[name].blobs, b.layers[name].blobs):
            assert _bits_equal(x, y)
