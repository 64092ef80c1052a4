"""Settings beyond the paper: learning-rate rewinding, DNS per-type gamma, the mask transplant."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import experiment_300100, run_olmp, stop_then_resume, without_timing

from olmp import config, pipeline, transplant, weights


def _experiment(tmp_path: Path, weights_path: Path, extra: str = "", **kw: object) -> Path:
    text = experiment_300100(weights_path, **kw)
    if extra:
        text = text.replace("[search]", extra + "\n\n[search]")
    p = tmp_path / f"exp{abs(hash(text)) % 10**6}.toml"
    p.write_text(text)
    return p


def test_rewind_restarts_the_schedule_and_resumes(tmp_path: Path, lenet300100_model: Path) -> None:
    path = _experiment(tmp_path, lenet300100_model, 'retrain_lr = "rewind"', niter=61, prune_stop=30,
                       every=10, budget=12, checkpoint_every=20, record_every=20)
    exp = config.load(path)
    run = pipeline.Pipeline(exp, tmp_path / "whole", progress=False)
    whole = run.run()
    assert whole["rewound_at"] == {"iteration": 30, "solver_iterations": 31}  # 1 first step + 30
    assert run.solver.iter == 61 - 30  # the retraining steps only, counted from 0 again
    plain = pipeline.prune(config.load(path, ['pipeline.retrain_lr="continue"']), tmp_path / "plain", progress=False)
    assert plain["final"]["remaining"] == whole["final"]["remaining"]  # the masks are fixed by then
    assert (tmp_path / "plain" / "pruned.caffemodel").read_bytes() != (tmp_path / "whole" / "pruned.caffemodel").read_bytes()
    resumed = stop_then_resume(exp, tmp_path / "stopped", 50)  # after the rewind (30) and the checkpoint at 40
    assert (tmp_path / "stopped" / "pruned.caffemodel").read_bytes() == (tmp_path / "whole" / "pruned.caffemodel").read_bytes()
    assert without_timing(resumed) == without_timing(whole)
    bad = run_olmp("prune", "--experiment", str(path), "--set", 'pipeline.retrain_lr="later"', "--out", str(tmp_path / "x"))
    assert bad.returncode == 2 and "retrain_lr" in bad.stderr and str(path) in bad.stderr


def test_dns_gamma_per_layer_type(tmp_path: Path, lenet300100_model: Path) -> None:
    text = experiment_300100(lenet300100_model, niter=11, prune_stop=10).replace('optimizer = "ncs"', 'method = "dns"')
    text += "\n[baseline]\nvalues = { ip1 = 3.7, ip2 = 2.8, ip3 = 2.8 }\ngamma_by_type = { InnerProduct = 0.5 }\n"
    p = tmp_path / "dns.toml"
    p.write_text(text)
    exp = config.load(p)
    run = pipeline.Pipeline(exp, tmp_path / "dns", progress=False)
    assert run.policy.selection_probability("ip1", 10) == pytest.approx(1 / 6)  # (1 + 0.5 * 10)^-1
    p.write_text(text.replace("InnerProduct = 0.5", "Pooling = 0.5"))
    with pytest.raises(Exception, match="gamma_by_type"):
        config.load(p)


def test_transplant_keeps_the_masks_and_retrains(tmp_path: Path, lenet300100_model: Path) -> None:
    path = _experiment(tmp_path, lenet300100_model, niter=41, prune_stop=20, every=10, budget=12)
    exp = config.load(path)
    pipeline.prune(exp, tmp_path / "pruned", progress=False)
    masks_from = tmp_path / "pruned" / "pruned.caffemodel"
    out = tmp_path / "diag" / "transplant" / "mine-on-ref"
    r = run_olmp("transplant", "--experiment", str(path), "--masks", str(masks_from), "--weights",
                 str(lenet300100_model), "--out", str(out), "--quiet")
    assert r.returncode == 0, r.stderr
    rec = json.loads((out / "record.json").read_text())
    donor = weights.summary(weights.read_caffemodel(masks_from))
    assert rec["remaining"] == donor["remaining"]
    assert rec["solver_iterations"] == [21, 42]  # the retraining phase of the schedule: 41 - 20 steps
    assert len(rec["curve"]) == 2 and rec["curve"][-1]["iteration"] == 42
    # the curve's first point is the transplanted model before retraining: reference weights under the masks
    from olmp import caffe_bridge, evaluate, prototxt

    net = caffe_bridge.make_net(prototxt.read_net("models/lenet300100/train_test.prototxt"), "test")
    weights.load_weights(net, lenet300100_model)
    masks = transplant.masks_of(masks_from, exp.layers)
    for n in exp.layers:
        for blob, m in zip(net.params[n], masks[n]):
            blob.data[...] *= m
    assert evaluate.evaluate_net(net, 10_000)["accuracy"] == rec["test_before"]
    assert rec["test_final"] > 0.5
    again = run_olmp("transplant", "--experiment", str(path), "--masks", str(masks_from), "--weights",
                     str(lenet300100_model), "--out", str(out), "--quiet")
    assert again.returncode == 0 and json.loads((out / "record.json").read_text()) == rec  # finished: returned
    table = run_olmp("transplant", "--table", str(tmp_path / "diag"))
    assert table.returncode == 0, table.stderr
    assert "mine-on-ref" in (tmp_path / "diag" / "mask-transplant.md").read_text()
    wrong = run_olmp("transplant", "--experiment", "lenet5", "--masks", str(masks_from), "--weights",
                     str(lenet300100_model), "--out", str(tmp_path / "w"), "--quiet")
    assert wrong.returncode == 2 and len(wrong.stderr.strip().splitlines()) == 1


def test_transplant_with_the_retraining_levers(tmp_path: Path, lenet300100_model: Path) -> None:
    """Averaging and distillation in a transplant: recorded, masks kept; a one-snapshot mean is the last iterate."""
    path = _experiment(tmp_path, lenet300100_model, niter=41, prune_stop=20, every=10, budget=12)
    exp = config.load(path)
    pipeline.prune(exp, tmp_path / "pruned", progress=False)
    masks_from = tmp_path / "pruned" / "pruned.caffemodel"
    levers = config.load(path, ["retrain.average_last=10", "retrain.average_every=5", "retrain.distill_weight=0.5"])
    rec = transplant.retrain(levers, masks_from, lenet300100_model, progress=False)
    plain = transplant.retrain(exp, masks_from, lenet300100_model, progress=False)
    assert rec["averaging"]["snapshots"] == 2  # after the steps with 5 and 0 steps to come (21 steps)
    assert rec["distillation"] == {"weight": 0.5, "temperature": exp.retrain.distill_temperature}
    assert rec["remaining"] == plain["remaining"]
    assert rec["curve"][0] == plain["curve"][0]  # the same start; the soft targets change the steps after it
    assert rec["curve"][-1] != plain["curve"][-1] or rec["test_final"] != plain["test_final"]
    one = transplant.retrain(config.load(path, ["retrain.average_last=1"]), masks_from, lenet300100_model,
                             progress=False)
    assert one["averaging"]["snapshots"] == 1
    assert one["test_final"] == one["averaging"]["test_last_iterate"] == plain["test_final"]
