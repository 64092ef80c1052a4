"""OLMP (reference doc §3): selected layers get mask updates; every K iterations, a crate search.

    each layer is "selected" with probability 1 / (1 + gamma_l * itr)
    selected layers get a mask update with their current crate
    if itr % K == 0 and at least search.min_layers layers are selected:
        search the crates of the selected layers (olmp/crate_search.py), others fixed
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

from olmp.crate_search import search_crates
from olmp.errors import OlmpError
from olmp.policies.base import Policy, RunContext
from olmp.thresholds import threshold

if TYPE_CHECKING:
    from olmp.config import Experiment


def selection_probability(gamma: float, itr: int) -> float:
    """A layer takes part at iteration itr with probability 1 / (1 + gamma_l * itr)."""
    return 1.0 / (1.0 + gamma * itr)


class OLMP(Policy):
    name: ClassVar[str] = "olmp"
    short: ClassVar[str] = "OLMP"
    scores_candidates: ClassVar[bool] = True
    searches: ClassVar[bool] = True

    def __init__(self, ctx: RunContext) -> None:
        super().__init__(ctx)
        self.crates = {n: self.exp.pipeline.initial_crate for n in self.exp.layers}
        by_type = {str(t): g for t, g in self.exp.pipeline.gamma.items()}
        lacking = sorted({ctx.types[n] for n in self.exp.layers} - set(by_type))
        if lacking:
            raise OlmpError(f"pipeline.gamma has no entry for {', '.join(lacking)}, the type of a layer it prunes",
                            self.exp.source.split(" --set ")[0] or None)
        self.gamma = {n: by_type[ctx.types[n]] for n in self.exp.layers}  # gamma_l from the layer's type

    @classmethod
    def evaluation_images(cls, exp: Experiment) -> int:
        return exp.search.validation_images if exp.search.accuracy_on == "validation" else 0

    def selection_probability(self, layer: str, itr: int) -> float:
        return selection_probability(self.gamma[layer], itr)

    def prune(self, itr: int, selected: list[str]) -> dict[str, Any] | None:
        ctx = self.ctx
        self.update_masks(selected)
        if itr % self.exp.search.every == 0 and len(selected) >= self.exp.search.min_layers:
            return search_crates(self.exp, itr, selected, self.crates, ctx.layers, ctx.stats, ctx.scoring, ctx.draws)
        return None

    def update_masks(self, selected: list[str]) -> None:
        for n in selected:
            self.ctx.layers.update(n, threshold(self.ctx.stats[n], self.crates[n]))

    def fields(self) -> dict[str, Any]:
        return {"crates": dict(self.crates)}

    def state(self) -> dict[str, Any]:
        return {"crates": self.crates}

    def load_state(self, state: dict[str, Any]) -> None:
        self.crates = {k: float(v) for k, v in state["crates"].items()}
