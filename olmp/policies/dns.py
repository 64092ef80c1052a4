"""Dynamic Network Surgery (Guo et al. 2016): fixed crates, probabilistic mask updates, splicing.

T_l = max(mu_l + crate_l sigma_l, 0) with crates from the sensitivity scan (or the release's hand-set
crates in ``baseline.values``); each layer gets a mask update with probability (1 + gamma itr)^-power,
until prune_stop_iter or, where ``baseline.iter_stop`` names it, the layer's own last iteration.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

from olmp.policies.base import Policy, RunContext
from olmp.policies.scan import scanned_values
from olmp.thresholds import threshold

if TYPE_CHECKING:
    from olmp.config import Experiment


class DNS(Policy):
    name: ClassVar[str] = "dns"
    short: ClassVar[str] = "DNS"
    scanned: ClassVar[bool] = True

    @classmethod
    def evaluation_images(cls, exp: Experiment) -> int:
        return exp.baseline.validation_images  # the scan reads training images only

    def __init__(self, ctx: RunContext) -> None:
        super().__init__(ctx)
        b = self.exp.baseline
        by_type = {str(t): g for t, g in b.gamma_by_type.items()}
        self.gamma = {n: by_type.get(ctx.types[n], b.gamma) for n in self.exp.layers}

    def start(self) -> dict[str, Any]:
        ctx = self.ctx
        self.values, info = scanned_values(ctx, lambda n, c: threshold(ctx.stats[n], c), "dns")
        return info

    def selection_probability(self, layer: str, itr: int) -> float:
        return (1.0 + self.gamma[layer] * itr) ** -self.exp.baseline.power

    def prune(self, itr: int, selected: list[str]) -> None:
        stops = self.exp.baseline.iter_stop  # per layer (the DNS author's advice); else prune_stop_iter
        for n in selected:
            if itr < stops.get(n, itr + 1):
                self.ctx.layers.update(n, threshold(self.ctx.stats[n], self.values[n]))

    def fields(self) -> dict[str, Any]:
        return {"crates": dict(self.values)}
