"""Crate searchers behind one ask/tell protocol, and their registry (reference §4).

`make_optimizer("ncs", x0, sigma0, bounds, popsize, budget, seed)` is how the
pipeline gets one; OPTIMIZERS is the plain name -> class dict behind it.
"""

from __future__ import annotations

from typing import Any

from numpy.typing import ArrayLike

from olmp.errors import OlmpError
from olmp.search.base import Optimizer, SearchResult, reflect
from olmp.search.cmaes import CMAES
from olmp.search.ncs import NCS
from olmp.search.sampling import Sampling

OPTIMIZERS: dict[str, type[Optimizer]] = {
    "ncs": NCS,
    "cmaes": CMAES,
    "sampling": Sampling,
}


def make_optimizer(
    name: str,
    x0: ArrayLike,
    sigma0: float,
    bounds: tuple[ArrayLike, ArrayLike],
    popsize: int,
    budget: int,
    seed: int,
    **options: Any,
) -> Optimizer:
    """Build the optimizer registered as `name`; bad names and arguments raise OlmpError."""
    try:
        cls = OPTIMIZERS[name]
    except (KeyError, TypeError):
        raise OlmpError(
            f"unknown optimizer '{name}' (choose from {', '.join(OPTIMIZERS)})"
        ) from None
    return cls(x0, sigma0, bounds, popsize, budget, seed, **options)


__all__ = [
    "CMAES",
    "NCS",
    "OPTIMIZERS",
    "Optimizer",
    "SearchResult",
    "Sampling",
    "make_optimizer",
    "reflect",
]
