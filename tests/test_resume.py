"""Kill a real ``olmp prune`` with SIGKILL at exact points, resume it, get the same model.

The points come from tests/killpoints.py, which runs olmp with the kill put in: in the middle
of the very first checkpoint, during SGD, during a search, and in the middle of a later
checkpoint. One run folder is killed and resumed in turn at each, then finished; its
``pruned.caffemodel`` and record (less the wall-clock fields) must equal, bit for bit,
those of an uninterrupted run. After every kill, every file in the folder must be
whole and loadable, or a temporary that the resume cleans away.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import REPO, experiment_300100, without_timing

from olmp import atomic, caffe_bridge, checkpoint, weights


def experiment(weights: Path) -> str:
    return experiment_300100(weights, name="resume300100", seed=3, niter=241, prune_stop=200, record_every=80,
                             checkpoint_every=50, every=50, population=4, budget=12, sigma="[[0, 5.0], [100, 1.0]]")


def prune(exp: Path, out: Path, kill_at: str | None = None) -> subprocess.CompletedProcess:
    entry = [str(REPO / "tests" / "killpoints.py"), kill_at] if kill_at else ["-m", "olmp"]
    return subprocess.run([sys.executable, *entry, "prune", "--experiment", str(exp), "--out", str(out),
                           "--quiet", "--resume"], cwd=REPO, capture_output=True, text=True, timeout=300)


def is_temporary(rel: Path) -> bool:
    return any(p == checkpoint.SNAPSHOT or (p.startswith(".") and p.endswith(".tmp")) for p in rel.parts)


def assert_whole(out: Path) -> list[Path]:
    """Every file is loadable, or a temporary; return the temporaries."""
    temporaries = []
    pb = caffe_bridge.caffe_pb2()
    for f in sorted(p for p in out.rglob("*") if p.is_file()):
        rel = f.relative_to(out)
        if is_temporary(rel):
            temporaries.append(rel)
        elif rel == Path(".lock"):
            assert f.stat().st_size == 0
        elif rel.suffix == ".json":
            json.loads(f.read_text())
        elif rel.suffix == ".caffemodel":
            weights.read_caffemodel(f)
        elif rel.suffix == ".npz":
            with np.load(f) as z:
                assert all(z[k].size for k in z.files)
        elif rel.suffix == ".solverstate":
            pb.SolverState().ParseFromString(f.read_bytes())
        else:
            raise AssertionError(f"unexpected file {rel}")
    if (out / checkpoint.CHECKPOINT).exists():
        assert sorted(p.name for p in (out / checkpoint.CHECKPOINT).iterdir()) == [
            "masks.npz", "solver.solverstate", "state.json", "weights.caffemodel"]
    return temporaries


def next_itr(out: Path) -> int | None:
    st = out / checkpoint.CHECKPOINT / "state.json"
    return json.loads(st.read_text())["next_itr"] if st.is_file() else None


@pytest.mark.slow
def test_sigkill_anywhere_then_resume_gives_the_same_model(tmp_path: Path, lenet300100_model: Path) -> None:
    exp = tmp_path / "exp.toml"
    exp.write_text(experiment(lenet300100_model))
    ref = tmp_path / "uninterrupted"
    r = prune(exp, ref)
    assert r.returncode == 0, r.stderr
    reference = json.loads((ref / "record.json").read_text())
    search_at = next(s["iteration"] for s in reference["searches"] if s["iteration"] >= 100)
    assert search_at < 200

    out = tmp_path / "killed"
    # (kill point, the checkpoint a resume then starts from)
    plan = [("checkpoint:50", None), ("sgd:130", 100), (f"search:{search_at}", search_at),
            ("checkpoint:200", 150)]
    for point, resumes_at in plan:
        r = prune(exp, out, kill_at=point)
        assert r.returncode == -signal.SIGKILL, (point, r.returncode, r.stderr)
        assert not (out / "record.json").exists() and not (out / "pruned.caffemodel").exists()
        temporaries = assert_whole(out)
        assert next_itr(out) == resumes_at, point
        if point.startswith("checkpoint"):  # the kill came mid-write: a half state.json, never renamed
            half = [t for t in temporaries if t.name == "state.json"]
            assert half, temporaries
            with pytest.raises(ValueError):
                json.loads((out / half[0]).read_text())
    r = prune(exp, out)
    assert r.returncode == 0, r.stderr
    assert assert_whole(out) == [] and not (out / checkpoint.CHECKPOINT).exists()
    assert (out / "pruned.caffemodel").read_bytes() == (ref / "pruned.caffemodel").read_bytes()
    assert without_timing(json.loads((out / "record.json").read_text())) == without_timing(reference)


def test_an_interrupted_directory_swap_is_finished(tmp_path: Path) -> None:
    """The fallback swap (two renames) killed between them: ``clean`` puts the new one in place."""
    target = tmp_path / "checkpoint"
    target.mkdir()
    tmp = tmp_path / ".checkpoint.abc.tmp"
    (tmp / "checkpoint").mkdir(parents=True)
    (tmp / "checkpoint" / "state.json").write_text('{"new": true}')
    os.replace(target, tmp / ("checkpoint" + atomic.OLD))
    assert atomic.clean(tmp_path) == [tmp.name]
    assert json.loads((target / "state.json").read_text()) == {"new": True}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint"]


def test_directory_replace_is_one_step(tmp_path: Path) -> None:
    target = tmp_path / "d"
    for version in ("old", "new"):
        with atomic.atomic_path(target) as t:
            t.mkdir()
            (t / "v").write_text(version)
    assert (target / "v").read_text() == "new" and sorted(p.name for p in tmp_path.iterdir()) == ["d"]
    (tmp_path / "e").mkdir()
    if atomic._exchange(tmp_path / "d", tmp_path / "e"):  # renameat2 (else atomic_path falls back to two renames)
        assert (tmp_path / "e" / "v").read_text() == "new" and not list((tmp_path / "d").iterdir())


def test_resume_with_other_settings_is_refused(tmp_path: Path, lenet300100_model: Path) -> None:
    exp = tmp_path / "exp.toml"
    exp.write_text(experiment(lenet300100_model).replace("niter = 241", "niter = 60"))
    out = tmp_path / "run"
    assert prune(exp, out, kill_at="sgd:55").returncode == -signal.SIGKILL
    assert next_itr(out) == 50
    exp.write_text(exp.read_text().replace("seed = 3", "seed = 4"))
    r = prune(exp, out)
    assert r.returncode == 2 and "other settings (seed)" in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_a_resume_may_change_only_what_the_result_does_not_depend_on() -> None:
    exp = {"name": "x", "source": "a.toml", "search": {"workers": 4, "delta": 0.1}, "layers": ("ip1",)}
    assert checkpoint._settings(exp) == {"name": "x", "search.delta": 0.1, "layers": ["ip1"]}
    # a checkpoint from before a setting existed ran with its default: resumable while the default holds
    older = {"name": "x", "search": {"delta": 0.1}, "layers": ("ip1",)}
    assert checkpoint.changed_settings({**older, "search": {"delta": 0.1, "min_layers": 2}}, older) == []
    assert checkpoint.changed_settings({**older, "search": {"delta": 0.1, "min_layers": 1}}, older) == ["search.min_layers"]
    assert checkpoint.changed_settings({**older, "search": {"delta": 0.2, "min_layers": 2}}, older) == ["search.delta"]
