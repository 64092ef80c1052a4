"""OLMP on real pycaffe: masked adjusting, candidate evaluation, the pipeline, resume, bad configs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from conftest import REPO, experiment_300100, run_olmp, without_timing

from olmp import caffe_bridge, config, evaluate, pipeline, prototxt, weights
from olmp.adjusting import MaskedLayers
from olmp.candidate import CandidateEvaluator, chunk_nets
from olmp.errors import OlmpError
from olmp.thresholds import layer_stats


def small_experiment(tmp_path: Path, weights_path: Path, **kw: object) -> Path:
    text = experiment_300100(weights_path, **kw)
    p = tmp_path / f"exp-{abs(hash(text)) % 10**8}.toml"
    p.write_text(text)
    return p


PRUNABLE = {"lenet300100": ["ip1", "ip2", "ip3"], "lenet5": ["conv1", "conv2", "ip1", "ip2"]}


def _solver_with_masks(model: Path, name: str = "lenet300100"):
    sp = prototxt.read_solver(f"solvers/{name}_solver.prototxt")
    sp.random_seed = 1
    sp.test_interval = 2**31 - 1
    solver = caffe_bridge.make_solver(sp)
    weights.load_weights(solver.net, model)
    layers = MaskedLayers(solver.net, PRUNABLE[name])
    layers.attach(solver)
    return solver, layers


def test_masked_weights_do_not_forward_but_still_learn(lenet300100_model: Path) -> None:
    solver, layers = _solver_with_masks(lenet300100_model)
    net = solver.net
    rng = np.random.default_rng(0)
    for n in layers.names:
        for m in layers.masks[n]:
            m[...] = rng.random(m.shape) < 0.5
    solver.step(1)  # loads a batch
    w = net.params["ip1"][0].data
    pruned = layers.masks["ip1"][0] == 0
    with layers.masked():
        net.forward(start="ip1")
        logits = net.blobs["ip3"].data.copy()
        assert np.all(net.params["ip1"][0].data[pruned] == 0)
    w[pruned] += 100.0 * rng.standard_normal(int(pruned.sum())).astype(np.float32)  # junk in pruned weights
    dense = w.copy()
    with layers.masked():
        net.forward(start="ip1")
        assert np.array_equal(net.blobs["ip3"].data, logits)  # pruned weights contribute nothing
    assert np.array_equal(net.params["ip1"][0].data, dense)  # dense W, junk included, is back after the context
    before = dense
    solver.step(1)
    after = net.params["ip1"][0].data
    assert np.any(after[pruned] != before[pruned])  # ... yet they are updated (straight-through)
    changed = np.abs(after - before)[pruned]
    assert np.count_nonzero(changed > 1e-12) > 0.5 * pruned.sum()


def test_candidate_evaluation_leaves_the_net_bit_identical(lenet300100_model: Path) -> None:
    solver, layers = _solver_with_masks(lenet300100_model)
    net = solver.net
    solver.step(2)
    stats = {n: layer_stats(net.params[n][0].data, net.params[n][1].data) for n in layers.names}
    for n in layers.names:
        layers.update(n, stats[n].mu)
    before_w = {n: [b.data.copy() for b in net.params[n]] for n in layers.names}
    before_m = {n: [m.copy() for m in layers.masks[n]] for n in layers.names}
    data = net.blobs["data"].data.copy()
    ev = CandidateEvaluator(net, layers, stats, ["ip3", "ip2"], delta=0.08)
    with ev.session():
        results = [ev(np.array(c)) for c in ([0.0, 0.0], [2.0, 1.0], [9.0, 9.0], [0.5, 3.0])]
        assert ev.evaluations == 4
        assert results[2].size < results[0].size
        assert all(0 <= r.accuracy <= 1 for r in results)
        again = ev(np.array([2.0, 1.0]))
        assert again == results[1]  # evaluating is a pure function of the crates
    for n in layers.names:
        for a, b in zip(before_w[n], net.params[n]):
            assert np.array_equal(a, b.data)
        for a, b in zip(before_m[n], layers.masks[n]):
            assert np.array_equal(a, b)
    assert np.array_equal(data, net.blobs["data"].data)


def test_bad_experiment_values(tmp_path: Path, lenet300100_model: Path) -> None:
    base = small_experiment(tmp_path, lenet300100_model).read_text()
    cases = {
        "delta.toml": (base.replace("delta = 0.08", "delta = -0.1"), "delta"),
        "bounds.toml": (base.replace("bounds = [0.0, 10.0]", "bounds = [10.0, 0.0]"), "bounds"),
        "optimizer.toml": (base.replace('optimizer = "ncs"', 'optimizer = "adam"'), "unknown optimizer"),
        "type.toml": (base.replace("population = 6", 'population = "six"'), "population"),
        "key.toml": (base.replace("population = 6", "populaton = 6"), "unknown key"),
        "toml.toml": (base.replace("[search]", "[search"), "malformed TOML"),
    }
    for name, (text, needle) in cases.items():
        p = tmp_path / name
        p.write_text(text)
        with pytest.raises(OlmpError, match=needle) as info:
            config.load(p)
        assert name in str(info.value) and "\n" not in str(info.value)
    good = tmp_path / "good.toml"
    good.write_text(base)
    exp = config.load(good, ["search.delta=0.03", "baseline.scale=2", "optimizer=cmaes"])
    assert (exp.search.delta, exp.baseline.scale, exp.optimizer) == (0.03, 2.0, "cmaes")
    assert "--set search.delta=0.03" in exp.source
    for setting, needle in (("search.delta=-1", "delta"), ("search.delta", "KEY=VALUE"), ("search.nope=1", "unknown key"),
                            ("a.b.c=1", "KEY=VALUE"), ("pipeline.niter=ten", "niter"), ("search.chunks=0", "chunks"),
                            ("search.min_layers=0", "min_layers"), ("search.min_layers=4", r"min_layers must be in \[1, 3\]")):
        with pytest.raises(OlmpError, match=needle):
            config.load(good, [setting])
    with pytest.raises(OlmpError, match="exact margins"):  # early stops report bounds, cma's AL needs margins
        config.load(good, ["search.chunks=4", "search.constraint=al"])
    with pytest.raises(OlmpError, match=r"chunks must be in \[1, 64\]") as info:  # more chunks than images
        pipeline.Pipeline(config.load(good, ["search.chunks=65"]), tmp_path / "c", progress=False)
    assert "good.toml" in str(info.value)
    unknown_layer = tmp_path / "layer.toml"
    unknown_layer.write_text(base.replace('"ip3"]', '"ip4"]'))
    r = run_olmp("prune", "--experiment", str(unknown_layer), "--out", str(tmp_path / "o"), "--quiet")
    assert r.returncode == 2 and "unknown layer 'ip4'" in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_short_pipeline_prunes_within_delta(tmp_path: Path, lenet300100_model: Path) -> None:
    exp = config.load(small_experiment(tmp_path, lenet300100_model))
    rec = pipeline.prune(exp, tmp_path / "run", progress=False)
    assert rec["finished"]
    searches = rec["searches"]
    assert searches and searches[0]["iteration"] == 0 and len(searches[0]["layers"]) == 3
    assert all(s["evaluations"] <= 60 + 1 for s in searches)
    applied = [s for s in searches if s["applied"]]
    assert applied and all(s["accuracy_margin"] >= 0 for s in applied)  # batch accuracy within delta
    assert rec["final"]["ratio"] > 3.0
    ratios = [p["ratio"] for p in rec["progress"]]
    assert ratios[-1] > 3.0 and ratios[0] >= 1.0
    assert rec["final"]["test"]["accuracy"] > rec["reference"]["test"]["accuracy"] - 0.05
    info = weights.summary(weights.read_caffemodel(tmp_path / "run" / "pruned.caffemodel"))
    assert info["remaining"] == rec["final"]["remaining"]
    # stock Caffe's own loader reads the pruned model, and it scores as recorded
    from olmp import evaluate

    net = caffe_bridge.make_net(prototxt.read_net("models/lenet300100/train_test.prototxt"), "test")
    net.copy_from(str(tmp_path / "run" / "pruned.caffemodel"))
    assert evaluate.evaluate_net(net, 10_000)["accuracy"] == rec["final"]["test"]["accuracy"]
    # the tables are regenerated from the record alone
    from olmp import reports

    summary = reports.write_runs_table(tmp_path)
    assert summary["runs"] == 1 and summary["best"] == "run"
    rows = (tmp_path / "runs.csv").read_text().splitlines()
    assert len(rows) == 2 and f"{rec['final']['ratio']:.2f}".rstrip("0") in rows[1]
    assert (tmp_path / "best" / "pruned.caffemodel").read_bytes() == (tmp_path / "run" / "pruned.caffemodel").read_bytes()


def test_one_layer_searches_past_the_paper(tmp_path: Path, lenet300100_model: Path) -> None:
    """search.min_layers = 1: a search also runs when a single layer is selected; the paper's 2 never does."""
    path = small_experiment(tmp_path, lenet300100_model, niter=201, prune_stop=200, every=20, budget=12)
    fast_decay = "pipeline.gamma={ InnerProduct = 0.05 }"  # selection probability 1/(1 + 0.05 itr)
    counts = {}
    for least in (1, 2):
        exp = config.load(path, [f"search.min_layers={least}", fast_decay])
        rec = pipeline.prune(exp, tmp_path / f"min{least}", progress=False)
        counts[least] = [len(s["layers"]) for s in rec["searches"]]
        assert all(s["accuracy_margin"] >= 0 for s in rec["searches"] if s["applied"])
    assert 1 in counts[1] and min(counts[2]) >= 2
    assert len(counts[1]) > len(counts[2])


def test_second_run_on_a_folder_is_refused(tmp_path: Path, lenet300100_model: Path) -> None:
    from olmp.checkpoint import RunLock

    out = tmp_path / "locked"
    with RunLock(out):
        r = run_olmp("prune", "--experiment", str(small_experiment(tmp_path, lenet300100_model)), "--out", str(out))
    assert r.returncode == 2 and "another olmp run" in r.stderr


def test_validation_batch_estimate(tmp_path: Path, lenet300100_model: Path) -> None:
    """accuracy_on = "validation": candidates are judged on a fixed 500-image batch."""
    text = small_experiment(tmp_path, lenet300100_model, niter=101, prune_stop=101, budget=30).read_text()
    p = tmp_path / "val.toml"
    p.write_text(text.replace('delta = 0.08', 'delta = 0.02\naccuracy_on = "validation"\nvalidation_images = 500'))
    exp = config.load(p)
    run = pipeline.Pipeline(exp, tmp_path / "val", progress=False)
    assert run.eval_net.blobs["data"].data.shape[0] == 500
    rec = run.run()
    first = rec["searches"][0]
    # accuracy on 500 images moves in steps of 1/500, not 1/64
    assert abs(first["batch_accuracy"] * 500 - round(first["batch_accuracy"] * 500)) < 1e-6
    # the batch is scored against its real labels (the TEST net's split copy of them is filled)
    assert first["batch_accuracy"] > 0.8
    assert first["applied"] and first["accuracy_margin"] >= 0 and first["size"] <= first["size_before"]


def test_partial_forward_scores_like_a_full_forward(lenet5_model: Path) -> None:
    """Re-running only from the first changed layer (or not at all) must give the full forward's accuracy."""
    solver, layers = _solver_with_masks(lenet5_model, "lenet5")
    net = solver.net
    solver.step(1)
    stats = {n: layer_stats(net.params[n][0].data, net.params[n][1].data) for n in layers.names}
    rng = np.random.default_rng(3)
    selected = ["conv1", "conv2", "ip2"]
    crates = [rng.uniform(0, 4, 3) for _ in range(12)]
    crates += [crates[-1].copy(), np.array([crates[-1][0], crates[-1][1], 0.5]), np.array([9.0, 9.0, 9.0])] * 2
    ev = CandidateEvaluator(net, layers, stats, selected, delta=0.05)
    with ev.session():
        fast = [ev(c).accuracy for c in crates]
    assert ev.forwards < ev.evaluations  # repeated masks were not re-run
    full = []
    for c in crates:
        new = ev.masks_for(c)
        with layers.masked():
            for n in selected:
                for blob, w, m in zip(layers.data(n), layers.dense(n), new[n]):
                    blob[...] = w * m
            net.forward(start=net._layer_names[1])
            logits, labels = evaluate.loss_inputs(net)
            full.append(evaluate.batch_accuracy(net.blobs[logits].data, net.blobs[labels].data))
    assert fast == full


def test_chunked_evaluation_decides_like_the_whole_batch(lenet5_model: Path) -> None:
    """Chunk by chunk with early stops: the same feasibility and sizes; whole-batch accuracies where it matters."""
    solver, layers = _solver_with_masks(lenet5_model, "lenet5")
    net = solver.net
    solver.step(1)
    stats = {n: layer_stats(net.params[n][0].data, net.params[n][1].data) for n in layers.names}
    param = prototxt.read_net("models/lenet5/train_test.prototxt")
    parts = chunk_nets(net, param, caffe_bridge.caffe_pb2().TRAIN, 4)
    assert [(c.lo, c.hi, c.net.blobs["data"].data.shape[0]) for c in parts] == [(16 * i, 16 * i + 16, 16)
                                                                                for i in range(4)]
    rng = np.random.default_rng(5)
    selected = ["conv1", "conv2", "ip1", "ip2"]
    crates = [rng.uniform(0, 3, 4) for _ in range(16)] + [np.zeros(4), np.full(4, 8.0), np.zeros(4)]
    whole = CandidateEvaluator(net, layers, stats, selected, delta=0.05)
    with whole.session():
        exact = [whole(c) for c in crates]
    chunked = CandidateEvaluator(net, layers, stats, selected, delta=0.05, chunks=parts)
    with chunked.session():
        assert chunked.reference_accuracy == whole.reference_accuracy
        fast = [chunked(c) for c in crates]
        again = [chunked(c, whole_batch=True) for c in crates]
    assert [e.feasible for e in fast] == [e.feasible for e in exact]
    assert [e.size for e in fast] == [e.size for e in exact]
    assert again == exact
    for f, e in zip(fast, exact):
        assert f == e if e.feasible else f.accuracy >= e.accuracy
    stopped = [f for f, e in zip(fast, exact) if f != e]
    assert stopped  # some candidates were given up before the last chunk
    assert all(not f.feasible for f in stopped)


@pytest.mark.parametrize("accuracy_on", ["minibatch", "validation"])
def test_chunks_give_the_same_run(tmp_path: Path, lenet300100_model: Path, accuracy_on: str) -> None:
    """A population scored whole or in chunks: the same searches, masks and model, bit for bit."""
    text = small_experiment(tmp_path, lenet300100_model, niter=121, prune_stop=120, budget=48).read_text()
    if accuracy_on == "validation":  # the TEST-phase batch net (split layers, a different phase) in chunks
        text = text.replace("delta = 0.08", 'delta = 0.02\naccuracy_on = "validation"\nvalidation_images = 300')
    (tmp_path / "par.toml").write_text(text)
    exp = config.load(tmp_path / "par.toml")
    recs, models = [], []
    for chunks in (1, 5):
        out = tmp_path / f"c{chunks}"
        search = exp.search.__class__(**{**vars(exp.search), "chunks": chunks})
        rec = without_timing(pipeline.prune(config.check(exp.replace(search=search)), out, progress=False))
        rec["experiment"]["search"].pop("chunks")
        recs.append(rec)
        models.append((out / "pruned.caffemodel").read_bytes())
    assert sum(s["evaluations"] for s in recs[0]["searches"]) > 0
    assert all(r == recs[0] for r in recs[1:])
    assert all(m == models[0] for m in models[1:])


def test_dropout_nets_score_candidates_with_dropout_off(tmp_path: Path, lenet300100_model: Path) -> None:
    """A TRAIN net with dropout scores through TEST-phase copies: the same crates, the same score, every time."""
    text = (REPO / "models" / "lenet300100" / "train_test.prototxt").read_text()
    data = str((REPO / "data" / "mnist").resolve())
    text = text.replace('"data/mnist/', f'"{data}/')
    relu = text.index('layer', text.index('bottom: "ip1"', text.index('name: "ip1"') + 20))  # the layer after ip1
    dropout = ('layer { name: "drop1" type: "Dropout" bottom: "ip1" top: "ip1" '
               'dropout_param { dropout_ratio: 0.9 } include { phase: TRAIN } }\n')
    (tmp_path / "net.prototxt").write_text(text[:relu] + dropout + text[relu:])
    solver = (REPO / "solvers" / "lenet300100_solver.prototxt").read_text()
    solver = "\n".join(f'net: "{tmp_path / "net.prototxt"}"' if line.startswith("net:") else line
                       for line in solver.splitlines())
    (tmp_path / "solver.prototxt").write_text(solver)
    exp_text = experiment_300100(lenet300100_model).replace('"solvers/lenet300100_solver.prototxt"',
                                                            f'"{tmp_path / "solver.prototxt"}"')
    exp_text = exp_text.replace('"models/lenet300100/train_test.prototxt"', f'"{tmp_path / "net.prototxt"}"')
    (tmp_path / "exp.toml").write_text(exp_text)
    run = pipeline.Pipeline(config.load(tmp_path / "exp.toml"), tmp_path / "run", progress=False)
    assert run.chunks and all("drop1" in c.net._layer_names for c in run.chunks)  # the same layers, TEST phase
    run.sgd_step(-1)  # one real minibatch in the blobs
    ev = CandidateEvaluator(run.eval_net, run.layers, run.stats, ["ip1", "ip2", "ip3"], 0.08, chunks=run.chunks)
    with ev.session():
        scores = [ev(np.array(c)).accuracy for c in [[0.0, 0.0, 0.0], [1.0, 1.0, 1.0]] * 4]
        assert ev.forwards >= 8  # the crates alternate, so every call re-ran the net
    assert len(set(scores[0::2])) == 1 and len(set(scores[1::2])) == 1
