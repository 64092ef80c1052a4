"""Seed distributions and the frontier: seeds.md and frontier.png from records alone, numbers checked."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import REPO, run_olmp

from olmp import distributions, reports, sweep
from olmp.published import AUTHORS_SEEDS, OLMP, OTHERS

RESULTS = REPO / "results"
COMMITTED = ["rerun-ncs-seed1", "rerun-ncs-seed2", "rerun-ncs-seed3", "ncs-seed1", "ncs-seed4", "rewind-ncs-seed1",
             "released-authors-seed961449", "released-authors-seed981118-delta0.3", "dns-seed1"]


def _copy(src: str, dst: Path, **change: object) -> dict:
    rec = json.loads((RESULTS / "lenet300100" / src / "record.json").read_text())
    for path, value in change.items():  # "final.ratio" -> rec["final"]["ratio"]
        *head, last = path.split("__")
        node = rec
        for k in head:
            node = node[k]
        node[last] = value
    dst.mkdir(parents=True)
    (dst / "record.json").write_text(json.dumps(rec))
    shutil.copy(RESULTS / "lenet300100" / src / "pruned.caffemodel", dst)  # what `olmp report` copies into best/
    return rec


@pytest.fixture()
def model_dir(tmp_path: Path) -> Path:
    """Real committed LeNet-300-100 records, and three edited copies, as under results/lenet300100/."""
    d = tmp_path / "lenet300100"
    for name in COMMITTED:
        _copy(name, d / name)
    # seed 10: past the paper's ratio at no loss against its reference (97.87%)
    _copy("ncs-seed4", d / "ncs-seed10", seed=10, experiment__seed=10, final__ratio=120.0,
          final__test={"accuracy": 0.9790, "loss": 0.07, "images": 10000})
    _copy("rerun-ncs-seed1", d / "again-ncs-seed1")  # the same seed twice: counts once
    # not an authors' seed, so delta 0.3 is not "as the authors ran it": left out
    _copy("released-authors-seed981118-delta0.3", d / "released-authors-seed5-delta0.3", seed=5, experiment__seed=5)
    return d


def _rows(text: str) -> dict[str, list[str]]:
    """seeds.md's summary table: distribution -> cells."""
    out = {}
    for line in text.split("## ")[0].splitlines():
        cells = [c.strip() for c in line.strip("|").split("|")]
        if line.startswith("| ") and cells[0] not in ("distribution",):
            out[cells[0]] = cells
    return out


def test_membership_by_record_not_folder(model_dir: Path) -> None:
    runs = reports.load_runs(model_dir)
    ncs, released = distributions.DISTRIBUTIONS["lenet300100"][1], distributions.DISTRIBUTIONS["lenet300100"][0]
    counted, left = distributions.members(ncs, runs, "lenet300100")
    assert [r.name for r in counted] == ["again-ncs-seed1", "rerun-ncs-seed2", "rerun-ncs-seed3", "ncs-seed4",
                                         "ncs-seed10"]
    why = {r.name: w for r, w in left}
    assert set(why) == {"ncs-seed1", "rerun-ncs-seed1"}  # rewind differs in a setting: not even considered
    assert "earlier code" in why["ncs-seed1"] and "95.2x" in why["ncs-seed1"]
    assert why["rerun-ncs-seed1"] == "seed 1 counts once, from again-ncs-seed1"
    counted, left = distributions.members(released, runs, "lenet300100")
    assert [r.seed for r in counted] == [961449, 981118] and not left


def test_seeds_md_numbers_are_the_records(model_dir: Path) -> None:
    r = run_olmp("report", str(model_dir))
    assert r.returncode == 0, r.stderr
    assert "seeds.md" in r.stdout and "frontier.md" in r.stdout
    text = (model_dir / "seeds.md").read_text()
    recs = [json.loads((model_dir / n / "record.json").read_text())
            for n in ("again-ncs-seed1", "rerun-ncs-seed2", "rerun-ncs-seed3", "ncs-seed4", "ncs-seed10")]
    ratio = np.array([x["final"]["ratio"] for x in recs])
    acc = np.array([x["final"]["test"]["accuracy"] for x in recs])
    q1, med, q3 = np.percentile(ratio, [25, 50, 75])
    a1, amed, a3 = np.percentile(acc, [25, 50, 75])
    row = _rows(text)["paper's rule (NCS), our reference"]
    assert row[1:] == ["5", f"{med:.1f}x", f"{q1:.1f}x-{q3:.1f}x", f"{ratio.min():.1f}x-{ratio.max():.1f}x",
                       f"{100 * amed:.2f}%", f"{100 * a1:.2f}%-{100 * a3:.2f}%",
                       f"{100 * acc.min():.2f}%-{100 * acc.max():.2f}%", "1/5", "1/5", "80.0"]
    row = _rows(text)["released mode, authors' reference"]
    assert row[1] == "2" and row[4] == "95.8x-96.7x" and row[-3:] == ["0/2", "0/2", "100.0"]
    assert "`ncs-seed1`: made by earlier code" in text and "released-authors-seed5-delta0.3" not in text
    for name in ("seeds", "frontier"):
        assert (model_dir / f"{name}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    svg = (model_dir / "frontier.svg").read_text()
    assert "reported" in svg and "paper (released model) 113.5x" in svg and "released mode" in svg
    caption = (model_dir / "frontier.md").read_text()
    for a in OTHERS["lenet300100"]:
        assert a.citation in caption
    before = {p.name: p.read_bytes() for p in model_dir.iterdir() if p.is_file()}
    assert run_olmp("report", str(model_dir)).returncode == 0  # the same records give the same bytes
    assert before == {p.name: p.read_bytes() for p in model_dir.iterdir() if p.is_file()}


def test_reaching_the_paper_needs_no_loss_against_the_runs_own_reference(model_dir: Path) -> None:
    runs = {r.name: r for r in reports.load_runs(model_dir)}
    p = OLMP["lenet300100"].ratio
    s = distributions.summary([runs["ncs-seed10"], runs["ncs-seed4"]], p)
    assert (s["reach"], s["reach_no_loss"], s["paper_percentile"]) == (1, 1, 50.0)
    runs["ncs-seed10"].raw["final"]["test"]["accuracy"] = 0.9786  # 0.01 points under its reference 97.87%
    s = distributions.summary([runs["ncs-seed10"], runs["ncs-seed4"]], p)
    assert (s["reach"], s["reach_no_loss"]) == (1, 0)
    assert distributions.percentile_of(2.0, [1.0, 2.0, 3.0, 4.0]) == 37.5  # ties count half


@pytest.mark.parametrize("model", ["lenet300100", "lenet5"])
def test_committed_seeds_md_is_regenerated_from_the_records(model: str) -> None:
    text, _ = distributions.seeds_table(model, reports.load_runs(RESULTS / model))
    assert (RESULTS / model / "seeds.md").read_text() == text, f"regenerate: olmp report results/{model}"


def test_readme_headline_agrees_with_seeds_md() -> None:
    results = " ".join((REPO / "README.md").read_text().split("## Results")[1].split("\n## ")[0].split())
    for model in ("lenet300100", "lenet5"):
        rows = _rows((RESULTS / model / "seeds.md").read_text())
        for title, cells in rows.items():
            if cells[1] == "0":
                continue
            said = (f"median {cells[2]} ({cells[4].replace('x-', '-')}, {cells[1]} seeds, {cells[-2]} at "
                    f"{OLMP[model].ratio:g}x without loss)")
            assert said in results, f"README Results should say {said!r} for {model}, {title}"
    assert "seeds.png" in results and "frontier.png" in results


def test_distribution_sweeps_list_the_seeds_the_summary_counts() -> None:
    """The sweep files name each distribution's seeds: 20 / 10 distinct, the authors' ones with their delta."""
    want = {"lenet300100-released-authors-seeds": ("lenet300100_released", 20),
            "lenet300100-ncs-seeds": ("lenet300100", 20),
            "lenet5-released-authors-seeds": ("lenet5_released", 10), "lenet5-ncs-seeds": ("lenet5", 10),
            "lenet300100-lossless-seeds": ("lenet300100_lossless", 10)}
    for name, (experiment, n) in want.items():
        sw = sweep.read(REPO / "sweeps" / f"{name}.toml")
        assert {r.experiment for r in sw.runs} == {experiment}
        assert len({r.seed for r in sw.runs}) == len(sw.runs) == n
        model = experiment.split("_")[0]
        for r in sw.runs:
            assert r.out.startswith(f"{model}/")
            if "released" in name:
                assert r.weights is not None and "external-models" in r.weights
                noted = AUTHORS_SEEDS[model].get(r.seed or 0, (None, 0.0))[0]
                assert r.sets == () or (noted is not None and r.sets == (f"search.delta={noted:g}",))
            else:
                assert r.weights is None and all(s.startswith("name=") for s in r.sets)
        if "released" in name:
            assert set(AUTHORS_SEEDS[model]) <= {r.seed for r in sw.runs}
            assert [r.sets for r in sw.runs if r.seed == 981118 and model == "lenet300100"] in ([], [("search.delta=0.3",)])
    sw = sweep.read(REPO / "sweeps" / "delta.toml")
    deltas = {(r.out.split("/")[0], s.split("=")[1]) for r in sw.runs for s in r.sets}
    assert {d for m, d in deltas if m == "lenet300100"} == {"0", "0.02", "0.05", "0.12"}
    assert all(re.fullmatch(r"lenet(300100|5)/tradeoff/ncs-delta[0-9.]+-seed[123]", r.out) for r in sw.runs)


def test_other_folders_get_no_distribution_reports(tmp_path: Path) -> None:
    d = tmp_path / "mymodel"
    shutil.copytree(RESULTS / "lenet300100" / "ncs-seed4", d / "ncs-seed4", ignore=lambda *_: ["pruned.caffemodel"])
    assert distributions.write_reports(d) == []
