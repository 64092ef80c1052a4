"""The no-loss guarantee: restore weights until the held-out accuracy is the reference's.

The paper's success criterion is "no accuracy loss"; a search under a loose constraint on one minibatch
only hopes for it. At the end of a run, while the model's accuracy on the held-out training images is
below the reference's on the same images:

    for each prunable layer: lower its magnitude threshold (times ``guarantee_factor``; at first the
        k-th largest dense |W|, k the weights it keeps), which brings
        back the pruned weights whose dense (straight-through) magnitude clears it, and score the
        held-out accuracy of that model
    keep the layer whose restored weights buy the most held-out accuracy per weight, read as the
        held-out cross-entropy they remove (a smooth measure of the same thing)
    retrain ``guarantee_retrain`` masked SGD iterations (masks frozen), score again

``retrain.guarantee_regrow`` grows instead (``regrow_until_lossless``): every layer at once, by the pruned
weights of largest training gradient, from zero, the retraining between steps averaged.

Each step is recorded with its ratio and held-out accuracy. When the steps run out before the target,
the run keeps its model from before the guarantee (pipeline): it has no lossless model, and says so.
Nothing reads the test set.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np

from olmp.adjusting import MaskedLayers
from olmp.config import RetrainConfig


def thresholds(layers: MaskedLayers) -> dict[str, float]:
    """Each layer's equivalent magnitude threshold: the k-th largest dense |W| of its weights, k the
    weights it keeps (its smallest kept |W| is no guide: a kept weight may have shrunk since)."""
    out = {}
    for n in layers.names:
        w, m = np.abs(layers.dense(n)[0]).ravel(), layers.masks[n][0]
        k = int(np.count_nonzero(m))
        out[n] = float(np.partition(w, w.size - k)[w.size - k]) if k else float(w.max())
    return out


def lowered(layers: MaskedLayers, name: str, threshold: float) -> list[np.ndarray]:
    """The layer's masks with every weight of |W| >= threshold switched on (none switched off)."""
    return [np.maximum(m, (np.abs(w) >= threshold).astype(m.dtype))
            for w, m in zip(layers.dense(name), layers.masks[name])]


def restore_until_lossless(layers: MaskedLayers, cfg: RetrainConfig, target: float,
                           holdout: Callable[[], tuple[float, float]], retrain: Callable[[int], None],
                           ratio: Callable[[], float], progress: Callable[[str], None] | None = None,
                           ) -> dict[str, Any]:
    """Run the guarantee on the live net; return its record (``reached`` says whether it met ``target``).

    ``holdout()`` gives the masked model's (accuracy, loss) on the held-out images. A layer is chosen by
    the held-out cross-entropy its restored weights remove, per weight: the loss moves with every
    image's margin, where the accuracy of 5,000 images moves in steps of 0.02 points and a small
    restoration mostly leaves it where it was. When no layer lowers the loss, the one that raises it least.
    """
    now = thresholds(layers)

    def step(loss: float) -> dict[str, Any] | None:
        best: tuple[float, str, list[np.ndarray], float] | None = None
        for n in layers.names:
            t = now[n] * cfg.guarantee_factor
            new = lowered(layers, n, t)
            restored = int(sum(np.count_nonzero(a) - np.count_nonzero(b) for a, b in zip(new, layers.masks[n])))
            if restored == 0:
                continue
            old = [m.copy() for m in layers.masks[n]]
            layers.set_masks(n, new)
            with layers.masked():
                _, cand = holdout()
            layers.set_masks(n, old)
            score = (loss - cand) / restored if cand < loss else loss - cand  # per weight; else least harm
            if best is None or score > best[0]:
                best = (score, n, new, t)
        if best is None:  # every threshold is at the bottom: nothing left to restore
            return None
        _, name, new, t = best
        layers.set_masks(name, new)
        now[name] = t
        return {"layer": name, "threshold": t}

    return _until_lossless(layers, cfg, target, holdout, retrain, ratio, step,
                           lambda f: f"{f['layer']} threshold {f['threshold']:.4g}", progress)


def _until_lossless(layers: MaskedLayers, cfg: RetrainConfig, target: float,
                    holdout: Callable[[], tuple[float, float]], retrain: Callable[[int], None],
                    ratio: Callable[[], float], step: Callable[[float], dict[str, Any] | None],
                    says: Callable[[dict[str, Any]], str], progress: Callable[[str], None] | None,
                    ) -> dict[str, Any]:
    """The guarantee's loop, whatever a step changes: ``step(loss)`` changes the masks and returns what
    the record keeps of it (None: nothing left to change); then retrain, score, record, report."""
    with layers.masked():
        acc, loss = holdout()
    steps: list[dict[str, Any]] = [{"step": 0, "ratio": ratio(), "holdout_accuracy": acc, "holdout_loss": loss}]
    while acc < target and len(steps) <= cfg.guarantee_max_steps:
        fields = step(loss)
        if fields is None:
            break
        retrain(cfg.guarantee_retrain)
        with layers.masked():
            acc, loss = holdout()
        steps.append({"step": len(steps), **fields, "ratio": ratio(), "holdout_accuracy": acc,
                      "holdout_loss": loss})
        if progress:
            progress(f"guarantee step {len(steps) - 1}: {says(fields)}, {ratio():.1f}x, "
                     f"held-out {acc:.4f} (target {target:.4f}), loss {loss:.4f}")
    return {"target_holdout_accuracy": target, "reached": acc >= target, "steps": steps}


GRADIENT_BATCHES = 8  # training minibatches whose mean gradient ranks the pruned weights (512 LeNet images)


def regrown(mask: np.ndarray, grad: np.ndarray, count: int) -> np.ndarray:
    """Indices (into the flat mask) of the ``count`` pruned weights of largest |gradient|."""
    score = np.abs(grad).reshape(-1).astype(np.float64)
    score[mask.reshape(-1) != 0] = -1.0  # kept weights are not candidates
    count = min(count, int(np.count_nonzero(mask.reshape(-1) == 0)))
    if count <= 0:
        return np.empty(0, dtype=np.int64)
    return np.sort(np.argpartition(-score, count - 1)[:count])  # ties: numpy's partition order, deterministic


def regrow_until_lossless(layers: MaskedLayers, cfg: RetrainConfig, target: float,
                          holdout: Callable[[], tuple[float, float]], retrain: Callable[[int], None],
                          ratio: Callable[[], float], gradient: Callable[[], dict[str, np.ndarray]],
                          progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """The guarantee by regrowth (``retrain.guarantee_regrow``); the same record as ``restore_until_lossless``.

    Restoring a pruned weight with its dense (straight-through) value brings back a weight that kept
    learning without ever being used: on LeNet-5 that raised the held-out loss at every layer but the
    output layer, and restoring the whole output layer did not reach the target. Here a step grows every
    layer at once, by the pruned weights the training loss most wants (largest mean |gradient| over
    GRADIENT_BATCHES minibatches, as RigL regrows), starting at zero so the model is unchanged until
    the retraining moves them. ``gradient()`` gives each layer's weight gradient at W*M.
    """
    grow = 1.0 / cfg.guarantee_factor - 1.0

    def step(loss: float) -> dict[str, Any] | None:
        grads = gradient()
        grew: dict[str, int] = {}
        for n in layers.names:
            mask = layers.masks[n][0]
            idx = regrown(mask, grads[n], max(1, math.ceil(grow * np.count_nonzero(mask))))
            if idx.size:
                new = [m.copy() for m in layers.masks[n]]
                new[0].reshape(-1)[idx] = 1.0
                layers.dense(n)[0].reshape(-1)[idx] = 0.0
                layers.set_masks(n, new)
                grew[n] = int(idx.size)
        return {"regrown": grew} if grew else None  # None: every weight is back, nothing left to regrow

    return _until_lossless(layers, cfg, target, holdout, retrain, ratio, step,
                           lambda f: f"regrew {sum(f['regrown'].values())} weights", progress)
