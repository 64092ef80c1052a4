"""The lossless levers on real short LeNet-300-100 runs: held-out accuracy, distillation, weight averaging,
the no-loss guarantee.

- the soft-target term's gradient is the derivative of its value (finite differences);
- the levers start at prune_stop_iter, so a run with them has the masks of the same seed's run without;
- distillation changes the retraining (the teacher's term reaches the gradient), averaging gives the mean
  of the snapshots it took, and a run stopped inside the averaging window resumes to the same model;
- the guarantee only adds weights back, records every step, and says whether it reached its target,
  which is the reference's held-out accuracy (read before any step), never a test-set number.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import experiment_300100, stop_then_resume, without_timing

from olmp import config, distill, guarantee, pipeline, weights

HOLDOUT = """
[retrain]
holdout_source = "data/mnist/mnist_holdout5k_lmdb"
"""
LEVERS = """distill_weight = 0.5
distill_temperature = 4.0
average_last = 60
average_every = 20
guarantee = {guarantee}
guarantee_retrain = 20
guarantee_max_steps = 3
"""


def experiment(tmp: Path, weights_path: Path, name: str, levers: bool, guarantee: bool = True) -> config.Experiment:
    text = experiment_300100(weights_path, name=name, seed=2, niter=161, prune_stop=100, record_every=40,
                             checkpoint_every=50, every=50, population=4, budget=12)
    text = text.replace("solvers/lenet300100_solver.prototxt", "solvers/lenet300100_holdout_solver.prototxt")
    text = text.replace("models/lenet300100/train_test.prototxt", "models/lenet300100/train_test_holdout.prototxt")
    text += HOLDOUT + (LEVERS.format(guarantee=str(guarantee).lower()) if levers else "")
    path = tmp / f"{name}.toml"
    path.write_text(text)
    return config.load(path)


def masks_of(model: Path) -> dict[str, np.ndarray]:
    return {n: (lay.blobs[0] != 0) for n, lay in weights.read_caffemodel(model).layers.items() if lay.blobs}


def test_soft_target_gradient_is_the_derivative_of_its_value() -> None:
    rng = np.random.default_rng(3)
    student, teacher = rng.normal(0, 2, (5, 10)), rng.normal(0, 2, (5, 10))
    loss, grad = distill.soft_target_loss(student, teacher, temperature=3.0, weight=0.7)
    assert loss > 0 and distill.soft_target_loss(teacher, teacher, 3.0, 0.7)[0] == pytest.approx(0, abs=1e-12)
    eps = 1e-4
    for i, j in [(0, 0), (2, 5), (4, 9)]:
        up, down = student.copy(), student.copy()
        up[i, j] += eps
        down[i, j] -= eps
        numeric = (distill.soft_target_loss(up, teacher, 3.0, 0.7)[0]
                   - distill.soft_target_loss(down, teacher, 3.0, 0.7)[0]) / (2 * eps)
        assert grad[i, j] == pytest.approx(numeric, rel=1e-3, abs=1e-6)


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory, lenet300100_model: Path) -> dict[str, Path]:
    tmp = tmp_path_factory.mktemp("lossless")
    out = {}
    for name, levers in (("plain", False), ("levers", True)):
        out[name] = tmp / name
        pipeline.prune(experiment(tmp, lenet300100_model, name, levers), out[name], progress=False)
    return out


def test_levers_keep_the_masks_of_the_plain_run(runs: dict[str, Path]) -> None:
    plain = masks_of(runs["plain"] / "pruned.caffemodel")
    levers = runs["levers"] / "final.caffemodel"  # before the guarantee; absent when it did not reach
    before_guarantee = masks_of(levers if levers.exists() else runs["levers"] / "pruned.caffemodel")
    assert plain.keys() == before_guarantee.keys()
    for n in plain:
        assert np.array_equal(plain[n], before_guarantee[n]), n
    a = json.loads((runs["plain"] / "record.json").read_text())
    b = json.loads((runs["levers"] / "record.json").read_text())
    assert without_timing(a)["searches"] == without_timing(b)["searches"]
    # the reference's held-out accuracy is read before any step, the same for both
    assert a["reference"]["holdout"] == b["reference"]["holdout"]
    assert a["reference"]["holdout"]["images"] == 5000


def test_distillation_and_averaging_change_the_retraining(runs: dict[str, Path]) -> None:
    plain = weights.read_caffemodel(runs["plain"] / "pruned.caffemodel")
    before = runs["levers"] / "final.caffemodel"
    levers = weights.read_caffemodel(before if before.exists() else runs["levers"] / "pruned.caffemodel")
    assert any(not np.array_equal(plain.layers[n].blobs[0], levers.layers[n].blobs[0]) for n in plain.layers
               if plain.layers[n].blobs)
    rec = json.loads((runs["levers"] / "record.json").read_text())
    assert rec["averaging"]["snapshots"] == 60 // 20  # iterations 100, 120, 140 ... of 161: the last 60, every 20
    assert set(rec["averaging"]["last_iterate"]) == {"test", "holdout"}


def test_the_guarantee_only_restores_and_says_whether_it_reached(runs: dict[str, Path]) -> None:
    rec = json.loads((runs["levers"] / "record.json").read_text())
    g = rec["guarantee"]
    assert g["target_holdout_accuracy"] == rec["reference"]["holdout"]["accuracy"]
    ratios = [s["ratio"] for s in g["steps"]]
    assert ratios == sorted(ratios, reverse=True) and len(g["steps"]) <= 1 + 3
    assert g["reached"] == (g["steps"][-1]["holdout_accuracy"] >= g["target_holdout_accuracy"])
    after = masks_of(runs["levers"] / "pruned.caffemodel")
    if g["reached"]:  # the delivered model is the lossless one; final.caffemodel the one before the guarantee
        before = masks_of(runs["levers"] / "final.caffemodel")
        for n in before:  # weights come back, none go
            assert not np.any(before[n] & ~after[n]), n
        assert g["steps"][-1]["holdout_accuracy"] == rec["final"]["holdout"]["accuracy"]
    else:  # short of the target: the model from before the guarantee is the delivered one, and no second copy
        assert not (runs["levers"] / "final.caffemodel").exists()
        assert rec["final"]["holdout"] == g["before"]["holdout"] and rec["final"]["ratio"] == g["before"]["ratio"]
    kept = sum(int(m.sum()) for m in after.values())
    total = sum(m.size for m in after.values())
    assert rec["final"]["ratio"] == pytest.approx(total / kept, rel=0.02)  # biases are counted too


def test_a_run_stopped_inside_the_averaging_window_resumes_to_the_same_model(
        tmp_path: Path, lenet300100_model: Path, runs: dict[str, Path]) -> None:
    exp = experiment(runs["levers"].parent, lenet300100_model, "levers", True)  # the same file, the same settings
    # the checkpoint at 150 holds the sums of the snapshots at 120 and 140; the resume takes the one at 160
    rec = stop_then_resume(exp, tmp_path / "resumed", stop_at=155)
    assert (tmp_path / "resumed" / "pruned.caffemodel").read_bytes() == \
        (runs["levers"] / "pruned.caffemodel").read_bytes()
    assert without_timing(rec) == without_timing(json.loads((runs["levers"] / "record.json").read_text()))


def test_the_lossless_table_reads_the_records(tmp_path: Path, runs: dict[str, Path]) -> None:
    import shutil

    from olmp import lossless_report

    model = tmp_path / "lenet300100"
    for name, folder in runs.items():
        shutil.copytree(folder, model / name)
    assert lossless_report.write(model) == model / "lossless.md"
    text = (model / "lossless.md").read_text()
    plain = json.loads((runs["plain"] / "record.json").read_text())
    levers = json.loads((runs["levers"] / "record.json").read_text())
    row = next(line for line in text.splitlines() if line.startswith("| 2 |")).split(" | ")
    f, b = plain["final"], levers["guarantee"]["before"]
    assert row[1] == f"{f['ratio']:.1f}x {100 * f['test']['accuracy']:.2f}% ({100 * f['holdout']['accuracy']:.2f}%)"
    assert row[2] == row[3] == "-"  # no single-lever runs here
    assert row[4] == f"{b['ratio']:.1f}x {100 * b['test']['accuracy']:.2f}% ({100 * b['holdout']['accuracy']:.2f}%)"
    lf, g = levers["final"], levers["guarantee"]
    assert row[5].startswith(f"{lf['ratio']:.1f}x {100 * lf['test']['accuracy']:.2f}% "
                             f"({100 * lf['holdout']['accuracy']:.2f}%), ")
    assert row[5].rstrip(" |").endswith(f"reached in {len(g['steps']) - 1} steps")
    assert ("not reached" in row[5]) == (not g["reached"])
    delta = 100 * (b["test"]["accuracy"] - f["test"]["accuracy"])
    assert f"both levers (minus plain, same masks), test accuracy: {delta:+.2f} points" in text


def test_regrowth_ranks_the_pruned_weights_by_their_gradient() -> None:
    mask = np.array([[1, 0, 0], [0, 1, 0]], dtype=np.float32)
    grad = np.array([[9.0, -0.5, 0.1], [-3.0, 8.0, 2.0]])
    assert list(guarantee.regrown(mask, grad, 2)) == [1 * 3 + 0, 1 * 3 + 2]  # |-3| and 2; kept 9 and 8 are not candidates
    assert list(guarantee.regrown(mask, grad, 10)) == [1, 2, 3, 5]  # at most every pruned weight
    assert guarantee.regrown(np.ones_like(mask), grad, 3).size == 0


def test_the_regrowth_guarantee_grows_every_layer_from_zero(tmp_path: Path, lenet300100_model: Path) -> None:
    """On a live run short of an unreachable target: every step grows every layer by the weights of largest
    training gradient, which start at zero, and takes none away; the record says it did not reach."""
    exp = experiment(tmp_path, lenet300100_model, "regrow", True)
    exp = config.load(exp.source, ["retrain.guarantee_regrow=true", "retrain.guarantee_max_steps=2"])
    pipe = pipeline.Pipeline(exp, tmp_path / "run", progress=False)
    pipe.policy.update_masks(list(exp.layers))
    for n in exp.layers:  # prune hard, so that there is room to grow
        pipe.layers.update(n, 2.0 * float(np.std(pipe.layers.dense(n)[0])))
    kept = [{n: pipe.layers.masks[n][0].copy() for n in exp.layers}]

    def retrain(steps: int) -> None:
        for n in exp.layers:
            grown = (pipe.layers.masks[n][0] != 0) & (kept[-1][n] == 0)
            assert grown.any(), n  # every layer grows
            assert not np.any(pipe.layers.dense(n)[0][grown]), n  # from zero
            assert not np.any((kept[-1][n] != 0) & (pipe.layers.masks[n][0] == 0)), n  # nothing taken away
        kept.append({n: pipe.layers.masks[n][0].copy() for n in exp.layers})
        for _ in range(steps):
            pipe.sgd_step(0)

    g = guarantee.regrow_until_lossless(pipe.layers, exp.retrain, 1.01, pipe._holdout_accuracy_loss, retrain,
                                        pipe.ratio, pipe._gradient)
    assert not g["reached"] and len(g["steps"]) == 1 + 2 and len(kept) == 3
    ratios = [s["ratio"] for s in g["steps"]]
    assert ratios[0] > ratios[1] > ratios[2]
    grads = pipe._gradient()
    assert set(grads) == set(exp.layers) and all(np.any(grads[n]) for n in exp.layers)
