"""Faults outside the inputs' contents: outputs that are not regular files, unwritable or full disks,
absurd batches, Caffe probes that never return. Each ends with exit 2 and one line naming the file the
user gave, before any work where it can be seen up front, and leaves nothing half-written behind.

The full-disk tests mount a small tmpfs (root only; otherwise they skip and say why). Devices for the
output tests are made with mknod under the test's own folder, never the system's /dev/full or /dev/null.
"""

from __future__ import annotations

import contextlib
import os
import stat
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator

import pytest

from conftest import REPO, experiment_300100
from olmp import caffe_bridge, prototxt, weights
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
            (["convert", str(GOOD_WEIGHTS), str(old_target)], old_target),
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
    with pytest.raises(OlmpError, match=r"^net\.prototxt: Caffe did not finish building the net within 1 s"):
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
