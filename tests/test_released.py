"""The released mode (reference doc §9): the authors' scripts' draws, clipping and cumulative evaluation.

Every expectation here is built independently of olmp's code: numpy's legacy RandomState
seeded as the scripts did (``np.random.seed([seed])``), the §9 rules written out in the
test, and a mask sequence computed by hand.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from conftest import REPO, experiment_300100, stop_then_resume, without_timing

from olmp import caffe_bridge, config, pipeline
from olmp.adjusting import MaskedLayers
from olmp.candidate import CumulativeEvaluator
from olmp.errors import OlmpError
from olmp.search import make_optimizer
from olmp.thresholds import LayerStats


def released_experiment(tmp_path: Path, weights: Path, **kw: object) -> Path:
    text = experiment_300100(weights, optimizer="sampling", **kw).replace("seed = ", 'mode = "released"\nseed = ')
    p = tmp_path / "released.toml"
    p.write_text(text)
    return p


def expected_schedule(seed: int, gammas: list[float], niter: int, prune_stop: int, every: int,
                      popsize: int, budget: int) -> tuple[list[int], list[tuple[int, list[int]]]]:
    """The scripts' draw order, written out: per-layer selection counts and (iteration, selected) of each search."""
    rs = np.random.RandomState([seed])
    counts = [0] * len(gammas)
    searches = []
    for itr in range(niter):
        chosen = [i for i, g in enumerate(gammas) if np.power(1 + g * itr, -1) > rs.rand()]
        for i in chosen:
            counts[i] += 1
        if itr % every == 0 and len(chosen) > 1 and itr < prune_stop:
            searches.append((itr, chosen))
            fes = popsize  # the released NCS counts its start as one population
            while not fes > budget:
                rs.randn(popsize, len(chosen))  # ask()
                fes += popsize
                rs.randn(popsize)  # tell(): lambda
    return counts, searches


def test_released_sampling_clips_and_draws_like_the_scripts() -> None:
    """ask() = x0 + sigma * randn(10, n), clipped to lb + 1e-4 / ub - 1e-4; tell() draws randn(10); sigma *= 0.99 per 10."""
    seed, x0, lb, ub, sigma = 961449, np.array([0.001, 9.5, 4.0]), 0.0, 10.0, 5.0
    rs = np.random.RandomState([seed])
    opt = make_optimizer("sampling", x0, sigma, (lb, ub), 10, 300, seed, rng=np.random.RandomState([seed]), released=True)
    mine = np.tile(x0, (10, 1))
    s = sigma
    clipped = 0
    for gen in range(30):
        want = mine + s * rs.randn(10, 3)
        low, high = want < lb, want > ub
        clipped += int(low.sum() + high.sum())
        want[low] = lb + 0.0001
        want[high] = ub - 0.0001
        got = opt.ask()
        assert np.array_equal(np.array(got), want)
        opt.tell(got, [0.5] * 10)
        rs.randn(10)
        if (gen + 1) % 10 == 0:
            s *= 0.99
    assert opt.stop() and clipped > 100  # about half the draws near 0 land on the bound
    assert np.isclose(s, sigma * 0.99**3)


def test_released_mode_refuses_what_the_scripts_did_not_do(tmp_path: Path, lenet300100_model: Path) -> None:
    path = released_experiment(tmp_path, lenet300100_model)
    config.load(path)
    for setting, word in (("optimizer=ncs", "sampling"), ("search.chunks=2", "chunks"),
                          ("search.budget=65", "multiple"), ("mode=exact", "unknown mode")):
        with pytest.raises(OlmpError, match=word) as info:
            config.load(path, [setting])
        assert str(path) in str(info.value)


TINY_NET = """
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 3 dim: 2 } } }
layer { name: "label" type: "Input" top: "label" input_param { shape { dim: 3 } } }
layer { name: "ip1" type: "InnerProduct" bottom: "data" top: "ip1" inner_product_param { num_output: 2 } }
layer { name: "ip2" type: "InnerProduct" bottom: "ip1" top: "ip2" inner_product_param { num_output: 2 } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "ip2" bottom: "label" top: "loss" }
"""


def test_cumulative_evaluation_by_hand() -> None:
    """Three candidates on a tiny layer, each starting from the masks the previous one left (§9)."""
    from google.protobuf import text_format

    param = text_format.Parse(TINY_NET, caffe_bridge.caffe_pb2().NetParameter())
    net = caffe_bridge.make_net(param, "test")
    w1, b1 = np.array([[0.1, -0.5], [0.9, 0.3]]), np.array([0.2, -0.05])
    w2, b2 = np.array([[0.6, -0.4], [0.45, 1.0]]), np.array([0.52, 0.3])
    for name, (w, b) in {"ip1": (w1, b1), "ip2": (w2, b2)}.items():
        net.params[name][0].data[...] = w
        net.params[name][1].data[...] = b
    x = np.array([[1.0, 2.0], [-1.0, 0.5], [0.3, -2.0]])
    labels = np.array([0, 1, 1])
    net.blobs["data"].data[...] = x
    net.blobs["label"].data[...] = labels
    layers = MaskedLayers(net, ["ip1", "ip2"])
    unit = LayerStats(mu=0.0, sigma=1.0)  # threshold = crate, so the hand computation reads plainly
    ev = CumulativeEvaluator(net, layers, {"ip1": unit, "ip2": unit}, ["ip1"], delta=1.0, crates={"ip1": 0.0, "ip2": 0.5})

    def accuracy(m1: list, m2: list) -> float:  # numpy forward with the masks given by hand
        h = x @ (w1 * m1[0]).T + b1 * m1[1]
        out = h @ (w2 * m2[0]).T + b2 * m2[1]
        return float(np.mean(out.argmax(1) == labels))

    # ip2 (not selected) gets its current crate 0.5 at every candidate: prune |w| <= 0.45, splice > 0.55
    m2 = [np.array([[1, 0], [0, 1]]), np.array([1, 0])]
    steps = [  # crate of ip1 -> ip1's masks, by hand from the previous ones
        (0.4, [np.array([[0, 1], [1, 0]]), np.array([0, 0])]),  # prune <= 0.36
        (0.21, [np.array([[0, 1], [1, 1]]), np.array([0, 0])]),  # 0.3 spliced (> 0.231); 0.2 in the band: stays 0
        (0.05, [np.array([[1, 1], [1, 1]]), np.array([1, 0])]),  # 0.1, 0.2 spliced (> 0.055); 0.05 stays 0
    ]
    with ev.session():
        assert ev.reference_accuracy == accuracy([np.ones((2, 2)), np.ones(2)], [np.ones((2, 2)), np.ones(2)])
        for crate, m1 in steps:
            e = ev([crate])
            for got, want in zip(layers.masks["ip1"] + layers.masks["ip2"], m1 + m2):
                assert np.array_equal(got, want)
            kept = sum(int(m.sum()) for m in m1 + m2)
            assert e.size == kept / 12
            assert e.accuracy == accuracy(m1, m2)
    # from fresh masks the second candidate would have kept 0.2 (> 0.189): the sequence matters
    assert steps[1][1][1][0] == 0 and 0.2 > 0.9 * 0.21
    # the best (candidate 2) is applied on top of the masks candidate 3 left: 0.1 pruned, 0.2 kept now
    crates = {"ip1": 0.0, "ip2": 0.5}
    ev.conclude(np.array([0.21]), crates)
    assert crates["ip1"] == 0.21
    assert np.array_equal(layers.masks["ip1"][0], [[0, 1], [1, 1]]) and np.array_equal(layers.masks["ip1"][1], [1, 0])
    assert np.array_equal(net.params["ip1"][0].data, w1.astype(np.float32))  # dense weights back in the blobs


def narrow_300100(tmp_path: Path, mnist_dir: Path) -> tuple[Path, Path]:
    """LeNet-300-100's net and solver with 8-wide hidden layers and a 4-image minibatch, and weights from 1 step.

    The schedule depends on the stream, the gammas and the counts of layers, iterations and evaluations,
    never on the weights or the batch; a narrow net runs the same 30,001 iterations in a fraction of the time.
    """
    from olmp import train

    data = str(mnist_dir.resolve())
    text = (REPO / "models" / "lenet300100" / "train_test.prototxt").read_text().replace('"data/mnist/', f'"{data}/')
    for old, new in (("num_output: 300", "num_output: 8"), ("num_output: 100", "num_output: 8"),
                     ("batch_size: 64", "batch_size: 4")):
        assert old in text
        text = text.replace(old, new)
    (tmp_path / "narrow.prototxt").write_text(text)
    solver = (REPO / "solvers" / "lenet300100_solver.prototxt").read_text()
    (tmp_path / "narrow_solver.prototxt").write_text(
        "\n".join(f'net: "{tmp_path / "narrow.prototxt"}"' if line.startswith("net:") else line
                  for line in solver.splitlines()))
    train.train(tmp_path / "narrow_solver.prototxt", iters=1, out=tmp_path / "narrow", progress=False)
    return tmp_path / "narrow_solver.prototxt", tmp_path / "narrow" / "model.caffemodel"


def test_full_run_follows_the_scripts_schedule(tmp_path: Path, mnist_dir: Path) -> None:
    """A whole 30,001-iteration released run selects and searches exactly when the scripts' stream says."""
    seed = 961449
    solver, narrow = narrow_300100(tmp_path, mnist_dir)
    path = released_experiment(tmp_path, narrow, niter=30001, prune_stop=15000, every=1000,
                               population=10, budget=30, record_every=30000, checkpoint_every=30000,
                               sigma="[[0, 5.0]]")
    path.write_text(path.read_text().replace('"solvers/lenet300100_solver.prototxt"', f'"{solver}"')
                    .replace('"models/lenet300100/train_test.prototxt"', f'"{solver.parent / "narrow.prototxt"}"'))
    exp = config.load(path, [f"seed={seed}"])
    rec = pipeline.prune(exp, tmp_path / "run", progress=False)
    assert rec["final"]["total"] == (784 + 1) * 8 + (8 + 1) * 8 + (8 + 1) * 10  # the narrow net ran
    counts, searches = expected_schedule(seed, [2e-4] * 3, 30001, 15000, 1000, 10, 30)
    names = ["ip1", "ip2", "ip3"]
    assert rec["selections"] == dict(zip(names, counts))
    assert [(s["iteration"], s["layers"]) for s in rec["searches"]] == [(i, [names[j] for j in c]) for i, c in searches]
    assert len(searches) >= 5 and rec["experiment"]["mode"] == "released"
    assert all(s["seed"] == seed and s["evaluations"] == 31 for s in rec["searches"])  # start + 3 rounds of 10


def test_released_run_resumes_to_the_same_model(tmp_path: Path, lenet300100_model: Path) -> None:
    """The legacy stream's state (key, position, cached gaussian) travels in the checkpoint."""
    path = released_experiment(tmp_path, lenet300100_model, niter=81, prune_stop=60, every=20, population=5,
                               budget=20, checkpoint_every=30)
    exp = config.load(path)
    whole = pipeline.prune(exp, tmp_path / "whole", progress=False)
    resumed = stop_then_resume(exp, tmp_path / "stopped", 45)  # after the checkpoint at 30 and the search at 40
    assert (tmp_path / "whole" / "pruned.caffemodel").read_bytes() == (tmp_path / "stopped" / "pruned.caffemodel").read_bytes()
    assert without_timing(whole) == without_timing(resumed)
    assert len(whole["searches"]) >= 2 and all(s["applied"] for s in whole["searches"])
