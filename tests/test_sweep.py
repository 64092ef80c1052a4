"""``olmp sweep``: runs as Ray tasks, a killed sweep resumed, and sweeps/paper.toml checked
against the committed records.

The tiny sweep: two identical short LeNet-300-100 runs on local Ray. The first sweep runs only one of
them and is SIGKILLed (with its Ray processes) once that run has a checkpoint; the second sweep runs both,
two at a time, with the files travelling with the tasks (``--no-shared-fs``, the cluster mode without
a shared file system): the killed run resumes, the other runs uninterrupted, and the two end with the
same pruned.caffemodel.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import REPO, experiment_300100, without_timing

from olmp import sweep
from olmp.errors import OlmpError


def olmp_sweep(*args: str, cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "olmp", "sweep", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, "OPENBLAS_NUM_THREADS": "1"})


def lock_free(folder: Path) -> bool:
    """No process (such as a Ray worker outliving its killed driver) holds the run folder's lock."""
    if not (folder / ".lock").exists():
        return True
    with open(folder / ".lock", "a+") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        fcntl.flock(fh, fcntl.LOCK_UN)
        return True


def wait_for(condition, seconds: float, what: str) -> None:
    end = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < end, f"timed out waiting for {what}"
        time.sleep(0.1)


TINY = """root = "results"
complete = true
runs = [
  { out = "lenet300100/a", experiment = "tiny.toml", seed = 1, set = ["pipeline.niter=601"] },
  { out = "lenet300100/b", experiment = "tiny.toml", seed = 1, set = ["pipeline.niter=601"] },
]
"""


DRIFT = """root = "results"
complete = true
runs = [
  { out = "lenet300100/a", experiment = "tiny.toml", seed = 1, set = ["pipeline.niter=601", "search.delta=0.05"] },
  { out = "lenet300100/b", experiment = "tiny.toml", seed = 1, set = ["pipeline.niter=601"] },
  { out = "lenet300100/d", experiment = "tiny.toml" },
]
"""


def kill_ray_workers_in(folder: Path) -> None:
    """SIGKILL the Ray workers that run in ``folder`` (this test's sweep), never another sweep's on the machine."""
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmd = (proc / "cmdline").read_bytes().replace(b"\0", b" ")
            cwd = Path(os.readlink(proc / "cwd"))
        except OSError:
            continue
        if (b"ray::" in cmd or b"default_worker.py" in cmd) and (cwd == folder or folder in cwd.parents):
            with contextlib.suppress(OSError):  # gone meanwhile
                os.kill(int(proc.name), signal.SIGKILL)


def test_a_killed_sweep_resumes_to_the_uninterrupted_result(tmp_path: Path, lenet300100_model: Path) -> None:
    (tmp_path / "tiny.toml").write_text(experiment_300100(lenet300100_model, name="sweep300100", prune_stop=400,
                                                          record_every=100, checkpoint_every=100))
    (tmp_path / "tiny-sweep.toml").write_text(TINY)
    a, b = tmp_path / "results" / "lenet300100" / "a", tmp_path / "results" / "lenet300100" / "b"

    first = subprocess.Popen([sys.executable, "-m", "olmp", "sweep", "tiny-sweep.toml", "--only", "lenet300100/a"],
                             cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                             start_new_session=True, env={**os.environ, "OPENBLAS_NUM_THREADS": "1"})
    try:
        wait_for(lambda: (a / "checkpoint" / "state.json").is_file() or first.poll() is not None, 120,
                 "the first checkpoint")
        assert first.poll() is None, first.communicate()[0]
        os.killpg(first.pid, signal.SIGKILL)  # the driver and the Ray processes it started
        # a worker whose raylet died finishes its running task on its own (on an idle machine before the
        # rerun below starts): kill the workers too, as a lost node would
        kill_ray_workers_in(tmp_path)
    finally:
        first.wait(timeout=30)
    assert not (a / "record.json").exists()
    wait_for(lambda: lock_free(a), 60, "the killed run's worker to exit")

    res = olmp_sweep("tiny-sweep.toml", "--max-parallel", "2", "--no-shared-fs", cwd=tmp_path)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "no shared file system" in res.stdout
    assert "lenet300100/a: done (resumed at iteration" in res.stdout, res.stdout
    assert "lenet300100/b: done (ran)" in res.stdout, res.stdout
    assert "lenet300100/b: iteration" in res.stdout  # the progress lines, read from the mirrored checkpoints
    assert (a / "pruned.caffemodel").read_bytes() == (b / "pruned.caffemodel").read_bytes()
    ra, rb = (without_timing(json.loads((d / "record.json").read_text())) for d in (a, b))
    assert ra == rb
    assert not (a / "checkpoint").exists() and not (b / "checkpoint").exists()
    status = (tmp_path / "results" / "sweeps" / "tiny-sweep-status.md").read_text()
    assert status.count("| done |") == 2
    assert (tmp_path / "results" / "lenet300100" / "runs.md").is_file()  # olmp report, then olmp compare
    assert (tmp_path / "results" / "lenet300100" / "comparison.md").is_file()

    # the dry run over what the sweep made: in order; then each kind of drift, one line each
    tiny = sweep.read(tmp_path / "tiny-sweep.toml")
    rows, drifts = sweep.plan(tiny)
    assert [r.state for r in rows] == ["done", "done"] and not drifts
    shutil.copytree(b, tmp_path / "results" / "lenet300100" / "c")
    (tmp_path / "drift.toml").write_text(DRIFT)
    rows, drifts = sweep.plan(sweep.read(tmp_path / "drift.toml"))
    assert [r.state for r in rows] == ["drift", "done", "drift"]
    assert len(drifts) == 3
    assert "lenet300100/a: its record was made with other settings (search.delta)" in drifts[0]
    assert "lenet300100/d: listed in" in drifts[1] and "holds no record" in drifts[1]
    assert "lenet300100/c/record.json: a run record that" in drifts[2]


def test_paper_sweep_lists_every_committed_run() -> None:
    """`olmp sweep sweeps/paper.toml --dry-run` on the committed results/: every record made by its entry."""
    res = olmp_sweep("sweeps/paper.toml", "--dry-run", cwd=REPO, timeout=120)
    assert res.returncode == 0, res.stderr
    assert res.stderr == ""
    last = res.stdout.strip().splitlines()[-1]
    assert last.split()[1] == "done;" and "core-hours" in last, last  # "N done; ... core-hours ..."


def test_paper_sweep_is_what_the_generator_writes(tmp_path: Path) -> None:
    """The committed file is the generator's output for the committed records (regenerate it when they change)."""
    text = sweep.from_results(REPO / "results", REPO / "sweeps" / "paper.toml")
    assert text == (REPO / "sweeps" / "paper.toml").read_text(), \
        "regenerate it: olmp sweep sweeps/paper.toml --from-results results"


@pytest.mark.parametrize(("text", "says"), [
    ('runs = [{ experiment = "lenet300100" }]', "run 1: missing key(s) out"),
    ('runs = [{ out = "x", experiment = "nope" }]', "run 1 (x): unknown experiment 'nope'"),
    ('runs = [{ out = "x", experiment = "lenet300100", seed = -1 }]', "run 1 (x): seed must be in [0, 2147483647], got -1"),
    ('runs = [{ out = "x", experiment = "lenet300100", seed = "1" }]', "run 1 (x): seed must be an integer"),
    ('runs = [{ out = "x", experiment = "lenet300100", sed = 1 }]', "run 1 (x): unknown key(s) sed"),
    ('runs = [{ out = "../x", experiment = "lenet300100" }]', "run 1: out must be a folder under root"),
    ('runs = [{ out = "x", experiment = "lenet300100" }, { out = "x", experiment = "lenet5" }]',
     "run 2: out 'x' is listed twice"),
    ('runs = [{ out = "x", experiment = "lenet300100", set = "search.delta=0.1" }]', "run 1 (x): set must be a list"),
    ("runs = []", "runs must be a non-empty list"),
    ('root = 3\nruns = [{ out = "x", experiment = "lenet300100" }]', "root must be a folder name"),
    ('rots = "."', "unknown key(s) rots"),
    ("runs = [", "malformed TOML"),
])
def test_bad_sweep_files_are_one_line_naming_the_file(tmp_path: Path, text: str, says: str) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(text + "\n")
    with pytest.raises(OlmpError) as err:
        sweep.read(path)
    msg = str(err.value)
    assert msg.startswith(f"{path}: ") and says in msg and "\n" not in msg, msg


def test_an_entry_an_experiment_refuses_names_the_sweep_and_the_run(tmp_path: Path) -> None:
    path = tmp_path / "s.toml"
    path.write_text('runs = [{ out = "x", experiment = "lenet300100", optimizer = "nope" }]\n')
    with pytest.raises(OlmpError, match=r"s\.toml: x: .*unknown optimizer 'nope'"):
        sweep.plan(sweep.read(path))
