"""Deep Compression (Han et al. 2015): T_l = quality_l * std(weights_l), prune -> retrain rounds, pruned stay 0.

Round r = 0..R-1 happens at iteration r * (prune_stop_iter // R) and prunes to fraction (r+1)/R of
the final threshold; masks only ever lose entries; the rest of the budget retrains.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from olmp.policies.base import Policy, RunContext
from olmp.policies.scan import scanned_values

if TYPE_CHECKING:
    from olmp.config import Experiment


class DeepCompression(Policy):
    name: ClassVar[str] = "deep-compression"
    short: ClassVar[str] = "DC"
    straight_through: ClassVar[bool] = False
    scanned: ClassVar[bool] = True
    in_rounds: ClassVar[bool] = True

    def __init__(self, ctx: RunContext) -> None:
        super().__init__(ctx)
        # std of the reference layer's weights (the weight blob, signed, population std)
        self.std = {n: float(np.asarray(ctx.layers.dense(n)[0], dtype=np.float64).std()) for n in self.exp.layers}
        self.thresholds = {n: 0.0 for n in self.exp.layers}

    @classmethod
    def evaluation_images(cls, exp: Experiment) -> int:
        return exp.baseline.validation_images  # the scan reads training images only

    def start(self) -> dict[str, Any]:
        self.values, info = scanned_values(self.ctx, lambda n, q: q * self.std[n], "magnitude")
        info["weight_std"] = dict(self.std)
        return info

    def prune(self, itr: int, selected: list[str]) -> None:
        r = self._round(itr)
        if r is None:
            return
        frac = (r + 1) / self.exp.baseline.rounds
        lay = self.ctx.layers
        for n in self.exp.layers:
            t = frac * self.values[n] * self.std[n]
            self.thresholds[n] = t
            lay.set_masks(n, [m * (np.abs(w) > t) for w, m in zip(lay.dense(n), lay.masks[n])])

    def fields(self) -> dict[str, Any]:
        return {"qualities": dict(self.values), "thresholds": dict(self.thresholds)}

    def state(self) -> dict[str, Any]:
        return {"values": self.values, "thresholds": self.thresholds}

    def load_state(self, state: dict[str, Any]) -> None:
        super().load_state(state)
        self.thresholds = {k: float(v) for k, v in state.get("thresholds", {}).items()}
