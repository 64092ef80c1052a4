"""The ask/tell protocol every crate searcher follows (reference §4).

The protocol is pycma's `OOOptimizer` (ask, tell, stop, result, disp, and
`optimize` for free), so NCS, CMA-ES and the released scripts' sampling are
interchangeable in the pipeline. This base owns what they share: argument
checks, the evaluation budget, seeding, reflection into the bounds, and the
record of the best FEASIBLE solution told so far. Fitness is minimised.
"""

from __future__ import annotations

import abc
from collections.abc import Sequence
from typing import Any, ClassVar, NamedTuple

import numpy as np
from cma.interfaces import OOOptimizer
from numpy.typing import ArrayLike

from olmp.errors import OlmpError


class SearchResult(NamedTuple):
    """Best feasible solution told so far (None/inf if none) and evaluations used."""

    xbest: np.ndarray | None
    fbest: float
    evaluations: int


def reflect(x: np.ndarray, lb: np.ndarray, ub: np.ndarray) -> np.ndarray:
    """Mirror coordinates at the bound they crossed, then clip what is still out.

    Mirroring keeps a sample's distance from the bound instead of piling samples
    on it (a crate exactly on a bound is rarely what a search wants); the clip
    only catches steps longer than the box.
    """
    mirrored = np.where(x < lb, 2.0 * lb - x, np.where(x > ub, 2.0 * ub - x, x))
    return np.clip(mirrored, lb, ub)


def _check_int(name: str, value: Any, minimum: int) -> int:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise OlmpError(f"{name} must be an integer >= {minimum}, got {value!r}")
    if value < minimum:
        raise OlmpError(f"{name} must be an integer >= {minimum}, got {value}")
    return int(value)


def check_epoch_and_r(name: str, options: dict[str, Any]) -> None:
    """Validate the `epoch` (None or int >= 1) and `r` (in (0, 1]) options of NCS/sampling."""
    epoch = options["epoch"]
    if epoch is not None and (
        isinstance(epoch, (bool, np.bool_)) or not isinstance(epoch, (int, np.integer)) or epoch < 1
    ):
        raise OlmpError(f"{name} option epoch must be an integer >= 1, got {epoch!r}")
    r = options["r"]
    if isinstance(r, (bool, np.bool_)) or not isinstance(r, (int, float, np.number)) or not 0 < r <= 1:
        raise OlmpError(f"{name} option r must be in (0, 1], got {r!r}")


class Optimizer(OOOptimizer, abc.ABC):
    """Base of the crate searchers: bounded, budgeted, seeded ask/tell.

    Contract: each `tell` receives the solutions of the preceding `ask`, in the
    same order (NCS pairs trial i with searcher i). `violations` (one float per
    solution, <= 0 feasible) is optional; without it every solution counts as
    feasible and the caller encodes infeasibility in the fitness (1.1 in OLMP).
    """

    name: ClassVar[str] = "base"
    color: ClassVar[str] = ""  # its colour in the report figures; "": one of matplotlib's cycle
    option_defaults: ClassVar[dict[str, Any]] = {}
    min_popsize: ClassVar[int] = 1
    # how infeasible candidates are handled: "penalty" (the caller's fitness already encodes them)
    # or "al" (tell() gets violations; only optimizers that read them list it)
    constraints: ClassVar[tuple[str, ...]] = ("penalty",)

    def __init__(
        self,
        x0: ArrayLike,
        sigma0: float,
        bounds: tuple[ArrayLike, ArrayLike],
        popsize: int,
        budget: int,
        seed: int,
        rng: np.random.RandomState | None = None,
        constraint: str = "penalty",
        **options: Any,
    ) -> None:
        self._shared_rng = rng  # released mode (§9): draw from the run's one stream, not our own
        if constraint not in self.constraints:
            raise OlmpError(f"optimizer {self.name} handles constraint {' or '.join(map(repr, self.constraints))}, "
                            f"got {constraint!r}")
        self.constraint = constraint
        x0 = np.array(x0, dtype=np.float64)
        if x0.ndim != 1 or x0.size == 0:
            raise OlmpError(f"x0 must be a non-empty 1-D array, got shape {x0.shape}")
        if not np.all(np.isfinite(x0)):
            raise OlmpError("x0 must be finite")
        self.dimension = x0.size
        self.lb, self.ub = self._check_bounds(bounds, self.dimension)
        if np.any(x0 < self.lb) or np.any(x0 > self.ub):
            raise OlmpError("x0 lies outside the bounds")
        try:
            sigma0 = float(sigma0)
        except (TypeError, ValueError):
            raise OlmpError(f"sigma0 must be a number > 0, got {sigma0!r}") from None
        if not (np.isfinite(sigma0) and sigma0 > 0):
            raise OlmpError(f"sigma0 must be a number > 0, got {sigma0}")
        self.sigma0 = sigma0
        self.popsize = _check_int("popsize", popsize, self.min_popsize)
        self.budget = _check_int("budget", budget, 1)
        self.seed = _check_int("seed", seed, 0)
        unknown = sorted(set(options) - set(self.option_defaults))
        if unknown:
            choices = ", ".join(sorted(self.option_defaults)) or "none"
            raise OlmpError(
                f"unknown option '{unknown[0]}' for optimizer {self.name} (choose from {choices})"
            )
        self.options = {**self.option_defaults, **options}
        self._check_options()
        super().__init__(x0)  # OOOptimizer keeps xstart and calls initialize()

    @staticmethod
    def _check_bounds(bounds: Any, dimension: int) -> tuple[np.ndarray, np.ndarray]:
        try:
            lb, ub = bounds
            lb = np.broadcast_to(np.asarray(lb, dtype=np.float64), (dimension,)).copy()
            ub = np.broadcast_to(np.asarray(ub, dtype=np.float64), (dimension,)).copy()
        except (TypeError, ValueError):
            raise OlmpError(
                f"bounds must be (lb, ub), each a scalar or {dimension} values (len(x0))"
            ) from None
        if not (np.all(np.isfinite(lb)) and np.all(np.isfinite(ub))):
            raise OlmpError("bounds must be finite")
        if np.any(lb >= ub):
            raise OlmpError("bounds must satisfy lb < ub in every dimension")
        return lb, ub

    def _check_options(self) -> None:
        """Validate `self.options`; subclasses override."""

    def initialize(self) -> None:
        """(Re)set to the initial state: same seed, same run."""
        self.x0 = np.array(self.xstart, dtype=np.float64)
        self.rng = self._shared_rng if self._shared_rng is not None else np.random.default_rng(self.seed)
        self.evaluations = 0
        self.countiter = 0
        self._asked: np.ndarray | None = None
        self._xbest: np.ndarray | None = None
        self._fbest = np.inf
        self._setup()

    # --- the protocol -------------------------------------------------------

    def ask(self) -> list[np.ndarray]:
        """Return the next candidates; fewer at the end so the budget is never exceeded."""
        if self._asked is not None:
            raise OlmpError(f"{self.name}: ask() called again before tell()")
        left = self.budget - self.evaluations
        if left <= 0:
            return []
        X = np.asarray(self._ask(left), dtype=np.float64)[:left]
        self._asked = X.copy()
        return [x.copy() for x in X]

    def tell(
        self,
        solutions: Sequence[ArrayLike],
        fitnesses: Sequence[float],
        violations: Sequence[float] | None = None,
    ) -> None:
        """Pass the fitness (and optional constraint violations) of the last ask()."""
        if self._asked is None:
            if len(solutions) == 0:
                return  # the empty ask() of an exhausted budget
            raise OlmpError(f"{self.name}: tell() without a preceding ask()")
        X = np.asarray(solutions, dtype=np.float64)
        if X.shape != self._asked.shape or not np.array_equal(X, self._asked):
            raise OlmpError(f"{self.name}: tell() must get the solutions of the last ask(), in order")
        f = np.asarray(fitnesses, dtype=np.float64).ravel()
        if f.size != len(X):
            raise OlmpError(f"{self.name}: {f.size} fitness values for {len(X)} solutions")
        if not np.all(np.isfinite(f)):
            raise OlmpError(f"{self.name}: fitness values must be finite")
        v = None
        if violations is not None:
            v = np.asarray(violations, dtype=np.float64).ravel()
            if v.size != len(X):
                raise OlmpError(f"{self.name}: {v.size} violations for {len(X)} solutions")
            if np.any(np.isnan(v)):
                raise OlmpError(f"{self.name}: violations must not be NaN")
        elif self._why_violations_needed():
            raise OlmpError(f"{self.name}: {self._why_violations_needed()} needs violations in tell()")
        self._record_best(X, f, v)
        self._tell(X, f, v)
        self.evaluations += len(X)
        self.countiter += 1
        self._asked = None

    def stop(self) -> dict[str, Any]:
        """Termination criteria met, e.g. {'maxfevals': budget}; empty while running."""
        criteria = self._stop()
        if self.evaluations >= self.budget:
            criteria["maxfevals"] = self.budget
        return criteria

    @property
    def result(self) -> SearchResult:
        xbest = None if self._xbest is None else self._xbest.copy()
        return SearchResult(xbest, float(self._fbest), self.evaluations)

    def start_from(self, x: ArrayLike, f: float) -> None:
        """Make (x, f) the best so far: the released search starts from the current crates' fitness (§9)."""
        self._xbest = np.array(x, dtype=np.float64)
        self._fbest = float(f)

    def disp(self, modulo: int | None = None) -> None:
        """Print one progress line every `modulo` iterations; quiet when None or 0."""
        if modulo and self.countiter % modulo == 0:
            print(
                f"{self.name}: iter {self.countiter} evals {self.evaluations}/{self.budget}"
                f" fbest {self._fbest:.6g}"
            )

    def _record_best(self, X: np.ndarray, f: np.ndarray, v: np.ndarray | None) -> None:
        feasible = np.ones(len(f), dtype=bool) if v is None else (v <= 0)
        if not feasible.any():
            return
        i = int(np.argmin(np.where(feasible, f, np.inf)))  # first index wins ties
        if f[i] < self._fbest:
            self._fbest = float(f[i])
            self._xbest = X[i].copy()

    # --- hooks for subclasses -------------------------------------------------

    @abc.abstractmethod
    def _setup(self) -> None:
        """Create the optimizer's state (called by initialize)."""

    @abc.abstractmethod
    def _ask(self, left: int) -> np.ndarray:
        """Return at most `left` candidates (rows), inside the bounds."""

    @abc.abstractmethod
    def _tell(self, X: np.ndarray, f: np.ndarray, v: np.ndarray | None) -> None:
        """Update the state from the evaluated candidates of the last ask."""

    def _stop(self) -> dict[str, Any]:
        """Optimizer-specific termination criteria."""
        return {}

    def _why_violations_needed(self) -> str | None:
        """The setting that makes violations mandatory in tell(), or None."""
        return None
