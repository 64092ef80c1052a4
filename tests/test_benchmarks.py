"""The benchmark script's quick mode on real LeNet-300-100 (the figures themselves are not judged here)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from conftest import REPO


def test_quick_benchmark_writes_its_report(tmp_path: Path, mnist_dir: Path) -> None:
    r = subprocess.run([sys.executable, "benchmarks/bench.py", "--quick", "--models", "lenet300100", "--out",
                        str(tmp_path)], cwd=REPO, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-2000:]
    res = json.loads((tmp_path / "quick.json").read_text())["lenet300100"]
    assert res["decisions_agree"]  # the fast evaluation decides exactly like the naive one
    assert res["search_records_equal"] and res["search_chunks"] == 8  # chunks change the time, not the search
    for key in ("eval_speedup", "masked_step_ratio", "parallel_speedup_2_workers", "plain_step_ms",
                "search_speedup_chunks"):
        assert res[key] > 0
    assert set(res["per_layer_set"]) == {"ip1+ip2", "ip1+ip3", "ip2+ip3", "ip1+ip2+ip3"}
    assert "| lenet300100 |" in (tmp_path / "quick.md").read_text()


def test_frozen_step_benchmark_quick(tmp_path: Path, mnist_dir: Path) -> None:
    r = subprocess.run([sys.executable, "benchmarks/frozen_step.py", "--quick", "--out", str(tmp_path)], cwd=REPO,
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    res = json.loads((tmp_path / "frozen_step_quick.json").read_text())["lenet300100"]
    assert res["kept_weights_equal"] and res["speedup"] > 0
