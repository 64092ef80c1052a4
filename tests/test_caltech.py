"""The AlexNet-style experiment on the CPU: Caltech-256 conversion, real CaffeNet SGD, one OLMP search.

A tiny generated image folder stands in for 256_ObjectCategories; the net is the real
CaffeNet (57.9M parameters, 257 outputs), only its batch sizes shrink so a step is quick.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import run_olmp
from google.protobuf import text_format

from olmp import caffe_bridge, caltech, config, pipeline, prototxt, train, weights

NET = "models/caffenet_caltech256/train_val.prototxt"
SOLVER = "solvers/caffenet_caltech256_solver.prototxt"
DEPLOY = "models/caffenet_caltech256/deploy.prototxt"
CLASSES = {"001.ak47": 6, "002.american-flag": 6, "257.clutter": 6}


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """3 classes x 6 JPEG/PNG images of assorted sizes and modes, one corrupt JPEG, one stray file."""
    from PIL import Image

    root = tmp_path_factory.mktemp("256_ObjectCategories")
    rng = np.random.default_rng(0)
    for c, (name, n) in enumerate(CLASSES.items()):
        (root / name).mkdir()
        for i in range(n):
            h, w = int(rng.integers(60, 300)), int(rng.integers(60, 300))
            base = np.zeros((h, w, 3), dtype=np.uint8)
            base[..., c] = 200
            pixels = np.clip(base + rng.integers(0, 50, size=(h, w, 3)), 0, 255).astype(np.uint8)
            img = Image.fromarray(pixels)
            if i == 1:
                img.convert("L").save(root / name / f"{c + 1:03d}_{i:04d}.jpg")  # grayscale, as some are
            elif i == 2:
                img.save(root / name / f"{c + 1:03d}_{i:04d}.png")
            else:
                img.save(root / name / f"{c + 1:03d}_{i:04d}.jpg", quality=90)
    (root / "002.american-flag" / "002_9999.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    (root / "257.clutter" / "notes.txt").write_text("not an image\n")
    return root


@pytest.fixture(scope="module")
def data_dir(image_folder: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    dest = tmp_path_factory.mktemp("data") / "caltech256"
    caltech.prepare_caltech256(image_folder, dest=dest, seed=3, progress=False)
    return dest


@pytest.fixture(scope="module")
def small_solver(data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The real CaffeNet and solver, reading the tiny data set with batch 3 (train) and 2 (test)."""
    d = tmp_path_factory.mktemp("caffenet")
    pb = caffe_bridge.caffe_pb2()
    net = prototxt.read_net(NET, check_sources=False)
    for layer in net.layer:
        if layer.type == "Data":
            split = "train" if layer.include[0].phase == pb.TRAIN else "test"
            layer.data_param.source = str(data_dir / caltech.lmdb_name(split))
            layer.data_param.batch_size = 3 if split == "train" else 2
            layer.transform_param.mean_file = str(data_dir / caltech.MEAN_FILE)
    (d / "train_val.prototxt").write_text(prototxt.to_text(net))
    sp = text_format.Parse(prototxt.resolve_path(SOLVER).read_text(), pb.SolverParameter())
    sp.net = str(d / "train_val.prototxt")
    sp.test_iter[0] = 3
    (d / "solver.prototxt").write_text(text_format.MessageToString(sp))
    return d / "solver.prototxt"


@pytest.fixture(scope="module")
def reference(small_solver: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    out = tmp_path_factory.mktemp("ref")
    return train.train(small_solver, iters=4, out=out, seed=1, progress=False)


# ---------------------------------------------------------------- data


def test_paper_split_gives_15420_training_images() -> None:
    # the real class sizes range from 80 to 827 (clutter); every class gives 60 to training
    sizes = [80] * 100 + [119] * 100 + [200] * 56 + [827]
    counts = np.array([caltech.split_counts(n) for n in sizes])
    assert counts[:, 0].sum() == 15_420 == 257 * 60
    assert np.all(counts.sum(axis=1) == sizes) and np.all(np.abs(counts[:, 1] - counts[:, 2]) <= 1)
    assert caltech.split_counts(6) == (3, 1, 2)  # a tiny class: half to training


def test_conversion_counts_split_record_and_layout(image_folder: Path, data_dir: Path) -> None:
    import lmdb

    rec = json.loads((data_dir / caltech.SPLIT_FILE).read_text())
    assert rec["counts"] == {"train": 9, "val": 3, "test": 6}
    assert rec["corrupt"] == ["002.american-flag/002_9999.jpg"]
    assert rec["ignored"] == ["257.clutter/notes.txt"]
    assert [c["name"] for c in rec["classes"]] == list(CLASSES) and rec["seed"] == 3
    listed = sorted(f for split in caltech.SPLITS for f in rec["files"][split])
    assert len(listed) == len(set(listed)) == 18 and "002.american-flag/002_9999.jpg" not in listed
    pb = caffe_bridge.caffe_pb2()
    for split, n in rec["counts"].items():
        with lmdb.open(str(data_dir / caltech.lmdb_name(split)), readonly=True, lock=False) as env:
            assert env.stat()["entries"] == n
            with env.begin() as txn:
                labels = []
                for _, value in txn.cursor():
                    datum = pb.Datum.FromString(value)
                    assert (datum.channels, datum.height, datum.width) == (3, 256, 256)
                    assert len(datum.data) == 3 * 256 * 256 and not datum.encoded
                    labels.append(datum.label)
        label_of = {c["name"]: c["label"] for c in rec["classes"]}
        assert sorted(labels) == sorted(label_of[f.split("/")[0]] for f in rec["files"][split])
    mean = pb.BlobProto.FromString((data_dir / caltech.MEAN_FILE).read_bytes())
    m = np.array(mean.data).reshape(mean.channels, mean.height, mean.width)
    assert m.shape == (3, 256, 256) and 0 < m.mean() < 255
    # images of class c are bright in RGB channel c; stored BGR, the channel means of the train split show it
    assert m[2].mean() > 60 and m[1].mean() > 60 and m[0].mean() > 60


def test_conversion_is_seeded_idempotent_and_atomic(image_folder: Path, data_dir: Path, tmp_path: Path) -> None:
    again = caltech.prepare_caltech256(image_folder, dest=data_dir, seed=3, progress=False)
    assert again["rebuilt"] is False and again["corrupt"] == 1
    other = caltech.prepare_caltech256(image_folder, dest=tmp_path / "c", seed=3, progress=False)
    first = json.loads((data_dir / caltech.SPLIT_FILE).read_text())
    assert other["rebuilt"] and json.loads((tmp_path / "c" / caltech.SPLIT_FILE).read_text())["files"] == first["files"]
    reseeded = caltech.prepare_caltech256(image_folder, dest=tmp_path / "d", seed=4, progress=False)
    assert reseeded["counts"] == other["counts"]
    assert json.loads((tmp_path / "d" / caltech.SPLIT_FILE).read_text())["files"] != first["files"]
    # a folder without enough readable images fails with one line and leaves nothing behind
    bad = tmp_path / "bad"
    (bad / "001.x").mkdir(parents=True)
    (bad / "001.x" / "a.jpg").write_bytes(b"junk")
    with pytest.raises(caltech.OlmpError, match="001.x.*0 readable") as info:
        caltech.prepare_caltech256(bad, dest=tmp_path / "e", progress=False)
    assert "\n" not in str(info.value)
    assert not (tmp_path / "e").exists() and not list(tmp_path.glob(".e.*"))


def test_cli_without_folder_says_how_to_get_it(tmp_path: Path) -> None:
    r = run_olmp("data", "caltech256")
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1
    assert "not downloaded" in r.stderr and "--from" in r.stderr and "256_ObjectCategories" in r.stderr
    r = run_olmp("data", "caltech256", "--from", str(tmp_path / "nowhere"))
    assert r.returncode == 2 and "does not exist" in r.stderr and len(r.stderr.strip().splitlines()) == 1


# ---------------------------------------------------------------- the net


def test_deploy_net_has_57_9m_parameters() -> None:
    net = caffe_bridge.make_net(prototxt.read_net(DEPLOY))
    sizes = {n: sum(b.data.size for b in net.params[n]) for n in net.params}
    assert list(sizes) == ["conv1", "conv2", "conv3", "conv4", "conv5", "fc6", "fc7", "fc8"]
    assert sum(sizes.values()) == 57_921_153
    assert net.blobs["prob"].data.shape[1] == 257


def test_experiment_file_holds_the_caltech_settings() -> None:
    exp = config.load("caffenet_caltech256")
    s, p = exp.search, exp.pipeline
    assert (s.every, s.population, s.budget, s.bounds, s.delta) == (250, 8, 1600, (0.0, 10.0), 0.08)
    assert s.sigma_at(6999) == 5.0 and s.sigma_at(7000) == 0.5
    assert (p.niter, p.prune_stop_iter, p.initial_crate) == (15001, 10000, 0.001)
    pb = caffe_bridge.caffe_pb2()
    solver = text_format.Parse(prototxt.resolve_path(exp.solver).read_text(), pb.SolverParameter())
    got = (solver.base_lr, solver.gamma, solver.momentum, solver.weight_decay)
    assert np.allclose(got, (0.001, 0.1, 0.9, 0.0005), rtol=1e-6)  # float32 fields
    assert (solver.lr_policy, solver.stepsize) == ("step", 7000)
    net = prototxt.read_net(exp.net, check_sources=False)
    train_data = prototxt.layers_in_phase(net, pb.TRAIN)[0]
    assert train_data.data_param.batch_size == 256
    assert (train_data.transform_param.crop_size, train_data.transform_param.mirror) == (227, True)
    assert prototxt.prunable_layer_names(net) == list(exp.layers)


def test_sgd_steps_on_the_real_net(reference: dict) -> None:
    assert reference["iters"] == 4 and reference["test"]["images"] == 6
    curve = json.loads((Path(reference["model"]).parent / "train.json").read_text())["loss_curve"]
    assert np.isfinite(curve[-1]["loss"])
    info = weights.summary(weights.read_caffemodel(reference["model"]))
    assert info["total"] == 57_921_153 and info["remaining"] > 0.999 * info["total"]  # dense (a few zero biases)


def test_one_olmp_search_then_inspect_and_evaluate(reference: dict, small_solver: Path, tmp_path: Path) -> None:
    exp_file = tmp_path / "tiny.toml"
    base = (prototxt.resolve_path("scripts/experiments/caffenet_caltech256.toml").read_text()
            .replace('solver = "solvers/caffenet_caltech256_solver.prototxt"', f'solver = "{small_solver}"')
            .replace('net = "models/caffenet_caltech256/train_val.prototxt"',
                     f'net = "{small_solver.parent / "train_val.prototxt"}"')
            .replace('weights = "results/references/caffenet_caltech256/model.caffemodel"',
                     f'weights = "{reference["model"]}"'))
    for old, new in (("niter = 15001", "niter = 2"), ("prune_stop_iter = 10000", "prune_stop_iter = 1"),
                     ("record_every = 500", "record_every = 2"), ("every = 250", "every = 2"),
                     ("population = 8", "population = 4"), ("budget = 1600", "budget = 8")):
        assert old in base
        base = base.replace(old, new)
    exp_file.write_text(base)
    exp = config.load(exp_file)
    rec = pipeline.prune(exp, tmp_path / "run", progress=False)
    assert rec["finished"] and len(rec["searches"]) == 1
    search = rec["searches"][0]
    assert search["iteration"] == 0 and search["evaluations"] <= 8 + 1 and len(search["layers"]) >= 2
    pruned = tmp_path / "run" / "pruned.caffemodel"
    r = run_olmp("inspect", str(pruned), "--json")
    assert r.returncode == 0, r.stderr
    info = json.loads(r.stdout.strip().splitlines()[-1])
    assert info["total"] == 57_921_153 and info["remaining"] == rec["final"]["remaining"]
    assert list(info["layers"]) == list(exp.layers)
    r = run_olmp("evaluate", "--net", str(small_solver.parent / "train_val.prototxt"), "--weights", str(pruned),
                 "--json")
    assert r.returncode == 0, r.stderr
    res = json.loads(r.stdout.strip().splitlines()[-1])
    assert res["images"] == 6 and res["accuracy"] == rec["final"]["test"]["accuracy"]


# ---------------------------------------------------------------- GPU switch on this CPU_ONLY build


def test_gpu_flag_on_a_cpu_build_is_one_clear_line(reference: dict, small_solver: Path, tmp_path: Path) -> None:
    if caffe_bridge.has_cuda():
        pytest.skip("this pycaffe is a CUDA build; the CPU_ONLY refusal cannot be shown")
    net = str(small_solver.parent / "train_val.prototxt")
    for args in (("evaluate", "--net", net, "--weights", reference["model"]),
                 ("train", "--solver", str(small_solver), "--iters", "1", "--out", str(tmp_path / "t")),
                 ("prune", "--experiment", "caffenet_caltech256", "--out", str(tmp_path / "p"))):
        r = run_olmp(*args, "--gpu", "0")
        assert r.returncode == 2, (args, r.stderr)
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("olmp: error: ") and "CPU_ONLY" in lines[0], lines
        assert "_caffe.so" in lines[0]
    assert not (tmp_path / "t").exists() and not (tmp_path / "p").exists()
