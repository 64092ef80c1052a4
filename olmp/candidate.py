"""Candidate evaluation (reference doc §3): what a vector of crates would do.

A candidate's crates give the selected layers new masks, starting from their
current masks (the DNS rule keeps its hysteresis). The net is re-run from the
first layer whose mask differs from the one the net last ran with, reusing the
activations below it (no layer changed: the last accuracy stands), and its
accuracy is read from the logits. The live masks and weights are put
back exactly afterwards: evaluating never changes the training state.

With ``chunks`` (``search.chunks`` > 1) the batch is spread over that many small copies of the
evaluation net (Input layers, weights shared with it) and a candidate is scored chunk by chunk,
stopping as soon as its errors so far already exceed what the constraint allows: most candidates
of a search are far outside it (one crate too high drops the net to chance accuracy), and they
now cost one chunk instead of the whole batch (benchmarks/bench.py: 6.4x on LeNet-5's first
search). The decision is exact: a stopped candidate is infeasible on the whole batch, and it is
reported with the best accuracy the rest of the batch could still give it (an upper bound, below
the constraint). Every other candidate reads all chunks, and its accuracy is the whole batch's.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

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


class _View:
    """A net that scores (part of) the batch, and the mask versions its activations come from."""

    def __init__(self, net: Any, start: str) -> None:
        self.net = net
        self.start = start  # where a full refresh of this view starts
        self.logits, self.labels = evaluate.loss_inputs(net)
        self.images = int(net.blobs[self.labels].data.size)
        self.versions: dict[str, int] = {}
        self.correct = 0

    def run(self, start: str, versions: dict[str, int]) -> None:
        self.net.forward(start=start)
        self.correct = evaluate.correct(self.net.blobs[self.logits].data, self.net.blobs[self.labels].data)
        self.versions = dict(versions)


def first_computed(net: Any) -> str:
    """The first layer that is not an Input layer: where a net with Input layers starts computing."""
    return next(n for n, lay in zip(net._layer_names, net.layers) if lay.type != "Input")


@dataclass(frozen=True)
class Chunk:
    """A copy of the evaluation net for images [lo, hi) of its batch: Input layers, weights shared."""

    net: Any
    lo: int
    hi: int
    inputs: tuple[str, ...]  # the blobs copied from the evaluation net at the start of a search


def chunk_nets(net: Any, net_param: Any, phase: int, chunks: int) -> list[Chunk]:
    """``net``'s batch in ``chunks`` contiguous parts, each in its own small net sharing ``net``'s weights."""
    from olmp import prototxt  # noqa: PLC0415

    tops = [t for lay in prototxt.layers_in_phase(net_param, phase) if not lay.bottom for t in lay.top]
    batch = net.blobs[tops[0]].data.shape[0]
    if not 1 <= chunks <= batch:
        raise ValueError(f"search.chunks must be in [1, {batch}] (the batch size), got {chunks}")
    out = []
    for idx in np.array_split(np.arange(batch), chunks):
        shapes = {t: (len(idx), *net.blobs[t].data.shape[1:]) for t in tops}
        part = prototxt.make_net(prototxt.input_net_param(net_param, phase, shapes), "test")
        part.share_with(net)
        out.append(Chunk(part, int(idx[0]), int(idx[-1]) + 1, tuple(tops)))
    return out


class CandidateEvaluator:
    """Scores crates of the selected layers; use inside ``session()`` only.

    The standard mode's evaluation: every candidate starts from the live masks, which are put back
    afterwards; the search's best starts empty and is applied only if it is feasible on the whole
    batch and no larger than the model before the search.
    """

    def __init__(
        self,
        net: Any,
        layers: MaskedLayers,
        stats: dict[str, LayerStats],
        selected: Sequence[str],
        delta: float,
        crates: dict[str, float] | None = None,
        chunks: Sequence[Chunk] = (),
    ) -> None:
        self.net = net
        self.layers = layers
        self.stats = stats
        order = list(net._layer_names)
        self.given = list(selected)  # the search's order of the crates
        self.selected = sorted(selected, key=order.index)
        self.first_prunable = min(layers.names, key=order.index)
        self.delta = delta
        self.chunks = list(chunks)
        self.views = [_View(c.net, first_computed(c.net)) for c in self.chunks] or [_View(net, self.first_prunable)]
        self.images = sum(v.images for v in self.views)
        self.total = layers.total()
        self.fixed_remaining = layers.remaining() - sum(layers.remaining(n) for n in self.selected)
        self.reference_accuracy = float("nan")
        self._scratch = {n: [np.empty(m.shape, dtype=bool) for m in layers.masks[n]] for n in self.selected}
        self._absw: dict[str, list[np.ndarray]] = {}
        self._live: dict[str, list[np.ndarray]] = {}  # the live masks as bool, for the rule's hysteresis
        self._shown: dict[str, list[np.ndarray]] = {}  # the masks now in the blobs
        self._shown_count: dict[str, int] = {}
        self._version: dict[str, int] = {}  # bumped whenever a layer's mask in the blobs changes
        self.evaluations = 0
        self.forwards = 0  # evaluations that had to re-run part of the net (or of one chunk)

    @contextlib.contextmanager
    def session(self) -> Iterator[CandidateEvaluator]:
        """Mask the net, measure the current model on the batch, and restore all on exit."""
        with self.layers.masked():
            self._absw = {n: [np.abs(w) for w in self.layers.dense(n)] for n in self.selected}
            self._version = {n: 0 for n in self.selected}
            for c in self.chunks:  # this search's batch, cut into the chunks
                for t in c.inputs:
                    c.net.blobs[t].data[...] = self.net.blobs[t].data[c.lo:c.hi]
            for v in self.views:  # every layer may have moved since the last step
                v.run(v.start, self._version)
            self.reference_accuracy = sum(v.correct for v in self.views) / self.images
            self._live = {n: [m.astype(bool) for m in self.layers.masks[n]] for n in self.selected}
            self._shown = {n: [m.copy() for m in self._live[n]] for n in self.selected}
            self._shown_count = {n: sum(int(np.count_nonzero(m)) for m in self._live[n]) for n in self.selected}
            try:
                yield self
            finally:
                self._write_live_masks()

    def _write_live_masks(self) -> None:
        for n in self.selected:
            for blob, w, m in zip(self.layers.data(n), self.layers.dense(n), self.layers.masks[n]):
                np.multiply(w, m, out=blob)

    def masks_for(self, crates: Sequence[float] | np.ndarray) -> dict[str, list[np.ndarray]]:
        """The selected layers' masks (bool) under ``crates``: scratch arrays, overwritten per call."""
        for n, c in zip(self.selected, crates):
            t = threshold(self.stats[n], float(c))
            for absw, live, out in zip(self._absw[n], self._live[n], self._scratch[n]):
                mask_rule.keep(absw, live, t, out)
        return self._scratch

    def __call__(self, crates: Sequence[float] | np.ndarray, whole_batch: bool = False) -> Evaluation:
        """Size and accuracy of ``crates``; chunked, an infeasible one may stop early unless ``whole_batch``."""
        new = self.masks_for(crates)
        remaining = self.fixed_remaining
        for n in self.selected:  # in net order
            count = sum(int(np.count_nonzero(m)) for m in new[n])
            remaining += count
            if count == self._shown_count[n] and all(np.array_equal(m, s) for m, s in zip(new[n], self._shown[n])):
                continue  # the same mask: activations computed with it still hold
            for blob, w, m, shown in zip(self.layers.data(n), self.layers.dense(n), new[n], self._shown[n]):
                np.multiply(w, m, out=blob)
                np.copyto(shown, m)
            self._shown_count[n] = count
            self._version[n] += 1
        self.evaluations += 1
        floor = self.reference_accuracy - self.delta
        wrong = 0
        for v in self.views:
            start = next((n for n in self.selected if v.versions[n] != self._version[n]), None)
            if start is not None:  # re-run from the first layer whose mask changed since this view last ran
                v.run(start, self._version)
                self.forwards += 1
            wrong += v.images - v.correct
            best = (self.images - wrong) / self.images  # the accuracy if every image left were right
            if best - floor < 0 and not whole_batch:
                return Evaluation(remaining / self.total, best, best - floor)  # infeasible whatever the rest says
        acc = (self.images - wrong) / self.images
        return Evaluation(remaining / self.total, acc, acc - floor)

    def begin(self, opt: Any, x0: np.ndarray, infeasible_fitness: float) -> float | None:
        """The search's best starts empty: nothing to score before the first generation."""
        return None

    def check_best(self, res: Any, margin: float | None) -> float | None:
        """The best's margin on the whole batch (a chunked score may have stopped early)."""
        return None if res.xbest is None else self(res.xbest, whole_batch=True).margin

    def apply(self, res: Any, margin: float | None, size_before: float, crates: dict[str, float]) -> bool:
        """Take the best crates if feasible and no larger than before; call after the session."""
        if res.xbest is None or margin is None or margin < 0 or res.fbest > size_before:
            return False
        for n, c in zip(self.given, res.xbest):
            crates[n] = float(c)
            self.layers.update(n, threshold(self.stats[n], float(c)))
        return True


class CumulativeEvaluator:
    """The released scripts' candidate evaluation (reference doc §9): nothing is put back.

    For each candidate every prunable layer gets the §2 mask update on the LIVE masks (a
    selected layer with the candidate's crate, the others with their current crate), the net
    re-runs on the same minibatch, and the masks stay as they are: the masks after candidate k
    are where candidate k+1 starts, so hysteresis-band weights pruned by an aggressive candidate
    stay pruned. The size counted is the mask state right after the candidate's update.

    The search starts from the current crates evaluated once (``begin``), and afterwards
    the best crates are applied to every layer on top of the masks the last candidate left
    (``conclude``). Re-running from the first layer whose mask changed is exact: the layers
    below it see the same weights and the same minibatch.
    """

    def __init__(
        self,
        net: Any,
        layers: MaskedLayers,
        stats: dict[str, LayerStats],
        selected: Sequence[str],
        delta: float,
        crates: dict[str, float] | None = None,
        chunks: Sequence[Chunk] = (),
    ) -> None:
        if crates is None or chunks:
            raise ValueError("cumulative evaluation needs the current crates and scores the whole batch (no chunks)")
        self.layers = layers
        self.stats = stats
        order = list(net._layer_names)
        self.order = sorted(layers.names, key=order.index)
        self.selected = list(selected)
        self.delta = delta
        self.current = dict(crates)
        self.view = _View(net, self.order[0])
        self.total = layers.total()
        self.reference_accuracy = float("nan")
        self.evaluations = 0
        self.forwards = 0
        self._absw: dict[str, list[np.ndarray]] = {}
        self._scratch = {n: [np.empty(m.shape, dtype=bool) for m in layers.masks[n]] for n in self.order}
        self._count = {n: layers.remaining(n) for n in self.order}

    @contextlib.contextmanager
    def session(self) -> Iterator[CumulativeEvaluator]:
        """Mask the net and measure the current model on the minibatch; the live masks keep every change."""
        with self.layers.masked():
            self._absw = {n: [np.abs(w) for w in self.layers.dense(n)] for n in self.order}
            self.view.run(self.view.start, {})
            self.reference_accuracy = self.view.correct / self.view.images
            yield self

    def __call__(self, crates: Sequence[float] | np.ndarray, whole_batch: bool = False) -> Evaluation:
        """Update every layer's live mask for ``crates`` (selected layers), re-run, and score."""
        values = {**self.current, **dict(zip(self.selected, (float(c) for c in crates)))}
        first_changed = None
        for n in self.order:
            t = threshold(self.stats[n], values[n])
            changed = False
            for absw, m, new in zip(self._absw[n], self.layers.masks[n], self._scratch[n]):
                mask_rule.keep(absw, m, t, new)
                if not np.array_equal(new, m):
                    np.copyto(m, new, casting="unsafe")
                    changed = True
            if changed:
                for blob, w, m in zip(self.layers.data(n), self.layers.dense(n), self.layers.masks[n]):
                    np.multiply(w, m, out=blob)
                self._count[n] = self.layers.remaining(n)
                first_changed = first_changed or n
        self.evaluations += 1
        if first_changed is not None:
            self.view.run(first_changed, {})
            self.forwards += 1
        acc = self.view.correct / self.view.images
        floor = self.reference_accuracy - self.delta
        return Evaluation(sum(self._count.values()) / self.total, acc, acc - floor)

    def begin(self, opt: Any, x0: np.ndarray, infeasible_fitness: float) -> float | None:
        """The current crates' fitness is the best to beat (§9)."""
        start = self(x0)
        opt.start_from(x0, start.size if start.feasible else infeasible_fitness)
        return start.margin

    def check_best(self, res: Any, margin: float | None) -> float | None:
        """The released scripts never re-check the best."""
        return None

    def apply(self, res: Any, margin: float | None, size_before: float, crates: dict[str, float]) -> bool:
        """Always: the best (or the starting crates) on the masks the last candidate left."""
        self.conclude(res.xbest, crates)
        return True

    def conclude(self, best: Sequence[float], crates: dict[str, float]) -> None:
        """Write the best crates and give EVERY layer its mask update, on the masks the last candidate left."""
        for n, c in zip(self.selected, best):
            crates[n] = float(c)
        for n in self.order:
            self.layers.update(n, threshold(self.stats[n], crates[n]))
