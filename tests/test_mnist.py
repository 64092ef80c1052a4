"""MNIST preparation: real data, real checksums, real LMDBs (no mocks)."""

from __future__ import annotations

import gzip
import hashlib
import json
import shutil
import time
from pathlib import Path

import numpy as np
import pytest

from olmp.errors import OlmpError
from olmp.mnist import SPLITS, load_test_set, prepare_mnist, read_idx, verify_file

# Typed in from the reference doc, section 8 (uncompressed md5 / sha256).
EXPECTED = {
    "train-images-idx3-ubyte": (
        "6bbc9ace898e44ae57da46a324031adb",
        "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
    ),
    "train-labels-idx1-ubyte": (
        "a25bea736e30d166cdddb491f175f624",
        "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
    ),
    "t10k-images-idx3-ubyte": (
        "2646ac647ad5339dbf082846283269ea",
        "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
    ),
    "t10k-labels-idx1-ubyte": (
        "27ae3e4e09519cfbb04c329615203637",
        "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
    ),
}
NAMES = list(EXPECTED)


def _snapshot(folder: Path) -> dict[str, tuple[int, int, str]]:
    """name -> (mtime_ns, size, sha256) of every entry directly in ``folder``."""
    out = {}
    for p in sorted(folder.iterdir()):
        if p.name == "lock.mdb":  # readers (Caffe, other tests) may touch it; not data
            continue
        st = p.stat()
        digest = hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else ""
        out[p.name] = (st.st_mtime_ns, st.st_size, digest)
    return out


def _assert_one_line_naming(err: pytest.ExceptionInfo, name: str) -> None:
    msg = str(err.value)
    assert "\n" not in msg
    assert name in msg, msg


@pytest.fixture()
def raw_source(mnist_dir: Path, tmp_path: Path) -> Path:
    """A --from folder holding raw copies of the canonical files."""
    src = tmp_path / "src"
    src.mkdir()
    for name in NAMES:
        shutil.copy2(mnist_dir / name, src / name)
    return src


# ---------------------------------------------------------------- the real data


def test_idx_files_match_reference_checksums(mnist_dir: Path) -> None:
    for name, (md5, sha256) in EXPECTED.items():
        data = (mnist_dir / name).read_bytes()
        assert hashlib.md5(data).hexdigest() == md5, name
        assert hashlib.sha256(data).hexdigest() == sha256, name
        assert verify_file(mnist_dir / name, name) == sha256


def test_read_idx_shapes_and_values(mnist_dir: Path) -> None:
    x = read_idx(mnist_dir / "train-images-idx3-ubyte")
    y = read_idx(mnist_dir / "train-labels-idx1-ubyte")
    assert x.shape == (60000, 28, 28) and x.dtype == np.uint8
    assert y.shape == (60000,) and y.dtype == np.uint8
    assert set(np.unique(y)) == set(range(10))
    assert x.max() == 255 and x.min() == 0
    xt, yt = load_test_set(mnist_dir)
    assert xt.shape == (10000, 28, 28) and yt.shape == (10000,)
    assert yt[:10].tolist() == [7, 2, 1, 0, 4, 1, 4, 9, 5, 9]  # the well-known first test labels


def test_lmdbs_hold_caffe_datums_matching_idx(mnist_dir: Path) -> None:
    import lmdb

    from olmp.caffe_bridge import caffe_pb2

    pb = caffe_pb2()
    for split, prefix, count, probe, first in [
        ("mnist_train_lmdb", "train", 60000, [0, 1, 12345, 59999], 0),
        ("mnist_test_lmdb", "t10k", 10000, [0, 4321, 9999], 0),
        # the held-out split: training images 55,000-59,999; its complement, the first 55,000
        ("mnist_train55k_lmdb", "train", 55000, [0, 1, 12345, 54999], 0),
        ("mnist_holdout5k_lmdb", "train", 5000, [0, 1, 2500, 4999], 55000),
    ]:
        images = read_idx(mnist_dir / f"{prefix}-images-idx3-ubyte")[first:first + count]
        labels = read_idx(mnist_dir / f"{prefix}-labels-idx1-ubyte")[first:first + count]
        env = lmdb.open(str(mnist_dir / split), readonly=True, lock=False)
        try:
            assert env.stat()["entries"] == count
            with env.begin() as txn:
                with txn.cursor() as cur:
                    assert cur.first() and cur.key() == b"00000000"
                    assert cur.last() and cur.key() == b"%08d" % (count - 1)
                for i in probe:
                    datum = pb.Datum()
                    datum.ParseFromString(txn.get(b"%08d" % i))
                    assert (datum.channels, datum.height, datum.width) == (1, 28, 28)
                    assert datum.data == images[i].tobytes()
                    assert datum.label == labels[i]
                    assert not datum.encoded and len(datum.float_data) == 0
        finally:
            env.close()


def test_second_call_is_idempotent_and_fast(mnist_dir: Path) -> None:
    before = _snapshot(mnist_dir)
    lmdb_before = {d: _snapshot(mnist_dir / d) for d in ("mnist_train_lmdb", "mnist_test_lmdb", "mnist_holdout5k_lmdb")}
    t0 = time.perf_counter()
    result = prepare_mnist(dest=mnist_dir, progress=False)
    elapsed = time.perf_counter() - t0
    assert result["written"] == [] and result["rebuilt_lmdb"] == []
    assert result["files"] == {n: sha for n, (_, sha) in EXPECTED.items()}
    assert result["train_images"] == 60000 and result["test_images"] == 10000
    assert set(result["lmdb"]) == {"train", "test", "train55k", "holdout"}
    assert _snapshot(mnist_dir) == before
    for d, snap in lmdb_before.items():
        assert _snapshot(mnist_dir / d) == snap
    assert elapsed < 5, elapsed


# ---------------------------------------------------------------- the --from route


def test_from_folder_of_gz_files(mnist_dir: Path, tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    spellings = {  # both spellings the wild uses, with and without .gz
        "train-images-idx3-ubyte": "train-images.idx3-ubyte.gz",
        "train-labels-idx1-ubyte": "train-labels-idx1-ubyte.gz",
        "t10k-images-idx3-ubyte": "t10k-images-idx3-ubyte.gz",
        "t10k-labels-idx1-ubyte": "t10k-labels.idx1-ubyte",
    }
    for name, spelled in spellings.items():
        data = (mnist_dir / name).read_bytes()
        if spelled.endswith(".gz"):
            data = gzip.compress(data, compresslevel=1)
        (src / spelled).write_bytes(data)
    dest = tmp_path / "dest"
    result = prepare_mnist(dest=dest, source=src, progress=False, lmdb=False)
    assert sorted(result["written"]) == sorted(NAMES)
    assert sorted(p.name for p in dest.iterdir()) == sorted(NAMES)
    for name, (md5, sha256) in EXPECTED.items():
        data = (dest / name).read_bytes()
        assert hashlib.sha256(data).hexdigest() == sha256
        assert hashlib.md5(data).hexdigest() == md5


def test_corrupt_destination_file_is_repaired(raw_source: Path, tmp_path: Path) -> None:
    dest = tmp_path / "dest"
    dest.mkdir()
    for name in NAMES:
        shutil.copy2(raw_source / name, dest / name)
    bad = dest / "t10k-labels-idx1-ubyte"
    data = bytearray(bad.read_bytes())
    data[100] ^= 0x01
    bad.write_bytes(bytes(data))
    keep = {n: v for n, v in _snapshot(dest).items() if n != bad.name}
    result = prepare_mnist(dest=dest, source=raw_source, progress=False, lmdb=False)
    assert result["written"] == [bad.name]
    verify_file(bad, bad.name)
    assert {n: v for n, v in _snapshot(dest).items() if n != bad.name} == keep


def _flip_byte(p: Path) -> None:
    data = bytearray(p.read_bytes())
    data[len(data) // 2] ^= 0xFF
    p.write_bytes(bytes(data))


def _truncate(p: Path) -> None:
    p.write_bytes(p.read_bytes()[:-1000])


def _wrong_magic(p: Path) -> None:
    data = bytearray(p.read_bytes())
    data[3] = 0x01  # 2051 -> 2049: a labels header on an images file
    p.write_bytes(bytes(data))


def _remove(p: Path) -> None:
    p.unlink()


def _bad_gzip(p: Path) -> None:
    gz = p.with_name(p.name + ".gz")
    gz.write_bytes(gzip.compress(p.read_bytes(), compresslevel=1)[:-5000])
    p.unlink()


@pytest.mark.parametrize(
    "damage, expect",
    [
        (_flip_byte, "sha256 mismatch"),
        (_truncate, "truncated"),
        (_wrong_magic, "bad magic"),
        (_remove, "missing"),
        (_bad_gzip, "gzip"),
    ],
    ids=["flipped-byte", "truncated", "wrong-magic", "missing", "truncated-gz"],
)
def test_corrupt_source_fails_cleanly(raw_source: Path, tmp_path: Path, damage, expect: str) -> None:
    victim = "t10k-images-idx3-ubyte"
    damage(raw_source / victim)
    dest = tmp_path / "dest"
    dest.mkdir()
    good = "train-labels-idx1-ubyte"  # already present and good: must survive untouched
    shutil.copy2(raw_source / good, dest / good)
    before = _snapshot(dest)
    with pytest.raises(OlmpError) as err:
        prepare_mnist(dest=dest, source=raw_source, progress=False, lmdb=False)
    _assert_one_line_naming(err, victim)
    assert expect in str(err.value)
    assert _snapshot(dest) == before  # nothing half-written, no temp leftovers, good file intact


# ---------------------------------------------------------------- low-level checks


def test_read_idx_rejects_malformed_files(mnist_dir: Path, tmp_path: Path) -> None:
    good = (mnist_dir / "t10k-labels-idx1-ubyte").read_bytes()
    cases = {
        "short.idx": good[:-1],
        "trailing.idx": good + b"\0",
        "magic.idx": b"\x01\x02" + good[2:],
        "header.idx": good[:6],
        "empty.idx": b"",
    }
    for fname, data in cases.items():
        (tmp_path / fname).write_bytes(data)
        with pytest.raises(OlmpError) as err:
            read_idx(tmp_path / fname)
        _assert_one_line_naming(err, fname)
    with pytest.raises(OlmpError) as err:
        read_idx(tmp_path / "absent.idx")
    _assert_one_line_naming(err, "absent.idx")
    (tmp_path / "ok.idx").write_bytes(good)
    assert read_idx(tmp_path / "ok.idx").shape == (10000,)


def test_verify_file_errors(mnist_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(OlmpError) as err:
        verify_file(tmp_path / "t10k-labels-idx1-ubyte", "t10k-labels-idx1-ubyte")
    _assert_one_line_naming(err, "t10k-labels-idx1-ubyte")
    assert "missing MNIST file" in str(err.value)
    wrong = tmp_path / "labels-copy"
    shutil.copy2(mnist_dir / "train-labels-idx1-ubyte", wrong)
    with pytest.raises(OlmpError) as err:
        verify_file(wrong, "t10k-labels-idx1-ubyte")
    _assert_one_line_naming(err, "labels-copy")
    assert f"expected {EXPECTED['t10k-labels-idx1-ubyte'][1]}" in str(err.value)


def test_stale_or_partial_lmdb_is_rebuilt(mnist_dir: Path, tmp_path: Path) -> None:
    dest = tmp_path / "dest"
    dest.mkdir()
    for name in NAMES:
        shutil.copy2(mnist_dir / name, dest / name)
    lmdbs = [dirname for _, _, dirname, _, _ in SPLITS.values()]
    for dirname in lmdbs:
        shutil.copytree(mnist_dir / dirname, dest / dirname)
    stamp = dest / "mnist_test_lmdb" / "olmp-stamp.json"
    good_stamp = json.loads(stamp.read_text())
    stamp.write_text(json.dumps({**good_stamp, "t10k-images-idx3-ubyte": "0" * 64}))
    train_before = _snapshot(dest / "mnist_train_lmdb")
    result = prepare_mnist(dest=dest, progress=False)  # all IDX verify: no download needed
    assert result["written"] == [] and result["rebuilt_lmdb"] == ["mnist_test_lmdb"]
    assert json.loads(stamp.read_text()) == good_stamp
    assert _snapshot(dest / "mnist_train_lmdb") == train_before
    assert _lmdb_items(dest / "mnist_test_lmdb") == _lmdb_items(mnist_dir / "mnist_test_lmdb")
    # a partial LMDB (no stamp) at the final name is rebuilt too
    stamp.unlink()
    result = prepare_mnist(dest=dest, progress=False)
    assert result["rebuilt_lmdb"] == ["mnist_test_lmdb"]
    assert json.loads(stamp.read_text()) == good_stamp
    assert sorted(p.name for p in dest.iterdir()) == sorted(NAMES + lmdbs)


def _lmdb_items(path: Path) -> list[tuple[bytes, bytes]]:
    import lmdb

    env = lmdb.open(str(path), readonly=True, lock=False)
    try:
        with env.begin() as txn:
            return list(txn.cursor())
    finally:
        env.close()
