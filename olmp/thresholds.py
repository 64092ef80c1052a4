"""The crate parameterisation of a layer's threshold (reference §2).

OLMP does not search thresholds directly: thresholds of different layers live on
wildly different scales. It searches the *crate* c_l of each layer instead, and the
threshold is T_l = max(mu_l + c_l * sigma_l, 0), where mu_l and sigma_l describe the
magnitudes |w| of the reference (dense) model's layer. The caller computes the
stats once, from the reference model, and keeps them fixed for the whole run.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from olmp.errors import OlmpError


@dataclass(frozen=True)
class LayerStats:
    """Mean and standard deviation of |w| over a layer's weights and biases."""

    mu: float
    sigma: float


def layer_stats(weights: np.ndarray, bias: np.ndarray | None) -> LayerStats:
    """Return mu and sigma of |w| over weights AND biases together (§2).

    Biases are pruned by the same threshold, so they take part in the stats.
    The standard deviation is the population one (ddof=0), as DNS computes it,
    and everything is done in float64 so the stats do not depend on blob dtype.
    """
    parts = [np.abs(np.asarray(weights, dtype=np.float64)).ravel()]
    if bias is not None:
        parts.append(np.abs(np.asarray(bias, dtype=np.float64)).ravel())
    magnitudes = np.concatenate(parts)
    if magnitudes.size == 0:
        raise OlmpError("layer_stats: the layer has no parameters")
    if not np.all(np.isfinite(magnitudes)):
        raise OlmpError("layer_stats: the layer holds non-finite weights")
    return LayerStats(mu=float(magnitudes.mean()), sigma=float(magnitudes.std()))


def threshold(stats: LayerStats, crate: float) -> float:
    """Return T = max(mu + crate * sigma, 0): a negative T would prune nothing anyway."""
    return max(stats.mu + float(crate) * stats.sigma, 0.0)
