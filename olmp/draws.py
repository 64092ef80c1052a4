"""The one random source a pipeline run draws from (same seed, same run).

Two streams, one per mode (the experiment's ``mode``; olmp/modes.py):

- ``standard``: a numpy ``Generator`` (PCG64) seeded with the run's seed. Each iteration draws
  one uniform per layer for the selection; each search draws a 31-bit seed from it and the
  optimizer gets its own generator from that seed, so searches do not shift later draws.
- ``released`` (reference doc §9): the released scripts' numpy legacy global generator,
  seeded as they did with ``np.random.seed([seed])`` (a one-element list: MT19937's
  init_by_array, which is NOT the same stream as ``RandomState(seed)``). Nothing is split
  off: the selection's ``rand()`` per layer and the search's ``randn`` draws come from one
  stream in the scripts' order, so the seed alone fixes the schedule of selected layers and
  searches.
"""

from __future__ import annotations

from typing import Any

import numpy as np


class StandardDraws:
    """A PCG64 generator; each search gets an independent seed drawn from it."""

    def __init__(self, seed: int) -> None:
        self.rng = np.random.default_rng(seed)

    def selection(self, n: int) -> np.ndarray:
        """One uniform in [0, 1) per prunable layer, in net order."""
        return self.rng.random(n)

    def for_search(self) -> tuple[int, Any]:
        """(seed, generator) of the next search: its own generator, from a drawn seed."""
        seed = int(self.rng.integers(2**31 - 1))
        return seed, None

    def state(self) -> Any:
        return self.rng.bit_generator.state

    def load_state(self, state: Any) -> None:
        self.rng.bit_generator.state = state


class ReleasedDraws:
    """numpy's legacy MT19937 stream, seeded like the released scripts, shared by everything."""

    def __init__(self, seed: int) -> None:
        self.seed = seed
        self.rng = np.random.RandomState([seed])  # = the scripts' np.random.seed([seed])

    def selection(self, n: int) -> np.ndarray:
        """``n`` successive ``rand()`` draws (random_sample(n) is the same stream)."""
        return self.rng.random_sample(n)

    def for_search(self) -> tuple[int, Any]:
        """The search draws from the shared stream itself; the recorded seed is the run's."""
        return self.seed, self.rng

    def state(self) -> dict[str, Any]:
        st = self.rng.get_state(legacy=False)
        return {"legacy_mt19937": {"key": st["state"]["key"].tolist(), "pos": int(st["state"]["pos"]),
                                   "has_gauss": int(st["has_gauss"]), "gauss": float(st["gauss"])}}

    def load_state(self, state: dict[str, Any]) -> None:
        st = state["legacy_mt19937"]
        self.rng.set_state({"bit_generator": "MT19937",
                            "state": {"key": np.array(st["key"], dtype=np.uint32), "pos": st["pos"]},
                            "has_gauss": st["has_gauss"], "gauss": st["gauss"]})
