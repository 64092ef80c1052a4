"""What every threshold policy is given and what it answers (the pipeline calls nothing else).

A policy decides the masks; the pipeline (olmp/pipeline.py) owns the loop, SGD, the record and
the checkpoints. Per run the pipeline calls:

    start()                           once, on the reference model, before the first SGD step
    selection_probability(layer, itr) the chance a layer is "selected" at iteration itr
    prune(itr, selected)              every iteration before prune_stop_iter, before the SGD step;
                                      returns a search's record entry, or None
    update_masks(selected)            the selected layers' masks from their current values, no search
                                      (what prune does first; the benchmarks set up masks with it)
    fields()                          per-layer values written into progress entries and "final"
    state() / load_state(state)       what a checkpoint keeps of the policy

What a policy needs from the pipeline is declared on its class, never tested by name:
``straight_through`` (pruned weights keep learning), ``scores_candidates`` (chunk copies of the
evaluation net for candidate scoring), ``evaluation_images(exp)`` (a fixed batch of training
images instead of the current minibatch), and for the config's checks ``searches``, ``scanned``,
``in_rounds`` and ``needs_sparsity``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from olmp.adjusting import MaskedLayers
from olmp.thresholds import LayerStats

if TYPE_CHECKING:
    from olmp.config import Experiment


@dataclass
class RunContext:
    """What a policy may read and change: the masks, the statistics, the evaluation net, the generator."""

    exp: Experiment
    layers: MaskedLayers  # masks and weights of the prunable layers (changed through it)
    stats: dict[str, LayerStats]  # mu_l, sigma_l of the reference model
    types: dict[str, str]  # layer name -> Caffe type
    scoring: Any  # olmp.crate_search.Scoring: the evaluation net and its chunks
    draws: Any  # the run's one random source (olmp/draws.py)


class Policy:
    """The interface the pipeline calls; the defaults do nothing."""

    name: ClassVar[str] = ""
    short: ClassVar[str] = ""  # the reports' short name (the frontier's legend); "": the name
    straight_through: ClassVar[bool] = True  # pruned weights keep learning (splicing)
    scores_candidates: ClassVar[bool] = False  # needs chunk copies of the evaluation net
    searches: ClassVar[bool] = False  # reads the [search] settings (OLMP)
    scanned: ClassVar[bool] = False  # per-layer values from a sensitivity scan (or baseline.values)
    in_rounds: ClassVar[bool] = False  # prunes in baseline.rounds rounds before prune_stop_iter
    needs_sparsity: ClassVar[bool] = False  # prunes to baseline.sparsity

    def __init__(self, ctx: RunContext) -> None:
        self.ctx = ctx
        self.exp = ctx.exp
        self.values: dict[str, float] = {}  # the per-layer setting (crate, quality, ...), checkpointed

    @classmethod
    def evaluation_images(cls, exp: Experiment) -> int:
        """Training images in a fixed evaluation batch; 0: the current SGD minibatch."""
        return 0

    def start(self) -> dict[str, Any] | None:
        return None

    def selection_probability(self, layer: str, itr: int) -> float:
        return 1.0

    def prune(self, itr: int, selected: list[str]) -> dict[str, Any] | None:
        return None

    def update_masks(self, selected: list[str]) -> None:
        return None

    def fields(self) -> dict[str, Any]:
        return {}

    def state(self) -> dict[str, Any]:
        return {"values": self.values}

    def load_state(self, state: dict[str, Any]) -> None:
        self.values = {k: float(v) for k, v in state.get("values", {}).items()}

    def _round(self, itr: int) -> int | None:
        """The round pruned at iteration itr, or None (policies with ``in_rounds``)."""
        rounds = self.exp.baseline.rounds
        every = self.exp.pipeline.prune_stop_iter // rounds
        if itr % every or itr // every >= rounds:
            return None
        return itr // every
