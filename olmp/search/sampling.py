"""What the released OLMP scripts' NCS effectively did, kept for fidelity comparison (§4).

Their acceptance test only took trials with negative fitness; OLMP's fitness is
always positive, so no searcher ever moved. The search degenerated to Gaussian
sampling around the starting crates x0, with sigma shrinking by r every epoch
(no successes means the 1/5th rule always shrinks), keeping the best sample.

With ``released=True`` it also does what the scripts' code did around that (reference
doc §9), so that their random stream is consumed draw for draw: a trial outside the
bounds is clipped to ``lower + 1e-4`` or ``upper - 1e-4`` (not reflected), and every
tell() draws the (unused) lambda vector randn(popsize) that their NCS drew.
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np

from olmp.search.base import Optimizer, check_epoch_and_r, reflect

CLIP_MARGIN = 1e-4  # §9: out-of-bounds trials land this far inside the bound


def clip_released(x: np.ndarray, lb: np.ndarray, ub: np.ndarray) -> np.ndarray:
    """The released scripts' bound handling: below -> lb + 1e-4, then above -> ub - 1e-4."""
    out = np.array(x, dtype=np.float64)
    low = out < lb
    out[low] = np.broadcast_to(lb, out.shape)[low] + CLIP_MARGIN
    high = out > ub
    out[high] = np.broadcast_to(ub, out.shape)[high] - CLIP_MARGIN
    return out


class Sampling(Optimizer):
    """popsize Gaussian samples around the fixed x0 per generation; best kept.

    Options: `epoch` (generations between sigma shrinks, default popsize),
    `r` (shrink factor, default 0.99) and `released` (§9 clipping and draw order).
    """

    name: ClassVar[str] = "sampling"
    color: ClassVar[str] = "tab:green"
    option_defaults: ClassVar[dict[str, Any]] = {"epoch": None, "r": 0.99, "released": False}

    def _check_options(self) -> None:
        check_epoch_and_r(self.name, self.options)

    def _setup(self) -> None:
        self.epoch = int(self.options["epoch"] or self.popsize)
        self.r = float(self.options["r"])
        self.sigma = self.sigma0
        self.generation = 0

    def _ask(self, left: int) -> np.ndarray:
        noise = self.rng.standard_normal((self.popsize, self.dimension))
        trials = self.x0 + self.sigma * noise
        if self.options["released"]:
            return clip_released(trials, self.lb, self.ub)[:left]
        return reflect(trials, self.lb, self.ub)[:left]

    def _tell(self, X: np.ndarray, f: np.ndarray, v: np.ndarray | None) -> None:
        if self.options["released"]:
            self.rng.standard_normal(self.popsize)  # their NCS's lambda draw: unused, but it moves the stream
        self.generation += 1
        if self.generation % self.epoch == 0:
            self.sigma *= self.r
