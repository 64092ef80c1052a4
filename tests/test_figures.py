"""Figures from real run records: `olmp report` writes progress, convergence, layers, methods, tradeoff (PNG, SVG)."""

from __future__ import annotations

import json
import shutil
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from conftest import run_olmp
from test_pipeline import small_experiment

from olmp import config, figures, pipeline
from olmp.record import RunRecord

NAMES = ("progress", "convergence", "layers", "methods", "tradeoff")
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def model_dir(lenet300100_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Three tiny real OLMP runs (one search each), one per optimizer, as under results/<model>/."""
    root = tmp_path_factory.mktemp("figs")
    out = root / "lenet300100"
    for opt in ("ncs", "cmaes", "sampling"):
        exp = config.load(small_experiment(root, lenet300100_model, optimizer=opt, niter=101, prune_stop=100,
                                           budget=30))
        pipeline.prune(exp, out / f"{opt}-seed1", progress=False)
    return out


def _check_files(d: Path) -> None:
    for name in NAMES:
        png, svg = d / f"{name}.png", d / f"{name}.svg"
        assert png.stat().st_size > 10_000 and png.read_bytes()[:8] == PNG_MAGIC
        root = ET.fromstring(svg.read_bytes())
        assert root.tag.endswith("svg") and svg.stat().st_size > 5_000


def test_report_writes_the_figures(model_dir: Path) -> None:
    r = run_olmp("report", str(model_dir))
    assert r.returncode == 0, r.stderr
    assert "3 runs" in r.stdout and "progress" in r.stdout
    _check_files(model_dir)
    assert (model_dir / "runs.csv").is_file() and (model_dir / "runs.md").is_file()  # tables as before
    svg = {n: (model_dir / f"{n}.svg").read_text() for n in NAMES}
    for opt in ("ncs", "cmaes", "sampling"):  # SVG text is kept as text
        assert opt in svg["convergence"]
        assert f"{opt}-seed1" in svg["progress"] and f"{opt}-seed1" in svg["layers"]
    for layer in ("ip1", "ip2", "ip3"):
        assert layer in svg["layers"] and layer in svg["methods"]
    for opt in ("ncs", "cmaes", "sampling"):  # one median run per method, every run in the trade-off
        assert f"olmp-{opt}" in svg["methods"] and f"olmp-{opt}" in svg["tradeoff"]
    assert not list(model_dir.glob(".*.tmp"))  # no temporaries left by the atomic writes
    # regenerating from the same records gives the same bytes
    before = {p.name: p.read_bytes() for n in NAMES for p in model_dir.glob(f"{n}.*")}
    assert run_olmp("report", str(model_dir)).returncode == 0
    assert before == {p.name: p.read_bytes() for n in NAMES for p in model_dir.glob(f"{n}.*")}


def test_figures_need_only_the_records(model_dir: Path, tmp_path: Path) -> None:
    for rec in model_dir.glob("*-seed1/record.json"):
        (tmp_path / rec.parent.name).mkdir()
        shutil.copy(rec, tmp_path / rec.parent.name / "record.json")
    written = figures.write_report_figures(tmp_path)
    assert sorted(p.name for p in written) == sorted(f"{n}.{f}" for n in NAMES for f in ("png", "svg"))
    _check_files(tmp_path)


def test_figures_with_no_runs_or_no_feasible_trace(model_dir: Path, tmp_path: Path) -> None:
    assert figures.write_report_figures(tmp_path) == [] and not list(tmp_path.iterdir())
    rec = json.loads((model_dir / "ncs-seed1" / "record.json").read_text())
    for s in rec["searches"]:
        s["trace"] = [[e, None] for e, _ in s["trace"]]
    fig = figures.convergence_figure([RunRecord.from_dict(rec)])
    figures.save(fig, tmp_path / "convergence")
    assert "no feasible search trace" in (tmp_path / "convergence.svg").read_text()
