"""Masked training through Caffe's own solver (reference doc §2, "adjusting").

Each prunable layer keeps its dense weights W and its masks M. The solver's
callbacks make every step see W*M in the forward pass while the update lands on
the dense W (straight-through), so pruned connections keep learning and can be
spliced back:

    on_start:            save W, write W*M into the blob      (forward/backward see W*M)
    on_gradients_ready:  write W back into the blob           (ApplyUpdate updates W)

Between steps the blobs hold the dense W. Anything that evaluates, saves or
inspects goes through ``masked()``, which shows W*M and puts W back afterwards.

With ``straight_through=False`` (Deep Compression and the simple magnitude
baselines) pruned weights stay at zero instead: the caller runs ``after_step()``
after every solver step, which zeroes W under the mask, so neither their gradient
nor their momentum history can revive them. The gradients are deliberately left
unmasked: a masked (zero) gradient lets the momentum history of pruned weights decay
as 0.9^n into float32 subnormals, where it sticks (0.9 x the smallest subnormal
rounds back to it) and slows every later step (96% of LeNet-5's history was subnormal
at iteration 27,000; benchmarks/frozen_step.py measures the cost). Each weight's update reads
only its own gradient and history, so the kept weights train exactly as with masked
gradients (a solver that clips gradients by their global norm would see the difference).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import numpy as np

from olmp import masks as mask_rule


class MaskedLayers:
    """Dense weights and masks of the prunable layers of a live Caffe net."""

    def __init__(self, net: Any, layer_names: list[str] | tuple[str, ...], straight_through: bool = True) -> None:
        self.net = net
        self.straight_through = straight_through
        self.names = list(layer_names)
        self.masks: dict[str, list[np.ndarray]] = {
            n: [np.ones(b.data.shape, dtype=np.float32) for b in net.params[n]] for n in self.names
        }
        self._dense: dict[str, list[np.ndarray]] = {
            n: [np.empty(b.data.shape, dtype=np.float32) for b in net.params[n]] for n in self.names
        }
        self._masked = False

    # -- the blobs --------------------------------------------------------------------------
    def data(self, name: str) -> list[np.ndarray]:
        """Views of the layer's blobs in Caffe's memory."""
        return [b.data for b in self.net.params[name]]

    def dense(self, name: str) -> list[np.ndarray]:
        """The dense weights W: the blobs between steps, the saved copy while masked."""
        return self._dense[name] if self._masked else self.data(name)

    def _apply(self) -> None:
        for n in self.names:
            for blob, keep, mask in zip(self.data(n), self._dense[n], self.masks[n]):
                keep[...] = blob
                np.multiply(blob, mask, out=blob)
        self._masked = True

    def _restore(self) -> None:
        for n in self.names:
            for blob, keep in zip(self.data(n), self._dense[n]):
                blob[...] = keep
        self._masked = False

    @contextlib.contextmanager
    def masked(self) -> Iterator[MaskedLayers]:
        """Show W*M in the blobs (for evaluation or saving), then put W back."""
        if self._masked:
            yield self
            return
        self._apply()
        try:
            yield self
        finally:
            self._restore()

    def attach(self, solver: Any) -> None:
        """Register the callbacks on a Caffe solver (straight-through, or frozen pruned weights)."""
        solver.add_callback(lambda: self._apply(), lambda: self._restore())

    def after_step(self) -> None:
        """Without straight-through: zero W under the mask (momentum must not revive pruned weights)."""
        if self.straight_through:
            return
        for n in self.names:
            for w, m in zip(self.dense(n), self.masks[n]):
                np.multiply(w, m, out=w)

    # -- the masks --------------------------------------------------------------------------
    def update(self, name: str, threshold: float) -> None:
        """DNS mask update of one layer (weights and bias) at threshold T, on the dense W."""
        for w, m in zip(self.dense(name), self.masks[name]):
            mask_rule.update_mask(w, m, threshold, out=m)

    def set_masks(self, name: str, new: list[np.ndarray]) -> None:
        """Replace a layer's masks (0/1 arrays of the blobs' shapes); zero W under them without straight-through."""
        for m, n_ in zip(self.masks[name], new):
            m[...] = n_
        if not self.straight_through:
            for w, m in zip(self.dense(name), self.masks[name]):
                np.multiply(w, m, out=w)

    def remaining(self, name: str | None = None) -> int:
        names = self.names if name is None else [name]
        return int(sum(np.count_nonzero(m) for n in names for m in self.masks[n]))

    def total(self, name: str | None = None) -> int:
        names = self.names if name is None else [name]
        return int(sum(m.size for n in names for m in self.masks[n]))

    def size(self) -> float:
        """OLMP's objective: remaining / all parameters of the prunable layers."""
        return self.remaining() / self.total()

    # -- checkpoints ------------------------------------------------------------------------
    def state(self) -> dict[str, np.ndarray]:
        return {f"{n}/{i}": m.copy() for n in self.names for i, m in enumerate(self.masks[n])}

    def load_state(self, state: dict[str, np.ndarray]) -> None:
        for n in self.names:
            for i, m in enumerate(self.masks[n]):
                m[...] = state[f"{n}/{i}"]
