"""A user's own Caffe model, pruned the way README "Prune your own Caffe model" says.

The net is not a LeNet (an MLP 784-64-32-10 with its own layer names), its files live in the
user's folder, and every step runs the real command line from there on the real MNIST LMDBs.
"""

from __future__ import annotations

import json
import subprocess
import tomllib
from pathlib import Path

import numpy as np
from conftest import run_olmp

from olmp import config, sparse, weights

LAYER = """layer {{ name: "{name}" type: "InnerProduct" bottom: "{bottom}" top: "{name}"
  inner_product_param {{ num_output: {n} weight_filler {{ type: "xavier" }} bias_filler {{ type: "constant" }} }} }}
"""
CONV = """layer {{ name: "{name}" type: "Convolution" bottom: "{bottom}" top: "{name}"
  convolution_param {{ num_output: {n} kernel_size: 5 stride: 2 weight_filler {{ type: "xavier" }} }} }}
"""
SOLVER = """net: "{net}"
test_iter: 100
test_interval: 1000
base_lr: 0.01
momentum: 0.9
weight_decay: 0.0005
lr_policy: "inv"
gamma: 0.0001
power: 0.75
max_iter: 10000
snapshot: 0
"""


def write_net(folder: Path, mnist: Path, body: list[tuple[str, str, int]], file: str = "net.prototxt",
              solver: str | None = "solver.prototxt") -> Path:
    """A train_test net on the real MNIST LMDBs (absolute sources, README "Paths") and its solver."""
    text = [f'name: "{file.split(".")[0]}"']
    for phase, lmdb, batch in (("TRAIN", "mnist_train_lmdb", 64), ("TEST", "mnist_test_lmdb", 100)):
        text.append(f'layer {{ name: "digits" type: "Data" top: "data" top: "label" include {{ phase: {phase} }} '
                    f'transform_param {{ scale: 0.00390625 }} '
                    f'data_param {{ source: "{mnist / lmdb}" batch_size: {batch} backend: LMDB }} }}')
    bottom = "data"
    for kind, name, n in body:
        text.append((CONV if kind == "conv" else LAYER).format(name=name, bottom=bottom, n=n))
        if name != body[-1][1]:
            text.append(f'layer {{ name: "act_{name}" type: "ReLU" bottom: "{name}" top: "{name}" }}')
        bottom = name
    text.append(f'layer {{ name: "loss" type: "SoftmaxWithLoss" bottom: "{bottom}" bottom: "label" top: "loss" }}')
    net = folder / file
    net.write_text("\n".join(text) + "\n")
    if solver:
        (folder / solver).write_text(SOLVER.format(net=net))
    return net


MLP = [("ip", "fc_a", 64), ("ip", "fc_b", 32), ("ip", "out", 10)]


def last_json(r: subprocess.CompletedProcess) -> dict:
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout.strip().splitlines()[-1])


def quick_model(cwd: Path) -> Path:
    """ref/model.caffemodel after one SGD step: a model to init from, often still at chance accuracy,
    which ``olmp train`` reports in one line while keeping the model for inspection."""
    r = run_olmp("train", "--solver", "solver.prototxt", "--iters", "1", "--out", "ref", "--quiet", cwd=cwd)
    assert r.returncode == 0 or "is chance level" in one_line(r), r.stderr
    assert (cwd / "ref" / "model.caffemodel").is_file() and (cwd / "ref" / "train.json").is_file()
    return cwd / "ref" / "model.caffemodel"


def one_line(r: subprocess.CompletedProcess) -> str:
    err = r.stderr.strip()
    assert r.returncode == 2 and len(err.splitlines()) == 1 and err.startswith("olmp: error: "), (r.returncode, err)
    return err


def test_own_mlp_end_to_end(tmp_path: Path, mnist_dir: Path) -> None:
    write_net(tmp_path, mnist_dir, MLP)
    trained = last_json(run_olmp("train", "--solver", "solver.prototxt", "--iters", "300", "--out", "ref",
                                 "--quiet", cwd=tmp_path))
    assert trained["test"]["accuracy"] > 0.85

    # init finds the solver beside the net, lists the layers and writes paths relative to the file
    r = run_olmp("init", "--net", "net.prototxt", "--weights", "ref/model.caffemodel", cwd=tmp_path)
    made = last_json(r)
    sizes = {"fc_a": 784 * 64 + 64, "fc_b": 64 * 32 + 32, "out": 32 * 10 + 10}
    assert {k: v["total"] for k, v in made["layers"].items()} == sizes
    for name, total in sizes.items():
        assert any(line.split()[:1] == [name] and line.split()[-1] == str(total) for line in r.stdout.splitlines())
    assert (made["closest"], made["bounds"], made["delta"]) == ("LeNet-300-100", [0.0, 10.0], 0.08)
    raw = tomllib.loads((tmp_path / "exp.toml").read_text())
    assert (raw["solver"], raw["net"], raw["weights"]) == ("solver.prototxt", "net.prototxt", "ref/model.caffemodel")
    assert raw["layers"] == ["fc_a", "fc_b", "out"] and raw["search"]["sigma"] == 5.0
    exp = config.load(tmp_path / "exp.toml")
    assert exp.weights == str(tmp_path / "ref" / "model.caffemodel") and exp.search.bounds == (0.0, 10.0)

    r = run_olmp("prune", "--experiment", "exp.toml", "--set", "pipeline.niter=301",
                 "--set", "pipeline.prune_stop_iter=200", "--set", "search.every=100", "--set", "search.budget=60",
                 "--set", "search.population=6", "--out", "run", "--quiet", cwd=tmp_path)
    pruned = last_json(r)
    rec = json.loads((tmp_path / "run" / "record.json").read_text())
    assert pruned["ratio"] > 1 and pruned["total"] == sum(sizes.values())
    first = rec["searches"][0]
    assert len(rec["searches"]) >= 2 and first["layers"] == list(sizes) and len(first["best_crates"]) == 3
    model = weights.read_caffemodel(tmp_path / "run" / "pruned.caffemodel")
    assert weights.summary(model)["remaining"] == rec["final"]["remaining"] == pruned["remaining"]

    evaluated = last_json(run_olmp("evaluate", "--net", "net.prototxt", "--weights", "run/pruned.caffemodel",
                                   "--json", cwd=tmp_path))
    assert evaluated == rec["final"]["test"] and evaluated["images"] == 10000

    exported = last_json(run_olmp("export", "--sparse", "run/pruned.caffemodel", "run/pruned.npz", cwd=tmp_path))
    assert exported["nonzero"] <= rec["final"]["remaining"] and exported["sparse_bytes"] < exported["dense_bytes"]
    back = sparse.load_sparse(tmp_path / "run" / "pruned.npz")
    assert weights.summary(back)["remaining"] == rec["final"]["remaining"]
    for name, layer in model.layers.items():
        for a, b in zip(layer.blobs, back.layers[name].blobs):
            assert np.array_equal(a, b)
    # and back to a caffemodel that scores the same on the whole test set
    last_json(run_olmp("export", "--dense", "run/pruned.npz", "back.caffemodel", "--net", "net.prototxt",
                       cwd=tmp_path))
    again = last_json(run_olmp("evaluate", "--net", "net.prototxt", "--weights", "back.caffemodel", "--json",
                               cwd=tmp_path))
    assert again == evaluated


def test_init_takes_the_closest_paper_setting(tmp_path: Path, mnist_dir: Path) -> None:
    conv = tmp_path / "conv"
    conv.mkdir()
    write_net(conv, mnist_dir, [("conv", "conv_x", 4), ("ip", "fc_y", 10)])
    quick_model(conv)
    (tmp_path / "exps").mkdir()
    made = last_json(run_olmp("init", "--net", "conv/net.prototxt", "--weights", "conv/ref/model.caffemodel",
                              "--solver", "conv/solver.prototxt", "--out", "exps/c.toml", cwd=tmp_path))
    assert (made["closest"], made["bounds"], made["delta"]) == ("LeNet-5", [0.0, 20.0], 0.05)
    assert made["layers"]["conv_x"]["total"] == 4 * 25 + 4
    raw = tomllib.loads((tmp_path / "exps" / "c.toml").read_text())
    assert (raw["net"], raw["weights"]) == ("../conv/net.prototxt", "../conv/ref/model.caffemodel")
    assert raw["search"]["sigma"] == [[0, 5.0], [10000, 0.5]]
    assert config.load(tmp_path / "exps" / "c.toml").search.delta == 0.05
    # one prunable layer: the search needs only it
    solo = tmp_path / "solo"
    solo.mkdir()
    write_net(solo, mnist_dir, [("ip", "only", 10)])
    quick_model(solo)
    last_json(run_olmp("init", "--net", "net.prototxt", "--weights", "ref/model.caffemodel", cwd=solo))
    assert config.load(solo / "exp.toml").search.min_layers == 1


def test_init_errors_are_one_line(tmp_path: Path, mnist_dir: Path) -> None:
    write_net(tmp_path, mnist_dir, MLP)
    quick_model(tmp_path)
    w = ["--weights", "ref/model.caffemodel"]

    def init(*args: str) -> str:
        return one_line(run_olmp("init", *args, cwd=tmp_path))

    assert f"{tmp_path / 'nosuch.prototxt'}: net prototxt not found" in init("--net", "nosuch.prototxt", *w)
    (tmp_path / "bad.prototxt").write_text('layer { name: "x" type: "InnerProduct" ')
    assert f"{tmp_path / 'bad.prototxt'}: malformed net prototxt" in init("--net", "bad.prototxt", *w)
    assert "caffemodel not found" in init("--net", "net.prototxt", "--weights", "nosuch.caffemodel")
    # weights of another net: fc_a is 65 wide here
    write_net(tmp_path, mnist_dir, [("ip", "fc_a", 65), ("ip", "fc_b", 32), ("ip", "out", 10)], "wide.prototxt",
              solver="wide_solver.prototxt")
    err = init("--net", "wide.prototxt", *w)
    assert f"{tmp_path / 'ref' / 'model.caffemodel'}: weights do not match the net: layer 'fc_a'" in err
    (tmp_path / "flat.prototxt").write_text((tmp_path / "net.prototxt").read_text().split('layer { name: "fc_a"')[0])
    assert "net has no prunable layer" in init("--net", "flat.prototxt", *w)
    (tmp_path / "noloss.prototxt").write_text((tmp_path / "net.prototxt").read_text().split('layer { name: "loss"')[0])
    assert "noloss.prototxt: net has no SoftmaxWithLoss layer" in init("--net", "noloss.prototxt", *w)
    # no solver beside the net, a solver of another net, a solver whose net path is Caffe-relative
    (tmp_path / "alone").mkdir()
    (tmp_path / "alone" / "net.prototxt").write_text((tmp_path / "net.prototxt").read_text())
    err = init("--net", "alone/net.prototxt", *w)
    assert f"{tmp_path / 'alone' / 'net.prototxt'}: no solver prototxt beside it" in err and "--solver" in err
    err = init("--net", "net.prototxt", *w, "--solver", "wide_solver.prototxt")
    assert f"{tmp_path / 'wide_solver.prototxt'}: trains another net" in err
    (tmp_path / "rel_solver.prototxt").write_text(SOLVER.format(net="net.prototxt"))
    err = init("--net", "net.prototxt", *w, "--solver", "rel_solver.prototxt")
    assert "relative to the olmp repository" in err and str(tmp_path / "net.prototxt") in err
    err = init("--net", "net.prototxt", *w)  # solver.prototxt and rel_solver.prototxt both name it
    assert "several solvers beside it train this net (rel_solver.prototxt, solver.prototxt)" in err
    assert not (tmp_path / "exp.toml").exists()  # nothing written by a failed init
    # an existing file is kept unless --force
    (tmp_path / "exp.toml").write_text("# mine\n")
    err = init("--net", "net.prototxt", *w, "--solver", "solver.prototxt")
    assert f"{tmp_path / 'exp.toml'}: exists; pass --force" in err
    assert (tmp_path / "exp.toml").read_text() == "# mine\n"
    last_json(run_olmp("init", "--net", "net.prototxt", *w, "--solver", "solver.prototxt", "--force", cwd=tmp_path))
    assert config.load(tmp_path / "exp.toml").layers == ("fc_a", "fc_b", "out")



def test_init_writes_only_what_prune_accepts(tmp_path: Path, mnist_dir: Path) -> None:
    """init builds the run as ``olmp prune`` does before its first step (Caffe's build of the training
    net and its first step included), so it refuses what prune would, and what it writes prune runs."""
    write_net(tmp_path, mnist_dir, MLP)
    last_json(run_olmp("train", "--solver", "solver.prototxt", "--iters", "100", "--out", "ref", "--quiet",
                       cwd=tmp_path))
    w = ["--weights", "ref/model.caffemodel"]
    # a training batch of 4 images: the search scores it in 4 parts at most (prune refuses chunks = 8)
    small = write_net(tmp_path, mnist_dir, MLP, "small.prototxt", solver="small_solver.prototxt")
    small.write_text(small.read_text().replace("batch_size: 64", "batch_size: 4"))
    last_json(run_olmp("init", "--net", "small.prototxt", *w, "--solver", "small_solver.prototxt", "--out",
                       "small.toml", cwd=tmp_path))
    assert tomllib.loads((tmp_path / "small.toml").read_text())["search"]["chunks"] == 4
    pruned = last_json(run_olmp("prune", "--experiment", "small.toml", "--set", "pipeline.niter=3", "--set",
                                "pipeline.prune_stop_iter=2", "--set", "search.every=1", "--set", "search.budget=8",
                                "--set", "search.population=4", "--out", "run", "--quiet", cwd=tmp_path))
    assert pruned["total"] == 784 * 64 + 64 + 64 * 32 + 32 + 32 * 10 + 10
    # a crop larger than the images in the TRAIN phase only: Caffe rejects it when it builds the training net
    crop = write_net(tmp_path, mnist_dir, MLP, "crop.prototxt", solver="crop_solver.prototxt")
    train = f'transform_param {{ scale: 0.00390625 }} data_param {{ source: "{mnist_dir / "mnist_train_lmdb"}"'
    crop.write_text(crop.read_text().replace(train, train.replace(" }", " crop_size: 40 }", 1)))
    assert crop.read_text().count("crop_size: 40") == 1
    err = one_line(run_olmp("init", "--net", "crop.prototxt", *w, "--solver", "crop_solver.prototxt", "--out",
                            "crop.toml", cwd=tmp_path))
    assert f"{tmp_path / 'crop_solver.prototxt'}: Caffe rejects it" in err and "crop" in err, err
    assert not (tmp_path / "crop.toml").exists()
    assert sorted(p.name for p in tmp_path.iterdir() if p.suffix == ".toml") == ["small.toml"]
