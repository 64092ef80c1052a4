"""Weight averaging over the retraining tail (stochastic weight averaging, Izmailov et al. 2018).

A point of the retraining curve is a noisy estimate of where the weights sit (the curve moves by 0.1-0.16
points between checkpoints); the mean of the masked weights taken every M iterations over the last N is a
steadier one. The masks do not change inside the window (it lies after prune_stop_iter), so the mean of
W*M keeps the run's masks and ratio. The LeNets have no batch normalization: nothing to recalibrate.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from olmp.adjusting import MaskedLayers
from olmp.config import RetrainConfig


def due(steps_left: int, cfg: RetrainConfig) -> bool:
    """Whether the model after a step with ``steps_left`` steps still to come joins the average."""
    return steps_left < cfg.average_last and steps_left % cfg.average_every == 0


class WeightAverage:
    """Running sums of every parameter blob of a net (the prunable layers as W*M), and their count."""

    def __init__(self, net: Any) -> None:
        self.net = net
        self.sums = {f"{n}/{i}": np.zeros(b.data.shape, dtype=np.float64)
                     for n in net.params for i, b in enumerate(net.params[n])}
        self.count = 0

    def add(self, layers: MaskedLayers) -> None:
        with layers.masked():
            for n in self.net.params:
                for i, b in enumerate(self.net.params[n]):
                    self.sums[f"{n}/{i}"] += b.data
        self.count += 1

    def apply(self, layers: MaskedLayers) -> None:
        """Put the mean into the net: kept weights of the prunable layers, and every other blob.

        Pruned positions keep their dense (straight-through) values: W*M is the mean, and a later
        restoring step (olmp/guarantee.py) can still splice them back with what they learned.
        """
        if not self.count:
            return
        for n in self.net.params:
            for i, b in enumerate(self.net.params[n]):
                mean = (self.sums[f"{n}/{i}"] / self.count).astype(np.float32)
                dense = layers.dense(n)[i] if n in layers.names else b.data
                if n in layers.names:
                    keep = layers.masks[n][i] != 0
                    dense[keep] = mean[keep]
                else:
                    dense[...] = mean

    def state(self) -> dict[str, np.ndarray]:
        return {**{f"sum/{k}": v for k, v in self.sums.items()}, "count": np.array(self.count)}

    def load_state(self, state: dict[str, np.ndarray]) -> None:
        for k in self.sums:
            self.sums[k][...] = state[f"sum/{k}"]
        self.count = int(state["count"])
