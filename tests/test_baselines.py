"""The baseline policies on tiny real LeNet-300-100 runs, and `olmp compare`."""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import REPO, run_olmp, stop_then_resume
from test_pipeline import small_experiment

from olmp import caffe_bridge, compare, config, evaluate, pipeline, policies, prototxt, weights
from olmp.adjusting import MaskedLayers
from olmp.mnist import read_idx
from olmp.policies.scan import pick_from_scan

LAYERS = ["ip1", "ip2", "ip3"]


def baseline_experiment(tmp_path: Path, weights_path: Path, method: str, niter: int = 61, prune_stop: int = 40,
                        **baseline: object) -> config.Experiment:
    """small_experiment's run with ``method`` and a [baseline] table."""
    text = small_experiment(tmp_path, weights_path, niter=niter, prune_stop=prune_stop).read_text()
    text = text.replace('seed = 1\n', f'seed = 1\nmethod = "{method}"\n', 1).replace("record_every = 100",
                                                                                     "record_every = 20")
    table = "\n[baseline]\n" + "".join(f"{k} = {_toml(v)}\n" for k, v in baseline.items())
    p = tmp_path / f"{method}-{abs(hash(text + table)) % 10**8}.toml"
    p.write_text(text + table)
    return config.load(p)


def _toml(v: object) -> str:
    if isinstance(v, dict):
        return "{ " + ", ".join(f"{k} = {_toml(x)}" for k, x in v.items()) + " }"
    if isinstance(v, list):
        return "[" + ", ".join(_toml(x) for x in v) + "]"
    return json.dumps(v)


REFERENCE = REPO / "results" / "references" / "lenet300100" / "model.caffemodel"
# enough [baseline] for every method: per-layer values (no scan), a sparsity, two rounds
EVERY_BASELINE: dict[str, Any] = {"values": {"ip1": 1.0, "ip2": 1.0, "ip3": 0.5}, "sparsity": 0.9, "rounds": 2}


@pytest.mark.parametrize("method", sorted(policies.POLICIES))
def test_each_policy_runs_as_its_class_declares(tmp_path: Path, method: str) -> None:
    """A tiny real run of every registered method: what the class declares is what the run does."""
    cls = policies.POLICIES[method]
    exp = baseline_experiment(tmp_path, REFERENCE, method, niter=41, prune_stop=20, **EVERY_BASELINE)
    run = pipeline.Pipeline(exp, tmp_path / method, progress=False)
    rec = run.run()
    assert rec["method"] == method  # the record names the run as the experiment file does
    assert bool(rec["searches"]) == cls.searches
    pruned = np.concatenate([w[m == 0] for n in LAYERS for w, m in zip(run.layers.dense(n), run.layers.masks[n])])
    assert pruned.size > 0 and rec["final"]["ratio"] > 1.0
    assert bool(np.any(pruned != 0)) == cls.straight_through  # splicing keeps pruned weights; freezing zeroes them
    if cls.needs_sparsity:
        f = rec["final"]
        assert f["sparsity"] == pytest.approx(0.9) and 1 - f["remaining"] / f["total"] == pytest.approx(0.9, abs=0.01)


@pytest.mark.parametrize("method", sorted(policies.POLICIES))
def test_the_config_checks_what_each_policy_declares(tmp_path: Path, method: str) -> None:
    """Each of the config's per-method rules applies exactly to the methods whose class declares the need."""
    from olmp.errors import OlmpError

    cls = policies.POLICIES[method]

    def refused(**changes: Any) -> bool:
        try:
            baseline_experiment(tmp_path, REFERENCE, method, niter=41, prune_stop=20, **{**EVERY_BASELINE, **changes})
        except OlmpError:
            return True
        return False

    assert not refused()
    assert refused(sparsity=0.0) == cls.needs_sparsity
    assert refused(rounds=30) == cls.in_rounds  # more rounds than iterations before prune_stop_iter
    assert refused(values={"ip1": 1.0}, validation_images=0) == cls.scanned  # a scan with no images
    out_of_bounds = baseline_experiment(tmp_path, REFERENCE, method, niter=41, prune_stop=20, **EVERY_BASELINE)
    with pytest.raises(OlmpError) if cls.searches else contextlib.nullcontext():
        config.load(out_of_bounds.source, ["pipeline.initial_crate=20"])  # outside search.bounds


def test_shipped_experiment_files_load() -> None:
    for f in sorted((REPO / "scripts" / "experiments").glob("*.toml")):
        config.load(f)  # checked against its method's and optimizer's declared needs, and its net
    for model in ("lenet5", "lenet300100"):
        for suffix in ("dc", "dns", "global", "uniform"):
            assert (REPO / "scripts" / "experiments" / f"{model}_{suffix}.toml").is_file()


def _frozen_solver(model: Path) -> tuple[Any, MaskedLayers]:
    """A LeNet-300-100 solver from ``model`` whose pruned weights stay at zero (no straight-through)."""
    sp = prototxt.read_solver("solvers/lenet300100_solver.prototxt")
    sp.random_seed = 1
    sp.test_interval = 2**31 - 1
    solver = caffe_bridge.make_solver(sp)
    weights.load_weights(solver.net, model)
    layers = MaskedLayers(solver.net, LAYERS, straight_through=False)
    layers.attach(solver)
    return solver, layers


def test_momentum_would_revive_pruned_weights_unless_zeroed(lenet300100_model: Path) -> None:
    """Without straight-through, W stays exactly 0 under the mask after every solver step."""
    solver, layers = _frozen_solver(lenet300100_model)
    solver.step(5)  # dense steps: the momentum history is nonzero everywhere
    rng = np.random.default_rng(0)
    for n in LAYERS:
        layers.set_masks(n, [(rng.random(m.shape) < 0.3).astype(np.float32) for m in layers.masks[n]])
    for _ in range(3):
        solver.step(1)
        layers.after_step()
        for n in LAYERS:
            for w, m in zip(layers.dense(n), layers.masks[n]):
                assert np.all(w[m == 0] == 0)
    solver.step(1)  # no after_step: the remaining history moves pruned weights off zero
    assert any(np.any(w[m == 0] != 0) for n in LAYERS for w, m in zip(layers.dense(n), layers.masks[n]))


def test_frozen_weights_train_as_with_masked_gradients(lenet300100_model: Path) -> None:
    """Gradients are left unmasked (no subnormal momentum); the kept weights must not notice."""
    rng = np.random.default_rng(0)
    masks = {n: None for n in LAYERS}
    nets = []
    for mask_gradients in (False, True):
        solver, layers = _frozen_solver(lenet300100_model)
        if mask_gradients:
            def mask(net=solver.net, lay=layers) -> None:
                for n in LAYERS:
                    for blob, m in zip(net.params[n], lay.masks[n]):
                        np.multiply(blob.diff, m, out=blob.diff)
            solver.add_callback(lambda: None, mask)
        solver.step(3)
        for n in LAYERS:
            if masks[n] is None:
                masks[n] = [(rng.random(m.shape) < 0.3).astype(np.float32) for m in layers.masks[n]]
            layers.set_masks(n, masks[n])
        for _ in range(10):
            solver.step(1)
            layers.after_step()
        nets.append((solver, layers))
    (a, la), (b, lb) = nets
    for n in LAYERS:
        for wa, wb in zip(la.dense(n), lb.dense(n)):
            assert np.array_equal(wa, wb)

def test_deep_compression_run(tmp_path: Path, lenet300100_model: Path) -> None:
    exp = baseline_experiment(tmp_path, lenet300100_model, "deep-compression", validation_images=500,
                              grid=[0.25, 0.5, 1.0, 1.5, 2.0], tolerance=0.03, rounds=2)
    run = pipeline.Pipeline(exp, tmp_path / "dc", progress=False)
    rec = run.run()
    assert rec["method"] == "deep-compression" and rec["optimizer"] == "deep-compression"
    info = rec["baseline"]
    assert set(info["chosen"]) == set(LAYERS) and info["scan"]["images"] == 500
    assert rec["final"]["ratio"] > 1.5
    ratios = [p["ratio"] for p in rec["progress"]]
    assert ratios == sorted(ratios)  # masks only lose entries
    for n in LAYERS:  # pruned weights are exactly zero in the dense weights the solver trains
        for w, m in zip(run.layers.dense(n), run.layers.masks[n]):
            assert np.all(w[m == 0] == 0)
        t = rec["final"]["thresholds"][n]
        assert t == pytest.approx(info["values"][n] * info["weight_std"][n])
    info2 = weights.summary(weights.read_caffemodel(tmp_path / "dc" / "pruned.caffemodel"))
    assert info2["remaining"] == rec["final"]["remaining"]
    assert set(rec) >= {"final", "progress", "seconds", "reference", "method"}


def test_dns_splices(tmp_path: Path, lenet300100_model: Path) -> None:
    """Fixed crates, probabilistic updates; pruned weights keep learning and some come back."""
    exp = baseline_experiment(tmp_path, lenet300100_model, "dns", niter=121, prune_stop=120,
                              values={"ip1": 1.0, "ip2": 1.0, "ip3": 0.5}, gamma=1e-2, power=1.0)
    run = pipeline.Pipeline(exp, tmp_path / "dns", progress=False)
    assert run.policy.selection_probability("ip1", 100) == pytest.approx(0.5)
    spliced = 0
    update = run.layers.update

    def counting_update(name: str, t: float) -> None:
        nonlocal spliced
        before = [m.copy() for m in run.layers.masks[name]]
        update(name, t)
        spliced += sum(int(np.count_nonzero((b == 0) & (m == 1))) for b, m in zip(before, run.layers.masks[name]))

    run.layers.update = counting_update
    rec = run.run()
    assert rec["method"] == "dns" and rec["searches"] == []
    assert rec["final"]["crates"] == {"ip1": 1.0, "ip2": 1.0, "ip3": 0.5}
    assert rec["baseline"]["source"] == "baseline.values"
    assert rec["final"]["ratio"] > 2.0
    assert spliced > 0
    w, m = run.layers.dense("ip1")[0], run.layers.masks["ip1"][0]
    assert np.count_nonzero(w[m == 0]) > 0.9 * np.count_nonzero(m == 0)  # pruned weights are not zeroed


@pytest.mark.parametrize("method", ["global-magnitude", "uniform"])
def test_sparsity_baselines_hit_their_target(tmp_path: Path, lenet300100_model: Path, method: str) -> None:
    exp = baseline_experiment(tmp_path, lenet300100_model, method, niter=41, prune_stop=20, sparsity=0.9, rounds=2)
    run = pipeline.Pipeline(exp, tmp_path / method, progress=False)
    rec = run.run()
    f = rec["final"]
    if method == "global-magnitude":
        assert f["total"] - f["remaining"] == round(0.9 * f["total"])
        pct = [v["remaining"] / v["total"] for v in f["layers"].values()]
        assert max(pct) - min(pct) > 0.02  # one threshold: layers end up different
    else:
        for v in f["layers"].values():
            assert v["total"] - v["remaining"] == round(0.9 * v["total"])
    assert rec["progress"][0]["sparsity"] == pytest.approx(0.45) and f["sparsity"] == pytest.approx(0.9)
    for n in LAYERS:
        for w, m in zip(run.layers.dense(n), run.layers.masks[n]):
            assert np.all(w[m == 0] == 0)
    from olmp import figures, reports  # the tables and figures read baseline records too

    assert reports.write_runs_table(tmp_path)["summary"][0]["optimizer"] == method
    assert {p.stem for p in figures.write_report_figures(tmp_path)} == {"progress", "convergence", "layers", "methods", "tradeoff"}


def test_sensitivity_scan_reads_training_images_only(tmp_path: Path, lenet300100_model: Path,
                                                     mnist_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    exp = baseline_experiment(tmp_path, lenet300100_model, "deep-compression", validation_images=400,
                              grid=[0.0, 0.5, 1.0, 2.0, 3.0, 5.0], tolerance=0.02)
    run = pipeline.Pipeline(exp, tmp_path / "scan", progress=False)
    labels = read_idx(mnist_dir / "train-labels-idx1-ubyte")[:400]
    logits, label_blob = evaluate.loss_inputs(run.eval_net)
    assert label_blob != "label"  # the TEST net reads a split copy of the labels ...
    assert np.array_equal(run.eval_net.blobs[label_blob].data.astype(int), labels.astype(int))  # ... filled

    class NoTestSet:
        def __getattr__(self, name: str) -> None:
            raise AssertionError("the scan touched the test net")

    def no_evaluate(*a: object, **k: object) -> None:
        raise AssertionError("the scan evaluated on the test set")

    monkeypatch.setattr(run, "test_net", NoTestSet())
    monkeypatch.setattr(evaluate, "evaluate_net", no_evaluate)
    before = {n: [w.copy() for w in run.layers.dense(n)] for n in LAYERS}
    info = run.policy.start()
    scan = info["scan"]
    for n in LAYERS:
        acc, kept = scan["layers"][n]["accuracy"], scan["layers"][n]["remaining"]
        assert kept == sorted(kept, reverse=True) and kept[-1] < 0.2
        assert acc[0] == scan["dense_accuracy"] > 0.8  # quality 0 prunes nothing
        assert acc[0] >= acc[-1] and acc[-1] < 0.5  # monotone-ish: more pruning, no better accuracy
        assert all(a <= scan["dense_accuracy"] + 0.02 for a in acc)
        assert info["chosen"][n] in scan["grid"]
        for a, b in zip(before[n], run.layers.dense(n)):
            assert np.array_equal(a, b)  # the scan leaves the weights as found
    assert run.layers.remaining() == run.layers.total()  # ... and the masks


def test_pick_from_scan() -> None:
    scan = {"grid": [1, 2, 3, 4], "dense_accuracy": 0.9,
            "layers": {"a": {"accuracy": [0.9, 0.89, 0.85, 0.89]}, "b": {"accuracy": [0.5, 0.9, 0.9, 0.9]}}}
    assert pick_from_scan(scan, 0.02) == {"a": 2.0, "b": 1.0}


def test_bad_baseline_values(tmp_path: Path, lenet300100_model: Path) -> None:
    from olmp.errors import OlmpError

    with pytest.raises(OlmpError, match="sparsity"):
        baseline_experiment(tmp_path, lenet300100_model, "uniform")
    with pytest.raises(OlmpError, match="unknown method"):
        baseline_experiment(tmp_path, lenet300100_model, "magic")
    with pytest.raises(OlmpError, match="grid"):
        baseline_experiment(tmp_path, lenet300100_model, "dns", grid=[2.0, 1.0])


def test_compare_writes_measured_and_reported_rows(tmp_path: Path) -> None:
    src = REPO / "results" / "lenet300100" / "ncs-seed1"
    shutil.copytree(src, tmp_path / "lenet300100" / "ncs-seed1")
    r = run_olmp("compare", "--model", "lenet300100", "--results", str(tmp_path))
    assert r.returncode == 0, r.stderr
    with open(tmp_path / "lenet300100" / "comparison.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert list(rows[0]) == compare.columns("lenet300100")
    measured = [x for x in rows if x["source"] == "measured"]
    reported = [x for x in rows if x["source"] == "reported"]
    assert [x["method"] for x in measured] == ["olmp-ncs"] and measured[0]["seed"] == "1"
    assert [x["method"] for x in reported] == ["olmp-ncs", "deep-compression", "dns"]
    assert all(x["note"] for x in reported)
    assert {x["ratio"] for x in reported} >= {"113.5", "53.45", "12.0"}
    md = (tmp_path / "lenet300100" / "comparison.md").read_text()
    assert "Han et al." in md and "olmp-ncs" in md


def test_best_is_an_olmp_run_even_when_a_baseline_keeps_the_accuracy(tmp_path: Path) -> None:
    """LeNet-5's dns run keeps the reference accuracy and no OLMP run does: best/ is still OLMP's."""
    for run in ("ncs-seed1", "dns-seed1"):
        shutil.copytree(REPO / "results" / "lenet5" / run, tmp_path / "lenet5" / run)
    r = run_olmp("report", str(tmp_path / "lenet5"))
    assert r.returncode == 0, r.stderr
    best = (tmp_path / "lenet5" / "best" / "pruned.caffemodel").read_bytes()
    assert best == (tmp_path / "lenet5" / "ncs-seed1" / "pruned.caffemodel").read_bytes()


@pytest.mark.parametrize("method", ["deep-compression", "dns"])
def test_interrupted_baseline_resumes_to_the_same_model(tmp_path: Path, lenet300100_model: Path,
                                                        method: str) -> None:
    """A run stopped after its checkpoint and resumed ends bit-identical (policy state included)."""
    settings = {"validation_images": 300, "grid": [0.5, 1.0, 1.5, 2.0], "tolerance": 0.03, "rounds": 3}
    if method == "dns":
        settings = {"validation_images": 300, "grid": [0.0, 0.5, 1.0, 1.5], "tolerance": 0.03, "gamma": 1e-2}
    exp = baseline_experiment(tmp_path, lenet300100_model, method, niter=61, prune_stop=45, **settings)
    exp = exp.replace(pipeline=dataclasses.replace(exp.pipeline, checkpoint_every=20))
    ref = pipeline.prune(exp, tmp_path / "whole", progress=False)
    rec = stop_then_resume(exp, tmp_path / "stopped", 25)  # after the checkpoint at 20, before DC's last round (30)
    whole, stopped = tmp_path / "whole" / "pruned.caffemodel", tmp_path / "stopped" / "pruned.caffemodel"
    assert whole.read_bytes() == stopped.read_bytes()
    strip = ("seconds",)
    a = {k: v for k, v in ref.items() if k not in strip}
    b = {k: v for k, v in rec.items() if k not in strip}
    a["baseline"].pop("seconds", None)
    b["baseline"].pop("seconds", None)
    assert json.loads(json.dumps(a)) == json.loads(json.dumps(b))


def test_best_never_reads_the_test_set(tmp_path: Path) -> None:
    """best/ is the same whatever the runs' test accuracies say (their records edited in a copy)."""
    runs = ("cmaes-seed3", "sampling-seed1")
    for run in runs:
        shutil.copytree(REPO / "results" / "lenet5" / run, tmp_path / "lenet5" / run)
    picks = []
    for low_wins in (False, True):
        for run in runs:  # make the lower-ratio run the only one that keeps the reference accuracy, or not
            p = tmp_path / "lenet5" / run / "record.json"
            rec = json.loads(p.read_text())
            keeps = low_wins and run == "cmaes-seed3"
            rec["final"]["test"]["accuracy"] = 0.9999 if keeps else 0.5
            for entry in rec["progress"]:
                entry["test_accuracy"] = 0.9999 if keeps else 0.5
            p.write_text(json.dumps(rec))
        r = run_olmp("report", str(tmp_path / "lenet5"))
        assert r.returncode == 0, r.stderr
        picks.append((tmp_path / "lenet5" / "best" / "SOURCE").read_text().strip())
        table = (tmp_path / "lenet5" / "runs.csv").read_text()
        assert "best_retraining_test_accuracy_chosen_on_test_set" in table.splitlines()[0]
    assert picks == ["sampling-seed1", "sampling-seed1"]  # the higher ratio, both times


def test_dns_per_layer_iter_stop_fixes_a_layer_early(tmp_path: Path, lenet300100_model: Path) -> None:
    """baseline.iter_stop (the DNS author's advice): a layer's mask changes only before its own last iteration."""
    exp = baseline_experiment(tmp_path, lenet300100_model, "dns", niter=81, prune_stop=60,
                              values={"ip1": 1.0, "ip2": 1.0, "ip3": 0.5}, gamma=1e-2, power=1.0,
                              iter_stop={"ip2": 30, "ip3": 0})
    run = pipeline.Pipeline(exp, tmp_path / "dns-stop", progress=False)
    last: dict[str, int] = {}
    update = run.layers.update

    def noting_update(name: str, t: float) -> None:
        last[name] = itr_now[0]
        update(name, t)

    itr_now = [0]
    prune = run.policy.prune

    def noting_prune(itr: int, selected: list[str]) -> None:
        itr_now[0] = itr
        prune(itr, selected)

    run.layers.update = noting_update
    run.policy.prune = noting_prune
    rec = run.run()
    assert "ip3" not in last and rec["final"]["layers"]["ip3"]["remaining"] == rec["final"]["layers"]["ip3"]["total"]
    assert last["ip2"] < 30 <= last["ip1"] < 60
    from olmp.errors import OlmpError

    with pytest.raises(OlmpError, match="iter_stop names layers the experiment does not prune: fc9"):
        baseline_experiment(tmp_path, lenet300100_model, "dns", values={"ip1": 1.0}, iter_stop={"fc9": 3})
