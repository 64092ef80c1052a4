"""Negatively Correlated Search (Tang, Yang, Yao 2016), the optimizer OLMP names (§4).

N parallel (1+1) Gaussian searchers. A searcher moves to its trial when the trial
is good enough (NF', fitness) relative to how far it pushes the searcher away from
the others (NC', Corr): lambda_i * NC' > NF'. Pushing searchers apart is what
keeps N (1+1)-ESs from collapsing onto the same basin.

This is the CORRECT acceptance rule. The released OLMP scripts only accepted a
trial with negative fitness, so their population never moved; `sampling.py`
keeps that effective behaviour for comparison.

Tie-breaks (the only additions to §4), both "no information either way":
NF' = 0.5 when f(x) = f(x') = f*, and NC' = 0.5 when Corr(p) = Corr(p') = 0
(e.g. a single searcher, which has no others to be correlated with).
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np

from olmp.search.base import Optimizer, check_epoch_and_r, reflect

LAMBDA_SIGMA0 = 0.1  # lambda_i ~ N(1, lambda_sigma), lambda_sigma: 0.1 -> 0 over the budget
SUCCESS_RATE = 0.2  # the 1/5th rule that drives each sigma_i


def bhattacharyya(
    means_a: np.ndarray, sigmas_a: np.ndarray, means_b: np.ndarray, sigmas_b: np.ndarray
) -> np.ndarray:
    """Pairwise Bhattacharyya distances between isotropic Gaussians N(m, s^2 I).

    Closed form for Sigma_a = s_a^2 I, Sigma_b = s_b^2 I in d dimensions:
    D = |m_a - m_b|^2 / (4 (s_a^2 + s_b^2)) + d/2 * ln((s_a^2 + s_b^2) / (2 s_a s_b)).
    Returns a (len(a), len(b)) array.
    """
    d = means_a.shape[1]
    sq = np.sum((means_a[:, None, :] - means_b[None, :, :]) ** 2, axis=-1)
    var = sigmas_a[:, None] ** 2 + sigmas_b[None, :] ** 2
    return sq / (4.0 * var) + 0.5 * d * np.log(var / (2.0 * sigmas_a[:, None] * sigmas_b[None, :]))


def _ratio(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    """numerator / denominator, 0.5 where the denominator is 0 (the tie-break)."""
    out = np.full(numerator.shape, 0.5)
    np.divide(numerator, denominator, out=out, where=denominator > 0)
    return out


class NCS(Optimizer):
    """Negatively Correlated Search: popsize searchers, one trial each per generation.

    Options: `epoch` (generations between sigma updates, default popsize) and
    `r` (sigma factor, default 0.99). `violations` only affect `result`: the
    search itself sees the fitness alone, as in §4.
    """

    name: ClassVar[str] = "ncs"
    color: ClassVar[str] = "tab:blue"
    option_defaults: ClassVar[dict[str, Any]] = {"epoch": None, "r": 0.99}

    def _check_options(self) -> None:
        check_epoch_and_r(self.name, self.options)

    def _setup(self) -> None:
        n = self.popsize
        self.epoch = int(self.options["epoch"] or n)
        self.r = float(self.options["r"])
        self.means: np.ndarray | None = None  # x_i, set once the initial points are told
        self.fitness = np.full(n, np.inf)  # f(x_i)
        self.sigmas = np.full(n, self.sigma0)  # sigma_i
        self.fstar = np.inf  # f*, best fitness seen
        self.successes = np.zeros(n, dtype=np.int64)
        self.generation = 0  # trial generations told (the initial one not counted)
        self._pending: np.ndarray | None = None

    @property
    def population(self) -> np.ndarray:
        """Current searcher means x_i (rows); the initial points before the first tell."""
        return (self.means if self.means is not None else self._initial_points()).copy()

    def _initial_points(self) -> np.ndarray:
        if self._pending is None:
            noise = self.rng.standard_normal((self.popsize, self.dimension))
            points = reflect(self.x0 + self.sigma0 * noise, self.lb, self.ub)
            points[0] = self.x0  # searcher 0 starts at the current crates
            self._pending = points
        return self._pending

    def _ask(self, left: int) -> np.ndarray:
        if self.means is None:
            return self._initial_points()[:left]
        noise = self.rng.standard_normal((self.popsize, self.dimension))
        trials = reflect(self.means + self.sigmas[:, None] * noise, self.lb, self.ub)
        return trials[:left]

    def _tell(self, X: np.ndarray, f: np.ndarray, v: np.ndarray | None) -> None:
        k = len(X)
        if self.means is None:  # the initial points: searchers start where they were put
            self.means = self._initial_points().copy()
            self.fitness[:k] = f
            self.fstar = min(self.fstar, float(f.min()))
            return
        # lambda_sigma decays linearly over the budget, from the evaluations used so far
        lambda_sigma = LAMBDA_SIGMA0 * max(0.0, 1.0 - self.evaluations / self.budget)
        lambdas = 1.0 + lambda_sigma * self.rng.standard_normal(self.popsize)
        self.fstar = min(self.fstar, float(f.min()))

        # NF': how much worse the trial is than the parent, relative to f*
        trial_gap = f - self.fstar
        parent_gap = self.fitness[:k] - self.fstar
        nf = _ratio(trial_gap, trial_gap + parent_gap)

        # Corr: distance to the nearest OTHER searcher, parents of this generation
        corr_parent = self._corr(self.means[:k], np.arange(k))
        corr_trial = self._corr(X, np.arange(k))
        nc = _ratio(corr_trial, corr_parent + corr_trial)

        accept = lambdas[:k] * nc > nf
        self.means[:k][accept] = X[accept]
        self.fitness[:k][accept] = f[accept]
        self.successes[:k] += accept

        self.generation += 1
        if self.generation % self.epoch == 0:
            rate = self.successes / self.epoch
            self.sigmas = np.where(rate > SUCCESS_RATE, self.sigmas / self.r, self.sigmas * self.r)
            self.successes[:] = 0

    def _corr(self, points: np.ndarray, owners: np.ndarray) -> np.ndarray:
        """Corr of N(points[i], sigma_owner^2 I): min Bhattacharyya distance to the others."""
        if self.popsize == 1:
            return np.zeros(len(points))
        assert self.means is not None
        dist = bhattacharyya(points, self.sigmas[owners], self.means, self.sigmas)
        dist[np.arange(len(points)), owners] = np.inf  # a searcher is not its own neighbour
        return dist.min(axis=1)
