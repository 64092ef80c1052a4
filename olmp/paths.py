"""Where things live. Every path the package uses is derived here."""

from __future__ import annotations

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
MODELS_DIR = REPO_ROOT / "models"
SOLVERS_DIR = REPO_ROOT / "solvers"
EXPERIMENTS_DIR = REPO_ROOT / "scripts" / "experiments"
RESULTS_DIR = REPO_ROOT / "results"


def data_dir() -> Path:
    """Data sets; ``OLMP_DATA_DIR`` overrides ``<repo>/data``."""
    return Path(os.environ.get("OLMP_DATA_DIR", REPO_ROOT / "data"))


def mnist_dir() -> Path:
    return data_dir() / "mnist"


def cache_dir() -> Path:
    """Build and download cache; ``OLMP_CACHE_DIR`` overrides ``~/.cache/olmp``."""
    return Path(os.environ.get("OLMP_CACHE_DIR", Path.home() / ".cache" / "olmp"))


def external_models_dir() -> Path:
    """The authors' released caffemodels (optional, read-only, never copied)."""
    return Path(os.environ.get("OLMP_EXTERNAL_MODELS", REPO_ROOT.parent / "shared" / "external-models"))
