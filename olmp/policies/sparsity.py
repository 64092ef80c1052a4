"""Magnitude pruning to a target sparsity, ramped over rounds; pruned weights stay 0.

global-magnitude: one magnitude threshold across all layers (as torch's global_unstructured);
uniform: the same sparsity in every layer. Round r prunes to (r+1)/R of ``baseline.sparsity``.
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np

from olmp.policies.base import Policy, RunContext


class _Sparsity(Policy):
    straight_through: ClassVar[bool] = False
    in_rounds: ClassVar[bool] = True
    needs_sparsity: ClassVar[bool] = True

    def __init__(self, ctx: RunContext) -> None:
        super().__init__(ctx)
        self.values = {"sparsity": 0.0}

    def prune(self, itr: int, selected: list[str]) -> None:
        r = self._round(itr)
        if r is None:
            return
        b = self.exp.baseline
        self.values = {"sparsity": b.sparsity * (r + 1) / b.rounds}
        self._prune_to(self.values["sparsity"])

    def _prune_to(self, sparsity: float) -> None:
        raise NotImplementedError

    def fields(self) -> dict[str, Any]:
        return {"sparsity": self.values["sparsity"]}

    @staticmethod
    def _smallest(scores: list[np.ndarray], k: int) -> list[np.ndarray]:
        """Masks keeping all but the k smallest scores (exactly k pruned; ties by position)."""
        flat = np.concatenate([s.ravel() for s in scores])
        keep = np.ones(flat.size, dtype=np.float32)
        keep[np.argsort(flat, kind="stable")[:k]] = 0
        out, at = [], 0
        for s in scores:
            out.append(keep[at:at + s.size].reshape(s.shape))
            at += s.size
        return out

    def _scores(self, name: str) -> list[np.ndarray]:
        """|w|, with already-pruned entries at -1 so they stay pruned."""
        lay = self.ctx.layers
        return [np.where(m > 0, np.abs(w.astype(np.float64)), -1.0) for w, m in zip(lay.dense(name), lay.masks[name])]


class GlobalMagnitude(_Sparsity):
    name: ClassVar[str] = "global-magnitude"
    short: ClassVar[str] = "global"

    def _prune_to(self, sparsity: float) -> None:
        lay = self.ctx.layers
        names = self.exp.layers
        scores = [s for n in names for s in self._scores(n)]
        new = self._smallest(scores, round(sparsity * lay.total()))
        at = 0
        for n in names:
            k = len(lay.masks[n])
            lay.set_masks(n, new[at:at + k])
            at += k


class Uniform(_Sparsity):
    """Weights and biases of a layer are ranked together."""

    name: ClassVar[str] = "uniform"

    def _prune_to(self, sparsity: float) -> None:
        lay = self.ctx.layers
        for n in self.exp.layers:
            lay.set_masks(n, self._smallest(self._scores(n), round(sparsity * lay.total(n))))
