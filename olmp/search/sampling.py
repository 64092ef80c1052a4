"""What the released OLMP scripts' NCS effectively did, kept for fidelity comparison (§4).

Their acceptance test only took trials with negative fitness; OLMP's fitness is
always positive, so no searcher ever moved. The search degenerated to Gaussian
sampling around the starting crates x0, with sigma shrinking by r every epoch
(no successes means the 1/5th rule always shrinks), keeping the best sample.
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np

from olmp.search.base import Optimizer, check_epoch_and_r, reflect


class Sampling(Optimizer):
    """popsize Gaussian samples around the fixed x0 per generation; best kept.

    Options: `epoch` (generations between sigma shrinks, default popsize) and
    `r` (shrink factor, default 0.99).
    """

    name: ClassVar[str] = "sampling"
    option_defaults: ClassVar[dict[str, Any]] = {"epoch": None, "r": 0.99}

    def _check_options(self) -> None:
        check_epoch_and_r(self.name, self.options)

    def _setup(self) -> None:
        self.epoch = int(self.options["epoch"] or self.popsize)
        self.r = float(self.options["r"])
        self.sigma = self.sigma0
        self.generation = 0

    def _ask(self, left: int) -> np.ndarray:
        noise = self.rng.standard_normal((self.popsize, self.dimension))
        return reflect(self.x0 + self.sigma * noise, self.lb, self.ub)[:left]

    def _tell(self, X: np.ndarray, f: np.ndarray, v: np.ndarray | None) -> None:
        self.generation += 1
        if self.generation % self.epoch == 0:
            self.sigma *= self.r
