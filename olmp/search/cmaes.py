"""CMA-ES from pycma, behind the same ask/tell protocol as NCS (§4).

Seeding: pycma's own 'seed' option reseeds numpy's GLOBAL random state, which
would couple the search to everything else in the process. Instead pycma's
'randn' option draws from this optimizer's own Generator, and 'seed' is nan
("do nothing"), so the same seed gives bit-identical runs and np.random is
never touched.

Constraint handling (the ``constraint`` argument):
- "penalty" (default): the given fitness is used as is; the caller has already
  given infeasible candidates OLMP's fitness 1.1.
- "al": tell() gets the RAW sizes plus `violations` (g(x) <= 0 feasible) and the
  penalty comes from pycma's augmented Lagrangian
  (`cma.constraints_handler.AugmentedLagrangian`, the machinery behind
  `cma.ConstrainedFitnessAL`), driven the way ConstrainedFitnessAL drives it
  with which='best'.
"""

from __future__ import annotations

import warnings
from typing import Any, ClassVar

import cma
import numpy as np
from cma.constraints_handler import AugmentedLagrangian

from olmp.errors import OlmpError
from olmp.search.base import Optimizer

# pycma ends a run on a flat fitness (tolfun, tolfunhist, tolflatfitness). In OLMP
# a generation where every candidate is infeasible (all 1.1) is expected early on,
# not convergence, so these are off unless `cma_options` turns them back on; the
# budget and pycma's step-size based criteria (tolx, ...) still end the run.
# set from the constructor's arguments; overriding them would break the budget or seeding
OWNED_CMA_OPTIONS = ("bounds", "popsize", "maxfevals", "seed", "randn")
PLATEAU_TOLERANCES_OFF = {"tolfun": 0, "tolfunhist": 0, "tolflatfitness": np.inf}


class _QuietAugmentedLagrangian(AugmentedLagrangian):
    """pycma's augmented Lagrangian without its loggers.

    The stock constructor builds cma.logger.Logger objects, which create an
    `outcmaes/` folder in the current directory; a library must not do that.
    """

    def _init_(self) -> None:
        self.logging = 0
        self.loggers: list[Any] = []
        self.logger_mu_conditions = None


class CMAES(Optimizer):
    """pycma's CMAEvolutionStrategy with bounds, popsize and maxfevals = budget.

    Constraint: "penalty" or "al". Option: `cma_options`, a dict
    of extra pycma options that override ours (e.g. {'tolfun': 1e-11} restores
    pycma's plateau stop); pycma's termination criteria show up in stop() next to
    the budget.
    """

    name: ClassVar[str] = "cmaes"
    color: ClassVar[str] = "tab:orange"
    option_defaults: ClassVar[dict[str, Any]] = {"cma_options": None}
    constraints: ClassVar[tuple[str, ...]] = ("penalty", "al")
    min_popsize: ClassVar[int] = 2  # pycma needs a parent and an offspring

    def _check_options(self) -> None:
        extra = self.options["cma_options"]
        if extra is not None and not isinstance(extra, dict):
            raise OlmpError(f"cmaes option cma_options must be a dict, got {extra!r}")
        owned = sorted(set(extra or ()) & set(OWNED_CMA_OPTIONS))
        if owned:
            raise OlmpError(
                f"cmaes option cma_options may not set '{owned[0]}': use the optimizer's own argument"
            )

    def _setup(self) -> None:
        opts = {
            "bounds": [self.lb.tolist(), self.ub.tolist()],
            "popsize": self.popsize,
            "maxfevals": self.budget,
            "verbose": -9,
            "verb_log": 0,
            "verb_disp": 0,
            "seed": np.nan,  # do not reseed np.random; sampling uses 'randn'
            "randn": self._randn,
            **PLATEAU_TOLERANCES_OFF,
            **(self.options["cma_options"] or {}),
        }
        self.es = cma.CMAEvolutionStrategy(self.x0.tolist(), self.sigma0, opts)
        self._es_solutions: list[np.ndarray] = []
        self.al: AugmentedLagrangian | None = None
        if self.constraint == "al":
            self.al = _QuietAugmentedLagrangian(self.dimension)

    def _randn(self, *shape: int) -> np.ndarray:
        """pycma's randn(lam, N), drawn from this optimizer's Generator."""
        return self.rng.standard_normal(shape)

    def _ask(self, left: int) -> np.ndarray:
        # pycma's boundary transformation keeps samples inside; the clip only
        # guards against rounding. pycma gets its own arrays back in tell().
        self._es_solutions = self.es.ask()
        return np.clip(np.array(self._es_solutions), self.lb, self.ub)[:left]

    def _tell(self, X: np.ndarray, f: np.ndarray, v: np.ndarray | None) -> None:
        if len(X) < len(self._es_solutions):
            return  # last, partial generation: the budget is spent, only `result` learns
        if self.al is None:
            self.es.tell(self._es_solutions, f.tolist())
            return
        assert v is not None  # tell() checked it (_why_violations_needed)
        G = [[float(g)] for g in v]
        # pycma's AL warns about its internal heuristics (e.g. no coefficients yet
        # while everything is feasible); those are expected here, not user errors.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            penalized = [float(fi) + sum(self.al(g)) for fi, g in zip(f, G)]
            self.es.tell(self._es_solutions, penalized)
            if not self.al.is_initialized:
                self.al.set_coefficients(f.tolist(), G)
            best = int(np.argmin(penalized))
            self.al.update(float(f[best]), G[best])

    def _stop(self) -> dict[str, Any]:
        return dict(self.es.stop())

    def _why_violations_needed(self) -> str | None:
        return "constraint='al'" if self.al is not None else None
