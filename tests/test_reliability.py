"""Faults outside the inputs' contents: outputs that are not regular files, unwritable or full disks,
absurd batches, Caffe probes that never return. Each ends with exit 2 and one line naming the file the
user gave, before any work where it can be seen up front, and leaves nothing half-written behind.

The full-disk tests mount a small tmpfs (root only; otherwise they skip and say why). Devices for the
output tests are made with mknod under the test's own folder, never the system's /dev/full or /dev/null.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import NamedTuple

import pytest
from conftest import REPO, experiment_300100

from olmp import caffe_bridge, mnist, prototxt, weights
from olmp.errors import OlmpError

NET = REPO / "models/lenet300100/train_test.prototxt"
SOLVER = REPO / "solvers/lenet300100_solver.prototxt"
GOOD_WEIGHTS = REPO / "results/references/lenet300100/model.caffemodel"


def olmp(*args: str, timeout: float = 120, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "olmp", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, "OPENBLAS_NUM_THREADS": "1", **(env or {})})


def one_line_error(r: subprocess.CompletedProcess, needle: str | Path) -> str:
    """Exit 2 and exactly one stderr line ``olmp: error: ...`` that contains ``needle``."""
    err = r.stderr.strip()
    assert r.returncode == 2, (r.returncode, err[-2000:])
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert err.startswith("olmp: error: ") and str(needle) in err, err
    return err


def leftovers(folder: Path) -> list[str]:
    """Temporaries, locks and snapshot folders anywhere under ``folder``."""
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*")
                  if p.name.endswith(".tmp") or p.name in (".lock", ".snapshot"))


def experiment(d: Path, **kw: object) -> Path:
    values = {"name": "rel", "niter": 3, "prune_stop": 2, "record_every": 1, "checkpoint_every": 1000,
              "every": 1, "population": 4, "budget": 8, "sigma": "[[0, 5.0]]"}
    values.update(kw)
    p = d / "exp.toml"
    p.write_text(experiment_300100(GOOD_WEIGHTS, **values))
    return p


# ---- outputs that are not regular files, or not writable --------------------------------------

def _specials(d: Path) -> dict[str, Path]:
    """A FIFO, and (as root) a character device like /dev/full (1, 7), both made here."""
    out = {"fifo": d / "fifo.out"}
    os.mkfifo(out["fifo"])
    if os.geteuid() == 0:
        os.mknod(d / "chardev.out", 0o600 | stat.S_IFCHR, os.makedev(1, 7))
        out["chardev"] = d / "chardev.out"
    return out


def test_device_and_fifo_outputs_are_refused_and_left_alone(tmp_path: Path, mnist_dir: Path) -> None:
    npz = tmp_path / "m.npz"
    r = olmp("export", "--sparse", str(GOOD_WEIGHTS), str(npz))
    assert r.returncode == 0, r.stderr
    for kind, target in _specials(tmp_path).items():
        before = os.stat(target)
        for argv in (["convert", str(GOOD_WEIGHTS), str(target)],
                     ["export", "--sparse", str(GOOD_WEIGHTS), str(target)],
                     ["export", "--dense", str(npz), str(target)]):
            one_line_error(olmp(*argv), target)
            after = os.stat(target)
            assert stat.S_IFMT(after.st_mode) == stat.S_IFMT(before.st_mode), (kind, argv)
            assert after.st_ino == before.st_ino, (kind, argv)
        # a run folder whose record or model name is taken by a device: refused before training
        run = tmp_path / f"run-{kind}"
        run.mkdir()
        os.symlink(target, run / "model.caffemodel")
        t0 = time.monotonic()
        one_line_error(olmp("train", "--solver", str(SOLVER), "--iters", "3000", "--out", str(run), "--quiet"),
                       run / "model.caffemodel")
        assert time.monotonic() - t0 < 60  # refused up front: 3,000 iterations take minutes here
        (run / "model.caffemodel").unlink()
        os.symlink(target, run / "record.json")
        one_line_error(olmp("prune", "--experiment", str(experiment(tmp_path)), "--out", str(run), "--quiet"),
                       run / "record.json")
        assert stat.S_IFMT(os.stat(target).st_mode) == stat.S_IFMT(before.st_mode)


@contextlib.contextmanager
def mounted(d: Path, options: str) -> Iterator[Path]:
    """A tmpfs at ``d`` with mount ``options`` (e.g. "size=512k" or "ro"); skip when that is not possible."""
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root; the full-disk and read-only checks are skipped")
    d.mkdir(parents=True, exist_ok=True)
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(d)], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({r.stderr.strip()}); the full-disk checks are skipped")
    try:
        yield d
    finally:
        subprocess.run(["umount", "-l", str(d)], check=False)


def test_unwritable_output_folders_are_refused_before_work(tmp_path: Path, mnist_dir: Path) -> None:
    t0 = time.monotonic()
    one_line_error(olmp("train", "--solver", str(SOLVER), "--iters", "3000", "--out", "/proc/olmp-x", "--quiet"),
                   "/proc/olmp-x")
    assert time.monotonic() - t0 < 60
    not_a_folder = tmp_path / "plain"
    not_a_folder.write_text("x")
    one_line_error(olmp("train", "--solver", str(SOLVER), "--out", str(not_a_folder / "sub"), "--quiet"),
                   not_a_folder / "sub")
    one_line_error(olmp("prune", "--experiment", str(experiment(tmp_path)), "--out", str(not_a_folder),
                        "--quiet"), not_a_folder)
    with mounted(tmp_path / "ro", "ro,size=64k") as ro:
        for argv, target in ((["convert", str(GOOD_WEIGHTS), str(ro / "o.caffemodel")], ro / "o.caffemodel"),
                             (["export", "--sparse", str(GOOD_WEIGHTS), str(ro / "o.npz")], ro / "o.npz"),
                             (["train", "--solver", str(SOLVER), "--iters", "3000", "--out", str(ro / "t")],
                              ro / "t"),
                             (["prune", "--experiment", str(experiment(tmp_path)), "--out", str(ro / "p")],
                              ro / "p")):
            one_line_error(olmp(*argv, "--quiet") if argv[0] in ("train", "prune") else olmp(*argv), target)
        assert list(ro.iterdir()) == []


# ---- full disk ---------------------------------------------------------------------------------

def test_full_disk_is_one_line_and_leaves_nothing(tmp_path: Path, mnist_dir: Path) -> None:
    """ENOSPC on every caffemodel, checkpoint and npz write: exit 2, the user's file named,
    earlier files untouched, no temporaries, no lock, no empty run folder."""
    exp = experiment(tmp_path)
    exp_ck = tmp_path / "exp_ck.toml"
    exp_ck.write_text(exp.read_text().replace("checkpoint_every = 1000", "checkpoint_every = 1"))
    with mounted(tmp_path / "full", "size=512k") as full:
        earlier = full / "earlier.caffemodel"
        earlier.write_bytes(b"\x01" * 100_000)
        old_target = full / "old.caffemodel"
        old_target.write_bytes(b"\x02" * 10_000)
        cases = [
            (["convert", str(GOOD_WEIGHTS), str(old_target), "--force"], old_target),
            (["export", "--sparse", str(GOOD_WEIGHTS), str(full / "m.npz")], full / "m.npz"),
            (["train", "--solver", str(SOLVER), "--iters", "2", "--out", str(full / "t"), "--quiet"],
             full / "t" / "model.caffemodel"),
            (["prune", "--experiment", str(exp), "--out", str(full / "p"), "--quiet"],
             full / "p" / "pruned.caffemodel"),
            (["prune", "--experiment", str(exp_ck), "--out", str(full / "c"), "--quiet"],
             full / "c" / "checkpoint"),
        ]
        for argv, named in cases:
            err = one_line_error(olmp(*argv), named)
            assert "No space left" in err, err
            assert earlier.read_bytes() == b"\x01" * 100_000 and old_target.read_bytes() == b"\x02" * 10_000
            assert leftovers(full) == [], (argv, leftovers(full))
        assert sorted(p.name for p in full.iterdir()) == ["earlier.caffemodel", "old.caffemodel"]


def test_full_disk_on_a_record_names_the_record(tmp_path: Path) -> None:
    """The JSON writer (records, train.json) on a full disk: the target named, the old record kept."""
    from olmp import atomic

    with mounted(tmp_path / "full", "size=64k") as full:
        rec = full / "record.json"
        atomic.write_json(rec, {"old": True})
        with pytest.raises(OlmpError) as exc:
            atomic.write_json(rec, {"big": "x" * 200_000})
        assert str(exc.value).startswith(f"{rec}: cannot write: No space left on device")
        assert rec.read_text() == '{\n  "old": true\n}\n'
        assert leftovers(full) == []


# ---- Caffe probes and absurd sizes ---------------------------------------------------------------

def test_absurd_batch_is_refused_before_caffe(tmp_path: Path, mnist_dir: Path) -> None:
    text = NET.read_text()
    assert "batch_size: 100 " in text
    for batch in ("2000000000", "100000000"):  # past Caffe's int count; past any test machine's memory
        net = tmp_path / f"batch{batch}.prototxt"
        net.write_text(text.replace("batch_size: 100 ", f"batch_size: {batch} "))
        t0 = time.monotonic()
        err = one_line_error(olmp("evaluate", "--net", str(net), "--weights", str(GOOD_WEIGHTS), timeout=60), net)
        assert "batch_size" in err and time.monotonic() - t0 < 30


def test_a_probe_that_never_returns_is_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    """A real forked child that does not finish: killed at the time limit, one line naming the net."""
    monkeypatch.setenv("OLMP_PROBE_SECONDS", "1")
    t0 = time.monotonic()
    with pytest.raises(caffe_bridge.CaffeError, match=r"^net\.prototxt: Caffe did not finish building the net within 1 s"):
        caffe_bridge.probe(lambda: time.sleep(30), "net.prototxt")
    assert time.monotonic() - t0 < 10
    assert caffe_bridge._in_child(lambda: None, 10, swallow=False)[0] == 0
    assert caffe_bridge._in_child(lambda: 1 / 0, 10, swallow=False)[0] != 0


# ---- caffemodels written in Python ---------------------------------------------------------------

def test_python_writer_matches_caffes_own(tmp_path: Path, mnist_dir: Path) -> None:
    """``weights.save_net`` gives the message Caffe's ``Net.save`` gives (layers, wiring, blobs)."""
    pb = caffe_bridge.caffe_pb2()
    param = prototxt.read_net(NET)
    net = caffe_bridge.make_net(param, "test", source=NET)
    weights.load_weights(net, GOOD_WEIGHTS)
    net.save(str(tmp_path / "caffe.caffemodel"))
    weights.save_net(net, tmp_path / "py.caffemodel", param, pb.TEST)
    theirs, ours = pb.NetParameter(), pb.NetParameter()
    theirs.ParseFromString((tmp_path / "caffe.caffemodel").read_bytes())
    ours.ParseFromString((tmp_path / "py.caffemodel").read_bytes())
    assert ours == theirs
    weights.save_net(net, tmp_path / "bare.caffemodel")  # without the prototxt: still loads in Caffe
    c = caffe_bridge.caffe()
    back = c.Net(str(NET), str(tmp_path / "bare.caffemodel"), c.TEST)
    for name, blobs in net.params.items():
        for a, b in zip(blobs, back.params[name]):
            assert (a.data == b.data).all()


# ---- settings checked before work ----------------------------------------------------------------

def test_train_seed_out_of_range(tmp_path: Path) -> None:
    for seed in ("99999999999999", "-1"):
        one_line_error(olmp("train", "--solver", str(SOLVER), "--seed", seed, "--out", str(tmp_path / "t")),
                       "--seed must be in")
    assert not (tmp_path / "t").exists()


def test_experiment_net_is_checked(tmp_path: Path, mnist_dir: Path) -> None:
    base = experiment(tmp_path).read_text()
    net_line = 'net = "models/lenet300100/train_test.prototxt"'
    assert net_line in base
    garbage = tmp_path / "garbage.prototxt"
    garbage.write_text("layer { name: ")
    for name, net, needle in (("missing", "models/nowhere.prototxt", "does not exist"),
                              ("other", "models/lenet5/train_test.prototxt", "is not the net solver"),
                              ("garbage", str(garbage), "malformed net prototxt")):
        p = tmp_path / f"net_{name}.toml"
        p.write_text(base.replace(net_line, f'net = "{net}"'))
        err = one_line_error(olmp("prune", "--experiment", str(p), "--out", str(tmp_path / f"o-{name}")), p)
        assert needle in err, err
        assert not (tmp_path / f"o-{name}").exists()
    copy = tmp_path / "same.prototxt"  # the same net in another file is the same net
    copy.write_text(NET.read_text())
    from olmp import config

    p = tmp_path / "net_copy.toml"
    p.write_text(base.replace(net_line, f'net = "{copy}"'))
    assert config.load(p).net == str(copy)


def test_failed_prune_leaves_no_folder(tmp_path: Path, mnist_dir: Path) -> None:
    """A prune refused after its lock was taken (a layer the net lacks) leaves no folder holding a .lock."""
    p = tmp_path / "ip4.toml"
    p.write_text(experiment(tmp_path).read_text().replace('"ip3"]', '"ip4"]'))
    out = tmp_path / "deep" / "run"
    one_line_error(olmp("prune", "--experiment", str(p), "--out", str(out), "--quiet"), "ip4")
    assert not (tmp_path / "deep").exists()


# ---- I/O errors and full disks on every write path -------------------------------------------------
#
# tests/write_faults.c, preloaded into the real `olmp` process, makes the libc write and sync calls on
# files whose path contains OLMP_FAULT_PATH fail with an errno: EIO at fsync (a failing disk shows its
# errors at writeback), ENOSPC at the first write (a full disk). A device-mapper "error" target would
# do the same at the block layer, but containers rarely have one; this reaches every writer (Python,
# numpy, matplotlib, LMDB, Caffe's C++ snapshot in its forked child) and exactly the file a case names.

FAULTS = {"EIO": ("5", "sync"), "ENOSPC": ("28", "write")}


@pytest.fixture(scope="module")
def write_faults(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """tests/write_faults.c built as a preloadable library; skipped where no C compiler builds it."""
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        pytest.skip("no C compiler to build tests/write_faults.c; the injected EIO/ENOSPC checks are skipped")
    lib = tmp_path_factory.mktemp("faults") / "write_faults.so"
    r = subprocess.run([cc, "-shared", "-fPIC", "-O1", "-o", str(lib), str(REPO / "tests/write_faults.c"), "-ldl"],
                       capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot build tests/write_faults.c ({r.stderr.strip()[-300:]}); the EIO/ENOSPC checks are skipped")
    return lib


@pytest.fixture(scope="module")
def fault_inputs(tmp_path_factory: pytest.TempPathFactory, mnist_dir: Path) -> dict[str, Path]:
    """What the write paths read: a finished run in a model folder, an npz, a tiny Caltech-like folder."""
    from PIL import Image

    d = tmp_path_factory.mktemp("fault-inputs")
    exp = experiment(d, record_every=1000)
    model = d / "model"
    r = olmp("prune", "--experiment", str(exp), "--out", str(model / "run-a"), "--quiet")
    assert r.returncode == 0, r.stderr
    npz = d / "m.npz"
    assert olmp("export", "--sparse", str(GOOD_WEIGHTS), str(npz)).returncode == 0
    images = d / "256_ObjectCategories"
    for c, name in enumerate(("001.ak47", "002.american-flag", "257.clutter")):
        (images / name).mkdir(parents=True)
        for i in range(3):
            Image.new("RGB", (40 + i, 30), (80 * c, 10 * i, 0)).save(images / name / f"{c + 1:03d}_{i:04d}.jpg")
    return {"exp": exp, "model": model, "npz": npz, "images": images, "mnist": mnist_dir}


def _state(p: Path) -> object:
    """Each file under ``p`` (or ``p`` itself) by inode, size and mtime: whether a failure left it alone."""
    if not p.exists():
        return None
    files = [p] if p.is_file() else sorted(f for f in p.rglob("*") if f.is_file())
    return [(str(f.relative_to(p)), os.stat(f).st_ino, os.stat(f).st_size, os.stat(f).st_mtime_ns) for f in files]


def _strays(folder: Path) -> list[str]:
    """``leftovers``, less the .lock a run folder that holds a run keeps (a lone .lock is a stray)."""
    return [p for p in leftovers(folder)
            if not (p.endswith(".lock") and {q.name for q in (folder / p).parent.iterdir()} != {".lock"})]


class Case(NamedTuple):
    label: str
    argv: list[str]
    where: str  # the fault hits files whose path contains this
    named: Path  # the output the error must name, left as it was
    env: dict[str, str] = {}
    at: str | None = None  # "write" or "sync": where the fault hits, if not where FAULTS puts it
    reason: str | None = None  # expected in the message, if not the errno's text
    on_tmpfs: bool = False  # a full disk is also checked for real (test_full_disk_is_one_line_and_leaves_nothing)


def _fault_cases(w: Path, inputs: dict[str, Path]) -> list[Case]:
    """One case per write path, each failing on the output it names."""
    exp, npz, model = str(inputs["exp"]), str(inputs["npz"]), w / "model"
    exp_ck = w / "exp_ck.toml"
    exp_ck.write_text(inputs["exp"].read_text().replace("checkpoint_every = 1000", "checkpoint_every = 1"))
    data = {"OLMP_DATA_DIR": str(w / "data")}
    tp = ["transplant", "--experiment", exp, "--masks", str(model / "run-a" / "pruned.caffemodel"),
          "--weights", str(GOOD_WEIGHTS), "--out", str(w / "tp"), "--quiet"]
    return [
        Case("convert", ["convert", str(GOOD_WEIGHTS), str(w / "old.caffemodel"), "--force"], "old.caffemodel",
             w / "old.caffemodel", on_tmpfs=True),
        Case("export npz", ["export", "--sparse", str(GOOD_WEIGHTS), str(w / "m.npz")], "m.npz", w / "m.npz",
             on_tmpfs=True),
        Case("export caffemodel", ["export", "--dense", npz, str(w / "d.caffemodel")], "d.caffemodel",
             w / "d.caffemodel"),
        Case("train model", ["train", "--solver", str(SOLVER), "--iters", "2", "--out", str(w / "t"), "--quiet"],
             "model.caffemodel", w / "t" / "model.caffemodel", on_tmpfs=True),
        Case("checkpoint", ["prune", "--experiment", str(exp_ck), "--out", str(w / "c"), "--quiet"], "/checkpoint/",
             w / "c" / "checkpoint", on_tmpfs=True),
        # Caffe's own C++ snapshot writer, in its forked child: it cannot say why, only that it failed
        Case("caffe snapshot", ["prune", "--experiment", str(exp_ck), "--out", str(w / "s"), "--quiet"],
             "/.snapshot/", w / "s" / "checkpoint", at="write", reason="Caffe could not save the snapshot"),
        Case("pruned model", ["prune", "--experiment", exp, "--out", str(w / "p"), "--quiet"], "pruned.caffemodel",
             w / "p" / "pruned.caffemodel", on_tmpfs=True),
        Case("run record", ["prune", "--experiment", exp, "--out", str(w / "r"), "--quiet"], "record.json",
             w / "r" / "record.json"),
        Case("best run", ["report", str(model)], "/best/", model / "best"),
        Case("figure png", ["report", str(model)], "layers.png", model / "layers.png"),
        Case("figure svg", ["report", str(model)], "progress.svg", model / "progress.svg"),
        Case("transplant record", tp, "record.json", w / "tp" / "record.json"),
        Case("transplant table", ["transplant", "--table", str(w / "diag")], "mask-transplant.json",
             w / "diag" / "mask-transplant.json"),
        Case("mnist idx", ["data", "mnist", "--from", str(inputs["mnist"]), "--quiet"], "train-images-idx3-ubyte",
             w / "idx" / "mnist" / "train-images-idx3-ubyte", {"OLMP_DATA_DIR": str(w / "idx")}),
        Case("mnist lmdb", ["data", "mnist", "--quiet"], "mnist_train_lmdb", w / "data" / "mnist" / "mnist_train_lmdb",
             data),
        Case("caltech lmdb", ["data", "caltech256", "--from", str(inputs["images"]), "--quiet"],
             "caltech256_train_lmdb", w / "data" / "caltech256", data),
    ]


@pytest.mark.parametrize("fault", list(FAULTS))
def test_write_faults_on_every_path(fault: str, write_faults: Path, fault_inputs: dict[str, Path],
                                    mnist_dir: Path, tmp_path: Path) -> None:
    """EIO (at fsync) and ENOSPC (at write) on each output in turn: exit 2 and one line naming that output,
    with the reason; the output as it was before, every earlier file untouched, no temporaries, no lone .lock,
    no empty folder. Two cases run at a time (separate outputs; the report's cases one after another)."""
    code, at = FAULTS[fault]
    w = tmp_path
    shutil.copytree(fault_inputs["model"], w / "model")
    (w / "old.caffemodel").write_bytes(b"\x02" * 10_000)
    (w / "diag" / "transplant" / "x").mkdir(parents=True)
    (w / "diag" / "transplant" / "x" / "record.json").write_text(json.dumps(
        {"masks": "m", "weights": "w", "ratio": 2.0, "test_before": 0.9, "test_final": 0.95,
         "test_best_over_curve": 0.96}))
    (w / "data" / "mnist").mkdir(parents=True)
    for name in mnist.FILES:  # verified IDX files in place: `olmp data mnist` goes straight to the LMDBs
        shutil.copy(mnist_dir / name, w / "data" / "mnist" / name)
    cases = [c for c in _fault_cases(w, fault_inputs)
             if not (fault == "ENOSPC" and c.on_tmpfs and os.geteuid() == 0)]  # those see a real full disk
    earlier = {p: _state(p) for p in (w / "old.caffemodel", w / "data" / "mnist", w / "model" / "run-a",
                                      w / "diag" / "transplant")}

    def run(group: list[Case]) -> list[str]:
        problems = []
        for case in group:
            before = _state(case.named)
            r = olmp(*case.argv, env={"LD_PRELOAD": str(write_faults), "OLMP_FAULT_PATH": case.where,
                                      "OLMP_FAULT_ERRNO": code, "OLMP_FAULT_AT": case.at or at, **case.env})
            err, reason = r.stderr.strip(), case.reason or os.strerror(int(code))
            if not (r.returncode == 2 and len(err.splitlines()) == 1
                    and err.startswith(f"olmp: error: {case.named}: ") and reason in err):
                problems.append(f"{case.label}: exit {r.returncode}: {err[-600:]}")
            elif _state(case.named) != before:
                problems.append(f"{case.label}: {case.named} was changed")
        return problems

    reports = [c for c in cases if c.argv[0] == "report"]  # one model folder: one after another
    with ThreadPoolExecutor(max_workers=2) as pool:
        failures = [p for got in pool.map(run, [reports] + [[c] for c in cases if c not in reports]) for p in got]
    failures += [f"{p} was changed" for p, s in earlier.items() if _state(p) != s]
    failures += [f"empty folder left: {d}" for d in w.rglob("*") if d.is_dir() and not any(d.iterdir())]
    failures += [f"left behind: {p}" for p in _strays(w)]
    assert not failures, "\n".join(failures)


def test_validation_batch_names_the_experiment(tmp_path: Path, mnist_dir: Path) -> None:
    """A validation batch larger than the training set, or absurd, is the experiment's setting: the error
    names the experiment file (it named the solver), before Caffe builds a batch (100,000 took 2 GB)."""
    base = experiment(tmp_path).read_text()
    olmp_exp = base.replace("delta = 0.08", 'delta = 0.08\naccuracy_on = "validation"\nvalidation_images = {n}')
    dc_exp = (base.replace("seed = 1\n", 'seed = 1\nmethod = "deep-compression"\n', 1)
              + "\n[baseline]\nvalidation_images = {n}\nrounds = 1\n")
    for name, text, n in (("search", olmp_exp, 1_000_000_000), ("search", olmp_exp, 100_000),
                          ("baseline", dc_exp, 100_000)):
        p = tmp_path / f"{name}{n}.toml"
        p.write_text(text.format(n=n))
        t0 = time.monotonic()
        err = one_line_error(olmp("prune", "--experiment", str(p), "--out", str(tmp_path / "o"), "--quiet"), p)
        assert f"validation_images {n} is more than the 60000 images of the training set" in err, err
        assert time.monotonic() - t0 < 60 and not (tmp_path / "o").exists()
