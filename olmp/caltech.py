"""Caltech-256 from a user-supplied ``256_ObjectCategories`` folder: LMDBs, mean, recorded split.

No package registry carries Caltech-256 (reference doc §8), so nothing is downloaded:
the user points ``olmp data caltech256 --from DIR`` at the unpacked folder (one
sub-folder per class, 257 with clutter). Every image is read with Pillow, resized to
256x256 (aspect ignored, as Caffe's ``convert_imageset --resize_*`` does) and stored as
an uncompressed uint8 Caffe Datum (BGR, CHW) in train/val/test LMDBs; the per-pixel
mean of the training split goes to ``mean.binaryproto`` for the nets' ``mean_file``.

The split is the paper's: 60 training images per class (257 x 60 = 15,420), the rest
halved between validation and test, drawn per class with a seeded generator and written
to ``split.json`` image by image. A class with fewer than 80 readable images (none in the
real data set; a small test folder) gives half its images to training instead.
Unreadable images are skipped, counted and listed. Everything is built in a temporary
folder and renamed into place, so an interrupted run leaves nothing half-written.
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

from olmp import paths
from olmp.atomic import atomic_path, write_bytes, write_json
from olmp.errors import OlmpError

NUM_CLASSES = 257  # the net's outputs: 256 categories + clutter
TRAIN_PER_CLASS = 60  # 257 x 60 = 15,420 training images, as in the paper
FULL_CLASS_MIN = 80  # the smallest Caltech-256 class; below it the split is scaled down
IMAGE_SIZE = 256
SPLITS = ("train", "val", "test")
IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff"})
FORMAT_VERSION = 1
SPLIT_FILE = "split.json"
MEAN_FILE = "mean.binaryproto"
_LMDB_MAP_SIZE = 1 << 36  # address space only; the full train split is about 3 GB

HOW_TO_GET = (
    "Caltech-256 is not downloaded by olmp (no package registry carries it). Get "
    "256_ObjectCategories.tar (1.2 GB, md5 67b4f42ca05d46448c6bb8ecd2220f6d; Griffin, Holub and "
    "Perona 2007) from the Caltech DATA repository, https://data.caltech.edu/records/nyy15-4j048, "
    "unpack it and run "
    "`olmp data caltech256 --from PATH/256_ObjectCategories`"
)


def lmdb_name(split: str) -> str:
    return f"caltech256_{split}_lmdb"


def caltech_dir() -> Path:
    return paths.data_dir() / "caltech256"


def split_counts(n: int) -> tuple[int, int, int]:
    """(train, val, test) images for a class with ``n`` readable images."""
    train = TRAIN_PER_CLASS if n >= FULL_CLASS_MIN else n // 2
    val = (n - train) // 2
    return train, val, n - train - val


# ---------------------------------------------------------------- reading the folder


def _scan(source: Path) -> tuple[list[tuple[str, list[Path]]], list[str]]:
    """Classes (sorted folder names) with their image files, and the files ignored as non-images."""
    if not source.is_dir():
        raise OlmpError(f"--from folder does not exist. {HOW_TO_GET}", source)
    classes, ignored = [], []
    for folder in sorted(p for p in source.iterdir() if p.is_dir() and not p.name.startswith(".")):
        files = []
        for f in sorted(folder.iterdir()):
            if f.is_file() and f.suffix.lower() in IMAGE_EXTENSIONS:
                files.append(f)
            else:
                ignored.append(str(f.relative_to(source)))
        classes.append((folder.name, files))
    if not classes:
        raise OlmpError("holds no class sub-folders (expected 256_ObjectCategories: one folder per class)", source)
    if len(classes) > NUM_CLASSES:
        raise OlmpError(f"holds {len(classes)} class folders; the net has {NUM_CLASSES} outputs", source)
    return classes, ignored


def _fingerprint(source: Path, classes: list[tuple[str, list[Path]]], seed: int) -> str:
    """What the output depends on: format, seed, and every image's name and size."""
    h = hashlib.sha256(f"olmp-caltech256 v{FORMAT_VERSION} seed {seed}\n".encode())
    for _, files in classes:
        for f in files:
            h.update(f"{f.relative_to(source)}\t{f.stat().st_size}\n".encode())
    return h.hexdigest()


def load_image(path: Path) -> np.ndarray | None:
    """The image as 256x256 uint8 BGR in CHW order (Caffe's Datum layout), or None if unreadable."""
    from PIL import Image  # noqa: PLC0415

    try:
        with Image.open(path) as img:
            img.load()
            rgb = img.convert("RGB").resize((IMAGE_SIZE, IMAGE_SIZE), Image.Resampling.BILINEAR)
    except (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError):
        return None
    return np.ascontiguousarray(np.asarray(rgb, dtype=np.uint8)[:, :, ::-1].transpose(2, 0, 1))


# ---------------------------------------------------------------- writing


def _mean_proto(mean: np.ndarray) -> bytes:
    """A BlobProto in the legacy num/channels/height/width form ``compute_image_mean`` writes."""
    from olmp.caffe_bridge import caffe_pb2  # noqa: PLC0415

    blob = caffe_pb2().BlobProto(num=1, channels=mean.shape[0], height=mean.shape[1], width=mean.shape[2])
    blob.data.extend(mean.astype(np.float32).ravel().tolist())
    return blob.SerializeToString()


def _convert(source: Path, classes: list[tuple[str, list[Path]]], seed: int, tmp: Path,
             progress: bool) -> dict[str, Any]:
    """Decode, split and write one class at a time (the largest, clutter, is ~160 MB decoded)."""
    import lmdb  # noqa: PLC0415
    from tqdm import tqdm  # noqa: PLC0415

    from olmp.caffe_bridge import caffe_pb2  # noqa: PLC0415

    pb = caffe_pb2()
    envs = {s: lmdb.open(str(tmp / lmdb_name(s)), map_size=_LMDB_MAP_SIZE, subdir=True, sync=False,
                         metasync=False) for s in SPLITS}
    mean_sum = np.zeros((3, IMAGE_SIZE, IMAGE_SIZE), dtype=np.float64)
    files_out: dict[str, list[str]] = {s: [] for s in SPLITS}
    per_class, corrupt = [], []
    total = sum(len(files) for _, files in classes)
    try:
        with tqdm(total=total, desc="caltech256", unit="img", file=sys.stderr, disable=not progress) as bar:
            for label, (name, files) in enumerate(classes):
                images, kept = [], []
                for f in files:
                    arr = load_image(f)
                    bar.update(1)
                    if arr is None:
                        corrupt.append(str(f.relative_to(source)))
                        continue
                    images.append(arr)
                    kept.append(str(f.relative_to(source)))
                n = len(images)
                if n < 3:
                    raise OlmpError(f"class '{name}' has {n} readable image(s); each class needs at least 3 "
                                    "(one per split)", source / name)
                counts = dict(zip(SPLITS, split_counts(n)))
                order = np.random.default_rng([seed, label]).permutation(n)
                # random keys: the Data layer reads in key order, so the classes come out interleaved
                keys = np.random.default_rng([seed, label, 1]).integers(0, 2**62, size=n)
                start = 0
                for split in SPLITS:
                    chosen = order[start:start + counts[split]]
                    start += counts[split]
                    with envs[split].begin(write=True) as txn:
                        for i in chosen:
                            datum = pb.Datum(channels=3, height=IMAGE_SIZE, width=IMAGE_SIZE,
                                             data=images[i].tobytes(), label=label)
                            txn.put(b"%016x_%03d_%04d" % (keys[i], label, i), datum.SerializeToString())
                            files_out[split].append(kept[i])
                            if split == "train":
                                mean_sum += images[i]
                per_class.append({"label": label, "name": name, "readable": n,
                                  "corrupt": len(files) - n, **counts})
        for env in envs.values():
            env.sync(True)
    finally:
        for env in envs.values():
            env.close()
    n_train = len(files_out["train"])
    write_bytes(tmp / MEAN_FILE, _mean_proto(mean_sum / n_train))
    return {"classes": per_class, "files": files_out, "corrupt": corrupt,
            "counts": {s: len(files_out[s]) for s in SPLITS}}


def _is_current(dest: Path, fingerprint: str) -> dict[str, Any] | None:
    """The existing record if ``dest`` was completely built from exactly this folder and seed."""
    try:
        rec = json.loads((dest / SPLIT_FILE).read_text())
    except (OSError, ValueError):
        return None
    if rec.get("fingerprint") != fingerprint:
        return None
    if not (dest / MEAN_FILE).is_file() or not all((dest / lmdb_name(s) / "data.mdb").is_file() for s in SPLITS):
        return None
    return rec


def prepare_caltech256(source: str | Path | None, dest: str | Path | None = None, seed: int = 1,
                       progress: bool = True) -> dict[str, Any]:
    """``olmp data caltech256 --from DIR``: build (or confirm) the LMDBs, mean and split record.

    Idempotent: a destination built from the same images and seed is left alone.
    """
    if source is None:
        raise OlmpError(HOW_TO_GET)
    source = Path(source).resolve()
    dest = Path(dest) if dest is not None else caltech_dir()
    if dest.exists() and not dest.is_dir():
        raise OlmpError("Caltech-256 destination is not a directory", dest)
    classes, ignored = _scan(source)
    fingerprint = _fingerprint(source, classes, seed)
    rec = _is_current(dest, fingerprint)
    if rec is not None:
        return {"dir": str(dest), "rebuilt": False, **_summary(rec)}
    import lmdb  # noqa: PLC0415

    try:
        with atomic_path(dest) as tmp:
            tmp.mkdir()
            out = _convert(source, classes, seed, tmp, progress)
            rec = {
                "format": FORMAT_VERSION,
                "source": str(source),
                "fingerprint": fingerprint,
                "seed": seed,
                "image": f"{IMAGE_SIZE}x{IMAGE_SIZE} uint8 Caffe Datum, BGR, CHW; LMDB keys shuffled",
                "rule": (f"per class: {TRAIN_PER_CLASS} train if the class has >= {FULL_CLASS_MIN} readable "
                         "images, else half; the rest halved between val and test (test gets the odd one); "
                         "order from numpy default_rng([seed, label])"),
                "counts": out["counts"],
                "corrupt": out["corrupt"],
                "ignored": ignored,
                "classes": out["classes"],
                "files": out["files"],
            }
            write_json(tmp / SPLIT_FILE, rec)
    except OSError as exc:
        raise OlmpError(f"cannot write Caltech-256 data ({exc.strerror or exc})", dest) from None
    except lmdb.Error as exc:
        raise OlmpError(f"cannot write LMDB ({exc})", dest) from None
    return {"dir": str(dest), "rebuilt": True, **_summary(rec)}


def _summary(rec: dict[str, Any]) -> dict[str, Any]:
    return {"counts": rec["counts"], "classes": len(rec["classes"]), "corrupt": len(rec["corrupt"]),
            "ignored": len(rec["ignored"]), "seed": rec["seed"]}
