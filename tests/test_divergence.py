"""A diverging run stops cleanly: one line saying what to change, the last good checkpoint kept.

The solvers are copies of the repository's with a learning rate that blows up; nothing is
mocked. LeNet-5 has max-pooling, whose backward pass Caffe would corrupt memory in if a
NaN weight ever reached a forward pass, so training checks after every step.
"""

from __future__ import annotations

import json
from pathlib import Path

from conftest import REPO, run_olmp

from olmp import checkpoint, weights


def _solver(tmp_path: Path, model: str, **changes: str) -> Path:
    text = (REPO / f"solvers/{model}_solver.prototxt").read_text()
    for old, new in changes.items():
        assert old in text
        text = text.replace(old, new)
    p = tmp_path / f"diverging_{model}.prototxt"
    p.write_text(text)
    return p


def _one_line(r, *needles: str) -> str:
    err = r.stderr.strip()
    assert r.returncode == 2 and len(err.splitlines()) == 1 and err.startswith("olmp: error: "), (r.returncode, err)
    for n in needles:
        assert n in err, err
    return err


def test_diverging_adjusting_keeps_the_last_good_checkpoint(tmp_path: Path, lenet300100_model: Path) -> None:
    # lr = 0.01 * 1.5**iter: fine for a few checkpoints, then the loss and weights blow up
    solver = _solver(tmp_path, "lenet300100", **{'lr_policy: "inv"': 'lr_policy: "exp"', "gamma: 0.0001": "gamma: 1.5"})
    exp = tmp_path / "exp.toml"
    exp.write_text(f"""
name = "diverge"
solver = "{solver}"
net = "models/lenet300100/train_test.prototxt"
weights = "{lenet300100_model}"
layers = ["ip1", "ip2", "ip3"]
[pipeline]
niter = 200
prune_stop_iter = 100
record_every = 1000
checkpoint_every = 5
[search]
every = 1000
population = 4
budget = 8
""")
    out = tmp_path / "run"
    r = run_olmp("prune", "--experiment", str(exp), "--out", str(out), "--quiet")
    _one_line(r, solver.name, "diverged at iteration", "last good checkpoint is kept", "lower base_lr")
    assert not (out / "record.json").exists() and not (out / "pruned.caffemodel").exists()
    state = json.loads((out / checkpoint.CHECKPOINT / "state.json").read_text())
    assert state["next_itr"] >= 5
    weights.read_caffemodel(out / checkpoint.CHECKPOINT / "weights.caffemodel")  # finite, or it raises
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]


def test_diverging_training_stops_before_a_nan_reaches_max_pooling(tmp_path: Path, mnist_dir: Path) -> None:
    solver = _solver(tmp_path, "lenet5", **{"base_lr: 0.01": "base_lr: 1000000"})
    r = run_olmp("train", "--solver", str(solver), "--iters", "50", "--out", str(tmp_path / "o"), "--quiet")
    err = _one_line(r, solver.name, "diverged at iteration", "lower base_lr")
    assert int(err.split("iteration ")[1].split()[0]) <= 3
    assert not (tmp_path / "o" / "model.caffemodel").exists()


def test_every_bad_weight_in_every_blob_is_caught(lenet300100_model: Path) -> None:
    """The one-pass check against the exact max |w| rule, on a real net: a NaN, an inf, a weight at the
    limit or one whose square overflows, in any blob (not only the first), and a large but legal weight."""
    import math

    import numpy as np

    from olmp import caffe_bridge, prototxt, train

    net = caffe_bridge.make_net(prototxt.read_net("models/lenet300100/train_test.prototxt"), "test")
    weights.load_weights(net, lenet300100_model)
    net.forward()
    assert train.divergence(net) is None
    blobs = [b.data for n in net.params for b in net.params[n]]
    for blob in (blobs[0], blobs[3], blobs[-1]):
        saved = blob.flat[0]
        for bad in (np.nan, np.inf, -np.inf, train.WEIGHT_LIMIT, -3e19):
            blob.flat[0] = bad
            why = train.divergence(net)
            assert why is not None and "max |w|" in why, (blob.shape, bad)
            assert train.divergence(net, list(net.params)[::-1]) is not None
        for legal in (train.WEIGHT_LIMIT / 2, -9.9e7):  # sum of squares over SQUARES_LIMIT, yet no |w| over the limit
            blob.flat[0] = legal
            assert legal**2 >= train.SQUARES_LIMIT and train.divergence(net) is None
        blob.flat[0] = saved
    assert train.divergence(net) is None and math.isfinite(float(net.blobs["loss"].data))
