"""The benchmark script's quick mode on real LeNet-300-100 (the figures themselves are not judged here)."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO

from olmp import config


def test_quick_benchmark_writes_its_report(tmp_path: Path, mnist_dir: Path) -> None:
    r = subprocess.run([sys.executable, "benchmarks/bench.py", "--quick", "--models", "lenet300100", "--out",
                        str(tmp_path)], cwd=REPO, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-2000:]
    result = json.loads((tmp_path / "quick.json").read_text())
    res = result["lenet300100"]
    assert res["decisions_agree"]  # the fast evaluation decides exactly like the naive one
    assert res["search_records_equal"] and res["search_chunks"] == 8  # chunks change the time, not the search
    assert 1 <= res["search_evaluations"] <= 100 + 1  # the quick budget, plus the current crates' own score
    sets = res["per_layer_set"]
    assert set(sets) == {"ip1+ip2", "ip1+ip3", "ip2+ip3", "ip1+ip2+ip3"}  # every set a search can select
    timings = [res[k] for k in ("plain_step_ms", "masked_step_ms", "search_whole_s", "search_chunked_s")]
    assert all(math.isfinite(t) and t > 0 for t in timings + [v for s in sets.values() for v in s.values()])
    # each ratio is of this run's own measurements: a per-set speedup is its two times' quotient, and the
    # pipeline mix, a weighted quotient of the same times, lies between the per-set extremes
    for s in sets.values():
        assert s["speedup"] == pytest.approx(s["naive_ms"] / s["ours_ms"])
    speedups, ours = [s["speedup"] for s in sets.values()], [s["ours_ms"] for s in sets.values()]
    assert min(speedups) <= res["eval_speedup"] <= max(speedups)
    assert 1e3 / max(ours) <= res["evals_per_second"] <= 1e3 / min(ours)
    assert res["eval_speedup"] == pytest.approx(res["evals_per_second"] / res["naive_evals_per_second"])
    assert sum(s["searches_expected"] for s in sets.values()) == pytest.approx(res["searches_expected"], abs=0.01)
    assert res["masked_step_ratio"] == pytest.approx(res["masked_step_ms"] / res["plain_step_ms"])
    assert res["search_speedup_chunks"] == pytest.approx(res["search_whole_s"] / res["search_chunked_s"])
    niter = config.load(REPO / "scripts" / "experiments" / "lenet300100.toml").pipeline.niter
    assert res["sgd_floor_seconds"] == pytest.approx(res["plain_step_ms"] * niter / 1e3)  # plain steps of a whole run
    md = (tmp_path / "quick.md").read_text()
    model_rows = [line for line in md.splitlines() if line.startswith("| lenet300100 |")]
    set_rows = {line.split(" | ")[0].lstrip("| ") for line in md.splitlines() if "+" in line.split(" | ")[0]}
    assert len(model_rows) == 1 and set_rows == set(sets)  # one row per model, one per layer set
    assert f"| {res['eval_speedup']:.2f}x | {res['evals_per_second']:.0f} |" in model_rows[0]  # the JSON's numbers


def test_frozen_step_benchmark_quick(tmp_path: Path, mnist_dir: Path) -> None:
    r = subprocess.run([sys.executable, "benchmarks/frozen_step.py", "--quick", "--out", str(tmp_path)], cwd=REPO,
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    res = json.loads((tmp_path / "frozen_step_quick.json").read_text())["lenet300100"]
    assert res["kept_weights_equal"]  # frozen weights stay frozen either way: only the time may differ
    assert res["speedup"] == pytest.approx(res["masked_gradients_step_ms"] / res["unmasked_gradients_step_ms"],
                                           rel=1e-9)
    assert (res["dense_steps"], res["steps_before_timing"]) == (5, 20)  # the quick settings it claims
    md = (tmp_path / "frozen_step_quick.md").read_text()
    assert (f"| lenet300100 | 20 | {res['unmasked_gradients_step_ms']:.2f} | {res['masked_gradients_step_ms']:.2f} | "
            f"{res['speedup']:.2f}x | True |") in md


def test_step_roofline_counts_the_lenet5_step_and_reports_each_path(tmp_path: Path, mnist_dir: Path) -> None:
    """The FLOPs come from the net's shapes (checked against LeNet-5's by hand); every path is timed."""
    r = subprocess.run([sys.executable, "benchmarks/step_roofline.py", "--quick", "--configs", "caffe", "g8t1",
                        "--out", str(tmp_path)], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    res = json.loads((tmp_path / "step_roofline_lenet5_quick.json").read_text())
    # multiply-adds x 2, batch 64: conv1 20 x 25 x 24*24 positions, conv2 50 x 500 x 8*8, ip1 500 x 800, ip2 10 x 500;
    # conv1 has no data gradient (its input is the data)
    by_hand = {"conv1": 2 * 20 * 25 * 576 * 64, "conv2": 2 * 50 * 500 * 64 * 64, "ip1": 2 * 500 * 800 * 64,
               "ip2": 2 * 10 * 500 * 64}
    for layer, f in by_hand.items():
        assert res["flops"][layer] == {"forward": f, "weight_grad": f, "data_grad": 0.0 if layer == "conv1" else f}
    assert res["step_gflop"] * 1e9 == pytest.approx(sum(3 * f for f in by_hand.values()) - by_hand["conv1"])
    assert set(res["paths"]) == {"caffe", "g8t1"}
    assert res["paths"]["g8t1"]["env"] == {"OLMP_CONV_GROUP": "8", "OMP_NUM_THREADS": "1"}
    for p in res["paths"].values():
        assert p["plain_ms"] > 0 and 0 < p["plain_fraction"] < 1 and set(p["layers"]) >= set(by_hand)
    md = (tmp_path / "step_roofline_lenet5_quick.md").read_text()
    assert f"**{res['step_gflop']:.3f} GFLOP**" in md and "| g8t1 |" in md


def test_lossless_cost_benchmark_quick(tmp_path: Path, mnist_dir: Path) -> None:
    """Distillation runs the teacher's forward pass too, so a distilled step costs more than a plain one;
    an averaging snapshot, taken every average_every steps, costs a small fraction of them."""
    r = subprocess.run([sys.executable, "benchmarks/lossless_cost.py", "--quick", "--models", "lenet300100",
                        "--out", str(tmp_path)], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    res = json.loads((tmp_path / "lossless_cost_quick.json").read_text())
    step = res["steps"]["lenet300100"]
    assert step["distill_step_ms"] > step["step_ms"] > 0 and step["distill_over_plain"] > 1
    assert 0 < step["average_per_step_fraction"] < 0.1 and step["average_every"] == 100
    assert res["runs"] == [] and "| lenet300100 |" in (tmp_path / "lossless_cost_quick.md").read_text()
