"""Candidate evaluation (reference doc §3): what a vector of crates would do.

A candidate's crates give the selected layers new masks, starting from their
current masks (the DNS rule keeps its hysteresis). The net is re-run from the
first layer whose mask differs from the one the net last ran with, reusing the
activations below it (no layer changed: the last accuracy stands), and its
accuracy is read from the logits. The live masks and weights are put
back exactly afterwards: evaluating never changes the training state.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any, Iterator, Sequence

import numpy as np

from olmp import evaluate
from olmp import masks as mask_rule
from olmp.adjusting import MaskedLayers
from olmp.thresholds import LayerStats, threshold


@dataclass(frozen=True)
class Evaluation:
    size: float  # remaining / total over all prunable layers
    accuracy: float  # on the evaluation batch
    margin: float  # accuracy - (reference accuracy - delta); >= 0 means feasible

    @property
    def feasible(self) -> bool:
        return self.margin >= 0


class CandidateEvaluator:
    """Scores crates of the selected layers; use inside ``session()`` only."""

    def __init__(
        self,
        net: Any,
        layers: MaskedLayers,
        stats: dict[str, LayerStats],
        selected: Sequence[str],
        delta: float,
    ) -> None:
        self.net = net
        self.layers = layers
        self.stats = stats
        order = list(net._layer_names)
        self.selected = sorted(selected, key=order.index)
        self.first_prunable = min(layers.names, key=order.index)
        self.delta = delta
        self.logits, self.labels = evaluate.loss_inputs(net)
        self.total = layers.total()
        self.fixed_remaining = layers.remaining() - sum(layers.remaining(n) for n in self.selected)
        self.reference_accuracy = float("nan")
        self._scratch = {n: [np.empty(m.shape, dtype=bool) for m in layers.masks[n]] for n in self.selected}
        self._absw: dict[str, list[np.ndarray]] = {}
        self._live: dict[str, list[np.ndarray]] = {}  # the live masks as bool, for the rule's hysteresis
        self._shown: dict[str, list[np.ndarray]] = {}  # masks in the blobs, that the activations came from
        self._shown_count: dict[str, int] = {}
        self._last_accuracy = float("nan")
        self.evaluations = 0
        self.forwards = 0  # evaluations that had to re-run part of the net

    @contextlib.contextmanager
    def session(self) -> Iterator["CandidateEvaluator"]:
        """Mask the net, measure the current model on the batch, and restore all on exit."""
        with self.layers.masked():
            self._absw = {n: [np.abs(w) for w in self.layers.dense(n)] for n in self.selected}
            self.net.forward(start=self.first_prunable)  # every layer may have moved since the last step
            self.reference_accuracy = self._last_accuracy = self._accuracy()
            self._live = {n: [m.astype(bool) for m in self.layers.masks[n]] for n in self.selected}
            self._shown = {n: [m.copy() for m in self._live[n]] for n in self.selected}
            self._shown_count = {n: sum(int(np.count_nonzero(m)) for m in self._live[n]) for n in self.selected}
            try:
                yield self
            finally:
                self._write_live_masks()

    def _accuracy(self) -> float:
        return evaluate.batch_accuracy(self.net.blobs[self.logits].data, self.net.blobs[self.labels].data)

    def _write_live_masks(self) -> None:
        for n in self.selected:
            for blob, w, m in zip(self.layers.data(n), self.layers.dense(n), self.layers.masks[n]):
                np.multiply(w, m, out=blob)

    def masks_for(self, crates: Sequence[float]) -> dict[str, list[np.ndarray]]:
        """The selected layers' masks (bool) under ``crates``: scratch arrays, overwritten per call."""
        for n, c in zip(self.selected, crates):
            t = threshold(self.stats[n], float(c))
            for absw, live, out in zip(self._absw[n], self._live[n], self._scratch[n]):
                mask_rule.keep(absw, live, t, out)
        return self._scratch

    def __call__(self, crates: Sequence[float]) -> Evaluation:
        new = self.masks_for(crates)
        remaining = self.fixed_remaining
        first_changed = None
        for n in self.selected:  # in net order
            count = sum(int(np.count_nonzero(m)) for m in new[n])
            remaining += count
            if count == self._shown_count[n] and all(np.array_equal(m, s) for m, s in zip(new[n], self._shown[n])):
                continue  # the same mask: the activations from here on still hold
            first_changed = first_changed or n
            for blob, w, m, shown in zip(self.layers.data(n), self.layers.dense(n), new[n], self._shown[n]):
                np.multiply(w, m, out=blob)
                np.copyto(shown, m)
            self._shown_count[n] = count
        if first_changed is not None:
            self.net.forward(start=first_changed)
            self._last_accuracy = self._accuracy()
            self.forwards += 1
        acc = self._last_accuracy
        self.evaluations += 1
        return Evaluation(remaining / self.total, acc, acc - (self.reference_accuracy - self.delta))
