"""The benchmark reports are written by olmp/tables.py from the JSON beside them alone.

A benchmark takes minutes to hours, so its table writer is checked on inputs that need no run: each
committed report must be its writer's output on the committed JSON, and the writers without a current
committed pair are checked on fixed numbers against the text they wrote before they used olmp/tables.py.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from types import ModuleType

import pytest
from conftest import REPO

BENCH = REPO / "results" / "benchmarks"


def script(path: str) -> ModuleType:
    """A benchmark or script as a module (they are files, not a package); importing it runs nothing."""
    spec = importlib.util.spec_from_file_location(f"_table_{Path(path).stem}", REPO / path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize(("path", "name"), [
    ("benchmarks/openmp_conv.py", "openmp_conv"),
    ("benchmarks/openmp_conv.py", "blas_threads_lenet300100"),
    ("benchmarks/step_overhead.py", "step_overhead"),
    ("benchmarks/step_roofline.py", "step_roofline_lenet5"),
    ("benchmarks/step_roofline.py", "step_roofline_lenet300100"),
    ("benchmarks/frozen_step.py", "frozen_step"),
    ("benchmarks/lossless_cost.py", "lossless_cost"),
])
def test_committed_benchmark_report_is_its_json_rewritten(path: str, name: str) -> None:
    res = json.loads((BENCH / f"{name}.json").read_text())
    assert script(path).markdown(res) == (BENCH / f"{name}.md").read_text()


@pytest.mark.parametrize("model", ["lenet5", "lenet300100"])
def test_committed_deployment_report_is_its_json_rewritten(model: str) -> None:
    """LeNet-5's has a model with no file yet: its row keeps the bare ``| |`` cells it always had."""
    folder = REPO / "results" / model
    text = script("benchmarks/deployment.py").render(model, json.loads((folder / "deployment.json").read_text()))
    assert text == (folder / "deployment.md").read_text()


BENCH_RESULT = {
    "command": "python benchmarks/bench.py --models lenet300100 --quick",
    "machine": {"cpu": "Test CPU", "cores": 2, "openblas_threads": "1", "load_average": [0.5, 0.4, 0.3],
                "date": "2024-01-01 00:00 UTC"},
    "lenet300100": {"eval_speedup": 1.875, "evals_per_second": 405.2, "naive_evals_per_second": 215.0,
                    "search_whole_s": 7.4, "search_chunked_s": 3.0, "search_speedup_chunks": 2.4667,
                    "masked_step_ratio": 1.085, "plain_step_ms": 7.91, "sgd_floor_seconds": 237.3,
                    "per_layer_set": {"ip1+ip2": {"searches_expected": 0.5, "ours_ms": 2.0, "naive_ms": 4.0,
                                                  "speedup": 2.0},
                                      "ip1+ip2+ip3": {"searches_expected": 0.25, "ours_ms": 3.5, "naive_ms": 7.25,
                                                      "speedup": 2.0714}}},
    "lenet5": {"eval_speedup": 3.51, "evals_per_second": 89.0, "naive_evals_per_second": 25.0,
               "search_whole_s": 46.2, "search_chunked_s": 7.3, "search_speedup_chunks": 6.36,
               "masked_step_ratio": 1.032, "plain_step_ms": 92.87, "sgd_floor_seconds": 2786.0,
               "pipeline_seconds": 5674.0, "search_fraction": 0.225, "pipeline_source": "run records (median)",
               "per_layer_set": {}},
}

BENCH_TEXT = """\
# Benchmarks

Made by `python benchmarks/bench.py --models lenet300100 --quick` on Test CPU (2 cores, OPENBLAS_NUM_THREADS=1, \
load average at start 0.50), 2024-01-01 00:00 UTC.
Ratios and medians are measured inside this one run; the pipeline rows come from run records.

| model | eval speedup (pipeline mix) | evals/s ours | evals/s naive | first search whole s | in chunks s | \
chunks speedup | masked/plain SGD step | plain step ms | plain steps x niter s | pipeline s | search fraction | \
pipeline source |
|---|---|---|---|---|---|---|---|---|---|---|---|---|
| lenet300100 | 1.88x | 405 | 215 | 7.4 | 3.0 | 2.47x | 1.085 | 7.91 | 237 | nan | nan | - |
| lenet5 | 3.51x | 89 | 25 | 46.2 | 7.3 | 6.36x | 1.032 | 92.87 | 2786 | 5674 | 0.225 | run records (median) |

## lenet300100: evaluation per layer set

| layers | searches expected | ours ms | naive ms | speedup |
|---|---|---|---|---|
| ip1+ip2 | 0.50 | 2.00 | 4.00 | 2.00x |
| ip1+ip2+ip3 | 0.25 | 3.50 | 7.25 | 2.07x |

## lenet5: evaluation per layer set

| layers | searches expected | ours ms | naive ms | speedup |
|---|---|---|---|---|
"""


def test_bench_report_on_a_fixed_result() -> None:
    """A model without pipeline figures (nan, -) and one without layer sets (a table with no rows)."""
    assert script("benchmarks/bench.py").markdown(BENCH_RESULT) == BENCH_TEXT


HOLDOUT_TEXT = """\
| model | reference | trained on | held-out accuracy | test accuracy | held-out minus test |
|---|---|---|---|---|---|
| LeNet-300-100 | results/references/lenet300100 | all 60,000 (held-out images included) | 99.12% | 98.01% | \
+1.11 points |
| LeNet-300-100 | results/references/lenet300100_holdout | the first 55,000 | 97.84% | 97.90% | -0.06 points |
| LeNet-5 | results/references/lenet5 | all 60,000 (held-out images included) | 99.68% | 99.09% | +0.59 points |
| LeNet-5 | results/references/lenet5_holdout | the first 55,000 | 99.02% | 99.13% | -0.11 points |
"""


def test_holdout_report_on_fixed_accuracies() -> None:
    measured = {"lenet300100": (0.9912, 0.9801), "lenet300100_holdout": (0.9784, 0.9790),
                "lenet5": (0.9968, 0.9909), "lenet5_holdout": (0.9902, 0.9913)}
    text = script("scripts/holdout_references.py").markdown(measured)
    assert text.startswith("# The held-out split and the references\n")
    assert text.endswith("\n\n" + HOLDOUT_TEXT)
