"""The baselines' sensitivity scan (reference doc §6): one layer at a time, one-shot, on training images.

Each layer alone is pruned at every value of ``baseline.grid``, without retraining, and the
accuracy is read on a fixed batch of TRAINING images (the pipeline's validation net); the test
set is never read. Per layer the pick is the largest grid value before the first whose drop
exceeds ``baseline.tolerance``, then times ``baseline.scale``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from olmp import evaluate
from olmp import masks as mask_rule
from olmp.adjusting import MaskedLayers


def sensitivity_scan(net: Any, layers: MaskedLayers, grid: tuple[float, ...],
                     threshold_of: Callable[[str, float], float], rule: str) -> dict[str, Any]:
    """Prune each layer alone at every grid value and measure accuracy on the validation batch.

    ``threshold_of(layer, value)`` gives the threshold; ``rule`` is "magnitude" (keep |w| > T) or
    "dns" (the DNS rule from all-ones masks: keep |w| > 0.9 T). Returns the dense accuracy and,
    per layer, the accuracies and remaining fractions along the grid. Leaves weights and masks as found.
    """
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


def scanned_values(
    ctx: Any, threshold_of: Callable[[str, float], float], rule: str
) -> tuple[dict[str, float], dict[str, Any]]:
    """The per-layer values of a scanned baseline (``baseline.values`` wins) and the record entry."""
    exp = ctx.exp
    b = exp.baseline
    info: dict[str, Any] = {}
    if set(b.values) == set(exp.layers):
        chosen = dict(b.values)
        info["source"] = "baseline.values"
    else:
        scan = sensitivity_scan(ctx.scoring.net, ctx.layers, b.grid, threshold_of, rule)
        chosen = {**pick_from_scan(scan, b.tolerance), **b.values}
        info.update(source="sensitivity scan on training images", scan=scan, tolerance=b.tolerance)
    info.update(chosen=chosen, scale=b.scale)
    values = {n: chosen[n] * b.scale for n in exp.layers}
    info["values"] = dict(values)
    return values, info
