"""Threshold policies: OLMP and the baselines it is compared with (issue 4, reference doc §6).

A baseline is the OLMP pipeline (olmp/pipeline.py: masks, Caffe's solver, records,
checkpoints, resume) with a different policy deciding the masks. POLICIES maps the
experiment's ``method`` to a class; the pipeline calls, per run:

    start()                           once, on the reference model, before the first SGD step
    selection_probability(layer, itr) the chance a layer is "selected" at iteration itr
    prune(itr, selected)              every iteration before prune_stop_iter, before the SGD step
    fields()                          per-layer values written into progress entries and "final"

and saves ``state()`` in checkpoints. ``straight_through`` says whether pruned weights keep
learning (OLMP, DNS: splicing) or stay at zero (Deep Compression, global, uniform).

| method | threshold | when masks change | pruned weights |
|---|---|---|---|
| olmp | mu_l + crate_l sigma_l, crates searched (§3) | selected layers, prob 1/(1+gamma_l itr) | learn, splice |
| dns | mu_l + crate_l sigma_l, fixed crates (scan) | each layer with prob (1+gamma itr)^-power | learn, splice |
| deep-compression | quality_l x std(weights_l) (scan) | ``rounds`` rounds before prune_stop_iter | stay 0 |
| global-magnitude | one magnitude over all layers | ``rounds`` rounds, sparsity ramped | stay 0 |
| uniform | the same sparsity in every layer | ``rounds`` rounds, sparsity ramped | stay 0 |

The scan (``sensitivity_scan``) prunes one layer at a time, one-shot and without
retraining, over ``baseline.grid`` and reads accuracy on a fixed batch of TRAINING images
(the pipeline's validation net); the test set is never read. Per layer it keeps the largest
grid value before the first whose drop exceeds ``baseline.tolerance``, then multiplies by
``baseline.scale``.

Rounds (deep-compression, global-magnitude, uniform): round r = 0..R-1 happens at iteration
r * (prune_stop_iter // R) and prunes to fraction (r+1)/R of the final setting (threshold or
sparsity); masks only ever lose entries; the rest of the budget retrains. Every method gets
the same ``niter`` SGD steps as OLMP (the same adjusting budget).

One command per run (see the README, "Baselines"):

    olmp prune --experiment lenet5_dc --seed 1 --out results/lenet5/deep-compression-seed1 --resume
    scripts/baseline.sh lenet5 dns 1
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from olmp import evaluate
from olmp.thresholds import threshold

if TYPE_CHECKING:
    from olmp.pipeline import Pipeline


def sensitivity_scan(run: "Pipeline", grid: tuple[float, ...], threshold_of: Any, rule: str) -> dict[str, Any]:
    """Prune each layer alone at every grid value and measure accuracy on the validation batch.

    ``threshold_of(layer, value)`` gives the threshold; ``rule`` is "magnitude" (keep |w| > T) or
    "dns" (the DNS rule from all-ones masks: keep |w| > 0.9 T). Returns the dense accuracy and,
    per layer, the accuracies and remaining fractions along the grid. Leaves weights and masks as found.
    """
    from olmp import masks as mask_rule  # noqa: PLC0415

    net, layers = run.eval_net, run.layers
    order = list(net._layer_names)
    logits, labels = evaluate.loss_inputs(net)

    def accuracy(start: str) -> float:
        net.forward(start=start)
        return evaluate.batch_accuracy(net.blobs[logits].data, net.blobs[labels].data)

    out: dict[str, Any] = {"grid": list(grid), "rule": rule, "images": int(net.blobs[labels].data.size), "layers": {}}
    with layers.masked():
        out["dense_accuracy"] = accuracy(min(layers.names, key=order.index))
        for n in layers.names:
            blobs = layers.data(n)
            saved = [b.copy() for b in blobs]
            accs, kept = [], []
            for v in grid:
                t = threshold_of(n, v)
                keep_total = 0
                for blob, w in zip(blobs, saved):
                    if rule == "dns":
                        m = mask_rule.update_mask(w, np.ones_like(w), t)
                    else:
                        m = (np.abs(w) > t).astype(np.float32)
                    np.multiply(w, m, out=blob)
                    keep_total += int(np.count_nonzero(m))
                accs.append(accuracy(n))
                kept.append(keep_total / sum(w.size for w in saved))
            for blob, w in zip(blobs, saved):
                blob[...] = w
            accuracy(n)  # the layers above read this layer's output: refresh it from the restored weights
            out["layers"][n] = {"accuracy": accs, "remaining": kept}
    return out


def pick_from_scan(scan: dict[str, Any], tolerance: float) -> dict[str, float]:
    """Per layer: the largest grid value before the first whose accuracy drop exceeds ``tolerance``.

    If even the smallest value exceeds it, the smallest is taken (and the scan record shows why).
    """
    base = scan["dense_accuracy"]
    chosen = {}
    for n, res in scan["layers"].items():
        pick = scan["grid"][0]
        for v, acc in zip(scan["grid"], res["accuracy"]):
            if base - acc > tolerance:
                break
            pick = v
        chosen[n] = float(pick)
    return chosen


class Policy:
    """The interface the pipeline calls; the defaults do nothing."""

    name = ""
    straight_through = True

    def __init__(self, run: "Pipeline") -> None:
        self.run = run
        self.exp = run.exp
        self.values: dict[str, float] = {}  # the per-layer setting (crate, quality, ...), checkpointed

    def start(self) -> dict[str, Any] | None:
        return None

    def selection_probability(self, layer: str, itr: int) -> float:
        return 1.0

    def prune(self, itr: int, selected: list[str]) -> None:
        pass

    def fields(self) -> dict[str, Any]:
        return {}

    def state(self) -> dict[str, Any]:
        return {"values": self.values}

    def load_state(self, state: dict[str, Any]) -> None:
        self.values = {k: float(v) for k, v in state.get("values", {}).items()}

    # shared by the scanned baselines
    def _scanned_values(self, threshold_of: Any, rule: str) -> dict[str, Any]:
        b = self.exp.baseline
        info: dict[str, Any] = {}
        if set(b.values) == set(self.exp.layers):
            chosen = dict(b.values)
            info["source"] = "baseline.values"
        else:
            scan = sensitivity_scan(self.run, b.grid, threshold_of, rule)
            chosen = {**pick_from_scan(scan, b.tolerance), **b.values}
            info.update(source="sensitivity scan on training images", scan=scan, tolerance=b.tolerance)
        info.update(chosen=chosen, scale=b.scale)
        self.values = {n: chosen[n] * b.scale for n in self.exp.layers}
        info["values"] = dict(self.values)
        return info

    def _round(self, itr: int) -> int | None:
        """The round pruned at iteration itr, or None."""
        rounds = self.exp.baseline.rounds
        every = self.exp.pipeline.prune_stop_iter // rounds
        if itr % every or itr // every >= rounds:
            return None
        return itr // every


class OLMP(Policy):
    """Reference doc §3: selected layers get mask updates; every K iterations, a crate search."""

    name = "olmp"

    def selection_probability(self, layer: str, itr: int) -> float:
        from olmp.pipeline import selection_probability  # noqa: PLC0415

        return selection_probability(self.run.gamma(layer), itr)

    def prune(self, itr: int, selected: list[str]) -> None:
        run = self.run
        for n in selected:
            run.layers.update(n, threshold(run.stats[n], run.crates[n]))
        if itr % self.exp.search.every == 0 and len(selected) >= self.exp.search.min_layers:
            run.record["searches"].append(run.search(itr, selected))

    def fields(self) -> dict[str, Any]:
        return {"crates": dict(self.run.crates)}


class DNS(Policy):
    """Dynamic Network Surgery (Guo et al. 2016): fixed crates, probabilistic mask updates, splicing."""

    name = "dns"

    def start(self) -> dict[str, Any]:
        run = self.run
        info = self._scanned_values(lambda n, c: threshold(run.stats[n], c), "dns")
        run.crates = dict(self.values)
        return info

    def selection_probability(self, layer: str, itr: int) -> float:
        b = self.exp.baseline
        gamma = b.gamma_by_type.get(self.run.types[layer], b.gamma)
        return (1.0 + gamma * itr) ** -b.power

    def prune(self, itr: int, selected: list[str]) -> None:
        run = self.run
        for n in selected:
            run.layers.update(n, threshold(run.stats[n], run.crates[n]))

    def fields(self) -> dict[str, Any]:
        return {"crates": dict(self.run.crates)}


class DeepCompression(Policy):
    """Han et al. 2015: T_l = quality_l * std(weights_l), iterative prune -> retrain, pruned stay 0."""

    name = "deep-compression"
    straight_through = False

    def __init__(self, run: "Pipeline") -> None:
        super().__init__(run)
        # std of the reference layer's weights (the weight blob, signed, population std)
        self.std = {n: float(np.asarray(run.net.params[n][0].data, dtype=np.float64).std()) for n in self.exp.layers}
        self.thresholds = {n: 0.0 for n in self.exp.layers}

    def start(self) -> dict[str, Any]:
        info = self._scanned_values(lambda n, q: q * self.std[n], "magnitude")
        info["weight_std"] = dict(self.std)
        return info

    def prune(self, itr: int, selected: list[str]) -> None:
        r = self._round(itr)
        if r is None:
            return
        frac = (r + 1) / self.exp.baseline.rounds
        for n in self.exp.layers:
            t = frac * self.values[n] * self.std[n]
            self.thresholds[n] = t
            lay = self.run.layers
            lay.set_masks(n, [m * (np.abs(w) > t) for w, m in zip(lay.dense(n), lay.masks[n])])

    def fields(self) -> dict[str, Any]:
        return {"qualities": dict(self.values), "thresholds": dict(self.thresholds)}

    def state(self) -> dict[str, Any]:
        return {"values": self.values, "thresholds": self.thresholds}

    def load_state(self, state: dict[str, Any]) -> None:
        super().load_state(state)
        self.thresholds = {k: float(v) for k, v in state.get("thresholds", {}).items()}


class _Sparsity(Policy):
    """Magnitude pruning to a target sparsity, ramped over rounds; pruned weights stay 0."""

    straight_through = False

    def __init__(self, run: "Pipeline") -> None:
        super().__init__(run)
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
        lay = self.run.layers
        return [np.where(m > 0, np.abs(w.astype(np.float64)), -1.0) for w, m in zip(lay.dense(name), lay.masks[name])]


class GlobalMagnitude(_Sparsity):
    """One magnitude threshold across all layers (as torch's global_unstructured)."""

    name = "global-magnitude"

    def _prune_to(self, sparsity: float) -> None:
        lay = self.run.layers
        names = self.exp.layers
        scores = [s for n in names for s in self._scores(n)]
        new = self._smallest(scores, round(sparsity * lay.total()))
        at = 0
        for n in names:
            k = len(lay.masks[n])
            lay.set_masks(n, new[at:at + k])
            at += k


class Uniform(_Sparsity):
    """The same sparsity in every layer (weights and biases of a layer ranked together)."""

    name = "uniform"

    def _prune_to(self, sparsity: float) -> None:
        lay = self.run.layers
        for n in self.exp.layers:
            lay.set_masks(n, self._smallest(self._scores(n), round(sparsity * lay.total(n))))


POLICIES: dict[str, type[Policy]] = {
    "olmp": OLMP,
    "dns": DNS,
    "deep-compression": DeepCompression,
    "global-magnitude": GlobalMagnitude,
    "uniform": Uniform,
}
