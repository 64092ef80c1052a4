"""A newcomer's path: make reproduce runs for real, no stale results, paths, provenance."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from conftest import REPO, experiment_300100, run_olmp

from olmp import config, paths, pipeline, sidebyside
from olmp.errors import OlmpError

SHORT = ["--set", "pipeline.niter=21", "--set", "pipeline.prune_stop_iter=20", "--set", "pipeline.record_every=10",
         "--set", "search.every=10", "--set", "search.budget=12", "--set", "search.population=4"]


def _experiment(tmp_path: Path, weights: Path) -> Path:
    p = tmp_path / "exp.toml"
    p.write_text(experiment_300100(weights, niter=21, prune_stop=20, record_every=10, every=10, population=4,
                                   budget=12))
    return p


def _one_line(r: subprocess.CompletedProcess) -> str:
    err = r.stderr.strip()
    assert r.returncode == 2 and len(err.splitlines()) == 1 and err.startswith("olmp: error: "), (r.returncode, err)
    return err


def test_finished_run_with_other_settings_is_refused(tmp_path: Path, lenet300100_model: Path) -> None:
    exp, out = _experiment(tmp_path, lenet300100_model), tmp_path / "run"
    r = run_olmp("prune", "--experiment", str(exp), "--out", str(out), "--quiet", "--resume")
    assert r.returncode == 0, r.stderr
    assert "holds no checkpoint to resume" in r.stderr  # --resume with nothing to resume says so
    first = json.loads(r.stdout.strip().splitlines()[-1])
    again = run_olmp("prune", "--experiment", str(exp), "--out", str(out), "--quiet")
    assert again.returncode == 0 and json.loads(again.stdout.strip().splitlines()[-1]) == first  # same: reported
    err = _one_line(run_olmp("prune", "--experiment", str(exp), "--out", str(out), "--quiet",
                             "--set", "search.delta=0.02", "--seed", "2"))
    assert str(out) in err and "(search.delta, seed)" in err and "other settings" in err
    # a setting the record does not name existed not yet: its default is what the run used
    rec_path = out / "record.json"
    rec = json.loads(rec_path.read_text())
    del rec["experiment"]["pipeline"]["retrain_lr"]
    rec_path.write_text(json.dumps(rec))
    assert pipeline.prune(config.load(exp), out, progress=False)["final"] == rec["final"]
    with pytest.raises(OlmpError, match=r"other settings \(pipeline.retrain_lr\)"):
        pipeline.prune(config.load(exp, ["pipeline.retrain_lr=rewind"]), out, progress=False)


def test_al_constraint_needs_cmaes(tmp_path: Path, lenet300100_model: Path) -> None:
    exp = _experiment(tmp_path, lenet300100_model)
    for opt in ("ncs", "sampling"):
        with pytest.raises(OlmpError, match=r"search.constraint = 'al' needs optimizer = 'cmaes'") as info:
            config.load(exp, ["search.constraint=al", f"optimizer={opt}"])
        assert "exp.toml" in str(info.value) and "\n" not in str(info.value)
    assert config.load(exp, ["search.constraint=al", "optimizer=cmaes"]).search.constraint == "al"
    err = _one_line(run_olmp("prune", "--experiment", str(exp), "--set", "search.constraint=al",
                             "--optimizer", "sampling", "--out", str(tmp_path / "x")))
    assert "search.constraint" in err and "exp.toml" in err
    assert not (tmp_path / "x").exists()


def test_record_holds_its_provenance(tmp_path: Path, lenet300100_model: Path) -> None:
    rec = pipeline.prune(config.load(_experiment(tmp_path, lenet300100_model)), tmp_path / "run", progress=False)
    prov = rec["provenance"]
    head = subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True, text=True)
    if head.returncode == 0:
        assert prov["git_commit"] == head.stdout.strip() and isinstance(prov["git_dirty"], bool)
    import cma

    import olmp

    assert (prov["numpy"], prov["cma"], prov["olmp_version"]) == (np.__version__, cma.__version__.split()[0],
                                                                 olmp.__version__)
    assert prov["openblas_num_threads"] == os.environ.get("OPENBLAS_NUM_THREADS")
    assert prov["cpu_model"] and prov["cpu_count"] >= 1
    assert json.loads((tmp_path / "run" / "record.json").read_text())["provenance"] == prov


def test_command_line_paths_are_relative_to_the_current_directory(tmp_path: Path, mnist_dir: Path) -> None:
    shutil.copy(REPO / "solvers" / "lenet300100_solver.prototxt", tmp_path / "solver.prototxt")
    shutil.copy(REPO / "models" / "lenet300100" / "train_test.prototxt", tmp_path / "net.prototxt")
    r = run_olmp("train", "--solver", "solver.prototxt", "--iters", "20", "--out", "ref", "--quiet", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "ref" / "model.caffemodel").is_file()
    r = run_olmp("evaluate", "--net", "net.prototxt", "--weights", "ref/model.caffemodel", "--json", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout.strip().splitlines()[-1])["images"] == 10000
    # an experiment file's paths are relative to its folder, whatever the current directory
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "exp.toml").write_text(
        experiment_300100("../ref/model.caffemodel", niter=3, prune_stop=2, record_every=1, every=1, population=4,
                          budget=4).replace("solvers/lenet300100_solver.prototxt", "../solver.prototxt"))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    r = run_olmp("prune", "--experiment", "../mine/exp.toml", "--out", "run", "--quiet", cwd=elsewhere)
    assert r.returncode == 0, r.stderr
    rec = json.loads((elsewhere / "run" / "record.json").read_text())
    assert rec["experiment"]["solver"] == str(tmp_path / "solver.prototxt")
    assert rec["reference"]["weights"] == str(tmp_path / "ref" / "model.caffemodel")
    # a missing one is named where it was looked for, beside the file
    (tmp_path / "mine" / "bad.toml").write_text(experiment_300100("x.caffemodel").replace(
        "solvers/lenet300100_solver.prototxt", "nosuch_solver.prototxt"))
    err = _one_line(run_olmp("prune", "--experiment", "../mine/bad.toml", "--quiet", cwd=elsewhere))
    assert str(tmp_path / "mine" / "nosuch_solver.prototxt") in err


def test_shipped_experiments_keep_their_repository_paths(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    exp = config.load("lenet300100")
    assert (exp.solver, exp.weights) == ("solvers/lenet300100_solver.prototxt",
                                         "results/references/lenet300100/model.caffemodel")
    assert config.load(REPO / "scripts" / "experiments" / "lenet5.toml").solver == "solvers/lenet5_solver.prototxt"
    # on the command line, from the repository root a relative path is kept as typed (records store it)
    assert paths.from_cwd("x/y.caffemodel") == str(tmp_path / "x" / "y.caffemodel")
    monkeypatch.chdir(REPO)
    assert paths.from_cwd("../shared/external-models/a.caffemodel") == "../shared/external-models/a.caffemodel"
    assert paths.from_cwd("/abs/a") == "/abs/a"


def test_side_by_side_verdicts_on_committed_records(tmp_path: Path) -> None:
    committed = REPO / "results" / "lenet300100" / "ncs-seed1" / "record.json"
    run = tmp_path / "run"
    run.mkdir()
    rec = json.loads(committed.read_text())
    (run / "record.json").write_text(json.dumps(rec))
    text = sidebyside.table(run, "lenet300100", "ncs", 1)
    assert "verdict: identical to the committed record" in text
    assert "| paper / released model | 113.5x | 97.82% |" in text
    assert "| committed (results/lenet300100/ncs-seed1) | 95.2x | 97.78% | 97.87% |" in text
    assert (run / "side-by-side.md").read_text() == text
    rec["final"]["ratio"], rec["final"]["test"]["accuracy"] = 80.0, 0.9781  # like another seed (62-95x)
    (run / "record.json").write_text(json.dumps(rec))
    assert "within the committed seeds' range" in sidebyside.table(run, "lenet300100", "ncs", 1)
    rec["final"]["ratio"] = 20.0
    (run / "record.json").write_text(json.dumps(rec))
    assert "OUTSIDE the committed seeds' range" in sidebyside.table(run, "lenet300100", "ncs", 1)
    rec["experiment"]["search"]["delta"] = 0.02
    (run / "record.json").write_text(json.dumps(rec))
    assert "not comparable" in sidebyside.table(run, "lenet300100", "ncs", 1)


def test_make_reproduce_script_runs_for_real_outside_results(tmp_path: Path, mnist_dir: Path) -> None:
    """scripts/reproduce.sh, shortened with OLMP_PRUNE_ARGS: prunes into the given fresh folder, ends
    with the table, and a rerun of the same command reports that folder instead of running again."""
    out = tmp_path / "reproduce"
    env = {**os.environ, "OUT": str(out), "OLMP_PRUNE_ARGS": " ".join(SHORT)}
    r = subprocess.run(["bash", "scripts/reproduce_lenet300100.sh", "ncs", "1"], cwd=REPO, env=env,
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "[reproduce] pruning lenet300100 (ncs, seed 1)" in r.stderr and "it/s" in r.stderr  # progress shown
    assert (out / "record.json").is_file() and (out / "side-by-side.md").read_text() in r.stdout
    assert "| committed (results/lenet300100/ncs-seed1) |" in r.stdout and "verdict: not comparable" in r.stdout
    mtime = (out / "record.json").stat().st_mtime_ns
    again = subprocess.run(["bash", "scripts/reproduce_lenet300100.sh", "ncs", "1"], cwd=REPO, env=env,
                           capture_output=True, text=True, timeout=600)
    assert again.returncode == 0 and "holds a finished run" in again.stderr
    assert (out / "record.json").stat().st_mtime_ns == mtime


def test_make_reproduce_writes_outside_results_by_default(tmp_path: Path, mnist_dir: Path) -> None:
    """Without OUT the run lands in a folder git ignores and results/ gains nothing. The script runs in a
    copy of the checkout's layout (links to its code, data and references), so no run lands in the real one."""
    repo = tmp_path / "checkout"
    (repo / "results").mkdir(parents=True)
    for name in (".venv", "scripts", "models", "solvers", "data"):
        (repo / name).symlink_to(REPO / name)
    (repo / "results" / "references").symlink_to(REPO / "results" / "references")
    r = subprocess.run(["bash", "scripts/reproduce_lenet300100.sh", "ncs", "1"], cwd=repo,
                       env={**os.environ, "OLMP_PRUNE_ARGS": " ".join(SHORT)}, capture_output=True, text=True,
                       timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    assert [p.name for p in (repo / "results").iterdir()] == ["references"]
    runs = [p.parent.relative_to(repo) for p in (repo / "runs").rglob("record.json")]
    assert len(runs) == 1 and (repo / runs[0] / "side-by-side.md").is_file()
    ignored = subprocess.run(["git", "-C", str(REPO), "check-ignore", "-q", str(runs[0] / "record.json")])
    assert ignored.returncode == 0, f"{runs[0]} is not ignored by git"
